"""A user's own task environment, written without importing metarl: the three task methods are all it needs.

Importing this module registers ``UserGoal-v0``, so Gymnasium's ``"module:EnvId"`` form finds it with no change to
the suite::

    env = gymnasium.make("tests.user_env_example:UserGoal-v0")   # imports tests.user_env_example first

(from the repository root, where ``tests`` is importable as a namespace package).

``UserGoalEnv``: a point on a line starts at 0 and moves by the action (clipped to ``[-0.25, 0.25]``) towards a
goal; ``reward = reward_distance = -|position - goal|``; observation ``[position]``; 20 steps per episode (the
registration's ``TimeLimit``). Tasks are plain dicts ``{"goal": g}`` (third-party envs may use dicts):
``train`` goals are uniform in ``[-1, 0)``, ``test`` goals in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "UserGoal-v0"


class UserGoalEnv(gym.Env):
    """Reach a goal on a line; the task is ``{"goal": g}`` with ``g`` in ``[-1, 1]``."""

    metadata = {"render_modes": [], "render_fps": 10}

    def __init__(self) -> None:
        self.action_space = spaces.Box(-0.25, 0.25, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self._task: dict[str, float] = {"goal": 0.5}
        self._pending: dict[str, float] | None = None
        self._position = 0.0

    # --- the task protocol ---------------------------------------------------------------------------------
    def sample_tasks(self, n: int, *, split: str = "train", seed: int | None = None) -> list[dict[str, float]]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: UserGoalEnv offers train, test")
        rng = np.random.default_rng(seed)
        low, high = (-1.0, 0.0) if split == "train" else (0.0, 1.0)
        return [{"goal": float(g)} for g in rng.uniform(low, high, size=n)]

    def set_task(self, task: dict[str, float]) -> None:
        goal = float(task["goal"])
        if not -1.0 <= goal <= 1.0:
            raise ValueError(f"goal must lie in [-1, 1], got {goal}")
        self._pending = {"goal": goal}

    def get_task(self) -> dict[str, float]:
        return dict(self._pending if self._pending is not None else self._task)

    # --- gymnasium API ---------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._pending is not None:
            self._task, self._pending = self._pending, None
        self._position = 0.0
        return np.zeros(1, dtype=np.float32), {"task": dict(self._task)}

    def step(self, action):
        raw = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(raw):  # before clipping, which would turn an infinite action into a finite move
            raise ValueError(f"action must be finite, got {action!r}")
        move = min(max(raw, -0.25), 0.25)
        self._position += move
        reward = -abs(self._position - self._task["goal"])
        obs = np.array([self._position], dtype=np.float32)
        return obs, reward, False, False, {"reward_distance": reward, "task": dict(self._task)}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=f"{__name__}:UserGoalEnv", max_episode_steps=20)
