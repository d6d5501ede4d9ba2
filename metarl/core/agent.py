"""The meta-RL agent contract: what the run loop (metarl.training) and the meta-test protocol
(metarl.evaluation.evaluate_meta_rl) need from every agent (MAML-TRPO, RL², PEARL, baselines).

An agent owns its networks, optimisers and a task-aware vector env (``metarl.envs.vector.TaskVectorEnv``) built from
a Gymnasium id. It is constructed as ``Agent(env_id, config)`` from a config dataclass (a subclass of
:class:`AgentConfig`), seeded explicitly; the plumbing every agent shares (the env probe and its one-line errors, the
vector envs, per-stream generators, request and checkpoint checks, the memory check) is :mod:`metarl.core.agent_env`.

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

``episodes_per_stage`` (a read-only ``int`` property) says how much adaptation data stands behind each column, so the
meta-test protocol can record it: column k is measured after adapting on ``k * episodes_per_stage`` episodes per task.
MAML-TRPO: its ``adapt_episodes`` rollouts per stage (column k is their mean return); RL², PEARL, the oracle and the
baselines: 1 (one episode per column).

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

from .config import ConfigError, SeededConfig, check_choice, check_int, check_mapping


@dataclass
class AgentConfig(SeededConfig):
    """The settings every meta-RL agent's config starts with: seed and device (:class:`SeededConfig`), and how the
    environment is made. Subclass it and call ``super().__post_init__()``; validate with :mod:`metarl.core.config`."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for gymnasium.make (e.g. {"velocity_range": [0, 2]})"""
    max_episode_steps: int | None = None
    """episode length; None: the environment's registered time limit"""
    sampler: str = "local"
    """where the sub-environments run: local (in this process); ray (split over num_workers Ray actors, one round
    trip per step, the local sampler's episodes; the metarl[ray] extra; joins the cluster at RAY_ADDRESS, else
    starts a local Ray instance); ray-episodes (as ray, but whole episodes of collect_episodes are rolled out on the
    workers, the batch split over them: the episodes of the local sampler with rollout_streams per-episode)"""
    num_workers: int = 1
    """Ray rollout workers (actors, one CPU each) the sub-environments are split over (samplers ray and
    ray-episodes); at most the number of sub-environments the agent steps"""
    rollout_streams: str = "auto"
    """random streams of collect_episodes (metarl.core.sampling): shared (one generator over the batch),
    per-episode (each episode its own seed and action stream, independent of the rest of its batch), auto
    (per-episode for sampler ray-episodes, which needs it, shared otherwise)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_mapping(self.env_kwargs, "env_kwargs")
        check_int(self.max_episode_steps, "max_episode_steps", minimum=1, optional=True)
        check_choice(self.sampler, "sampler", ("local", "ray", "ray-episodes"))
        check_int(self.num_workers, "num_workers", minimum=1)
        check_choice(self.rollout_streams, "rollout_streams", ("auto", "shared", "per-episode"))
        if self.sampler == "ray-episodes" and self.rollout_streams == "shared":
            raise ConfigError("sampler 'ray-episodes' needs rollout_streams 'per-episode' (or 'auto'): one shared "
                              "random stream over the batch cannot be split over workers")
        if self.sampler != "local":
            from .distributed import INSTALL_HINT, ray_installed

            if not ray_installed():
                raise ConfigError(f"sampler {self.sampler!r} needs Ray, which is not installed: {INSTALL_HINT}")

    @property
    def streams(self) -> str:
        """The rollout streams in force: ``rollout_streams`` with ``auto`` resolved."""
        if self.rollout_streams != "auto":
            return self.rollout_streams
        return "per-episode" if self.sampler == "ray-episodes" else "shared"


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

    @property
    def episodes_per_stage(self) -> int:
        """Adaptation episodes per task behind each ``meta_test`` column (read-only; see the module docstring)."""
        ...


@runtime_checkable
class RendersEpisodes(Protocol):
    """The optional rendering method of a meta-RL agent (see the module docstring)."""

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of each of ``num_episodes`` adaptation episodes on ``task`` (episode 0 before adaptation)."""
        ...
