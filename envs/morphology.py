"""Morphology task distributions: HalfCheetah and Ant whose limb lengths and thicknesses are the task.

Each task is a :class:`MorphologyTask`: one length scale and one thickness scale per limb. On a task change the
MuJoCo model is rebuilt from Gymnasium's XML asset with :class:`mujoco.MjSpec` at the next ``reset()`` (never
during an episode) and installed into the same environment object, so wrappers, vector envs and agents keep
working; observation and action shapes are the same for every morphology.

How a limb is rescaled (the same rule for both robots). A limb is one capsule moved by a joint (the torso,
the cheetah's head and the Ant's four rigid hip struts keep their shape). Its *near* end is the capsule end
closest to the limb's joint, its *far* end the other one.

* length scale ``l``: the near end stays where it is and the far end moves to ``near + l * (far - near)``, so the
  capsule's half-length becomes ``l`` times the default; every child body (the next limb, with its joint) moves
  with the far end;
* thickness scale ``t``: the capsule radius becomes ``t`` times the default;
* connection: in Gymnasium's models each child joint lies inside the rounded end of its parent capsule, a little
  off the axis end (up to 0.63 radii, the cheetah's back knee). The child joint keeps that offset from the far end
  measured in parent radii (``child = far + t * default_offset``), so at every scale it stays inside the parent
  capsule and the limbs stay connected; the default task keeps Gymnasium's positions exactly;
* the robot's root body is raised or lowered so that its lowest point at the initial pose has the same height
  as in the default robot (long legs do not start inside the floor, short legs do not start by falling).

Joint ranges, damping, stiffness, armature and actuator gears are those of the default robot.

Mass (``preserve_mass``). By default (``preserve_mass=False``) mass follows geometry: every geom keeps the
default robot's density, so a limb's mass follows its capsule's volume (about 1.5 times the mass for 1.5 times the
length, 2.25 times for 1.5 times the thickness) and the total mass changes with the morphology. This is what a
physical robot built of one material would do, and it keeps each limb's mass tied to its own size (no coupling
between limbs). With ``preserve_mass=True`` all densities are rescaled by one common factor so that the total mass
equals the default robot's (MuJoCo's ``compiler/settotalmass``); the distribution of mass over the limbs still
follows geometry. The default task (all scales 1) reproduces Gymnasium's model in both modes (HalfCheetah: 14 kg,
as its asset's ``settotalmass`` says).

Compiled models are cached per task (``model_cache_size``), so revisiting a task costs no rebuild. A cached model
is shared between visits: treat ``env.unwrapped.model`` as read-only, or pass ``model_cache_size=0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium.utils import EzPickle

from .base import SPLITS_WITH_OOD, TaskError, check_task_fields, checkerboard_uniform, task_to_dict
from .mujoco_base import MujocoTaskEnv, gymnasium_asset

__all__ = ["MorphologyTask", "HalfCheetahMorphEnv", "AntMorphEnv"]


@dataclasses.dataclass(frozen=True)
class MorphologyTask:
    """One morphology: a length scale and a thickness scale per limb (limb order: the env's ``limb_names``)."""

    length_scale: tuple[float, ...]
    thickness_scale: tuple[float, ...]

    def __post_init__(self) -> None:
        # JSON gives lists; store tuples of plain floats so tasks hash, compare and round-trip exactly
        for name in ("length_scale", "thickness_scale"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
                raise TypeError(f"{name} must be a sequence of numbers, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(float(v) for v in value))


@dataclasses.dataclass
class _Limb:
    """Default geometry of one limb, recorded once from the Gymnasium asset (positions in the limb body's frame)."""

    name: str
    geom: Any  # mujoco.MjsGeom
    uses_fromto: bool
    default_pos: np.ndarray
    default_size: np.ndarray
    default_fromto: np.ndarray
    far_is_to: bool  # for fromto capsules: whether the far end is the "to" point
    axis: np.ndarray  # far - near in the default model
    children: list[tuple[Any, np.ndarray, np.ndarray]]  # (mujoco.MjsBody, default pos, default pos - far)


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not (math.isfinite(values[0]) and math.isfinite(values[1]) and 0.0 < values[0] < values[1]):
        raise ValueError(f"{name} must be (low, high) with 0 < low < high, got {tuple(value)}")
    return values[0], values[1]


class _MorphologyEnv(MujocoTaskEnv):
    """Shared machinery: the task law, the MjSpec rebuild with its cache, and pickling with the task in force."""

    task_type = MorphologyTask
    splits = SPLITS_WITH_OOD
    xml_file: str = ""
    root_body: str = "torso"
    limb_geoms: tuple[tuple[str, str], ...] = ()  # (limb name, geom name in the Gymnasium asset)

    def _setup_morphology(
        self,
        length_scale_range: Sequence[float],
        thickness_scale_range: Sequence[float],
        ood_length_scale_range: Sequence[float],
        ood_thickness_scale_range: Sequence[float],
        preserve_mass: bool,
        model_cache_size: int,
    ) -> None:
        self.length_scale_range = _check_range("length_scale_range", length_scale_range)
        self.thickness_scale_range = _check_range("thickness_scale_range", thickness_scale_range)
        self.ood_length_scale_range = _check_range("ood_length_scale_range", ood_length_scale_range)
        self.ood_thickness_scale_range = _check_range("ood_thickness_scale_range", ood_thickness_scale_range)
        for inner, outer, name in (
            (self.length_scale_range, self.ood_length_scale_range, "length"),
            (self.thickness_scale_range, self.ood_thickness_scale_range, "thickness"),
        ):
            if not (outer[0] <= inner[0] and inner[1] <= outer[1]):
                raise ValueError(f"ood_{name}_scale_range {outer} must contain {name}_scale_range {inner}")
        if not isinstance(model_cache_size, (int, np.integer)) or model_cache_size < 0:
            raise ValueError(f"model_cache_size must be a non-negative integer, got {model_cache_size!r}")
        self.preserve_mass = bool(preserve_mass)
        self.model_cache_size = int(model_cache_size)
        self._model_cache: OrderedDict[MorphologyTask, mujoco.MjModel] = OrderedDict()
        self._load_spec()

    @property
    def limb_names(self) -> tuple[str, ...]:
        """Limb order of ``MorphologyTask.length_scale`` / ``thickness_scale`` and of the descriptor."""
        return tuple(name for name, _ in self.limb_geoms)

    @property
    def default_task(self) -> MorphologyTask:
        """The unscaled robot: Gymnasium's model."""
        ones = (1.0,) * len(self.limb_geoms)
        return MorphologyTask(length_scale=ones, thickness_scale=ones)

    # --- building models -------------------------------------------------------------------------------
    def _load_spec(self) -> None:
        spec = mujoco.MjSpec.from_file(gymnasium_asset(self.xml_file))
        reference = spec.compile()  # Gymnasium's model, exactly as its asset defines it
        self.default_total_mass = float(reference.body_mass.sum())
        if self.preserve_mass:
            spec.compiler.settotalmass = self.default_total_mass
        else:
            # mass follows geometry: drop settotalmass and fold its factor into the densities, so the default
            # morphology keeps Gymnasium's masses while other morphologies keep the default density
            spec.compiler.settotalmass = -1.0
            unscaled_mass = float(spec.compile().body_mass.sum())
            factor = self.default_total_mass / unscaled_mass
            if factor != 1.0:
                for geom in spec.geoms:
                    geom.density = geom.density * factor
        self._spec = spec
        bodies = {body.name: body for body in spec.bodies if body.name}
        self._root = bodies[self.root_body]
        self._root_default_pos = np.array(self._root.pos, dtype=np.float64)
        self._limbs: list[_Limb] = []
        for limb_name, geom_name in self.limb_geoms:
            geom = spec.geom(geom_name)
            gid = mujoco.mj_name2id(reference, mujoco.mjtObj.mjOBJ_GEOM, geom_name)
            if geom is None or gid < 0 or reference.geom_type[gid] != mujoco.mjtGeom.mjGEOM_CAPSULE:
                raise RuntimeError(f"{self.xml_file}: expected a capsule geom named {geom_name!r}")
            centre, half_length = reference.geom_pos[gid], float(reference.geom_size[gid, 1])
            direction = np.zeros(3)
            mujoco.mju_rotVecQuat(direction, np.array([0.0, 0.0, 1.0]), reference.geom_quat[gid])
            end_a, end_b = centre - half_length * direction, centre + half_length * direction
            near, far = (end_a, end_b) if np.linalg.norm(end_a) <= np.linalg.norm(end_b) else (end_b, end_a)
            fromto = np.array(geom.fromto, dtype=np.float64)
            uses_fromto = bool(np.isfinite(fromto).all())
            far_is_to = (
                bool(np.linalg.norm(fromto[3:] - far) <= np.linalg.norm(fromto[:3] - far)) if uses_fromto else True
            )
            limb_body = geom.parent
            children = []
            for child in limb_body.bodies:
                child_pos = np.array(child.pos, dtype=np.float64)
                children.append((child, child_pos, child_pos - far))
            self._limbs.append(
                _Limb(
                    name=limb_name,
                    geom=geom,
                    uses_fromto=uses_fromto,
                    default_pos=np.array(geom.pos, dtype=np.float64),
                    default_size=np.array(geom.size, dtype=np.float64),
                    default_fromto=fromto,
                    far_is_to=far_is_to,
                    axis=far - near,
                    children=children,
                )
            )
        self._default_lowest_point = self._lowest_point(reference)

    @staticmethod
    def _lowest_point(model: mujoco.MjModel) -> float:
        """Height of the robot's lowest surface point at the initial pose (geoms of the world body excluded)."""
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)
        lowest = math.inf
        for gid in range(model.ngeom):
            if model.geom_bodyid[gid] == 0:
                continue
            z, size = data.geom_xpos[gid, 2], model.geom_size[gid]
            kind = model.geom_type[gid]
            if kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
                axis_z = abs(data.geom_xmat[gid, 8])  # z component of the capsule's axis in world frame
                bottom = z - axis_z * size[1] - size[0]
            elif kind == mujoco.mjtGeom.mjGEOM_SPHERE:
                bottom = z - size[0]
            else:
                bottom = z - model.geom_rbound[gid]
            lowest = min(lowest, float(bottom))
        return lowest

    def _compile(self, task: MorphologyTask) -> mujoco.MjModel:
        """Write ``task`` into the spec (absolute values from the defaults) and compile it."""
        for limb, length, thickness in zip(self._limbs, task.length_scale, task.thickness_scale):
            shift = (length - 1.0) * limb.axis  # how far the far end moves; exactly zero at scale 1
            size = limb.default_size.copy()
            size[0] *= thickness
            if limb.uses_fromto:
                fromto = limb.default_fromto.copy()
                end = slice(3, 6) if limb.far_is_to else slice(0, 3)
                fromto[end] += shift
                limb.geom.fromto = fromto
            else:
                size[1] *= length
                limb.geom.pos = limb.default_pos + 0.5 * shift
            limb.geom.size = size
            for child, default_pos, offset in limb.children:
                child.pos = default_pos + shift + (thickness - 1.0) * offset
        self._root.pos = self._root_default_pos
        model = self._spec.compile()
        lift = self._default_lowest_point - self._lowest_point(model)
        if lift != 0.0:
            self._root.pos = self._root_default_pos + np.array([0.0, 0.0, lift])
            model = self._spec.compile()
        return model

    def _model_for(self, task: MorphologyTask) -> mujoco.MjModel:
        model = self._model_cache.get(task)
        if model is not None:
            self._model_cache.move_to_end(task)
            return model
        model = self._compile(task)
        if self.model_cache_size:
            self._model_cache[task] = model
            while len(self._model_cache) > self.model_cache_size:
                self._model_cache.popitem(last=False)
        return model

    def _on_task_change(self, task: MorphologyTask) -> None:
        self._install_model(self._model_for(task))
        self._on_morphology(task)

    def _on_morphology(self, task: MorphologyTask) -> None:
        """Hook for task-dependent constants (e.g. the Ant's healthy height range)."""

    def _install_model(self, model: mujoco.MjModel) -> None:
        super()._install_model(model)
        self._dt = self.dt

    # --- task law ------------------------------------------------------------------------------------------
    def _validate_task(self, task: Any) -> MorphologyTask:
        task = check_task_fields(
            task,
            MorphologyTask,
            {"length_scale": self.ood_length_scale_range, "thickness_scale": self.ood_thickness_scale_range},
        )
        n = len(self.limb_geoms)
        for name in ("length_scale", "thickness_scale"):
            if len(getattr(task, name)) != n:
                raise TaskError(
                    f"task field {name} has {len(getattr(task, name))} entries; "
                    f"{type(self).__name__} has {n} limbs {self.limb_names}"
                )
        return task

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[MorphologyTask]:
        limbs = len(self.limb_geoms)
        if split == "ood":
            lengths = _sample_outside(rng, self.length_scale_range, self.ood_length_scale_range, (n, limbs))
            thicknesses = _sample_outside(rng, self.thickness_scale_range, self.ood_thickness_scale_range, (n, limbs))
            scales = np.concatenate([lengths, thicknesses], axis=1)
        else:
            low = [self.length_scale_range[0]] * limbs + [self.thickness_scale_range[0]] * limbs
            high = [self.length_scale_range[1]] * limbs + [self.thickness_scale_range[1]] * limbs
            scales = checkerboard_uniform(rng, low, high, n, split)
        return [MorphologyTask(length_scale=tuple(row[:limbs]), thickness_scale=tuple(row[limbs:])) for row in scales]

    def _descriptor(self, task: MorphologyTask) -> list[float]:
        return [*task.length_scale, *task.thickness_scale]

    # --- pickling: constructor arguments plus the task in force ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_ezpickle_kwargs"] = dict(state["_ezpickle_kwargs"], task=task_to_dict(self.get_task()))
        return state


def _sample_outside(
    rng: np.random.Generator, inner: tuple[float, float], outer: tuple[float, float], shape: tuple[int, int]
) -> np.ndarray:
    """Uniform over ``[outer_low, inner_low) ∪ (inner_high, outer_high]``, independently per entry."""
    below, above = inner[0] - outer[0], outer[1] - inner[1]
    if below + above <= 0.0:
        raise ValueError(f"split 'ood' is empty: the ood range {outer} equals the training range {inner}")
    u = rng.random(shape) * (below + above)
    # u < below maps onto [outer_low, inner_low), the rest onto (inner_high, outer_high]
    return np.where(u < below, outer[0] + u, outer[1] - (u - below))


_ARGS_DOC = """
    | Argument | Default | Meaning |
    | --- | --- | --- |
    | `task` | all scales 1 | initial task (a `MorphologyTask` or a dict with its fields) |
    | `length_scale_range` | `(0.5, 1.5)` | range of every length scale for `train`/`test` |
    | `thickness_scale_range` | `(0.5, 1.5)` | range of every thickness scale for `train`/`test` |
    | `ood_length_scale_range` | `(0.25, 2.0)` | outer range for `ood` (and the range `set_task` accepts) |
    | `ood_thickness_scale_range` | `(0.25, 2.0)` | outer range for `ood` (and the range `set_task` accepts) |
    | `preserve_mass` | `False` | rescale densities so the total mass is the default robot's |
    | `model_cache_size` | `32` | compiled models kept per env (least recently used dropped; 0: no cache) |"""

_TASK_LAW_DOC = """
    ## Task law
    A task is `MorphologyTask(length_scale, thickness_scale)`, one entry per limb in `limb_names` order; the task
    descriptor is `[*length_scale, *thickness_scale]`.

    | split | law |
    | --- | --- |
    | `train` | uniform over the "white" cells of a checkerboard (8 cells per axis) over the training box |
    | `test` | the same over the "black" cells: disjoint from `train` by construction, same ranges |
    | `ood` | every scale independently uniform over the two bands of its `ood_*_range` outside the training range |

    `set_task` accepts any scale inside the `ood_*` ranges; anything else (missing fields, wrong number of limbs,
    out of range, not finite) raises `TaskError`. Morphologies take effect at the next `reset()`."""


class HalfCheetahMorphEnv(_MorphologyEnv):
    __doc__ = (
        """HalfCheetah (Gymnasium v5 dynamics and reward) whose six leg limbs have task-dependent length and thickness.

    ## Description
    The planar cheetah of Gymnasium's `HalfCheetah-v5` (`half_cheetah.xml`), rebuilt with `mujoco.MjSpec` for
    each morphology as the module docstring describes. Limbs (`limb_names`): `bthigh, bshin, bfoot, fthigh, fshin,
    ffoot`, the capsules of the bodies of the same names. Torso and head keep their shape.
"""
        + _TASK_LAW_DOC
        + """

    ## Action space
    `Box(-1, 1, (6,), float32)`: torques on `bthigh, bshin, bfoot, fthigh, fshin, ffoot` (gears 120, 90, 60, 120,
    60, 30 N m), the same for every morphology.

    ## Observation space
    `Box(-inf, inf, (17,), float64)`; with `exclude_current_positions_from_observation=False` the root x position
    is prepended (18).

    | index | observation |
    | --- | --- |
    | 0 | root z (slider, relative to the initial height) |
    | 1 | root pitch angle |
    | 2-7 | angles of bthigh, bshin, bfoot, fthigh, fshin, ffoot |
    | 8-9 | root x and z velocity |
    | 10 | root pitch angular velocity |
    | 11-16 | angular velocities of bthigh ... ffoot |

    ## Rewards
    `reward = reward_forward + reward_ctrl` (both in `info`, summing exactly to the reward):
    `reward_forward = forward_reward_weight * (x_after - x_before) / dt`,
    `reward_ctrl = -ctrl_cost_weight * sum(action**2)`.

    ## Starting state
    The morphology's initial pose (all joints at 0, root lifted so the lowest point is as high as in the default
    cheetah) plus `U(-s, s)` on positions and `s * N(0, 1)` on velocities, `s = reset_noise_scale`.

    ## Episode end
    Never terminates; `metarl/HalfCheetahMorph-v0` truncates at 200 steps. A physics blow-up truncates with
    `info["physics_unstable"] = True`.

    ## Arguments
"""
        + _ARGS_DOC
        + """
    | `forward_reward_weight` | `1.0` | weight of the forward velocity |
    | `ctrl_cost_weight` | `0.1` | weight of the squared action |
    | `reset_noise_scale` | `0.1` | `s` above |
    | `exclude_current_positions_from_observation` | `True` | drop the root x position |
    | `frame_skip` | `5` | physics steps per action (`dt = 0.05`) |
    | `render_mode`, `width`, `height` | `None`, 480, 480 | `"rgb_array"` renders the current morphology |

    ## Version history
    * v0: first version (Gymnasium `HalfCheetah-v5` reward and observation).
    """
    )

    xml_file = "half_cheetah.xml"
    limb_geoms = (
        ("bthigh", "bthigh"),
        ("bshin", "bshin"),
        ("bfoot", "bfoot"),
        ("fthigh", "fthigh"),
        ("fshin", "fshin"),
        ("ffoot", "ffoot"),
    )

    def __init__(
        self,
        task: MorphologyTask | dict | None = None,
        length_scale_range: Sequence[float] = (0.5, 1.5),
        thickness_scale_range: Sequence[float] = (0.5, 1.5),
        ood_length_scale_range: Sequence[float] = (0.25, 2.0),
        ood_thickness_scale_range: Sequence[float] = (0.25, 2.0),
        preserve_mass: bool = False,
        model_cache_size: int = 32,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        frame_skip: int = 5,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        kwargs = dict(locals())
        kwargs.pop("self")
        kwargs.pop("__class__", None)
        self.forward_reward_weight = float(forward_reward_weight)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self._obs_start = 1 if exclude_current_positions_from_observation else 0
        self._setup_morphology(
            length_scale_range,
            thickness_scale_range,
            ood_length_scale_range,
            ood_thickness_scale_range,
            preserve_mass,
            model_cache_size,
        )
        initial = self._validate_task(self.default_task if task is None else task)
        MujocoTaskEnv.__init__(
            self,
            self._model_for(initial),
            frame_skip=frame_skip,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=reset_noise_scale,
        )
        self._init_task(initial)
        EzPickle.__init__(self, **kwargs)

    def _observation_parts(self) -> tuple[np.ndarray, ...]:
        return self._qpos[self._obs_start :], self._qvel

    def _position_for_reward(self) -> float:
        return self._qpos.item(0)

    def _reward(self, action: np.ndarray, x_before: float) -> tuple[float, bool, dict[str, Any]]:
        x_after = self._qpos.item(0)
        x_velocity = (x_after - x_before) / self._dt
        forward = self.forward_reward_weight * x_velocity
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        info = {"reward_forward": forward, "reward_ctrl": ctrl, "x_position": x_after, "x_velocity": x_velocity}
        return forward + ctrl, False, info


class AntMorphEnv(_MorphologyEnv):
    __doc__ = (
        """Ant (Gymnasium v5 dynamics and reward) whose eight leg limbs have task-dependent length and thickness.

    ## Description
    The quadruped of Gymnasium's `Ant-v5` (`ant.xml`), rebuilt with `mujoco.MjSpec` for each morphology as the
    module docstring describes. Limbs (`limb_names`), named by where the leg sits (x forward, y left), with the
    Gymnasium geom each one scales:

    | limb | Gymnasium geom | joint moving it |
    | --- | --- | --- |
    | `front_left_thigh`, `front_left_shin` | `left_leg_geom`, `left_ankle_geom` | `hip_1`, `ankle_1` |
    | `back_left_thigh`, `back_left_shin` | `right_leg_geom`, `right_ankle_geom` | `hip_2`, `ankle_2` |
    | `back_right_thigh`, `back_right_shin` | `back_leg_geom`, `third_ankle_geom` | `hip_3`, `ankle_3` |
    | `front_right_thigh`, `front_right_shin` | `rightback_leg_geom`, `fourth_ankle_geom` | `hip_4`, `ankle_4` |

    The torso sphere and the four rigid hip struts (`aux_*_geom`) keep their shape.
"""
        + _TASK_LAW_DOC
        + """

    ## Action space
    `Box(-1, 1, (8,), float32)`: torques (gear 150) in Gymnasium's actuator order `hip_4, ankle_4, hip_1, ankle_1,
    hip_2, ankle_2, hip_3, ankle_3`, the same for every morphology.

    ## Observation space
    `Box(-inf, inf, (105,), float64)` (27 without contact forces; 2 more with the torso x, y position).

    | index | observation |
    | --- | --- |
    | 0 | torso z |
    | 1-4 | torso orientation quaternion (w, x, y, z) |
    | 5-12 | angles of hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3, hip_4, ankle_4 |
    | 13-15 | torso linear velocity (x, y, z) |
    | 16-18 | torso angular velocity |
    | 19-26 | joint angular velocities, same order as 5-12 |
    | 27-104 | external contact wrenches `cfrc_ext` of the 13 bodies, clipped to `contact_force_range` |

    ## Rewards
    `reward = reward_forward + reward_survive + reward_ctrl + reward_contact` (all in `info`, summing exactly):
    `reward_forward = forward_reward_weight * (x_after - x_before) / dt` (torso x velocity),
    `reward_survive = healthy_reward` while healthy, else 0,
    `reward_ctrl = -ctrl_cost_weight * sum(action**2)`,
    `reward_contact = -contact_cost_weight * sum(clip(cfrc_ext, *contact_force_range)**2)`.

    ## Starting state
    The morphology's initial pose (Gymnasium's: torso at 0.75 m, joints at 0, legs spread flat; the torso is
    lifted only if thick legs would reach below the default lowest point) plus `U(-s, s)` on positions and
    `s * N(0, 1)` on velocities, `s = reset_noise_scale`.

    ## Episode end
    Terminates when unhealthy (`terminate_when_unhealthy`): the torso height leaves the task's healthy range
    `(healthy_z_range[0], healthy_z_range[1] * max(1, mean shin length scale))`. The upper bound grows with the shins,
    the only limbs that raise the torso (the thighs swing horizontally), so a long-legged ant standing or walking
    tall is not terminated for it; the lower bound is the torso lying on the floor, which leg size does not change.
    `metarl/AntMorph-v0` truncates at 200 steps. A physics blow-up truncates with `info["physics_unstable"]`.

    ## Arguments
"""
        + _ARGS_DOC
        + """
    | `forward_reward_weight` | `1.0` | weight of the forward velocity |
    | `ctrl_cost_weight` | `0.5` | weight of the squared action |
    | `contact_cost_weight` | `5e-4` | weight of the squared clipped contact wrenches |
    | `healthy_reward` | `1.0` | reward per healthy step |
    | `terminate_when_unhealthy` | `True` | end the episode when unhealthy |
    | `healthy_z_range` | `(0.2, 1.0)` | torso height range of the default ant (see Episode end) |
    | `contact_force_range` | `(-1.0, 1.0)` | clip range of the contact wrenches |
    | `reset_noise_scale` | `0.1` | `s` above |
    | `exclude_current_positions_from_observation` | `True` | drop the torso x, y position |
    | `include_cfrc_ext_in_observation` | `True` | append the clipped contact wrenches |
    | `frame_skip` | `5` | physics steps per action (`dt = 0.05`) |
    | `render_mode`, `width`, `height` | `None`, 480, 480 | `"rgb_array"` renders the current morphology |

    ## Version history
    * v0: first version (Gymnasium `Ant-v5` reward, observation and termination).
    """
    )

    xml_file = "ant.xml"
    limb_geoms = (
        ("front_left_thigh", "left_leg_geom"),
        ("front_left_shin", "left_ankle_geom"),
        ("back_left_thigh", "right_leg_geom"),
        ("back_left_shin", "right_ankle_geom"),
        ("back_right_thigh", "back_leg_geom"),
        ("back_right_shin", "third_ankle_geom"),
        ("front_right_thigh", "rightback_leg_geom"),
        ("front_right_shin", "fourth_ankle_geom"),
    )

    def __init__(
        self,
        task: MorphologyTask | dict | None = None,
        length_scale_range: Sequence[float] = (0.5, 1.5),
        thickness_scale_range: Sequence[float] = (0.5, 1.5),
        ood_length_scale_range: Sequence[float] = (0.25, 2.0),
        ood_thickness_scale_range: Sequence[float] = (0.25, 2.0),
        preserve_mass: bool = False,
        model_cache_size: int = 32,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: Sequence[float] = (0.2, 1.0),
        contact_force_range: Sequence[float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        include_cfrc_ext_in_observation: bool = True,
        frame_skip: int = 5,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        kwargs = dict(locals())
        kwargs.pop("self")
        kwargs.pop("__class__", None)
        self.forward_reward_weight = float(forward_reward_weight)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.contact_cost_weight = float(contact_cost_weight)
        self.healthy_reward = float(healthy_reward)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.healthy_z_range = tuple(float(v) for v in healthy_z_range)
        if len(self.healthy_z_range) != 2 or not self.healthy_z_range[0] < self.healthy_z_range[1]:
            raise ValueError(f"healthy_z_range must be (low, high) with low < high, got {tuple(healthy_z_range)}")
        self.contact_force_range = tuple(float(v) for v in contact_force_range)
        if len(self.contact_force_range) != 2 or not self.contact_force_range[0] < self.contact_force_range[1]:
            raise ValueError(f"contact_force_range must be (low, high) with low < high, got {contact_force_range}")
        self._obs_start = 2 if exclude_current_positions_from_observation else 0
        self.include_cfrc_ext_in_observation = bool(include_cfrc_ext_in_observation)
        self._setup_morphology(
            length_scale_range,
            thickness_scale_range,
            ood_length_scale_range,
            ood_thickness_scale_range,
            preserve_mass,
            model_cache_size,
        )
        self._shin_index = [i for i, name in enumerate(self.limb_names) if name.endswith("_shin")]
        initial = self._validate_task(self.default_task if task is None else task)
        MujocoTaskEnv.__init__(
            self,
            self._model_for(initial),
            frame_skip=frame_skip,
            render_mode=render_mode,
            width=width,
            height=height,
            reset_noise_scale=reset_noise_scale,
        )
        self._init_task(initial)
        self._on_morphology(initial)
        EzPickle.__init__(self, **kwargs)

    def task_healthy_z_range(self, task: MorphologyTask | dict | None = None) -> tuple[float, float]:
        """The torso height range that counts as healthy for ``task`` (default: the task in force)."""
        task = self._task if task is None else self._validate_task(task)
        shin = float(np.mean([task.length_scale[i] for i in self._shin_index]))
        return self.healthy_z_range[0], self.healthy_z_range[1] * max(1.0, shin)

    def _on_morphology(self, task: MorphologyTask) -> None:
        self._healthy_z = self.task_healthy_z_range(task)

    def _get_obs(self) -> np.ndarray:
        # cfrc_ext is only filled in by the post-constraint pass, which mj_step skips without force sensors
        mujoco.mj_rnePostConstraint(self.model, self.data)
        self._contact_forces = np.clip(self.data.cfrc_ext, *self.contact_force_range)
        if self.include_cfrc_ext_in_observation:
            return np.concatenate((self.data.qpos[self._obs_start :], self.data.qvel, self._contact_forces[1:].ravel()))
        return np.concatenate((self.data.qpos[self._obs_start :], self.data.qvel))

    def _reward(self, action: np.ndarray, x_before: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        qpos = self.data.qpos
        x_velocity = (float(qpos[0]) - float(x_before[0])) / self._dt
        y_velocity = (float(qpos[1]) - float(x_before[1])) / self._dt
        z = float(qpos[2])
        healthy = self._healthy_z[0] <= z <= self._healthy_z[1]
        forward = self.forward_reward_weight * x_velocity
        survive = self.healthy_reward if healthy else 0.0
        ctrl = -self.ctrl_cost_weight * self._ctrl_norm2
        contact = -self.contact_cost_weight * float(np.square(self._contact_forces).sum())
        info = {
            "reward_forward": forward,
            "reward_survive": survive,
            "reward_ctrl": ctrl,
            "reward_contact": contact,
            "x_position": float(qpos[0]),
            "y_position": float(qpos[1]),
            "distance_from_origin": math.hypot(float(qpos[0]), float(qpos[1])),
            "x_velocity": x_velocity,
            "y_velocity": y_velocity,
        }
        return forward + survive + ctrl + contact, (not healthy) and self.terminate_when_unhealthy, info
