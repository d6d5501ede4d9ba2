"""The meta-RL agent contract: what the run loop (metarl.training_rl) and the meta-test protocol
(metarl.evaluation.evaluate_meta_rl) need from every agent (MAML-TRPO, RL², PEARL, baselines).

An agent owns its networks, optimisers and a task-aware vector env (``metarl.envs.vector.TaskVectorEnv``) built from
a Gymnasium id. It is constructed from a config dataclass and an env id, seeded explicitly.

Meta-training is a sequence of ``train_iteration(iteration)`` calls, each one whole meta-iteration (sample tasks of
the ``train`` split, collect, adapt, update) that returns namespaced metrics (``charts/...``, ``losses/...``) and
``env_steps`` (environment steps it used). Everything random in iteration ``i`` must derive from
``derive_seed(config.seed, ..., i)`` or from RNG state saved in ``state_dict()``, so that a run resumed from a
checkpoint reproduces an uninterrupted one on CPU.

Meta-test (one protocol for every agent, garage's ``adapt_policy`` idea): ``meta_test(tasks, num_episodes, seed)``
returns the undiscounted return of each adaptation episode for each task, shape ``[tasks, num_episodes]``:
episode 0 is collected before any adaptation (exploration with the meta-learned initialisation / prior / fresh
hidden state), and episode k > 0 after adapting on episodes 0..k-1 (gradient step(s) for MAML-TRPO, the hidden
state carried for RL², the posterior for PEARL). ``pre-adaptation`` is column 0, ``post-adaptation`` the last.

Optional: ``render_episodes(task, num_episodes, seed) -> list[list[np.ndarray]]`` (the :class:`RendersEpisodes`
protocol), what ``metarl evaluate RUN_DIR --video`` (:mod:`metarl.video`) needs. It returns ``num_episodes``
episodes, each a list of ``[H, W, 3]`` uint8 RGB frames of equal shape (the frame after the reset, then one per
step), of ONE adaptation run on ``task`` following the meta-test protocol: episode 0 before adaptation, episode k
after adapting on what came before (for MAML-TRPO one rendered rollout per adaptation stage, the adaptation itself
being meta_test's; for RL² one trial, the hidden state carried; for PEARL z from the prior, then posteriors).
Frames come from an environment made with ``render_mode="rgb_array"`` (:func:`metarl.envs.recording.
make_recording_envs`). Deterministic given ``seed``; the agent is not changed. Agents without it cannot make videos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class AgentConfig:
    """The settings every meta-RL agent's config starts with (subclass it; call ``super().__post_init__()``)."""

    seed: int = 0
    """seed of everything the agent draws: initialisation, tasks, env resets, action noise, batches"""
    device: str = "cpu"
    """torch device: "cpu", "cuda", "cuda:N" or "auto" (cuda when available)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for gymnasium.make (e.g. {"velocity_range": [0, 2]})"""
    max_episode_steps: int | None = None
    """episode length; None: the environment's registered time limit"""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.device, str) or (self.device not in ("cpu", "cuda", "auto")
                                                 and not self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict, got {type(self.env_kwargs).__name__}")
        value = self.max_episode_steps
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"max_episode_steps must be an integer >= 1 or None, got {value!r}")


@runtime_checkable
class MetaRLAgent(Protocol):
    name: str
    config: Any

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One meta-iteration; returns metrics including ``env_steps`` (steps used by this iteration)."""
        ...

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """Returns ``[len(tasks), num_episodes]`` undiscounted returns per adaptation episode."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: networks, optimisers, RNG state, counters (weights_only-safe)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class RendersEpisodes(Protocol):
    """The optional rendering method of a meta-RL agent (see the module docstring)."""

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of each of ``num_episodes`` adaptation episodes on ``task`` (episode 0 before adaptation)."""
        ...
