"""Memory task distributions: the passive T-Maze (Ni, Ma, Eysenbach & Bacon, "When Do Transformers Shine in RL?
Decoupling Memory from Credit Assignment", NeurIPS 2023; after Bakker 2001), a recall of the first observation
``H`` steps later with no credit-assignment difficulty.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import SPLITS, TaskEnvMixin, TaskError, check_task_fields

__all__ = ["PassiveTMazeTask", "PassiveTMazeEnv"]

RIGHT, UP, LEFT, DOWN = range(4)
MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))


@dataclasses.dataclass(frozen=True)
class PassiveTMazeTask:
    """The goal side: ``goal = 1`` (up) or ``-1`` (down)."""

    goal: int


class PassiveTMazeEnv(TaskEnvMixin, gym.Env, EzPickle):
    """A corridor of ``corridor_length = H`` cells from the start (x = 0) to a junction (x = H) with a goal
    candidate above (y = 1) and below (y = -1); the goal side is shown only in the first observation.

    ## Action space
    ``Discrete(4)``: right, up, left, down (moves of one cell; a move off the maze leaves the agent in place).
    Anything else (a float, NaN, an out-of-range index) raises ``ValueError``.

    ## Observation space
    ``Box(-1, 1, (2,))`` float32, the *ambiguous* observation of the passive T-Maze: ``[0, goal]`` at the first
    step of the episode (the cue), ``[0, 0]`` in the corridor (also back at the start), ``[1, y]`` at the junction
    (y = 0) and on a goal candidate (y = ±1). A policy without memory cannot tell at the junction which side to take.

    ## Rewards
    As in Ni et al. 2023 (passive T-Maze, penalty −1/(T − 1) with T = H + 1): at every step ``t = 1 … T − 1``
    ``reward_penalty = -1/H`` when the agent is behind the schedule of one cell right per step (``x < t``), else 0;
    at the last step ``t = T`` ``reward_goal = 1`` when the agent stands on the goal side (``y == goal``), else 0.
    ``reward = reward_penalty + reward_goal`` (``info`` has both; one of them is always 0). The optimal return is 1
    (H rights, then the cued turn); a memoryless policy that walks the corridor scores 0.5 in expectation.

    ## Starting state
    x = 0, y = 0; the goal side is the task's.

    ## Episode end
    The episode *terminates* after ``T = H + 1`` steps, wherever the agent is (a finite-horizon task like the
    paper's, not an outside time limit: the registration adds no ``TimeLimit``; ``episode_step_limit = H + 1``
    tells agents the bound). Stepping again before ``reset`` raises ``RuntimeError``.

    ## Task law
    The task is :class:`PassiveTMazeTask` ``(goal)``. ``sample_tasks(n)`` draws a balanced set: a random
    permutation of ⌈n/2⌉ and ⌊n/2⌋ of the two sides. ``train`` and ``test`` have the same law: two tasks cannot
    be held out (``splits_disjoint = False``, like HalfCheetahDir); what is tested is memory, not generalisation
    to new tasks. In Ni et al. the goal is drawn per episode; one trial of one episode per task (RL² with
    ``episodes_per_trial = 1``) is that setting.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``corridor_length`` | ``10`` | H, steps from the cue to the junction (1 … 10,000) |
    """

    metadata = {"render_modes": [], "render_fps": 4}
    task_type = PassiveTMazeTask
    splits = SPLITS
    splits_disjoint = False

    def __init__(self, corridor_length: int = 10) -> None:
        if not isinstance(corridor_length, (int, np.integer)) or isinstance(corridor_length, bool) \
                or not 1 <= corridor_length <= 10_000:
            raise ValueError(f"corridor_length must be an integer in [1, 10000], got {corridor_length!r}")
        EzPickle.__init__(self, corridor_length)
        self.corridor_length = int(corridor_length)
        self.episode_step_limit = self.corridor_length + 1
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._x = self._y = self._t = 0
        self._done = True
        self._init_task(PassiveTMazeTask(1))

    def _validate_task(self, task: Any) -> PassiveTMazeTask:
        task = check_task_fields(task, PassiveTMazeTask)
        if isinstance(task.goal, bool) or task.goal not in (-1, 1):
            raise TaskError(f"task field goal must be 1 (up) or -1 (down), got {task.goal!r}")
        return PassiveTMazeTask(int(task.goal))

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[PassiveTMazeTask]:
        sides = np.array([1] * ((n + 1) // 2) + [-1] * (n // 2))
        return [PassiveTMazeTask(int(g)) for g in rng.permutation(sides)]

    def _observation(self) -> np.ndarray:
        if self._t == 0:
            return np.array([0.0, self._task.goal], dtype=np.float32)
        if self._x < self.corridor_length:
            return np.zeros(2, dtype=np.float32)
        return np.array([1.0, self._y], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        self._x = self._y = self._t = 0
        self._done = False
        return self._observation(), {"task": self._task}

    def _open(self, x: int, y: int) -> bool:
        """The maze's cells: the corridor (y = 0, 0 <= x <= H) and the two goal candidates at x = H."""
        return (y == 0 and 0 <= x <= self.corridor_length) or (x == self.corridor_length and y in (-1, 1))

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, 3] (right, up, left, down), got {action!r}")
        if self._done:
            raise RuntimeError("the episode is over: call reset() before the next step")
        dx, dy = MOVES[int(action)]
        if self._open(self._x + dx, self._y + dy):
            self._x, self._y = self._x + dx, self._y + dy
        self._t += 1
        self._done = self._t >= self.episode_step_limit
        goal = 1.0 if self._done and self._y == self._task.goal else 0.0
        penalty = -1.0 / self.corridor_length if not self._done and self._x < self._t else 0.0
        info = {"reward_penalty": penalty, "reward_goal": goal, "x": self._x, "y": self._y, "task": self._task}
        return self._observation(), penalty + goal, self._done, False, info
