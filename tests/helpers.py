"""Small helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metarl.envs.base import TaskEnvMixin, task_to_dict


def weights_only_round_trip(state: dict) -> dict:
    """``state`` saved with ``torch.save`` and read back with ``weights_only=True`` (what checkpoints go through)."""
    import io

    import torch

    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)


def rollout(env, actions, seed: int):
    """Observations ``[steps + 1, ...]`` and rewards ``[steps]`` of ``actions`` from ``env.reset(seed=seed)``, up to
    the end of the episode."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)


# A tiny deterministic task env for the trial agents (RL², VariBAD): episodes of ``length`` steps, obs = (step in
# episode, length), reward = action + 1; tasks of different lengths make trials of different lengths in one batch.

@dataclasses.dataclass(frozen=True)
class LengthTask:
    length: int


class CountingEnv(TaskEnvMixin, gym.Env):
    task_type = LengthTask

    def __init__(self, observation: str = "box", action: str = "discrete") -> None:
        self.observation_space = (spaces.Box(0.0, 10.0, (2,), np.float32) if observation == "box"
                                  else spaces.Dict({"x": spaces.Discrete(3)}))
        self.action_space = spaces.Discrete(2) if action == "discrete" else spaces.MultiDiscrete([2, 2])
        self._init_task(LengthTask(1))
        self._t = 0

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[LengthTask]:
        return [LengthTask(int(v)) for v in rng.integers(1, 4, size=n)]

    def _obs(self) -> np.ndarray:
        return np.array([self._t, self._task.length], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._apply_pending_task()
        self._t = 0
        return self._obs(), {"task": task_to_dict(self._task)}

    def step(self, action):
        self._t += 1
        return self._obs(), float(int(action) + 1), self._t >= self._task.length, False, {}


def kill_and_resume(monkeypatch, agent_type: type, run, kill_at: int, checkpointed: int) -> tuple[dict, dict]:
    """Resume after a kill: ``train(run("full"))`` uninterrupted; ``train(run("killed"))`` with
    ``agent_type.train_iteration`` raising ``KeyboardInterrupt`` at iteration ``kill_at`` (its last checkpoint must
    be at ``checkpointed``), then ``metarl resume`` of it. Returns both runs' last-checkpoint agent states
    (``(full, resumed)``) for the caller to compare."""
    import pytest

    from metarl.cli import main as cli_main
    from metarl.runs import load_checkpoint
    from metarl.training import train

    full = train(run("full"))
    original = agent_type.train_iteration

    def dying(self, iteration):
        if iteration == kill_at:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(agent_type, "train_iteration", dying)
    with pytest.raises(KeyboardInterrupt):
        killed = run("killed")
        train(killed)
    monkeypatch.setattr(agent_type, "train_iteration", original)
    killed_dir = Path(killed.run_dir)
    assert load_checkpoint(killed_dir / "checkpoints" / "last.pt")["iteration"] == checkpointed
    assert cli_main(["resume", str(killed_dir), "--no-progress"]) == 0
    return tuple(load_checkpoint(d / "checkpoints" / "last.pt")["state"] for d in (full, killed_dir))


PRESET_DIR = Path(__file__).resolve().parents[1] / "experiments" / "presets"
EXPENSIVE_PRESETS = ("ml45", "ml25")
"""presets whose env takes ~30 s to build (Meta-World ML45/ML25 construct every class): their load tests are slow"""


def preset_params(pattern: str) -> list:
    """``pytest.param`` per preset matching ``pattern`` in experiments/presets (id: its stem), the expensive ones
    marked ``slow``."""
    import pytest

    return [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if any(k in p.stem for k in EXPENSIVE_PRESETS) else [])
            for p in sorted(PRESET_DIR.glob(pattern))]


def resume_from_state_dict(fresh, parameters, iterations: int = 3) -> tuple[Any, Any, list, list]:
    """Same seed, same run, and resuming from a ``state_dict`` is exact: ``fresh()`` trained ``iterations``
    iterations straight, against ``fresh()`` trained one iteration, saved (through ``weights_only`` loading),
    loaded into another ``fresh()`` and trained the rest. Asserts equal ``parameters(agent)`` (a name → tensor
    dict) and returns ``(straight, reloaded, straight_metrics, reloaded_metrics)`` for the caller's own checks
    (the caller closes both agents)."""
    import torch

    straight = fresh()
    straight_metrics = [straight.train_iteration(i) for i in range(iterations)]
    resumed = fresh()
    resumed.train_iteration(0)
    state = weights_only_round_trip(resumed.state_dict())
    resumed.close()
    reloaded = fresh()
    reloaded.load_state_dict(state)
    reloaded_metrics = [reloaded.train_iteration(i) for i in range(1, iterations)]
    for key, value in parameters(straight).items():
        torch.testing.assert_close(parameters(reloaded)[key], value, rtol=0, atol=0)
    return straight, reloaded, straight_metrics, reloaded_metrics
