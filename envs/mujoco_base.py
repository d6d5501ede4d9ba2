"""A lean base for MuJoCo task environments.

Gymnasium's ``MujocoEnv`` costs 1.2-1.8x the raw ``mj_step`` it wraps on these machines; this base keeps the
per-step Python work to a minimum (one ``mj_step(model, data, nstep=frame_skip)`` call, preallocated buffers, no
per-step wrappers) so a task env costs at most ~1.15x the physics. It also carries the pieces every task env of
the suite shares:

* the task protocol (:class:`~metarl.envs.base.TaskEnvMixin`), with the task applied at ``reset``;
* input checks: a NaN or infinite action raises ``ValueError``;
* physics blow-ups: a non-finite state after a step (which MuJoCo answers with its own reset of mjData, seen
  here as time not advancing) or a non-finite reward ends the episode (``truncated=True``) with
  ``info["physics_unstable"] = True``, returns the last finite observation and zero reward, so a trajectory is
  never silently poisoned and the process never crashes;
* reward terms in ``info`` (``reward_<name>``) that sum exactly to the reward, and the task in ``info["task"]``;
* headless ``rgb_array`` rendering through ``mujoco.Renderer``.

Subclasses implement ``_get_obs()`` and ``_reward(action, x_before) -> (reward, terminated, info)`` (``info``
holds the ``reward_<name>`` terms, in the order they are added up into ``reward``, then any extra entries) and may
override ``_reset_state()``. An observation that is a concatenation of slices of ``mjData`` arrays (the planar
robots' ``(qpos[1:], qvel)``) needs only ``_observation_parts()``: the default ``_get_obs`` gathers them in one
fancy-indexing call (see :func:`data_gather`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import TaskEnvMixin, check_finite_action

# the clip ufunc itself (NumPy 2): np.clip's Python wrapper costs ~1 us more per call
_clip = getattr(getattr(np, "_core", None), "umath", np).clip
_mj_step = mujoco.mj_step
# MuJoCo's counters of its own resets after a blow-up (bad qpos, qvel or qacc)
_BLOW_UP_WARNINGS = (
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
    int(mujoco.mjtWarning.mjWARN_BADQACC),
)

GYMNASIUM_ASSETS = os.path.join(os.path.dirname(gym.__file__), "envs", "mujoco", "assets")


def gymnasium_asset(name: str) -> str:
    """Path of one of Gymnasium's MuJoCo model files (``half_cheetah.xml``, ``ant.xml``, ...)."""
    path = os.path.join(GYMNASIUM_ASSETS, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Gymnasium MuJoCo asset {name!r} not found at {path}")
    return path


def data_gather(parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(source, index)`` with ``source[index]`` equal to ``np.concatenate(parts)`` at every later moment.

    ``parts`` are 1-D, contiguous float64 views into the arrays of one ``mjData`` (``data.qpos[1:]``,
    ``data.qvel``, ...). MuJoCo allocates all of them in one arena (``mjData.buffer``), so ``source`` is a read-only
    1-D view spanning them (padding between arrays included, never indexed) and ``index`` the positions of the
    parts' elements in it: the copy is then one fancy-indexing call, ~0.1 us against ~0.5 us for
    ``np.concatenate`` of two 9-element views (2% of a HalfCheetah step). ``source`` keeps the arena alive.
    Parts that do not share one ``mjData`` owner, or are not contiguous float64, raise ``ValueError``.
    """

    def owner(array: np.ndarray) -> object:
        while isinstance(array, np.ndarray) and array.base is not None:
            array = array.base
        return array

    if not parts:
        raise ValueError("data_gather needs at least one array")
    for part in parts:
        if part.ndim != 1 or part.dtype != np.float64 or not part.flags.c_contiguous:
            raise ValueError(f"data_gather takes 1-D contiguous float64 views, got {part.dtype} {part.shape}")
    root = owner(parts[0])
    if isinstance(root, np.ndarray) or any(owner(part) is not root for part in parts):
        raise ValueError("data_gather's arrays must all be views into one mjData")
    addresses = [part.__array_interface__["data"][0] for part in parts]
    start = min(addresses)
    end = max(address + part.nbytes for address, part in zip(addresses, parts))
    if any((address - start) % 8 for address in addresses):
        raise ValueError("data_gather's arrays are not 8-byte aligned relative to each other")
    first = parts[addresses.index(start)]
    source = np.lib.stride_tricks.as_strided(first, shape=((end - start) // 8,), strides=(8,), writeable=False)
    index = np.concatenate(
        [np.arange(part.size, dtype=np.intp) + (address - start) // 8 for address, part in zip(addresses, parts)]
    )
    return source, index


class MujocoTaskEnv(TaskEnvMixin, gym.Env, EzPickle):
    """Base class: a MuJoCo model stepped ``frame_skip`` times per action, with the task protocol."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        model: mujoco.MjModel,
        frame_skip: int,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        reset_noise_scale: float = 0.1,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.frame_skip = int(frame_skip)
        self.render_mode = render_mode
        self.width, self.height = width, height
        self.reset_noise_scale = float(reset_noise_scale)
        self._renderer: mujoco.Renderer | None = None
        self._install_model(model)
        self.metadata = dict(self.metadata, render_fps=int(round(1.0 / self.dt)))

    # --- model -------------------------------------------------------------------------------------------
    def _install_model(self, model: mujoco.MjModel) -> None:
        """Adopt ``model`` (also used by morphology envs that rebuild it at reset)."""
        self.model = model
        self.data = mujoco.MjData(model)
        self._obs_gather: tuple[np.ndarray, np.ndarray] | None = None
        # data.time after the last reset or step (reading data.time costs ~0.15 us; see _finish_step)
        self._time = 0.0
        # views into self.data, cached once: each `self.data.qpos` access builds a new array view (~0.2 us)
        self._qpos, self._qvel, self._ctrl = self.data.qpos, self.data.qvel, self.data.ctrl
        self._action_shape = (model.nu,)
        self._ctrl_norm2 = 0.0
        self.init_qpos = self.data.qpos.ravel().copy()
        self.init_qvel = self.data.qvel.ravel().copy()
        low, high = model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self._ctrl_low, self._ctrl_high = low.astype(np.float64), high.astype(np.float64)
        # a step that advanced time by less than this was cut short by MuJoCo's own reset (see step)
        self._min_time_advance = (self.frame_skip - 0.5) * float(model.opt.timestep)
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        obs = self._get_obs()
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=obs.shape, dtype=np.float64)
        self._last_obs = obs

    @property
    def dt(self) -> float:
        return float(self.model.opt.timestep) * self.frame_skip

    # --- to implement ------------------------------------------------------------------------------------
    def _observation_parts(self) -> tuple[np.ndarray, ...]:
        """Views into ``self.data`` whose concatenation is the observation (for the default ``_get_obs``)."""
        raise NotImplementedError

    def _get_obs(self) -> np.ndarray:
        """A fresh array equal to ``np.concatenate(self._observation_parts())`` (the gather is built once per model);
        envs whose observation is more than slices of ``mjData`` override this."""
        gather = self._obs_gather
        if gather is None:
            gather = self._obs_gather = data_gather(self._observation_parts())
        return gather[0][gather[1]]

    def _reward(self, action: np.ndarray, x_before: Any) -> tuple[float, bool, dict[str, Any]]:
        """The reward, whether the episode terminated, and a fresh ``info`` dict.

        ``info`` starts with the reward terms ``reward_<name>``, in the order they are added up: ``reward`` must be
        exactly ``term_1 + term_2 + ...`` in that order (the suite's tests check every env: the terms then sum to
        the reward bit for bit); extra entries follow. Written out per env rather than summed by a generic loop
        over a terms dict, which cost ~0.4 us a step (2% of a HalfCheetah step).

        ``action`` is the clipped action as applied: a read-only view of ``data.ctrl``, valid during the call;
        ``self._ctrl_norm2`` holds its squared norm ``||a||²`` (a float), for the control cost.
        """
        raise NotImplementedError

    def _position_for_reward(self) -> Any:
        """What ``_reward`` receives as ``x_before`` (default: the root body's x-y position, a copy)."""
        return self._qpos[:2].copy()

    def _reset_state(self) -> None:
        """Gymnasium v5 style: qpos + U(-s, s), qvel + s * N(0, 1)."""
        s = self.reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-s, s, size=self.model.nq)
        qvel = self.init_qvel + s * self.np_random.standard_normal(self.model.nv)
        self._set_state(qpos, qvel)

    # --- gymnasium API -----------------------------------------------------------------------------------
    def _set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        if self.model.na:
            self.data.act[:] = 0
        mujoco.mj_forward(self.model, self.data)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        mujoco.mj_resetData(self.model, self.data)
        self._reset_state()
        self._time = self.data.time
        obs = self._get_obs()
        self._last_obs = obs
        return obs, {"task": self._task}

    def step(self, action):
        # Lean on purpose: numpy calls on 6-20 element arrays cost ~0.3-0.5 us each, a HalfCheetah mj_step ~20 us.
        if getattr(action, "shape", None) != self._action_shape:
            action = np.asarray(action, dtype=np.float64)
            if action.shape != self._action_shape:
                raise ValueError(f"action must have shape {self._action_shape}, got {action.shape}")
        # one dot product screens for NaN/inf (the sum of squares is then not finite; a float32 overflow of huge
        # finite entries is a false alarm the exact check then clears)
        if not action.dot(action) < math.inf:
            check_finite_action(action)
        ctrl = self._ctrl
        # copy (the caller's array is never written to) and clip in one ufunc call
        _clip(action, self._ctrl_low, self._ctrl_high, out=ctrl)
        # the control cost's ||a||² of the applied action: subclasses read it from self._ctrl_norm2
        self._ctrl_norm2 = float(ctrl.dot(ctrl))
        x_before = self._position_for_reward()
        _mj_step(self.model, self.data, self.frame_skip)
        return self._finish_step(x_before, self._time)

    def _finish_step(self, x_before: Any, time_before: float):
        """Everything ``step`` does after the physics: observation, blow-up check, reward terms, ``info``.

        Also called by :class:`~metarl.envs.vector.TaskVectorEnv`, which sets ``data.ctrl`` and ``_ctrl_norm2``
        and runs the physics itself, so both paths share this code. ``time_before`` is ``data.time`` before the
        physics as this env last saw it (``self._time``, kept at each reset and step).
        """
        obs = self._get_obs()
        # MuJoCo checks qpos, qvel and qacc for NaN or |x| > 1e10 before each of its steps and resets mjData on a
        # blow-up (time back to 0), so a blow-up shows as time not advancing by the frame_skip steps; if it did
        # advance, the state is finite (integrating checked, finite values). Time that did not advance is
        # confirmed with MuJoCo's blow-up counters (someone may have moved data.time since the last step). A
        # reward that is not finite (a NaN test that costs no NumPy call: NaN - NaN and inf - inf are NaN) also
        # ends the episode.
        time_after = self.data.time
        self._time = time_after
        if time_after < time_before + self._min_time_advance and self._physics_was_reset():
            return self._unstable_step()
        reward, terminated, info = self._reward(self._ctrl, x_before)
        if reward - reward != 0.0:
            return self._unstable_step()
        info["task"] = self._task
        self._last_obs = obs
        return obs, reward, terminated, False, info

    def _physics_was_reset(self) -> bool:
        """Whether MuJoCo reset mjData after a blow-up since the last ``mj_resetData`` (``reset()`` calls it)."""
        warnings = self.data.warning
        return any(warnings[i].number > 0 for i in _BLOW_UP_WARNINGS)

    def _unstable_step(self):
        """A non-finite state: end the episode, keep the last finite observation, flag it in ``info``."""
        info: dict[str, Any] = {"physics_unstable": True, "task": self._task}
        return self._last_obs.copy(), 0.0, False, True, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, height=self.height, width=self.width)
        camera = self._render_camera()
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def _render_camera(self) -> mujoco.MjvCamera | int | str:
        """A camera tracking the root body (body 1), at a distance scaled to the model."""
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        cam.trackbodyid = 1
        cam.distance = float(self.model.stat.extent) * 1.5
        cam.elevation = -20.0
        return cam

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class PlanarRootObservation:
    """Mixin for planar robots (HalfCheetah-like): Gymnasium v5's observation ``(qpos[1:], qvel)``, without the root
    x position, and that root x as the position the forward reward differentiates. Put it before the
    :class:`MujocoTaskEnv` subclass in the bases."""

    _qpos: np.ndarray
    _qvel: np.ndarray

    def _observation_parts(self) -> tuple[np.ndarray, ...]:
        return self._qpos[1:], self._qvel

    def _position_for_reward(self) -> float:
        return self._qpos.item(0)
