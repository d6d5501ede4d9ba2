"""MuJoCo dynamics task distributions: HalfCheetah, Hopper and Walker2d with randomised physical parameters.

The "rand-params" benchmarks of PEARL (Rakelly et al., 2019) and VariBAD (Zintgraf et al., 2020), which both use
the ``rand_param_envs`` package: every task rescales the model's physical parameters element-wise,

| parameter group | what it holds | scale of one element |
| --- | --- | --- |
| ``body_mass`` | mass of each body | ``1.5 ** u`` |
| ``body_inertia`` | the 3 principal inertias of each body | ``1.5 ** u`` |
| ``geom_friction`` | sliding, torsional and rolling friction of each geom (floor included) | ``1.5 ** u`` |
| ``dof_damping`` | damping of each degree of freedom | ``1.3 ** u`` |

with one exponent ``u ~ U(-3, 3)`` per element, drawn independently (``log_scale_limit = 3``). The world body
(mass and inertia 0, so any scale leaves it unchanged) is left out of the exponents; everything else is as in the
references. The reward, observation and termination are Gymnasium's v5 ones for each robot.

A task is the tuple of exponents (:class:`RandParamsTask`); the scaled values are written into ``self.model``
from the saved defaults when the task takes effect at ``reset``, so setting tasks never compounds scales. Like the
references, derived constants of the model (``mj_setConst``) are not recomputed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.utils import EzPickle

from .base import SPLITS_WITH_OOD, TaskError, check_task_fields, checkerboard_uniform
from .mujoco_base import MujocoTaskEnv, PlanarRootObservation, gymnasium_asset

__all__ = [
    "PARAMETER_GROUPS",
    "RandParamsTask",
    "RandParamsEnv",
    "HalfCheetahRandParamsEnv",
    "HopperRandParamsEnv",
    "Walker2dRandParamsEnv",
]

PARAMETER_GROUPS: tuple[str, ...] = ("body_mass", "body_inertia", "geom_friction", "dof_damping")
"""The parameter groups a task may rescale, in the order of the task fields and of the descriptor."""

SCALE_BASES: dict[str, float] = {"body_mass": 1.5, "body_inertia": 1.5, "geom_friction": 1.5, "dof_damping": 1.3}
"""The base ``b`` of each group's scale ``b ** u`` (``rand_param_envs``)."""


@dataclasses.dataclass(frozen=True)
class RandParamsTask:
    """The exponents ``u`` of one dynamics task, one flat tuple per parameter group.

    ``body_mass`` holds one exponent per body (world excluded), ``body_inertia`` three per body (row-major),
    ``geom_friction`` three per geom (row-major), ``dof_damping`` one per degree of freedom. A group the
    environment does not vary holds the empty tuple.
    """

    body_mass: tuple[float, ...] = ()
    body_inertia: tuple[float, ...] = ()
    geom_friction: tuple[float, ...] = ()
    dof_damping: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in PARAMETER_GROUPS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
                raise TypeError(f"{name} must be a sequence of numbers, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)))


class RandParamsEnv(MujocoTaskEnv):
    """Base of the rand-params environments: exponent tasks, their splits, and writing scales into the model.

    Subclasses pass the model and implement ``_get_obs`` and ``_reward`` (Gymnasium v5 formulas).
    See the module docstring for the task law.
    """

    task_type = RandParamsTask
    splits = SPLITS_WITH_OOD
    splits_disjoint = True

    def __init__(
        self,
        model: mujoco.MjModel,
        frame_skip: int,
        *,
        rand_params: Sequence[str],
        log_scale_limit: float,
        ood_log_scale_limit: float,
        reset_noise_scale: float,
        render_mode: str | None,
        width: int,
        height: int,
    ) -> None:
        if isinstance(rand_params, str):
            rand_params = (rand_params,)
        unknown = [p for p in rand_params if p not in PARAMETER_GROUPS]
        if unknown or not rand_params:
            raise ValueError(f"rand_params must be a non-empty subset of {PARAMETER_GROUPS}, got {tuple(rand_params)}")
        self.rand_params = tuple(p for p in PARAMETER_GROUPS if p in rand_params)
        self.log_scale_limit, self.ood_log_scale_limit = float(log_scale_limit), float(ood_log_scale_limit)
        if not (0.0 < self.log_scale_limit < self.ood_log_scale_limit < math.inf):
            raise ValueError(
                "need 0 < log_scale_limit < ood_log_scale_limit (finite), got "
                f"{log_scale_limit} and {ood_log_scale_limit}"
            )
        # model arrays a task rescales (views: writing into them changes the model), and their saved defaults
        self._targets = {
            "body_mass": model.body_mass[1:],
            "body_inertia": model.body_inertia[1:],
            "geom_friction": model.geom_friction,
            "dof_damping": model.dof_damping,
        }
        self._defaults = {name: view.copy() for name, view in self._targets.items()}
        self.group_sizes = {name: view.size if name in self.rand_params else 0 for name, view in self._targets.items()}
        self._init_task(self.default_task())
        super().__init__(
            model,
            frame_skip=frame_skip,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=reset_noise_scale,
        )
        self._dt = self.dt

    # --- task law -----------------------------------------------------------------------------------------
    @property
    def default_parameters(self) -> dict[str, np.ndarray]:
        """Copies of the model's unscaled parameters (world body excluded), keyed by group."""
        return {name: value.copy() for name, value in self._defaults.items()}

    def default_task(self) -> RandParamsTask:
        """The task with every exponent 0: the unmodified Gymnasium model."""
        return self._task_from_vector(np.zeros(sum(self.group_sizes.values())))

    def _task_from_vector(self, exponents: np.ndarray) -> RandParamsTask:
        fields, start = {}, 0
        for name in PARAMETER_GROUPS:
            size = self.group_sizes[name]
            fields[name] = tuple(float(v) for v in exponents[start : start + size])
            start += size
        return RandParamsTask(**fields)

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[RandParamsTask]:
        dim = sum(self.group_sizes.values())
        if split == "ood":
            # |u| in (limit, ood_limit]: every element scaled beyond anything seen in training
            width = self.ood_log_scale_limit - self.log_scale_limit
            magnitude = self.ood_log_scale_limit - rng.uniform(0.0, width, size=(n, dim))
            exponents = np.where(rng.random((n, dim)) < 0.5, -magnitude, magnitude)
        else:
            limit = np.full(dim, self.log_scale_limit)
            exponents = checkerboard_uniform(rng, -limit, limit, n, split)
        return [self._task_from_vector(row) for row in exponents]

    def _validate_task(self, task: Any) -> RandParamsTask:
        limit = self.ood_log_scale_limit
        task = check_task_fields(task, RandParamsTask, {name: (-limit, limit) for name in PARAMETER_GROUPS})
        for name in PARAMETER_GROUPS:
            got, want = len(getattr(task, name)), self.group_sizes[name]
            if got != want:
                if want == 0:
                    raise TaskError(f"task varies {name}, which this env keeps fixed (rand_params={self.rand_params})")
                raise TaskError(f"task field {name} has {got} exponents; this model needs {want}")
        return task

    def _descriptor(self, task: RandParamsTask) -> Sequence[float]:
        return [u for name in PARAMETER_GROUPS for u in getattr(task, name)]

    def _on_task_change(self, task: RandParamsTask) -> None:
        for name in self.rand_params:
            default = self._defaults[name]
            exponents = np.asarray(getattr(task, name)).reshape(default.shape)
            self._targets[name][...] = default * SCALE_BASES[name] ** exponents


_ARGUMENT_ROWS = """
    | ``rand_params`` | all four groups | which of ``body_mass, body_inertia, geom_friction, dof_damping`` vary |
    | ``log_scale_limit`` | ``3.0`` | exponents of ``train``/``test`` lie in ``[-limit, limit]`` |
    | ``ood_log_scale_limit`` | ``3.5`` | ``ood`` exponents have ``|u|`` in ``(limit, ood_limit]`` |"""

_TASK_LAW = """
    ## Task law
    Task: :class:`RandParamsTask`, the exponents ``u`` of every varied element (``body_mass``: {mass}, one per body;
    ``body_inertia``: {inertia}, 3 per body; ``geom_friction``: {friction}, 3 per geom; ``dof_damping``: {damping},
    one per dof; {total} in all by default); the descriptor is their concatenation in that order (fixed length,
    ``task_descriptor_dim``). The varied model values are ``default * 1.5 ** u`` (``1.3 ** u`` for damping),
    written at ``reset``.

    * ``train`` / ``test``: the box ``[-3, 3]^d`` cut into 8 cells per exponent; a task's split is the parity
      of the sum of its cell indices (even: ``train``, odd: ``test``), each split uniform over its cells.
      Disjoint by construction (:func:`~metarl.envs.base.checkerboard_split_of` on the descriptor tells which).
    * ``ood``: every exponent with ``|u|`` uniform in ``(3, 3.5]`` and a random sign: every element scaled
      further than in any training task.

    ``set_task`` accepts exponents in ``[-3.5, 3.5]`` with the right number per group (``TaskError`` otherwise).
"""


class HalfCheetahRandParamsEnv(PlanarRootObservation, RandParamsEnv):
    __doc__ = (
        """HalfCheetah with randomised masses, inertias, frictions and damping (``metarl/HalfCheetahRandParams-v0``).

    ## Reward
    Gymnasium HalfCheetah-v5: ``reward = reward_forward + reward_ctrl`` with
    ``reward_forward = forward_reward_weight * v`` (``v = Δqpos[0] / dt``, the torso's forward velocity) and
    ``reward_ctrl = -ctrl_cost_weight * ||a||²``. ``info`` also holds ``x_velocity`` and ``task``.

    ## Action space
    ``Box(-1, 1, (6,), float32)``: torques on ``bthigh, bshin, bfoot, fthigh, fshin, ffoot``; actions are clipped.

    ## Observation space
    ``Box(-inf, inf, (17,), float64)``, Gymnasium HalfCheetah-v5's: ``qpos[1:]`` (torso height and pitch, 6 joint
    angles) then ``qvel`` (torso x, z and pitch velocity, 6 joint velocities).

    ## Starting state
    ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + s * N(0, 1)``, ``s = reset_noise_scale``.

    ## Episode end
    Never terminates; truncated after 200 steps by the registration's ``TimeLimit`` (``dt = 0.05`` s). A non-finite
    state ends the episode early with ``truncated=True`` and ``info["physics_unstable"] = True``.
"""
        + _TASK_LAW.format(mass=7, inertia=21, friction=27, damping=9, total=64)
        + """
    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |"""
        + _ARGUMENT_ROWS
        + """
    | ``forward_reward_weight`` | ``1.0`` | weight of the forward velocity |
    | ``ctrl_cost_weight`` | ``0.1`` | weight of ``||a||²`` |
    | ``reset_noise_scale`` | ``0.1`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    def __init__(
        self,
        rand_params: Sequence[str] = PARAMETER_GROUPS,
        log_scale_limit: float = 3.0,
        ood_log_scale_limit: float = 3.5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, rand_params, log_scale_limit, ood_log_scale_limit, forward_reward_weight, ctrl_cost_weight,
            reset_noise_scale, render_mode, width, height,
        )  # fmt: skip
        self.forward_reward_weight = float(forward_reward_weight)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        super().__init__(
            mujoco.MjModel.from_xml_path(gymnasium_asset("half_cheetah.xml")),
            frame_skip=5,
            rand_params=rand_params,
            log_scale_limit=log_scale_limit,
            ood_log_scale_limit=ood_log_scale_limit,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )


    def _reward(self, action: np.ndarray, x_before: float) -> tuple[float, bool, dict[str, Any]]:
        x_velocity = (self._qpos.item(0) - x_before) / self._dt
        forward = self.forward_reward_weight * x_velocity
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        return forward + ctrl, False, {"reward_forward": forward, "reward_ctrl": ctrl, "x_velocity": x_velocity}


class _PlanarWalkerRandParamsEnv(RandParamsEnv):
    """Hopper and Walker2d: v5 observation (``qpos[1:]``, clipped ``qvel``), forward + healthy - ctrl reward."""

    def __init__(
        self,
        model: mujoco.MjModel,
        *,
        forward_reward_weight: float,
        ctrl_cost_weight: float,
        healthy_reward: float,
        terminate_when_unhealthy: bool,
        healthy_z_range: tuple[float, float],
        healthy_angle_range: tuple[float, float],
        healthy_state_range: tuple[float, float] | None,
        **kwargs: Any,
    ) -> None:
        self.forward_reward_weight = float(forward_reward_weight)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.healthy_reward = float(healthy_reward)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.healthy_z_range = tuple(float(v) for v in healthy_z_range)
        self.healthy_angle_range = tuple(float(v) for v in healthy_angle_range)
        self.healthy_state_range = None if healthy_state_range is None else tuple(float(v) for v in healthy_state_range)
        self._nq = model.nq
        super().__init__(model, frame_skip=4, **kwargs)

    def _reset_state(self) -> None:
        s = self.reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-s, s, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(-s, s, size=self.model.nv)
        self._set_state(qpos, qvel)

    def _observation_parts(self) -> tuple[np.ndarray, ...]:
        return self._qpos[1:], self._qvel

    def _get_obs(self) -> np.ndarray:
        obs = super()._get_obs()
        velocity = obs[self._nq - 1 :]
        np.maximum(velocity, -10.0, out=velocity)
        np.minimum(velocity, 10.0, out=velocity)
        return obs

    def _position_for_reward(self) -> float:
        return self._qpos.item(0)

    def is_healthy(self) -> bool:
        """Gymnasium v5: torso height and pitch inside their open ranges (Hopper: every state entry too)."""
        qpos = self._qpos
        z, angle = qpos.item(1), qpos.item(2)
        if not (self.healthy_z_range[0] < z < self.healthy_z_range[1]):
            return False
        if not (self.healthy_angle_range[0] < angle < self.healthy_angle_range[1]):
            return False
        if self.healthy_state_range is not None:
            low, high = self.healthy_state_range
            rest, qvel = qpos[2:], self._qvel
            return bool(low < rest.min() and rest.max() < high and low < qvel.min() and qvel.max() < high)
        return True

    def _reward(self, action: np.ndarray, x_before: float) -> tuple[float, bool, dict[str, Any]]:
        x_velocity = (self._qpos.item(0) - x_before) / self._dt
        healthy = self.is_healthy()
        forward = self.forward_reward_weight * x_velocity
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        survive = self.healthy_reward if healthy else 0.0
        info = {"reward_forward": forward, "reward_ctrl": ctrl, "reward_survive": survive, "x_velocity": x_velocity}
        return forward + ctrl + survive, (not healthy) and self.terminate_when_unhealthy, info


_PLANAR_SPEC = """
    ## Reward
    Gymnasium {name}-v5: ``reward = reward_forward + reward_ctrl + reward_survive`` with
    ``reward_forward = forward_reward_weight * v`` (``v = Δqpos[0] / dt``), ``reward_ctrl = -ctrl_cost_weight *
    ||a||²`` and ``reward_survive = healthy_reward`` while healthy, else 0. ``info`` also holds ``x_velocity``
    and ``task``.

    ## Action space
    ``Box(-1, 1, ({nu},), float32)``: torques on {joints}; actions are clipped.

    ## Observation space
    ``Box(-inf, inf, ({nobs},), float64)``, Gymnasium {name}-v5's: ``qpos[1:]`` (torso height, torso pitch,
    joint angles) then ``clip(qvel, -10, 10)`` (torso x, z and pitch velocity, joint velocities).

    ## Starting state
    ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + U(-s, s)``, ``s = reset_noise_scale``.

    ## Episode end
    Healthy while {healthy}; terminates when unhealthy (``terminate_when_unhealthy``); truncated after 200 steps
    by the registration's ``TimeLimit`` (``dt = 0.008`` s). A non-finite state ends the episode early with
    ``truncated=True`` and ``info["physics_unstable"] = True``.
"""


class HopperRandParamsEnv(_PlanarWalkerRandParamsEnv):
    __doc__ = (
        """Hopper with randomised masses, inertias, frictions and damping (``metarl/HopperRandParams-v0``)."""
        + "\n"
        + _PLANAR_SPEC.format(
            name="Hopper",
            nu=3,
            nobs=11,
            joints="the thigh, leg and foot hinges",
            healthy="``z = qpos[1]`` in ``healthy_z_range``, the pitch ``qpos[2]`` in ``healthy_angle_range`` "
            "and every entry of ``qpos[2:]`` and ``qvel`` in ``healthy_state_range`` (all open intervals)",
        )
        + _TASK_LAW.format(mass=4, inertia=12, friction=15, damping=6, total=37)
        + """
    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |"""
        + _ARGUMENT_ROWS
        + """
    | ``forward_reward_weight`` | ``1.0`` | weight of the forward velocity |
    | ``ctrl_cost_weight`` | ``1e-3`` | weight of ``||a||²`` |
    | ``healthy_reward`` | ``1.0`` | reward per healthy step |
    | ``terminate_when_unhealthy`` | ``True`` | end the episode when unhealthy |
    | ``healthy_state_range`` | ``(-100, 100)`` | range of ``qpos[2:]`` and ``qvel`` |
    | ``healthy_z_range`` | ``(0.7, inf)`` | range of the torso height |
    | ``healthy_angle_range`` | ``(-0.2, 0.2)`` | range of the torso pitch |
    | ``reset_noise_scale`` | ``5e-3`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    def __init__(
        self,
        rand_params: Sequence[str] = PARAMETER_GROUPS,
        log_scale_limit: float = 3.0,
        ood_log_scale_limit: float = 3.5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 1e-3,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_state_range: tuple[float, float] = (-100.0, 100.0),
        healthy_z_range: tuple[float, float] = (0.7, float("inf")),
        healthy_angle_range: tuple[float, float] = (-0.2, 0.2),
        reset_noise_scale: float = 5e-3,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, rand_params, log_scale_limit, ood_log_scale_limit, forward_reward_weight, ctrl_cost_weight,
            healthy_reward, terminate_when_unhealthy, healthy_state_range, healthy_z_range, healthy_angle_range,
            reset_noise_scale, render_mode, width, height,
        )  # fmt: skip
        super().__init__(
            mujoco.MjModel.from_xml_path(gymnasium_asset("hopper.xml")),
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            healthy_angle_range=healthy_angle_range,
            healthy_state_range=healthy_state_range,
            rand_params=rand_params,
            log_scale_limit=log_scale_limit,
            ood_log_scale_limit=ood_log_scale_limit,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )


class Walker2dRandParamsEnv(_PlanarWalkerRandParamsEnv):
    __doc__ = (
        """Walker2d with randomised masses, inertias, frictions and damping (``metarl/Walker2dRandParams-v0``).

    Uses Gymnasium's ``walker2d_v5.xml`` (both feet with friction 0.9, the v5 fix of the v4 model's asymmetry)."""
        + "\n"
        + _PLANAR_SPEC.format(
            name="Walker2d",
            nu=6,
            nobs=17,
            joints="the right thigh, leg and foot hinges, then the left ones",
            healthy="``z = qpos[1]`` in ``healthy_z_range`` and the pitch ``qpos[2]`` in ``healthy_angle_range`` "
            "(open intervals)",
        )
        + _TASK_LAW.format(mass=7, inertia=21, friction=24, damping=9, total=61)
        + """
    ## Arguments
    | argument | default | meaning |
    | --- | --- | --- |"""
        + _ARGUMENT_ROWS
        + """
    | ``forward_reward_weight`` | ``1.0`` | weight of the forward velocity |
    | ``ctrl_cost_weight`` | ``1e-3`` | weight of ``||a||²`` |
    | ``healthy_reward`` | ``1.0`` | reward per healthy step |
    | ``terminate_when_unhealthy`` | ``True`` | end the episode when unhealthy |
    | ``healthy_z_range`` | ``(0.8, 2.0)`` | range of the torso height |
    | ``healthy_angle_range`` | ``(-1.0, 1.0)`` | range of the torso pitch |
    | ``reset_noise_scale`` | ``5e-3`` | ``s`` of the starting state |
    | ``render_mode``, ``width``, ``height`` | ``None``, 480, 480 | ``"rgb_array"`` rendering |
    """
    )

    def __init__(
        self,
        rand_params: Sequence[str] = PARAMETER_GROUPS,
        log_scale_limit: float = 3.0,
        ood_log_scale_limit: float = 3.5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 1e-3,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.8, 2.0),
        healthy_angle_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 5e-3,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        EzPickle.__init__(
            self, rand_params, log_scale_limit, ood_log_scale_limit, forward_reward_weight, ctrl_cost_weight,
            healthy_reward, terminate_when_unhealthy, healthy_z_range, healthy_angle_range, reset_noise_scale,
            render_mode, width, height,
        )  # fmt: skip
        super().__init__(
            mujoco.MjModel.from_xml_path(gymnasium_asset("walker2d_v5.xml")),
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            healthy_angle_range=healthy_angle_range,
            healthy_state_range=None,
            rand_params=rand_params,
            log_scale_limit=log_scale_limit,
            ood_log_scale_limit=ood_log_scale_limit,
            reset_noise_scale=reset_noise_scale,
            render_mode=render_mode,
            width=width,
            height=height,
        )
