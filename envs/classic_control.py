"""Gymnasium's classic-control environments with their physical constants as the task (contextual RL, as CARL).

Each environment subclasses Gymnasium's own (so dynamics, observations, rendering and rewards are Gymnasium's) and
adds the task protocol through :class:`~metarl.envs.wrappers.AttributeTaskMixin`: a task is a
:class:`~metarl.envs.wrappers.ContextTask` of constant values, written to the env at ``reset`` and followed by a
recomputation of derived constants (CartPole's ``total_mass``, ...).

**Task law (all four).** Every varied constant ``c`` with Gymnasium value ``c0`` is drawn log-uniformly from
``[lo * c0, hi * c0]`` with ``(lo, hi) = scale_range = (0.5, 2.0)``: ``train``/``test`` are the two colours of a
checkerboard (8 cells per constant, in log space) over that box, disjoint by construction; ``ood`` is the box
``ood_factor = 2`` times as wide in log space, i.e. ``[0.25 c0, 4 c0]``, minus the training box. ``set_task``
accepts values in ``[0.25 c0, 4 c0]``. ``varied_constants`` picks a subset (the rest keep Gymnasium's values). The
task descriptor is the vector of values (in the order of ``varied_constants``).

**Common behaviour.** ``info["task"]`` echoes the task; ``info["reward_<name>"]`` terms sum exactly to the reward
(equal to Gymnasium's up to float rounding); invalid actions (NaN, out of a ``Discrete`` space, wrong size) raise
``ValueError``; a non-finite state ends the episode (``truncated=True``, ``info["physics_unstable"] = True``,
reward 0, last finite observation). Episode lengths come from the registration (``TimeLimit``): CartPole 500,
Pendulum 200, MountainCarContinuous 999, Acrobot 500 — as Gymnasium's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv, angle_normalize
from gymnasium.utils import EzPickle

from .base import check_finite_action
from .wrappers import AttributeContext, AttributeTaskMixin

__all__ = ["CartPoleContextEnv", "PendulumContextEnv", "MountainCarContinuousContextEnv", "AcrobotContextEnv"]


class _ContextEnvMixin(AttributeTaskMixin):
    """Glue between Gymnasium's classic-control envs and the attribute task law."""

    constants: tuple[str, ...] = ()
    """The physical constants that may vary (attribute names of the Gymnasium env)."""

    def _setup_context(
        self,
        varied_constants: Sequence[str] | None,
        scale_range: tuple[float, float],
        ood_factor: float | None,
    ) -> None:
        names = tuple(self.constants if varied_constants is None else varied_constants)
        unknown = [name for name in names if name not in self.constants]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"varied_constants must be distinct names among {list(self.constants)}, got {list(names)}"
            )
        try:
            lo, hi = (float(s) for s in scale_range)
        except (TypeError, ValueError):
            raise ValueError(f"scale_range must be a (low, high) pair of factors, got {scale_range!r}") from None
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"scale_range must satisfy 0 < low < high, got {scale_range!r}")
        nominal = {name: float(getattr(self, name)) for name in names}
        ranges = {name: (lo * nominal[name], hi * nominal[name]) for name in names}
        self.nominal_constants = nominal
        self._init_context(self, AttributeContext(ranges, log_uniform=True, ood_factor=ood_factor), type(self)._derive)
        self._last_obs: np.ndarray | None = None
        self._n_actions = int(getattr(self.action_space, "n", 0))

    @staticmethod
    def _derive(env: Any, values: dict[str, float]) -> None:
        """Recompute constants derived from the varied ones (none by default)."""

    # --- gymnasium API --------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.set_task(options["task"])
            options = {key: value for key, value in options.items() if key != "task"} or None
        self._apply_pending_task()
        obs, info = super().reset(seed=seed, options=options)
        info["task"] = self._task
        self._last_obs = obs
        return obs, info

    def _check_discrete_action(self, action: Any) -> Any:
        fast = isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= action < self._n_actions
        if not (fast or self.action_space.contains(action)):
            raise ValueError(f"action must be an integer in [0, {self._n_actions - 1}], got {action!r}")
        return action

    def _check_box_action(self, action: Any) -> np.ndarray:
        """The action as a 1-element array, in the caller's dtype (so float32 actions give Gymnasium's numbers)."""
        if isinstance(action, np.ndarray) and action.shape == (1,) and action.dtype.kind == "f":
            if not math.isfinite(action[0]):
                raise ValueError(f"action contains NaN or infinite values: {action}")
            return action
        arr = check_finite_action(action)
        if arr.size != 1:
            raise ValueError(f"action must hold exactly one number, got shape {arr.shape}")
        return np.asarray(action).reshape(1)

    def _state_finite(self) -> bool:
        return self.state is not None and bool(np.isfinite(self.state).all())

    def _finish_step(self, obs: np.ndarray, terms: dict[str, float], terminated: bool):
        # every observation here is a function of the whole state, so a non-finite state shows in it
        if not np.isfinite(obs).all():
            return self._unstable_step()
        info: dict[str, Any] = {"reward_" + name: value for name, value in terms.items()}
        info["task"] = self._task
        self._last_obs = obs
        return obs, float(sum(terms.values())), bool(terminated), False, info

    def _unstable_step(self):
        """A non-finite state: end the episode, keep the last finite observation, flag it in ``info``."""
        last = self._last_obs if self._last_obs is not None else np.zeros(self.observation_space.shape, np.float32)
        return last.copy(), 0.0, False, True, {"physics_unstable": True, "task": self._task}


class CartPoleContextEnv(_ContextEnvMixin, CartPoleEnv, EzPickle):
    """Gymnasium's ``CartPole-v1`` with the cart-pole constants as the task.

    ## Action space
    ``Discrete(2)``: 0 pushes the cart left, 1 right, with force ``force_mag``.

    ## Observation space
    ``Box(4,)`` float32, as Gymnasium: cart position (±4.8), cart velocity, pole angle (±0.418 rad), pole angular
    velocity.

    ## Rewards
    ``reward = reward_alive``: +1 for every step, including the one that terminates (Gymnasium's default reward).

    ## Starting state
    All four state variables uniform in ``[-0.05, 0.05]``.

    ## Episode end
    Terminates when ``|x| > 2.4`` or ``|theta| > 12°``; truncated at 500 steps by the registration's ``TimeLimit``
    or on a non-finite state (``info["physics_unstable"]``).

    ## Task law
    Varied constants (Gymnasium value): ``gravity`` (9.8), ``masscart`` (1.0), ``masspole`` (0.1), ``length``
    (0.5, half the pole length), ``force_mag`` (10.0), each log-uniform in ``scale_range`` times its value, see
    the module docstring. Derived at each task change: ``total_mass = masscart + masspole``,
    ``polemass_length = masspole * length``.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``render_mode`` | ``None`` | Gymnasium's render modes (need pygame) |
    | ``varied_constants`` | all five | which constants form the task |
    | ``scale_range`` | ``(0.5, 2.0)`` | factors on the Gymnasium values bounding train/test |
    | ``ood_factor`` | ``2.0`` | ood box width factor (log space); ``None``: no ood split |
    """

    constants = ("gravity", "masscart", "masspole", "length", "force_mag")

    def __init__(
        self,
        render_mode: str | None = None,
        varied_constants: Sequence[str] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        ood_factor: float | None = 2.0,
    ) -> None:
        CartPoleEnv.__init__(self, render_mode=render_mode)
        EzPickle.__init__(self, render_mode, varied_constants, scale_range, ood_factor)
        self._setup_context(varied_constants, scale_range, ood_factor)

    @staticmethod
    def _derive(env: Any, values: dict[str, float]) -> None:
        env.total_mass = env.masspole + env.masscart
        env.polemass_length = env.masspole * env.length

    def step(self, action):
        obs, reward, terminated, _, _ = super().step(self._check_discrete_action(action))
        return self._finish_step(obs, {"alive": float(reward)}, terminated)


class PendulumContextEnv(_ContextEnvMixin, PendulumEnv, EzPickle):
    """Gymnasium's ``Pendulum-v1`` with gravity, mass and length as the task.

    ## Action space
    ``Box(-2, 2, (1,))`` float32: the torque (clipped to ``max_torque = 2``).

    ## Observation space
    ``Box(3,)`` float32: ``cos(theta)``, ``sin(theta)``, angular velocity (±8, clipped).

    ## Rewards
    ``reward = reward_angle + reward_velocity + reward_control`` with ``reward_angle = -theta_n**2`` (``theta_n``
    the angle normalised to ``[-pi, pi)``, 0 upright), ``reward_velocity = -0.1 * theta_dot**2``,
    ``reward_control = -0.001 * torque**2`` (clipped torque): Gymnasium's ``-costs``.

    ## Starting state
    Angle uniform in ``[-pi, pi]``, angular velocity uniform in ``[-1, 1]``.

    ## Episode end
    Never terminates; truncated at 200 steps by the registration's ``TimeLimit`` or on a non-finite state.

    ## Task law
    Varied constants (Gymnasium value): ``g`` (10.0), ``m`` (1.0), ``l`` (1.0), each log-uniform in
    ``scale_range`` times its value, see the module docstring.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``render_mode`` | ``None`` | Gymnasium's render modes (need pygame) |
    | ``varied_constants`` | all three | which constants form the task |
    | ``scale_range`` | ``(0.5, 2.0)`` | factors on the Gymnasium values bounding train/test |
    | ``ood_factor`` | ``2.0`` | ood box width factor (log space); ``None``: no ood split |
    """

    constants = ("g", "m", "l")

    def __init__(
        self,
        render_mode: str | None = None,
        varied_constants: Sequence[str] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        ood_factor: float | None = 2.0,
    ) -> None:
        PendulumEnv.__init__(self, render_mode=render_mode)
        EzPickle.__init__(self, render_mode, varied_constants, scale_range, ood_factor)
        self.state: np.ndarray | None = None
        self._setup_context(varied_constants, scale_range, ood_factor)

    def step(self, action):
        u = self._check_box_action(action)
        theta, theta_dot = self.state
        torque = u[0]
        if not -self.max_torque <= torque <= self.max_torque:
            torque = np.clip(u, -self.max_torque, self.max_torque)[0]
        # the same expressions (and dtypes) as Gymnasium's cost, so the sum equals its reward exactly
        terms = {
            "angle": -float(angle_normalize(theta) ** 2),
            "velocity": -float(0.1 * theta_dot**2),
            "control": -float(0.001 * (torque**2)),
        }
        obs, _, _, _, _ = super().step(u)
        return self._finish_step(obs, terms, False)


class MountainCarContinuousContextEnv(_ContextEnvMixin, Continuous_MountainCarEnv, EzPickle):
    """Gymnasium's ``MountainCarContinuous-v0`` with the engine power and gravity as the task.

    ## Action space
    ``Box(-1, 1, (1,))`` float32: the force, clipped to ``[-1, 1]`` for the dynamics (the cost uses the raw value,
    as Gymnasium).

    ## Observation space
    ``Box([-1.2, -0.07], [0.6, 0.07])`` float32: position, velocity.

    ## Dynamics
    Gymnasium's equations, with its hard-coded slope constant ``0.0025`` made the attribute ``gravity`` (the name
    Gymnasium's discrete MountainCar uses): ``v += force * power - gravity * cos(3 x)``, ``v`` clipped to ±0.07,
    ``x += v`` clipped to ``[-1.2, 0.6]``, ``v = 0`` at the left wall when moving left. Computed in float64 (Gymnasium
    mixes float32 and float64), so trajectories agree with Gymnasium's to float32 rounding at the nominal constants.

    ## Rewards
    ``reward = reward_goal + reward_control`` with ``reward_goal = 100`` on reaching the goal (else 0) and
    ``reward_control = -0.1 * action**2``.

    ## Starting state
    Position uniform in ``[-0.6, -0.4]``, velocity 0.

    ## Episode end
    Terminates when ``x >= 0.45`` and ``v >= goal_velocity = 0``; truncated at 999 steps by the registration's
    ``TimeLimit`` or on a non-finite state.

    ## Task law
    Varied constants (Gymnasium value): ``power`` (0.0015), ``gravity`` (0.0025), each log-uniform in
    ``scale_range`` times its value, see the module docstring.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``render_mode`` | ``None`` | Gymnasium's render modes (need pygame) |
    | ``varied_constants`` | both | which constants form the task |
    | ``scale_range`` | ``(0.5, 2.0)`` | factors on the Gymnasium values bounding train/test |
    | ``ood_factor`` | ``2.0`` | ood box width factor (log space); ``None``: no ood split |
    """

    constants = ("power", "gravity")

    def __init__(
        self,
        render_mode: str | None = None,
        varied_constants: Sequence[str] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        ood_factor: float | None = 2.0,
    ) -> None:
        Continuous_MountainCarEnv.__init__(self, render_mode=render_mode)
        EzPickle.__init__(self, render_mode, varied_constants, scale_range, ood_factor)
        self.gravity = 0.0025
        self.state: np.ndarray | None = None
        self._setup_context(varied_constants, scale_range, ood_factor)

    def step(self, action):
        raw = float(self._check_box_action(action)[0])
        force = min(max(raw, self.min_action), self.max_action)
        position, velocity = float(self.state[0]), float(self.state[1])
        if not math.isfinite(position + velocity):  # math.cos would raise on an infinite position
            return self._unstable_step()
        velocity += force * self.power - self.gravity * math.cos(3 * position)
        velocity = min(max(velocity, -self.max_speed), self.max_speed)
        position = min(max(position + velocity, self.min_position), self.max_position)
        if position == self.min_position and velocity < 0:
            velocity = 0.0
        terminated = position >= self.goal_position and velocity >= self.goal_velocity
        self.state = np.array([position, velocity], dtype=np.float64)
        if self.render_mode == "human":
            self.render()
        terms = {"goal": 100.0 if terminated else 0.0, "control": -0.1 * raw**2}
        return self._finish_step(self.state.astype(np.float32), terms, terminated)


class AcrobotContextEnv(_ContextEnvMixin, AcrobotEnv, EzPickle):
    """Gymnasium's ``Acrobot-v1`` with link lengths, masses and moment of inertia as the task.

    ## Action space
    ``Discrete(3)``: torque -1, 0 or +1 on the joint between the links.

    ## Observation space
    ``Box(6,)`` float32: ``cos``/``sin`` of both joint angles, the two angular velocities (±4 pi, ±9 pi).

    ## Rewards
    ``reward = reward_time``: -1 per step until the free end reaches the target height, 0 on that step.

    ## Starting state
    All four state variables uniform in ``[-0.1, 0.1]`` (hanging down).

    ## Episode end
    Terminates when ``-cos(theta1) - cos(theta1 + theta2) > 1`` (Gymnasium's test, which depends on the angles
    only, whatever the lengths); truncated at 500 steps by the registration's ``TimeLimit`` or on a non-finite
    state.

    ## Task law
    Varied constants (Gymnasium value): ``LINK_LENGTH_1``, ``LINK_LENGTH_2``, ``LINK_MASS_1``, ``LINK_MASS_2``,
    ``LINK_MOI`` (all 1.0; one moment of inertia for both links, as Gymnasium), each log-uniform in
    ``scale_range`` times its value, see the module docstring. Derived at each task change: the centres of mass stay
    at mid-link, ``LINK_COM_POS_i = LINK_LENGTH_i / 2``.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``render_mode`` | ``None`` | Gymnasium's render modes (need pygame) |
    | ``varied_constants`` | all five | which constants form the task |
    | ``scale_range`` | ``(0.5, 2.0)`` | factors on the Gymnasium values bounding train/test |
    | ``ood_factor`` | ``2.0`` | ood box width factor (log space); ``None``: no ood split |
    """

    constants = ("LINK_LENGTH_1", "LINK_LENGTH_2", "LINK_MASS_1", "LINK_MASS_2", "LINK_MOI")

    def __init__(
        self,
        render_mode: str | None = None,
        varied_constants: Sequence[str] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        ood_factor: float | None = 2.0,
    ) -> None:
        AcrobotEnv.__init__(self, render_mode=render_mode)
        EzPickle.__init__(self, render_mode, varied_constants, scale_range, ood_factor)
        self._setup_context(varied_constants, scale_range, ood_factor)

    @staticmethod
    def _derive(env: Any, values: dict[str, float]) -> None:
        env.LINK_COM_POS_1 = env.LINK_LENGTH_1 / 2
        env.LINK_COM_POS_2 = env.LINK_LENGTH_2 / 2

    def step(self, action):
        # checked before stepping too: Gymnasium's angle wrapping loops forever on an infinite angle
        if not self._state_finite():
            return self._unstable_step()
        obs, reward, terminated, _, _ = super().step(self._check_discrete_action(action))
        return self._finish_step(obs, {"time": float(reward)}, terminated)
