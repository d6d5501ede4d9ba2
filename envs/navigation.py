"""2D point navigation to a goal: the MAML paper's dense task and PEARL's sparse half-circle task.

Pure numpy, no physics engine: a point moves by the (clipped) action each step. Both environments are cheap enough
for the suite's one-minute learning tests (a step is a few microseconds of Python), and both offer a vectorised
``batch_step`` for rolling out many tasks at once without environment objects. With ``render_mode="rgb_array"``
they draw the plane with Pillow (no OpenGL needed), which is what ``metarl evaluate --video`` shows.

References: Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning", section 5.3 (2D navigation); Rakelly et al.
2019, "Efficient Off-Policy Meta-RL via Probabilistic Context Variables" (PEARL), sparse point robot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import SPLITS_WITH_OOD, TaskEnvMixin, check_task_fields, checkerboard_uniform

__all__ = ["Navigation2DTask", "Navigation2DEnv", "SparseNavigation2DTask", "SparseNavigation2DEnv"]

Pixel = Callable[[float, float], tuple[float, float]]
"""Maps a point of the plane to image coordinates (points outside the view are clamped to its border)."""

# rendering colours (RGB): a dark background, so the white labels of metarl.video stay readable
_BACKGROUND, _GRID, _REGION = (22, 24, 32), (60, 64, 78), (88, 92, 110)
_GOAL, _PATH, _AGENT = (70, 205, 100), (95, 155, 255), (255, 150, 40)


@dataclasses.dataclass(frozen=True)
class Navigation2DTask:
    """A goal position in the plane."""

    goal_x: float
    goal_y: float


@dataclasses.dataclass(frozen=True)
class SparseNavigation2DTask:
    """A goal on the circle of radius ``circle_radius`` at ``angle`` radians (0 = +x axis, counter-clockwise)."""

    angle: float


def _check_action_pair(action: Any) -> tuple[float, float]:
    """The two action entries as floats; ``ValueError`` for a wrong size or a NaN/infinite entry."""
    if isinstance(action, np.ndarray) and action.shape == (2,):
        ax, ay = float(action[0]), float(action[1])
    else:
        arr = np.asarray(action, dtype=np.float64)
        if arr.size != 2:
            raise ValueError(f"action must hold 2 numbers (dx, dy), got shape {arr.shape}")
        ax, ay = (float(v) for v in arr.reshape(2))
    if not (math.isfinite(ax) and math.isfinite(ay)):
        raise ValueError(f"action contains NaN or infinite values: {action!r}")
    return ax, ay


class _PointEnv(TaskEnvMixin, gym.Env, EzPickle):
    """A point starting at the origin, moved by the clipped action; subclasses define the task and reward.

    Rendering (``render_mode="rgb_array"``): a square ``render_size`` x ``render_size`` uint8 RGB image of the
    plane around the origin (half-width :meth:`_view_extent`, y up) on a dark background: grey axes, the region
    the goals are drawn from (subclasses), the goal in green, the path since the last reset in blue and the point
    in orange. A point outside the view is drawn on its border. ``render()`` returns None without a render mode.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    splits = SPLITS_WITH_OOD
    render_size = 256
    """side of the rendered frames in pixels"""

    def __init__(self, max_action: float, render_mode: str | None = None) -> None:
        if not (math.isfinite(max_action) and max_action > 0):
            raise ValueError(f"max_action must be a positive number, got {max_action!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self._path: list[tuple[float, float]] = []
        self.max_action = float(max_action)
        self.action_space = spaces.Box(-self.max_action, self.max_action, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self._x = 0.0
        self._y = 0.0

    def _on_task_change(self, task: Any) -> None:
        self._goal_x, self._goal_y = self._goal_of(task)

    def _goal_of(self, task: Any) -> tuple[float, float]:
        raise NotImplementedError

    def _descriptor(self, task: Any) -> list[float]:
        return list(self._goal_of(task))

    @property
    def position(self) -> np.ndarray:
        """The point's position (a copy)."""
        return np.array([self._x, self._y])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        self._x = self._y = 0.0
        self._path = [(0.0, 0.0)]
        return np.zeros(2, dtype=np.float32), {"task": self._task}

    def _move(self, action: Any) -> float:
        """Apply the clipped action; return the distance to the goal after the move."""
        ax, ay = _check_action_pair(action)
        m = self.max_action
        self._x += -m if ax < -m else (m if ax > m else ax)
        self._y += -m if ay < -m else (m if ay > m else ay)
        if self.render_mode is not None:
            self._path.append((self._x, self._y))
        return math.hypot(self._x - self._goal_x, self._y - self._goal_y)

    # --- rendering ---------------------------------------------------------------------------------------------
    def _view_extent(self) -> float:
        """Half-width of the square of the plane that frames show (centred on the origin)."""
        raise NotImplementedError

    def _draw_task(self, draw: Any, pixel: Pixel, scale: float) -> None:
        """Draw the goal region and the goal with ``draw`` (a ``PIL.ImageDraw``); ``scale`` is pixels per unit."""
        gx, gy = pixel(self._goal_x, self._goal_y)
        draw.ellipse((gx - 6, gy - 6, gx + 6, gy + 6), fill=_GOAL)

    def render(self) -> np.ndarray | None:
        """The current frame as a ``[render_size, render_size, 3]`` uint8 array (see the class docstring)."""
        if self.render_mode != "rgb_array":
            return None
        from PIL import Image, ImageDraw

        size, extent = self.render_size, self._view_extent()
        scale = (size - 1) / (2 * extent)

        def pixel(x: float, y: float) -> tuple[float, float]:
            x, y = min(max(x, -extent), extent), min(max(y, -extent), extent)
            return (x + extent) * scale, (extent - y) * scale

        image = Image.new("RGB", (size, size), _BACKGROUND)
        draw = ImageDraw.Draw(image)
        draw.line([pixel(-extent, 0.0), pixel(extent, 0.0)], fill=_GRID)
        draw.line([pixel(0.0, -extent), pixel(0.0, extent)], fill=_GRID)
        self._draw_task(draw, pixel, scale)
        path = self._path or [(self._x, self._y)]
        if len(path) > 1:
            draw.line([pixel(x, y) for x, y in path], fill=_PATH, width=2)
        ax, ay = pixel(self._x, self._y)
        draw.ellipse((ax - 5, ay - 5, ax + 5, ay + 5), fill=_AGENT)
        return np.asarray(image)


class Navigation2DEnv(_PointEnv):
    """Dense 2D navigation (MAML, Finn et al. 2017): move a point from the origin to a goal in ``[-0.5, 0.5]^2``.

    ## Action space
    | index | meaning | range |
    | --- | --- | --- |
    | 0 | x displacement | ``Box(-max_action, max_action)``, default ±0.1 |
    | 1 | y displacement | same |

    Actions outside the box are clipped to it; an action with a NaN or infinite entry raises ``ValueError``.

    ## Observation space
    ``Box(-inf, inf, (2,))`` float32: the point's position ``(x, y)`` after the move. The goal is not observed.

    ## Rewards
    ``reward = reward_distance = -||position - goal||_2``, measured after the move. ``info["distance"]`` holds the
    distance, ``info["task"]`` the task.

    ## Starting state
    The origin, exactly (no noise).

    ## Episode end
    Never terminates; truncated at 100 steps by the registration's ``TimeLimit``. (The original rllab code also
    stopped within 0.01 of the goal; here every episode has the full horizon, which keeps batches rectangular.)
    The state is a bounded sum of finite steps, so it cannot become non-finite.

    ## Task law
    The task is :class:`Navigation2DTask` ``(goal_x, goal_y)``; the descriptor is the goal ``(x, y)``.

    * ``train`` / ``test``: uniform over the white / black cells of an 8 x 8 checkerboard on ``[-0.5, 0.5]^2``
      (cells of 0.125): disjoint by construction, both covering the whole square.
    * ``ood``: uniform over ``[-1, 1]^2`` outside ``[-0.5, 0.5]^2``.
    * ``set_task`` accepts goals in ``[-1, 1]^2`` (else :class:`TaskError`).

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``max_action`` | ``0.1`` | bound of each action coordinate |
    | ``render_mode`` | ``None`` | ``"rgb_array"``: ``render()`` returns frames |

    ## Rendering
    ``rgb_array`` frames of 256 x 256 pixels showing ``[-1.1, 1.1]^2`` (y up): the outline of the train/test goal
    square ``[-0.5, 0.5]^2``, the goal (green), the path since the reset (blue) and the point (orange). Drawn with
    Pillow: no OpenGL needed.
    """

    task_type = Navigation2DTask
    goal_low, goal_high = -0.5, 0.5
    ood_low, ood_high = -1.0, 1.0

    def __init__(self, max_action: float = 0.1, render_mode: str | None = None) -> None:
        super().__init__(max_action, render_mode)
        EzPickle.__init__(self, max_action, render_mode)
        self._init_task(Navigation2DTask(0.0, 0.0))
        self._on_task_change(self._task)

    def _validate_task(self, task: Any) -> Navigation2DTask:
        task = check_task_fields(task, Navigation2DTask, {"goal_x": (-1.0, 1.0), "goal_y": (-1.0, 1.0)})
        return Navigation2DTask(float(task.goal_x), float(task.goal_y))

    def _goal_of(self, task: Navigation2DTask) -> tuple[float, float]:
        return task.goal_x, task.goal_y

    def _view_extent(self) -> float:
        return 1.1 * self.ood_high

    def _draw_task(self, draw: Any, pixel: Pixel, scale: float) -> None:
        draw.rectangle((*pixel(self.goal_low, self.goal_high), *pixel(self.goal_high, self.goal_low)), outline=_REGION)
        super()._draw_task(draw, pixel, scale)

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[Navigation2DTask]:
        if split == "ood":
            goals = np.empty((0, 2))
            while len(goals) < n:  # acceptance 3/4
                batch = rng.uniform(self.ood_low, self.ood_high, size=(max(2 * n, 8), 2))
                goals = np.concatenate([goals, batch[np.abs(batch).max(axis=1) > self.goal_high]])
            goals = goals[:n]
        else:
            goals = checkerboard_uniform(rng, [self.goal_low] * 2, [self.goal_high] * 2, n, split)
        return [Navigation2DTask(float(x), float(y)) for x, y in goals]

    def step(self, action):
        distance = self._move(action)
        reward = -distance
        obs = np.array((self._x, self._y), dtype=np.float32)
        return obs, reward, False, False, {"reward_distance": reward, "distance": distance, "task": self._task}

    @staticmethod
    def batch_step(
        positions: np.ndarray, actions: np.ndarray, goals: np.ndarray, max_action: float = 0.1
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step of many independent points: ``positions, actions, goals`` of shape ``[..., 2]``.

        Returns ``(new_positions, rewards)`` with rewards of shape ``[...]``, exactly as :meth:`step` computes them
        (actions clipped to ``±max_action``; NaN/inf actions raise ``ValueError``). Inputs are not modified.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or infinite values")
        new_positions = np.asarray(positions, dtype=np.float64) + np.clip(actions, -max_action, max_action)
        rewards = -np.hypot(*np.moveaxis(new_positions - np.asarray(goals, dtype=np.float64), -1, 0))
        return new_positions, rewards


class SparseNavigation2DEnv(_PointEnv):
    """Sparse 2D navigation (PEARL's sparse point robot): reach a goal on the upper half of the unit circle.

    ## Action space
    | index | meaning | range |
    | --- | --- | --- |
    | 0 | x displacement | ``Box(-max_action, max_action)``, default ±0.1 |
    | 1 | y displacement | same |

    Actions outside the box are clipped to it; an action with a NaN or infinite entry raises ``ValueError``.

    ## Observation space
    ``Box(-inf, inf, (2,))`` float32: the point's position ``(x, y)`` after the move. The goal is not observed.

    ## Rewards
    With ``d`` the distance to the goal after the move, as PEARL's sparse reward (dense reward plus one inside
    the goal radius, zero outside)::

        reward = reward_goal + reward_distance
        reward_goal     = 1   if d <= goal_radius else 0
        reward_distance = -d  if d <= goal_radius else 0

    so the reward is ``1 - d`` in ``[0.8, 1]`` inside a radius of 0.2 and exactly 0 elsewhere. ``info`` also holds
    ``distance``, ``dense_reward = -d`` (diagnostics, not part of the reward) and ``success`` (``d <= goal_radius``).

    ## Starting state
    The origin, exactly (at distance ``circle_radius`` from every goal).

    ## Episode end
    Never terminates; truncated at 100 steps by the registration's ``TimeLimit``.

    ## Task law
    The task is :class:`SparseNavigation2DTask` ``(angle)``; the goal is ``circle_radius * (cos angle, sin angle)``
    and the descriptor is the goal ``(x, y)``.

    * ``train`` / ``test``: angle uniform over alternating sectors of the half circle ``[0, pi]`` cut into 8 sectors
      of 22.5 degrees (even sectors train, odd test): disjoint by construction, both spanning the half circle.
    * ``ood``: angle uniform in ``(pi, 2 pi)``, the lower half circle.
    * ``set_task`` accepts angles in ``[0, 2 pi]`` (else :class:`TaskError`).

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``max_action`` | ``0.1`` | bound of each action coordinate |
    | ``goal_radius`` | ``0.2`` | distance within which the reward is given |
    | ``circle_radius`` | ``1.0`` | radius of the circle the goals lie on |
    | ``render_mode`` | ``None`` | ``"rgb_array"``: ``render()`` returns frames |

    ## Rendering
    ``rgb_array`` frames of 256 x 256 pixels showing ``[-1.3 r, 1.3 r]^2`` for ``r = circle_radius`` (y up): the
    circle of goals, the goal (green) with its reward radius, the path since the reset (blue) and the point
    (orange). Drawn with Pillow: no OpenGL needed.
    """

    task_type = SparseNavigation2DTask
    sectors = 8

    def __init__(
        self,
        max_action: float = 0.1,
        goal_radius: float = 0.2,
        circle_radius: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_action, render_mode)
        EzPickle.__init__(self, max_action, goal_radius, circle_radius, render_mode)
        if not (math.isfinite(goal_radius) and goal_radius > 0):
            raise ValueError(f"goal_radius must be a positive number, got {goal_radius!r}")
        if not (math.isfinite(circle_radius) and circle_radius > 0):
            raise ValueError(f"circle_radius must be a positive number, got {circle_radius!r}")
        self.goal_radius = float(goal_radius)
        self.circle_radius = float(circle_radius)
        self._init_task(SparseNavigation2DTask(math.pi / 2))
        self._on_task_change(self._task)

    def _validate_task(self, task: Any) -> SparseNavigation2DTask:
        task = check_task_fields(task, SparseNavigation2DTask, {"angle": (0.0, 2 * math.pi)})
        return SparseNavigation2DTask(float(task.angle))

    def _goal_of(self, task: SparseNavigation2DTask) -> tuple[float, float]:
        return self.circle_radius * math.cos(task.angle), self.circle_radius * math.sin(task.angle)

    def _view_extent(self) -> float:
        return 1.3 * self.circle_radius

    def _draw_task(self, draw: Any, pixel: Pixel, scale: float) -> None:
        r = self.circle_radius
        draw.ellipse((*pixel(-r, r), *pixel(r, -r)), outline=_REGION)
        gx, gy = pixel(self._goal_x, self._goal_y)
        radius = self.goal_radius * scale
        draw.ellipse((gx - radius, gy - radius, gx + radius, gy + radius), outline=_GOAL)
        super()._draw_task(draw, pixel, scale)

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[SparseNavigation2DTask]:
        if split == "ood":
            angles = rng.uniform(math.pi, 2 * math.pi, size=n)
        else:
            angles = checkerboard_uniform(rng, [0.0], [math.pi], n, split, cells=self.sectors)[:, 0]
        return [SparseNavigation2DTask(float(a)) for a in angles]

    def step(self, action):
        distance = self._move(action)
        inside = distance <= self.goal_radius
        reward_goal = 1.0 if inside else 0.0
        reward_distance = -distance if inside else 0.0
        obs = np.array((self._x, self._y), dtype=np.float32)
        info = {
            "reward_goal": reward_goal,
            "reward_distance": reward_distance,
            "distance": distance,
            "dense_reward": -distance,
            "success": inside,
            "task": self._task,
        }
        return obs, reward_goal + reward_distance, False, False, info

    @staticmethod
    def batch_step(
        positions: np.ndarray,
        actions: np.ndarray,
        goals: np.ndarray,
        max_action: float = 0.1,
        goal_radius: float = 0.2,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step of many independent points (shapes ``[..., 2]``); returns ``(new_positions, rewards)``.

        Same clipping and reward as :meth:`step`; NaN/inf actions raise ``ValueError``; inputs are not modified.
        """
        new_positions, dense = Navigation2DEnv.batch_step(positions, actions, goals, max_action)
        inside = -dense <= goal_radius
        return new_positions, np.where(inside, 1.0 + dense, 0.0)
