"""Frames of rollouts: a wrapper that renders after every reset and step, and a one-env vector env built with it.

The meta-RL agents' optional ``render_episodes`` (see :mod:`metarl.core.agent`) run their *own* meta-test rollout
code (the same sampler, the same adaptation) on the vector env of :func:`make_recording_envs`, so what a video
shows is exactly what ``meta_test`` measures; the frames are collected on the side by :class:`FrameRecorder`::

    envs, recorder = make_recording_envs("metarl/Navigation2D-v0")
    ... roll out episodes on envs (one sub-env) ...
    recorder.episodes   # [episode][frame] uint8 arrays [H, W, 3]: the frame after the reset, then one per step

The recorder sits outside Gymnasium's pass-through wrappers, so :class:`~metarl.envs.vector.TaskVectorEnv` steps it
like any other wrapped env (its lean MuJoCo path, which bypasses ``step``, is not used for it); the episode's time
limit is the same as the agents' vector envs apply.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .vector import TaskVectorEnv

__all__ = ["FrameRecorder", "make_recording_envs"]


class FrameRecorder(gym.Wrapper):
    """Calls ``env.render()`` after every ``reset`` (starting a new episode) and every ``step``.

    ``episodes[k]`` holds the frames of the k-th episode since construction (or :meth:`clear`): the first frame
    shows the reset state, frame ``t`` the state after step ``t``. The env must have ``render_mode="rgb_array"``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"FrameRecorder needs render_mode='rgb_array', the env has {env.render_mode!r}")
        self.episodes: list[list[np.ndarray]] = []

    def _record(self) -> None:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise RuntimeError(f"{self.env.unwrapped} rendered {type(frame).__name__}, not an RGB array [H, W, 3]")
        self.episodes[-1].append(frame)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        result = self.env.reset(seed=seed, options=options)
        self.episodes.append([])
        self._record()
        return result

    def step(self, action: Any):
        result = self.env.step(action)
        self._record()
        return result

    def clear(self) -> None:
        """Forget the recorded episodes."""
        self.episodes = []


def make_recording_envs(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
) -> tuple[TaskVectorEnv, FrameRecorder]:
    """A :class:`TaskVectorEnv` of ONE ``rgb_array`` sub-env of ``env_id`` whose frames ``FrameRecorder`` keeps.

    ``env_kwargs``, ``max_episode_steps`` (None: the registered time limit) and ``autoreset_mode`` as for the
    agents' own vector envs. Raises ``ValueError`` when the environment cannot render ``rgb_array`` frames.
    """
    kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    try:
        env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    except TypeError as err:  # a constructor without render_mode
        raise ValueError(f"{env_id} cannot render rgb_array frames: {err}") from None
    if env.render_mode != "rgb_array":
        env.close()
        raise ValueError(
            f"{env_id} cannot render rgb_array frames (render modes: {env.metadata.get('render_modes', [])})"
        )
    limit = max_episode_steps or (env.spec.max_episode_steps if env.spec is not None else None)
    recorder = FrameRecorder(env)
    envs = TaskVectorEnv(lambda: recorder, 1, max_episode_steps=limit, autoreset_mode=autoreset_mode, physics_threads=1)
    return envs, recorder
