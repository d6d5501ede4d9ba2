"""MuJoCo locomotion task distributions over goals: target velocities, directions and goal positions.

The five families used to benchmark meta-RL since MAML (Finn et al., 2017) and PEARL (Rakelly et al., 2019),
rebuilt on Gymnasium's MuJoCo models (``half_cheetah.xml``, ``ant.xml``, ``humanoid.xml``) and on the lean
:class:`~metarl.envs.mujoco_base.MujocoTaskEnv` step:

| id | task | law (default) | train / test split | ood |
| --- | --- | --- | --- | --- |
| ``HalfCheetahVel-v0`` | target velocity ``v*`` | ``U[0, 3]`` (PEARL, VariBAD) | checkerboard on ``v*`` | ``U[3, 4]`` |
| ``HalfCheetahDir-v0`` | direction ``d`` | ``{-1, +1}`` (MAML) | both splits hold both tasks | none |
| ``AntDir-v0`` | direction angle ``θ`` | ``U[0, 2π)`` | alternating angular sectors | none |
| ``AntGoal-v0`` | goal ``(x, y)`` | uniform on the disk ``r <= 3`` | checkerboard over (area, angle) | annulus 3..4 |
| ``HumanoidDir-v0`` | direction angle ``θ`` | ``U[0, 2π)`` (PEARL) | alternating angular sectors | none |

(ids under ``metarl/``.)

Every env follows the task-environment contract of :mod:`metarl.envs.base`: ``sample_tasks``/``set_task``/
``get_task``/``task_descriptor``, the task echoed in ``info["task"]``, the reward split into ``info["reward_<name>"]``
terms that sum exactly to the reward, and a physics blow-up ending the episode with ``info["physics_unstable"]``.
Episodes last 200 steps through the registration's ``TimeLimit`` (PEARL's horizon).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.utils import EzPickle

from .base import (
    SPLITS,
    SPLITS_WITH_OOD,
    TaskError,
    angle_tasks_in_split,
    check_task_fields,
    checkerboard_uniform,
)
from .mujoco_base import MujocoTaskEnv, PlanarRootObservation, gymnasium_asset

__all__ = [
    "VelocityTask",
    "DirectionTask",
    "AngleTask",
    "GoalTask",
    "HalfCheetahVelEnv",
    "HalfCheetahDirEnv",
    "AntDirEnv",
    "AntGoalEnv",
    "HumanoidDirEnv",
]

TWO_PI = 2.0 * math.pi


# --- tasks ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VelocityTask:
    """A target forward velocity ``velocity`` (m/s) for :class:`HalfCheetahVelEnv`."""

    velocity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "velocity", float(self.velocity))


@dataclasses.dataclass(frozen=True)
class DirectionTask:
    """A running direction along the x axis for :class:`HalfCheetahDirEnv`: ``+1`` forward, ``-1`` backward."""

    direction: int

    def __post_init__(self) -> None:
        value = float(self.direction)
        if value not in (-1.0, 1.0):
            raise ValueError(f"direction must be -1 or +1, got {self.direction!r}")
        object.__setattr__(self, "direction", int(value))


@dataclasses.dataclass(frozen=True)
class AngleTask:
    """A running direction in the ground plane, as an angle ``angle`` in radians from the +x axis, in [0, 2π]."""

    angle: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "angle", float(self.angle))


@dataclasses.dataclass(frozen=True)
class GoalTask:
    """A goal position ``goal = (x, y)`` in metres on the ground plane for :class:`AntGoalEnv`."""

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        goal = tuple(float(v) for v in self.goal)
        if len(goal) != 2:
            raise ValueError(f"goal must have 2 coordinates (x, y), got {len(goal)}")
        object.__setattr__(self, "goal", goal)


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} must be a finite (low, high) with low < high, got {value!r}")
    return low, high


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return value


# --- HalfCheetah ----------------------------------------------------------------------------------------------
class _HalfCheetahTaskEnv(PlanarRootObservation, MujocoTaskEnv):
    """Gymnasium's HalfCheetah model and v5 observation; subclasses define the task and the forward term."""

    def __init__(
        self,
        *,
        forward_reward_weight: float,
        ctrl_cost_weight: float,
        reset_noise_scale: float,
        render_mode: str | None,
        width: int,
        height: int,
    ) -> None:
        self.forward_reward_weight = _check_weight("forward_reward_weight", forward_reward_weight)
        self.ctrl_cost_weight = _check_weight("ctrl_cost_weight", ctrl_cost_weight)
        model = mujoco.MjModel.from_xml_path(gymnasium_asset("half_cheetah.xml"))
        super().__init__(
            model,
            frame_skip=5,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=_check_weight("reset_noise_scale", reset_noise_scale),
        )
        self._dt = self.dt



_HALF_CHEETAH_SPEC = """
    ## Action space
    ``Box(-1, 1, (6,), float32)``: torques on the six hinges, in this order: back thigh, back shin, back foot,
    front thigh, front shin, front foot (actuators ``bthigh, bshin, bfoot, fthigh, fshin, ffoot``). Actions outside
    the box are clipped; the clipped action enters the control cost.

    ## Observation space
    ``Box(-inf, inf, (17,), float64)``, exactly Gymnasium's HalfCheetah-v5 observation:

    | index | observation | unit |
    | --- | --- | --- |
    | 0 | torso height ``rootz`` | m |
    | 1 | torso pitch ``rooty`` | rad |
    | 2-7 | joint angles ``bthigh, bshin, bfoot, fthigh, fshin, ffoot`` | rad |
    | 8 | torso forward velocity ``rootx`` | m/s |
    | 9 | torso vertical velocity ``rootz`` | m/s |
    | 10 | torso pitch rate ``rooty`` | rad/s |
    | 11-16 | joint angular velocities, same order as 2-7 | rad/s |

    The x position is left out (as in Gymnasium), so the policy cannot read its progress off the observation.

    ## Starting state
    Gymnasium v5: ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + s * N(0, 1)``, ``s = reset_noise_scale``.

    ## Episode end
    Never terminates; truncated after 200 steps by the registration's ``TimeLimit`` (``dt = 0.05`` s, 10 s).
    A non-finite state ends the episode early with ``truncated=True`` and ``info["physics_unstable"] = True``.
"""


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    __doc__ = (
        """HalfCheetah that must run forward at a target velocity ``v*`` (``metarl/HalfCheetahVel-v0``).

    The "cheetah-vel" benchmark of MAML (Finn et al., 2017), PEARL (Rakelly et al., 2019) and VariBAD
    (Zintgraf et al., 2020). The default law is PEARL's and VariBAD's ``v* ~ U[0, 3]``;
    ``velocity_range=(0.0, 2.0)`` gives MAML's.

    ## Reward
    ``reward = reward_forward + reward_ctrl`` with

    * ``reward_forward = -forward_reward_weight * |v - v*|``, ``v = (x_after - x_before) / dt`` the torso's forward
      velocity over the step (``x = qpos[0]``);
    * ``reward_ctrl = -ctrl_cost_weight * ||a||²`` (PEARL's ``0.5 * 1e-1``).

    ``info`` also holds ``x_velocity`` (``v``) and ``task``.
"""
        + _HALF_CHEETAH_SPEC
        + """
    ## Task law
    Task: :class:`VelocityTask` ``(velocity,)``; descriptor ``[v*]``.

    * ``train`` / ``test``: ``velocity_range`` cut into 8 equal intervals; ``train`` draws uniformly from the even
      intervals, ``test`` from the odd ones (default: ``train`` = ``[0, .375) ∪ [.75, 1.125) ∪ ...``, ``test`` =
      ``[.375, .75) ∪ ...``). Disjoint by construction, both span the whole range.
    * ``ood``: ``U[ood_velocity_range]``, by default ``(high, high + (high - low) / 3)`` = ``U[3, 4]``: faster
      than any training target.

    ``set_task`` accepts any velocity in the union of the two ranges (``TaskError`` otherwise).

    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |
    | ``velocity_range`` | ``(0.0, 3.0)`` | law of ``v*`` for train/test (``(0.0, 2.0)``: MAML) |
    | ``ood_velocity_range`` | ``None`` | law of ``v*`` for ``ood``; ``None``: ``(high, high + (high - low) / 3)`` |
    | ``forward_reward_weight`` | ``1.0`` | weight of ``|v - v*|`` |
    | ``ctrl_cost_weight`` | ``0.05`` | weight of ``||a||²`` |
    | ``reset_noise_scale`` | ``0.1`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    task_type = VelocityTask
    splits = SPLITS_WITH_OOD
    splits_disjoint = True

    def __init__(
        self,
        velocity_range: tuple[float, float] = (0.0, 3.0),
        ood_velocity_range: tuple[float, float] | None = None,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, velocity_range, ood_velocity_range, forward_reward_weight, ctrl_cost_weight, reset_noise_scale,
            render_mode, width, height,
        )  # fmt: skip
        low, high = _check_range("velocity_range", velocity_range)
        if ood_velocity_range is None:
            ood_velocity_range = (high, high + (high - low) / 3.0)
        ood_low, ood_high = _check_range("ood_velocity_range", ood_velocity_range)
        if ood_low < high and ood_high > low:
            raise ValueError(
                f"ood_velocity_range {ood_velocity_range} overlaps velocity_range {velocity_range}; it must lie outside"
            )
        self.velocity_range = (low, high)
        self.ood_velocity_range = (ood_low, ood_high)
        self._allowed = (min(low, ood_low), max(high, ood_high))
        self._target_velocity = 0.5 * (low + high)
        self._init_task(VelocityTask(self._target_velocity))
        super().__init__(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[VelocityTask]:
        if split == "ood":
            values = rng.uniform(*self.ood_velocity_range, size=n)
        else:
            values = checkerboard_uniform(rng, [self.velocity_range[0]], [self.velocity_range[1]], n, split)[:, 0]
        return [VelocityTask(float(v)) for v in values]

    def _validate_task(self, task: Any) -> VelocityTask:
        return check_task_fields(task, VelocityTask, {"velocity": self._allowed})

    def _descriptor(self, task: VelocityTask) -> Sequence[float]:
        return [task.velocity]

    def _on_task_change(self, task: VelocityTask) -> None:
        self._target_velocity = task.velocity

    def _reward(self, action: np.ndarray, x_before: float) -> tuple[float, bool, dict[str, Any]]:
        x_velocity = (self._qpos.item(0) - x_before) / self._dt
        forward = -self.forward_reward_weight * abs(x_velocity - self._target_velocity)
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        return forward + ctrl, False, {"reward_forward": forward, "reward_ctrl": ctrl, "x_velocity": x_velocity}


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    __doc__ = (
        """HalfCheetah that must run forward or backward (``metarl/HalfCheetahDir-v0``).

    The "cheetah-dir" benchmark of MAML (Finn et al., 2017) and PEARL (Rakelly et al., 2019): the direction
    ``d = +1`` rewards forward running, ``d = -1`` backward running.

    ## Reward
    ``reward = reward_forward + reward_ctrl`` with ``reward_forward = forward_reward_weight * d * v``
    (``v`` the torso's forward velocity over the step) and ``reward_ctrl = -ctrl_cost_weight * ||a||²``.
    ``info`` also holds ``x_velocity`` and ``task``.
"""
        + _HALF_CHEETAH_SPEC
        + """
    ## Task law
    Task: :class:`DirectionTask` ``(direction,)`` with ``direction`` in ``{-1, +1}``; descriptor ``[d]``.

    Only two tasks exist, so ``train`` and ``test`` both hold both of them: the MAML/ANIL evaluation protocol
    (meta-test adapts to the same two directions from fresh experience). This is the one family whose splits are
    **not** disjoint; ``splits_disjoint = False`` says so to code and tests. ``sample_tasks(n)`` returns a shuffled,
    balanced list (``n // 2`` of each direction, the odd one drawn at random), so any ``n >= 2`` holds both.
    There is no ``ood`` split.

    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |
    | ``forward_reward_weight`` | ``1.0`` | weight of ``d * v`` |
    | ``ctrl_cost_weight`` | ``0.05`` | weight of ``||a||²`` (MAML/PEARL ``0.5 * 1e-1``) |
    | ``reset_noise_scale`` | ``0.1`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    task_type = DirectionTask
    splits = SPLITS
    splits_disjoint = False

    def __init__(
        self,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, forward_reward_weight, ctrl_cost_weight, reset_noise_scale, render_mode, width, height
        )
        self._direction = 1.0
        self._init_task(DirectionTask(1))
        super().__init__(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[DirectionTask]:
        directions = np.resize(np.array([-1, 1]), n)
        if n % 2:
            directions[-1] = rng.choice([-1, 1])
        return [DirectionTask(int(d)) for d in rng.permutation(directions)]

    def _validate_task(self, task: Any) -> DirectionTask:
        return check_task_fields(task, DirectionTask, {"direction": (-1.0, 1.0)})

    def _descriptor(self, task: DirectionTask) -> Sequence[float]:
        return [float(task.direction)]

    def _on_task_change(self, task: DirectionTask) -> None:
        self._direction = float(task.direction)

    def _reward(self, action: np.ndarray, x_before: float) -> tuple[float, bool, dict[str, Any]]:
        x_velocity = (self._qpos.item(0) - x_before) / self._dt
        forward = self.forward_reward_weight * self._direction * x_velocity
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        return forward + ctrl, False, {"reward_forward": forward, "reward_ctrl": ctrl, "x_velocity": x_velocity}


# --- Ant ------------------------------------------------------------------------------------------------------
class _AntTaskEnv(MujocoTaskEnv):
    """Gymnasium's Ant model with the v5 contact-force observation and costs; subclasses define task and goal term."""

    include_xy_in_observation = False

    def __init__(
        self,
        *,
        ctrl_cost_weight: float,
        contact_cost_weight: float,
        healthy_reward: float,
        terminate_when_unhealthy: bool,
        healthy_z_range: tuple[float, float],
        contact_force_range: tuple[float, float],
        reset_noise_scale: float,
        render_mode: str | None,
        width: int,
        height: int,
    ) -> None:
        self.ctrl_cost_weight = _check_weight("ctrl_cost_weight", ctrl_cost_weight)
        self.contact_cost_weight = _check_weight("contact_cost_weight", contact_cost_weight)
        self.healthy_reward = float(healthy_reward)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.healthy_z_range = _check_range("healthy_z_range", healthy_z_range)
        self.contact_force_range = _check_range("contact_force_range", contact_force_range)
        model = mujoco.MjModel.from_xml_path(gymnasium_asset("ant.xml"))
        self._contact_forces = np.zeros((model.nbody - 1, 6))
        self._contact_flat = self._contact_forces.reshape(-1)
        self._obs_position_start = 0 if self.include_xy_in_observation else 2
        super().__init__(
            model,
            frame_skip=5,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=_check_weight("reset_noise_scale", reset_noise_scale),
        )

    def _get_obs(self) -> np.ndarray:
        data = self.data
        # contact forces are only filled in on demand since MuJoCo 2.0; Gymnasium's MujocoEnv does the same call
        mujoco.mj_rnePostConstraint(self.model, data)
        low, high = self.contact_force_range
        np.minimum(np.maximum(data.cfrc_ext[1:], low, out=self._contact_forces), high, out=self._contact_forces)
        return np.concatenate((data.qpos[self._obs_position_start :], data.qvel, self._contact_flat))

    def _common_terms(self, action: np.ndarray) -> tuple[float, float, float, bool]:
        """``(reward_ctrl, reward_contact, reward_survive, terminated)`` shared by the Ant families."""
        z = float(self.data.qpos[2])
        healthy = self.healthy_z_range[0] <= z <= self.healthy_z_range[1]
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        # world body row (always zero) excluded: same sum as Gymnasium's clip over all of cfrc_ext
        contact = -self.contact_cost_weight * float(self._contact_flat.dot(self._contact_flat))
        survive = self.healthy_reward if healthy else 0.0
        return ctrl, contact, survive, (not healthy) and self.terminate_when_unhealthy


_ANT_SPEC = """
    ## Action space
    ``Box(-1, 1, (8,), float32)``: torques on the eight hinges, in Gymnasium's order ``hip_4, ankle_4, hip_1,
    ankle_1, hip_2, ankle_2, hip_3, ankle_3`` (back right, front left, front right, back left legs). Actions
    outside the box are clipped; the clipped action enters the control cost.

    ## Starting state
    Gymnasium v5: ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + s * N(0, 1)``, ``s = reset_noise_scale``
    (torso at height 0.75).
"""

_ANT_OBS_ROWS = """
    | ``{p}``-``{p12}`` | torso height, orientation quaternion ``(w, x, y, z)``, 8 hinge angles | m, rad |
    | ``{v0}``-``{v13}`` | torso linear (3) and angular (3) velocity, 8 hinge velocities | m/s, rad/s |
    | ``{c0}``-``{c77}`` | ``clip(cfrc_ext[1:], contact_force_range)``: contact wrench on the 13 bodies | N, N m |
"""


class AntDirEnv(_AntTaskEnv):
    __doc__ = (
        """Ant that must run in a direction ``θ`` of the ground plane (``metarl/AntDir-v0``).

    The "ant-dir" benchmark. The default law, every direction ``θ ~ U[0, 2π)``, is the general one of PEARL's
    ``AntDirEnv``; ``forward_backward=True`` gives the two-task version of MAML (Finn et al., 2017) and PEARL's
    reported runs, ``θ`` in ``{0, π}`` (run along ``+x`` or ``-x``).

    ## Reward
    PEARL's ant-dir reward with Gymnasium Ant-v5 weights (which are the same):
    ``reward = reward_forward + reward_ctrl + reward_contact + reward_survive`` with

    * ``reward_forward = forward_reward_weight * (v_xy · (cos θ, sin θ))``, ``v_xy`` the torso's ground-plane
      velocity over the step (torso x-y from the free joint);
    * ``reward_ctrl = -ctrl_cost_weight * ||a||²``;
    * ``reward_contact = -contact_cost_weight * ||clip(cfrc_ext, contact_force_range)||²``;
    * ``reward_survive = healthy_reward`` while the torso height lies in ``healthy_z_range``, else 0.

    ``info`` also holds ``xy_velocity`` (a length-2 array) and ``task``.
"""
        + _ANT_SPEC
        + """
    ## Observation space
    ``Box(-inf, inf, (105,), float64)``, Gymnasium Ant-v5's default observation (x-y position left out):

    | index | observation | unit |
    | --- | --- | --- |"""
        + _ANT_OBS_ROWS.format(p=0, p12=12, v0=13, v13=26, c0=27, c77=104)
        + """
    ## Episode end
    Terminates when the torso height leaves ``healthy_z_range`` (``terminate_when_unhealthy``, as Ant-v5);
    truncated after 200 steps by the registration's ``TimeLimit`` (``dt = 0.05`` s). A non-finite state ends the
    episode early with ``truncated=True`` and ``info["physics_unstable"] = True``.

    ## Task law
    Task: :class:`AngleTask` ``(angle,)`` in radians; descriptor ``[cos θ, sin θ]``.

    * ``train`` / ``test``: the circle cut into 16 equal sectors; ``train`` draws uniformly from the even sectors,
      ``test`` from the odd ones (:func:`~metarl.envs.base.angle_tasks_in_split`). Disjoint by construction.
    * No ``ood``: the training law already covers every direction.
    * ``forward_backward=True``: only ``θ = 0`` and ``θ = π`` exist; both splits hold both (balanced, shuffled),
      the instance's ``splits_disjoint`` is ``False`` and ``set_task`` accepts only those two angles.

    ``set_task`` accepts any angle in ``[0, 2π]`` (``TaskError`` otherwise).

    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |
    | ``forward_backward`` | ``False`` | MAML's two directions ``{0, π}`` instead of ``U[0, 2π)`` |
    | ``forward_reward_weight`` | ``1.0`` | weight of the velocity along ``θ`` |
    | ``ctrl_cost_weight`` | ``0.5`` | weight of ``||a||²`` |
    | ``contact_cost_weight`` | ``5e-4`` | weight of the squared clipped contact forces |
    | ``healthy_reward`` | ``1.0`` | reward per step while healthy |
    | ``terminate_when_unhealthy`` | ``True`` | end the episode when the torso height leaves the range |
    | ``healthy_z_range`` | ``(0.2, 1.0)`` | healthy torso heights (inclusive) |
    | ``contact_force_range`` | ``(-1.0, 1.0)`` | clip range of the contact forces |
    | ``reset_noise_scale`` | ``0.1`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    task_type = AngleTask
    splits = SPLITS
    splits_disjoint = True

    def __init__(
        self,
        forward_backward: bool = False,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, forward_backward, forward_reward_weight, ctrl_cost_weight, contact_cost_weight, healthy_reward,
            terminate_when_unhealthy, healthy_z_range, contact_force_range, reset_noise_scale, render_mode, width,
            height,
        )  # fmt: skip
        self.forward_backward = bool(forward_backward)
        self.splits_disjoint = not self.forward_backward
        self.forward_reward_weight = float(forward_reward_weight)
        self._direction = (1.0, 0.0)
        self._init_task(AngleTask(0.0))
        super().__init__(
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            contact_force_range=contact_force_range,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[AngleTask]:
        if self.forward_backward:
            angles = np.resize(np.array([0.0, math.pi]), n)
            if n % 2:
                angles[-1] = rng.choice([0.0, math.pi])
            return [AngleTask(float(a)) for a in rng.permutation(angles)]
        return [AngleTask(float(a)) for a in angle_tasks_in_split(rng, n, split)]

    def _validate_task(self, task: Any) -> AngleTask:
        task = check_task_fields(task, AngleTask, {"angle": (0.0, TWO_PI)})
        if self.forward_backward and task.angle not in (0.0, math.pi):
            raise TaskError(f"with forward_backward=True the angle must be 0 or π, got {task.angle!r}")
        return task

    def _descriptor(self, task: AngleTask) -> Sequence[float]:
        return [math.cos(task.angle), math.sin(task.angle)]

    def _on_task_change(self, task: AngleTask) -> None:
        self._direction = (math.cos(task.angle), math.sin(task.angle))

    def _reward(self, action: np.ndarray, x_before: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        xy_velocity = (self.data.qpos[:2] - x_before) / self.dt
        forward = self.forward_reward_weight * float(
            xy_velocity[0] * self._direction[0] + xy_velocity[1] * self._direction[1]
        )
        ctrl, contact, survive, terminated = self._common_terms(action)
        info = {"reward_forward": forward, "reward_ctrl": ctrl, "reward_contact": contact, "reward_survive": survive,
                "xy_velocity": xy_velocity}
        return forward + ctrl + contact + survive, terminated, info


class AntGoalEnv(_AntTaskEnv):
    __doc__ = (
        """Ant that must walk to a goal position on the ground (``metarl/AntGoal-v0``).

    The "ant-goal" benchmark of PEARL (Rakelly et al., 2019) and VariBAD (Zintgraf et al., 2020): goals uniform on
    the disk of radius 3, ``r = 3 sqrt(u)``, angle ``U[0, 2π)``.

    ## Reward
    PEARL's and VariBAD's ant-goal reward: ``reward = reward_goal + reward_ctrl + reward_contact + reward_survive``

    * ``reward_goal = -goal_reward_weight * ||xy - goal||``, ``xy`` the torso position after the step; the L1
      norm by default (PEARL, VariBAD), ``distance="l2"`` for the Euclidean distance;
    * ``reward_ctrl = -ctrl_cost_weight * ||a||²`` (PEARL: ``0.1``);
    * ``reward_contact = -contact_cost_weight * ||clip(cfrc_ext, contact_force_range)||²``;
    * ``reward_survive = healthy_reward`` while the torso height lies in ``healthy_z_range``, else 0 (PEARL: no
      survive bonus, ``healthy_reward = 0``).

    ``info`` also holds ``distance`` (the chosen norm, unweighted) and ``task``.
"""
        + _ANT_SPEC
        + """
    ## Observation space
    ``Box(-inf, inf, (107,), float64)``: the torso's x-y position first (the agent must know where it is to reach
    a goal), then Gymnasium Ant-v5's observation:

    | index | observation | unit |
    | --- | --- | --- |
    | 0-1 | torso x, y | m |"""
        + _ANT_OBS_ROWS.format(p=2, p12=14, v0=15, v13=28, c0=29, c77=106)
        + """
    ## Episode end
    PEARL's ant-goal never terminates (``terminate_when_unhealthy=False``); truncated after 200 steps by the
    registration's ``TimeLimit``. A non-finite state ends the episode early with ``truncated=True`` and
    ``info["physics_unstable"] = True``.

    ## Task law
    Task: :class:`GoalTask` ``(goal,)`` with ``goal = (x, y)``; descriptor ``[x, y]``.

    * ``train`` / ``test``: a goal is ``(r, φ)`` with ``r = radius * sqrt(u)``; the unit square of ``(u, φ / 2π)``
      is cut into an 8 x 8 checkerboard. Every cell has the same area on the disk, so each split is itself uniform
      on its half of the disk; ``train`` uses the even cells, ``test`` the odd ones. Disjoint by construction.
    * ``ood``: uniform on the annulus ``radius <= r <= ood_radius`` (default 3..4), farther than any training goal.

    ``set_task`` accepts any goal with ``||goal||_2 <= ood_radius`` (``TaskError`` otherwise).

    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |
    | ``radius`` | ``3.0`` | radius of the training disk |
    | ``ood_radius`` | ``4.0`` | outer radius of the ``ood`` annulus |
    | ``distance`` | ``"l1"`` | ``"l1"`` (PEARL, VariBAD) or ``"l2"`` |
    | ``goal_reward_weight`` | ``1.0`` | weight of the distance |
    | ``ctrl_cost_weight`` | ``0.1`` | weight of ``||a||²`` |
    | ``contact_cost_weight`` | ``5e-4`` | weight of the squared clipped contact forces |
    | ``healthy_reward`` | ``0.0`` | reward per step while healthy |
    | ``terminate_when_unhealthy`` | ``False`` | end the episode when the torso height leaves the range |
    | ``healthy_z_range`` | ``(0.2, 1.0)`` | healthy torso heights (inclusive) |
    | ``contact_force_range`` | ``(-1.0, 1.0)`` | clip range of the contact forces |
    | ``reset_noise_scale`` | ``0.1`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    task_type = GoalTask
    splits = SPLITS_WITH_OOD
    splits_disjoint = True
    include_xy_in_observation = True

    def __init__(
        self,
        radius: float = 3.0,
        ood_radius: float = 4.0,
        distance: str = "l1",
        goal_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 0.0,
        terminate_when_unhealthy: bool = False,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, radius, ood_radius, distance, goal_reward_weight, ctrl_cost_weight, contact_cost_weight,
            healthy_reward, terminate_when_unhealthy, healthy_z_range, contact_force_range, reset_noise_scale,
            render_mode, width, height,
        )  # fmt: skip
        self.radius, self.ood_radius = float(radius), float(ood_radius)
        if not (math.isfinite(self.ood_radius) and 0.0 < self.radius < self.ood_radius):
            raise ValueError(f"need 0 < radius < ood_radius, both finite; got radius={radius}, ood_radius={ood_radius}")
        if distance not in ("l1", "l2"):
            raise ValueError(f"distance must be 'l1' (PEARL) or 'l2', got {distance!r}")
        self.distance = distance
        self.goal_reward_weight = _check_weight("goal_reward_weight", goal_reward_weight)
        self._goal = (0.0, 0.0)
        self._init_task(GoalTask((0.0, 0.0)))
        super().__init__(
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            contact_force_range=contact_force_range,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )

    def split_coordinates(self, goal: Sequence[float]) -> tuple[float, float]:
        """The point ``(u, φ / 2π)`` of the unit square whose checkerboard cell decides a goal's split."""
        x, y = float(goal[0]), float(goal[1])
        u = (x * x + y * y) / (self.radius * self.radius)
        return u, (math.atan2(y, x) % TWO_PI) / TWO_PI

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[GoalTask]:
        if split == "ood":
            radii = np.sqrt(rng.uniform(self.radius**2, self.ood_radius**2, size=n))
            angles = rng.uniform(0.0, TWO_PI, size=n)
        else:
            unit = checkerboard_uniform(rng, [0.0, 0.0], [1.0, 1.0], n, split)
            radii, angles = self.radius * np.sqrt(unit[:, 0]), TWO_PI * unit[:, 1]
        return [GoalTask((float(r * math.cos(a)), float(r * math.sin(a)))) for r, a in zip(radii, angles)]

    def _validate_task(self, task: Any) -> GoalTask:
        task = check_task_fields(task, GoalTask, {"goal": (-self.ood_radius, self.ood_radius)})
        if math.hypot(*task.goal) > self.ood_radius:
            raise TaskError(f"goal {task.goal} lies farther than ood_radius={self.ood_radius} from the origin")
        return task

    def _descriptor(self, task: GoalTask) -> Sequence[float]:
        return list(task.goal)

    def _on_task_change(self, task: GoalTask) -> None:
        self._goal = task.goal

    def _reward(self, action: np.ndarray, x_before: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        qpos = self.data.qpos
        dx, dy = float(qpos[0]) - self._goal[0], float(qpos[1]) - self._goal[1]
        distance = abs(dx) + abs(dy) if self.distance == "l1" else math.hypot(dx, dy)
        ctrl, contact, survive, terminated = self._common_terms(action)
        goal = -self.goal_reward_weight * distance
        info = {"reward_goal": goal, "reward_ctrl": ctrl, "reward_contact": contact, "reward_survive": survive,
                "distance": distance}
        return goal + ctrl + contact + survive, terminated, info


# --- Humanoid -------------------------------------------------------------------------------------------------
class HumanoidDirEnv(MujocoTaskEnv):
    """Humanoid that must walk in a direction ``θ`` of the ground plane (``metarl/HumanoidDir-v0``).

    The "humanoid-dir" benchmark of PEARL (Rakelly et al., 2019), on Gymnasium's ``humanoid.xml`` with the
    Humanoid-v5 observation.

    ## Reward
    PEARL's humanoid-dir reward (the weights are Humanoid-v5's too):
    ``reward = reward_forward + reward_ctrl + reward_contact + reward_survive`` with

    * ``reward_forward = forward_reward_weight * (v_xy · (cos θ, sin θ))``, ``v_xy`` the ground-plane velocity of
      the centre of mass (mass-weighted mean of the bodies' ``xipos``) over the step; ``1.25 * v`` is PEARL's
      ``0.25 * Δx / timestep`` with ``frame_skip = 5``;
    * ``reward_ctrl = -ctrl_cost_weight * ||a||²``;
    * ``reward_contact = -min(contact_cost_weight * ||cfrc_ext||², contact_cost_max)`` (the impact cost);
    * ``reward_survive = healthy_reward`` while the torso height lies strictly inside ``healthy_z_range``
      (PEARL's alive bonus), else 0.

    ``info`` also holds ``xy_velocity`` (a length-2 array) and ``task``.

    ## Action space
    ``Box(-0.4, 0.4, (17,), float32)``: torques on the abdomen (``y, z, x``), hips (``x, z, y``) and knees, right
    then left, and the shoulders (2) and elbows, right then left; Gymnasium's order. Clipped actions enter the
    control cost.

    ## Observation space
    ``Box(-inf, inf, (348,), float64)``, Gymnasium Humanoid-v5's default observation:

    | index | observation | unit |
    | --- | --- | --- |
    | 0-21 | ``qpos[2:]``: torso height, orientation quaternion, 17 hinge angles | m, rad |
    | 22-44 | ``qvel``: torso linear and angular velocity, 17 hinge velocities | m/s, rad/s |
    | 45-174 | ``cinert[1:]``: com-based inertia and mass of the 13 bodies | kg m², kg |
    | 175-252 | ``cvel[1:]``: com-based velocity of the 13 bodies | rad/s, m/s |
    | 253-269 | ``qfrc_actuator[6:]``: actuator forces on the 17 hinges | N m |
    | 270-347 | ``cfrc_ext[1:]``: external contact wrench of the 13 bodies | N, N m |

    ## Starting state
    Gymnasium Humanoid-v5: ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + U(-s, s)``, ``s = 0.01``.

    ## Episode end
    Terminates when the torso height leaves ``(1.0, 2.0)`` (PEARL, Humanoid-v5); truncated after 200 steps by the
    registration's ``TimeLimit`` (``dt = 0.015`` s). A non-finite state ends the episode early with
    ``truncated=True`` and ``info["physics_unstable"] = True``.

    ## Task law
    Task: :class:`AngleTask` ``(angle,)`` in radians; descriptor ``[cos θ, sin θ]``. ``θ ~ U[0, 2π)`` (PEARL).

    * ``train`` / ``test``: the circle cut into 16 equal sectors; ``train`` draws uniformly from the even sectors,
      ``test`` from the odd ones. Disjoint by construction.
    * No ``ood``: the training law already covers every direction.

    ``set_task`` accepts any angle in ``[0, 2π]`` (``TaskError`` otherwise).

    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |
    | ``forward_reward_weight`` | ``1.25`` | weight of the velocity along ``θ`` |
    | ``ctrl_cost_weight`` | ``0.1`` | weight of ``||a||²`` |
    | ``contact_cost_weight`` | ``5e-7`` | weight of ``||cfrc_ext||²`` |
    | ``contact_cost_max`` | ``10.0`` | cap on the contact cost |
    | ``healthy_reward`` | ``5.0`` | alive bonus per step |
    | ``terminate_when_unhealthy`` | ``True`` | end the episode when the torso height leaves the range |
    | ``healthy_z_range`` | ``(1.0, 2.0)`` | healthy torso heights (exclusive) |
    | ``reset_noise_scale`` | ``0.01`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """

    task_type = AngleTask
    splits = SPLITS
    splits_disjoint = True

    def __init__(
        self,
        forward_reward_weight: float = 1.25,
        ctrl_cost_weight: float = 0.1,
        contact_cost_weight: float = 5e-7,
        contact_cost_max: float = 10.0,
        healthy_reward: float = 5.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (1.0, 2.0),
        reset_noise_scale: float = 1e-2,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, forward_reward_weight, ctrl_cost_weight, contact_cost_weight, contact_cost_max, healthy_reward,
            terminate_when_unhealthy, healthy_z_range, reset_noise_scale, render_mode, width, height,
        )  # fmt: skip
        self.forward_reward_weight = float(forward_reward_weight)
        self.ctrl_cost_weight = _check_weight("ctrl_cost_weight", ctrl_cost_weight)
        self.contact_cost_weight = _check_weight("contact_cost_weight", contact_cost_weight)
        self.contact_cost_max = _check_weight("contact_cost_max", contact_cost_max)
        self.healthy_reward = float(healthy_reward)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.healthy_z_range = _check_range("healthy_z_range", healthy_z_range)
        self._direction = (1.0, 0.0)
        self._init_task(AngleTask(0.0))
        model = mujoco.MjModel.from_xml_path(gymnasium_asset("humanoid.xml"))
        self._mass_weights = model.body_mass / model.body_mass.sum()
        super().__init__(
            model,
            frame_skip=5,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=_check_weight("reset_noise_scale", reset_noise_scale),
        )

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[AngleTask]:
        return [AngleTask(float(a)) for a in angle_tasks_in_split(rng, n, split)]

    def _validate_task(self, task: Any) -> AngleTask:
        return check_task_fields(task, AngleTask, {"angle": (0.0, TWO_PI)})

    def _descriptor(self, task: AngleTask) -> Sequence[float]:
        return [math.cos(task.angle), math.sin(task.angle)]

    def _on_task_change(self, task: AngleTask) -> None:
        self._direction = (math.cos(task.angle), math.sin(task.angle))

    def _reset_state(self) -> None:
        s = self.reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-s, s, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(-s, s, size=self.model.nv)
        self._set_state(qpos, qvel)

    def _get_obs(self) -> np.ndarray:
        data = self.data
        mujoco.mj_rnePostConstraint(self.model, data)
        return np.concatenate(
            (
                data.qpos[2:],
                data.qvel,
                data.cinert[1:].ravel(),
                data.cvel[1:].ravel(),
                data.qfrc_actuator[6:],
                data.cfrc_ext[1:].ravel(),
            )
        )

    def _position_for_reward(self) -> np.ndarray:
        return self._mass_weights @ self.data.xipos

    def _reward(self, action: np.ndarray, x_before: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        data = self.data
        xy_velocity = (self._mass_weights @ data.xipos - x_before)[:2] / self.dt
        forward = self.forward_reward_weight * float(
            xy_velocity[0] * self._direction[0] + xy_velocity[1] * self._direction[1]
        )
        z = float(data.qpos[2])
        healthy = self.healthy_z_range[0] < z < self.healthy_z_range[1]
        forces = data.cfrc_ext.reshape(-1)
        contact = -min(self.contact_cost_weight * float(forces.dot(forces)), self.contact_cost_max)
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        survive = self.healthy_reward if healthy else 0.0
        info = {"reward_forward": forward, "reward_ctrl": ctrl, "reward_contact": contact, "reward_survive": survive,
                "xy_velocity": xy_velocity}
        return forward + ctrl + contact + survive, (not healthy) and self.terminate_when_unhealthy, info
