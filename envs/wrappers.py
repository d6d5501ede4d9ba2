"""Turn numeric attributes of any Gymnasium environment into a task distribution.

:class:`AttributeTaskWrapper` makes a task environment out of an environment that knows nothing about tasks:
a task is a set of values for named attributes of ``env.unwrapped`` (``gravity``, ``masspole``, ...), drawn from a
box with the suite's checkerboard train/test splits and an out-of-distribution shell around it::

    env = AttributeTaskWrapper(gym.make("CartPole-v1"), ranges={"gravity": (4.9, 19.6), "length": (0.25, 1.0)},
                               log_uniform=True, on_set=lambda cartpole, values: ...)
    tasks = env.sample_tasks(10, split="train", seed=0)
    env.set_task(tasks[0])
    obs, info = env.reset(seed=0)          # the attributes are written here

The same machinery (:class:`AttributeContext`, :class:`AttributeTaskMixin`) drives the classic-control context
environments of :mod:`metarl.envs.classic_control`, which are ``gym.Env`` subclasses rather than wrappers.

**The task law** (:class:`AttributeContext`). ``ranges`` maps each attribute name to ``(low, high)``. Sampling
coordinates are the values themselves, or their logarithms when ``log_uniform=True`` (then ``low > 0``).

* ``train`` / ``test``: uniform (in sampling coordinates) over the white / black cells of a checkerboard with
  ``cells`` cells per attribute (:func:`metarl.envs.base.checkerboard_uniform`): disjoint by construction, both
  spanning every attribute's full range.
* ``ood`` (when ``ood_factor`` is given, ``> 1``): uniform over the box ``ood_factor`` times as wide about the same
  centre (in sampling coordinates), minus the training box. With ``log_uniform`` and ranges ``[0.5 v, 2 v]``,
  ``ood_factor=2`` gives ``[0.25 v, 4 v]`` minus ``[0.5 v, 2 v]``. For a linear range with ``low > 0`` the shell is cut
  at ``low / ood_factor`` so that a positive attribute (a mass, a length) stays positive.
* ``set_task`` accepts any task inside the training box or the ood shell and raises
  :class:`~metarl.envs.base.TaskError` for anything else (unknown or missing names, non-finite or out-of-range values).

**The task** is a :class:`ContextTask`: a frozen dataclass holding ``(name, value)`` pairs in the order of
``ranges``; it round-trips through JSON (``ContextTask(**json.loads(json.dumps(dataclasses.asdict(task))))``), and
``set_task`` also takes a plain ``{name: value}`` mapping. The descriptor is the vector of values in that order.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .base import (
    SPLITS,
    SPLITS_WITH_OOD,
    TaskEnvMixin,
    TaskError,
    check_finite_action,
    check_split,
    checkerboard_uniform,
    is_task_env,
)

OnSet = Callable[[Any, dict[str, float]], None]
"""Hook ``on_set(target, values)`` called after the attributes of a new task are written to ``target``."""


@dataclasses.dataclass(frozen=True)
class ContextTask:
    """Values of named environment attributes, e.g. ``ContextTask((("gravity", 9.8), ("length", 0.5)))``.

    A frozen dataclass cannot have one field per arbitrary attribute name, so the values are a tuple of
    ``(name, value)`` pairs. Lists (as JSON gives them back) are turned into tuples and numbers into floats, so
    ``ContextTask(**json.loads(json.dumps(dataclasses.asdict(task)))) == task``.
    """

    values: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        try:
            pairs = tuple((str(name), float(value)) for name, value in self.values)
        except (TypeError, ValueError):
            raise TaskError(f"ContextTask.values must be (name, number) pairs, got {self.values!r}") from None
        object.__setattr__(self, "values", pairs)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float]) -> ContextTask:
        """A task from ``{name: value}`` (order kept)."""
        return cls(tuple(mapping.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.values)

    def as_dict(self) -> dict[str, float]:
        """``{name: value}``."""
        return dict(self.values)

    def __getitem__(self, name: str) -> float:
        for key, value in self.values:
            if key == name:
                return value
        raise KeyError(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def numeric_attributes(obj: Any) -> list[str]:
    """Public numeric attributes of ``obj`` (instance and class level), without triggering properties."""
    found: dict[str, Any] = {}
    for klass in reversed(type(obj).__mro__):
        found.update(vars(klass))
    found.update(vars(obj))
    return sorted(name for name, value in found.items() if not name.startswith("_") and _is_number(value))


class AttributeContext:
    """The task law over named numeric attributes: a box, checkerboard train/test splits and an ood shell.

    Args:
        ranges: ``{name: (low, high)}`` with ``low < high``, finite (``low > 0`` when ``log_uniform``).
        log_uniform: sample uniformly in log space (natural for scale factors such as masses and lengths).
        ood_factor: width factor (``> 1``) of the ood box about the training box's centre; ``None`` offers no
            ``ood`` split.
        cells: checkerboard cells per attribute (even).
    """

    def __init__(
        self,
        ranges: Mapping[str, tuple[float, float]],
        *,
        log_uniform: bool = False,
        ood_factor: float | None = 2.0,
        cells: int = 8,
    ) -> None:
        if not isinstance(ranges, Mapping) or not ranges:
            raise ValueError(f"ranges must be a non-empty mapping {{name: (low, high)}}, got {ranges!r}")
        low, high = [], []
        for name, bounds in ranges.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"attribute names must be non-empty strings, got {name!r}")
            try:
                lo, hi = (float(b) for b in bounds)
            except (TypeError, ValueError):
                raise ValueError(f"range of {name!r} must be a (low, high) pair of numbers, got {bounds!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {name!r} must be finite with low < high, got ({lo}, {hi})")
            if log_uniform and lo <= 0:
                raise ValueError(f"log_uniform needs positive ranges, but {name!r} has low={lo}")
            low.append(lo)
            high.append(hi)
        if ood_factor is not None and not (math.isfinite(ood_factor) and ood_factor > 1):
            raise ValueError(f"ood_factor must be a finite number > 1 (or None for no ood split), got {ood_factor!r}")
        if cells < 2 or cells % 2:
            raise ValueError(f"cells must be an even number >= 2, got {cells}")
        self.names: tuple[str, ...] = tuple(ranges)
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.log_uniform = bool(log_uniform)
        self.ood_factor = None if ood_factor is None else float(ood_factor)
        self.cells = int(cells)
        self.splits: tuple[str, ...] = SPLITS if ood_factor is None else SPLITS_WITH_OOD
        self.outer_low, self.outer_high = self._outer_box()

    # --- coordinates ----------------------------------------------------------------------------------------
    def _to_coords(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.log_uniform else values

    def _from_coords(self, coords: np.ndarray) -> np.ndarray:
        return np.exp(coords) if self.log_uniform else coords

    def _outer_box(self) -> tuple[np.ndarray, np.ndarray]:
        if self.ood_factor is None:
            return self.low.copy(), self.high.copy()
        lo, hi = self._to_coords(self.low), self._to_coords(self.high)
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        outer_low = self._from_coords(centre - self.ood_factor * half)
        outer_high = self._from_coords(centre + self.ood_factor * half)
        if not self.log_uniform:
            positive = self.low > 0
            outer_low[positive] = np.maximum(outer_low[positive], self.low[positive] / self.ood_factor)
        return outer_low, outer_high

    # --- the law ----------------------------------------------------------------------------------------------
    def sample_values(self, n: int, split: str, rng: np.random.Generator) -> np.ndarray:
        """``[n, d]`` attribute values from ``split``."""
        check_split(split, self.splits)
        if split != "ood":
            coords = checkerboard_uniform(
                rng, self._to_coords(self.low), self._to_coords(self.high), n, split, cells=self.cells
            )
            # exp(log(high)) may land one ulp outside the box
            return np.clip(self._from_coords(coords), self.low, self.high)
        lo, hi = self._to_coords(self.outer_low), self._to_coords(self.outer_high)
        inner_lo, inner_hi = self._to_coords(self.low), self._to_coords(self.high)
        out = np.empty((0, len(self.names)))
        for _ in range(10_000):
            if len(out) >= n:
                break
            batch = lo + rng.random((max(2 * n, 16), len(self.names))) * (hi - lo)
            inside = np.all((batch >= inner_lo) & (batch <= inner_hi), axis=1)
            out = np.concatenate([out, batch[~inside]])
        else:  # pragma: no cover - acceptance is at least 1 - 1/ood_factor per attribute
            raise RuntimeError("ood rejection sampling made no progress")
        return np.clip(self._from_coords(out[:n]), self.outer_low, self.outer_high)

    def sample(self, n: int, split: str, rng: np.random.Generator) -> list[ContextTask]:
        """``n`` tasks from ``split``."""
        return [self.make_task(row) for row in self.sample_values(n, split, rng)]

    def make_task(self, values: Sequence[float] | np.ndarray) -> ContextTask:
        """A task from values in the order of :attr:`names` (not validated)."""
        return ContextTask(tuple(zip(self.names, (float(v) for v in values))))

    def vector(self, task: ContextTask) -> np.ndarray:
        """The values of ``task`` in the order of :attr:`names` (float64)."""
        return np.fromiter((value for _, value in task.values), dtype=np.float64, count=len(task.values))

    def split_of(self, task: ContextTask | Mapping[str, float]) -> str:
        """``"train"``, ``"test"`` or ``"ood"``: where a (valid) task lies."""
        values = self.vector(self.validate(task))
        if np.any(values < self.low) or np.any(values > self.high):
            return "ood"
        unit = (self._to_coords(values) - self._to_coords(self.low)) / (
            self._to_coords(self.high) - self._to_coords(self.low)
        )
        cell = np.clip(np.floor(unit * self.cells).astype(int), 0, self.cells - 1)
        return "train" if cell.sum() % 2 == 0 else "test"

    def validate(self, task: Any) -> ContextTask:
        """A :class:`ContextTask` from ``task`` (a ContextTask, ``{"values": pairs}`` or ``{name: value}``).

        Raises :class:`TaskError` for unknown or missing names and values outside the training box and ood shell.
        """
        if isinstance(task, Mapping):
            if set(task) == {"values"} and "values" not in self.names:
                task = ContextTask(task["values"])
            else:
                try:
                    task = ContextTask.from_mapping(task)
                except TaskError:
                    raise TaskError(f"task values must be numbers, got {dict(task)!r}") from None
        if not isinstance(task, ContextTask):
            raise TaskError(
                f"expected a ContextTask or a mapping {{name: value}} over {list(self.names)},"
                f" got {type(task).__name__}"
            )
        if task.names != self.names:
            given = task.as_dict()
            missing = [n for n in self.names if n not in given]
            unknown = [n for n in given if n not in self.names]
            if missing or unknown or len(given) != len(task.values):
                raise TaskError(
                    f"task attributes {list(task.names)} do not match {list(self.names)}"
                    f" (missing {missing}, unknown {unknown})"
                )
            task = ContextTask(tuple((name, given[name]) for name in self.names))  # canonical order
        for (name, value), lo, hi in zip(task.values, self.outer_low, self.outer_high):
            if not math.isfinite(value):
                raise TaskError(f"task attribute {name}={value!r} is not finite")
            if value < lo or value > hi:
                raise TaskError(f"task attribute {name}={value!r} is outside the allowed range [{lo:.6g}, {hi:.6g}]")
        return task

    def default_task(self, target: Any) -> ContextTask:
        """The target's current values if they are allowed, else the centre of the box (in sampling coordinates)."""
        current = self.make_task([float(getattr(target, name)) for name in self.names])
        try:
            return self.validate(current)
        except TaskError:
            centre = self._from_coords((self._to_coords(self.low) + self._to_coords(self.high)) / 2)
            return self.make_task(np.clip(centre, self.low, self.high))

    def check_attributes(self, target: Any) -> None:
        """Raise ``ValueError`` unless every name is a numeric attribute of ``target``."""
        available = numeric_attributes(target)
        for name in self.names:
            if name not in available:
                exists = name in vars(target) or any(name in vars(klass) for klass in type(target).__mro__)
                what = "has a non-numeric attribute" if exists else "has no attribute"
                raise ValueError(
                    f"{type(target).__name__} {what} {name!r}; numeric attributes are: {', '.join(available)}"
                )


class AttributeTaskMixin(TaskEnvMixin):
    """Task protocol over attributes of a *target* object (``self`` for an env subclass, ``env.unwrapped`` for a
    wrapper). Call :meth:`_init_context` in ``__init__`` and ``_apply_pending_task()`` at the start of ``reset``."""

    task_type = ContextTask
    context: AttributeContext

    def _init_context(self, target: Any, context: AttributeContext, on_set: OnSet | None = None) -> None:
        if on_set is not None and not callable(on_set):
            raise ValueError(f"on_set must be callable as on_set(env, values) or None, got {on_set!r}")
        context.check_attributes(target)
        self._context_target = target
        self._on_set = on_set
        self.context = context
        self.splits = context.splits
        self._init_task(context.default_task(target))
        self._on_task_change(self._task)  # the env matches get_task() from the start

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[ContextTask]:
        return self.context.sample(n, split, rng)

    def _validate_task(self, task: Any) -> ContextTask:
        return self.context.validate(task)

    def _descriptor(self, task: ContextTask) -> np.ndarray:
        return self.context.vector(task)

    def _on_task_change(self, task: ContextTask) -> None:
        target = self._context_target
        for name, value in task.values:
            setattr(target, name, value)
        if self._on_set is not None:
            self._on_set(target, task.as_dict())


def _finite(obs: Any) -> bool:
    if isinstance(obs, np.ndarray):
        return obs.dtype.kind not in "fc" or bool(np.isfinite(obs).all())
    if isinstance(obs, float):
        return math.isfinite(obs)
    return True


class AttributeTaskWrapper(AttributeTaskMixin, gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A task distribution over numeric attributes of any environment's ``unwrapped``.

    ## Task law
    See the module docstring: checkerboard ``train``/``test`` over the ``ranges`` box (log-uniform if asked), an
    ``ood`` shell ``ood_factor`` times as wide, tasks as :class:`ContextTask`, descriptor = the values.

    ## Behaviour
    * ``set_task(task)`` validates at once and writes the attributes to ``env.unwrapped`` at the next
      ``reset()`` *of this wrapper* (or of any wrapper around it); then ``on_set(env.unwrapped, values)`` runs, to
      recompute derived attributes (e.g. CartPole's ``total_mass``). ``reset(options={"task": task})`` does both.
    * The default task is the env's current values if they lie in the allowed range, else the box centre; it is
      written at construction.
    * ``info["task"]`` echoes the task (the :class:`ContextTask`, at reset and at each step). If the wrapped env
      reports no ``reward_<name>`` terms, ``info["reward_env"]`` carries the whole reward, so terms always sum to it.
    * Box actions with NaN or infinite entries raise ``ValueError``. A non-finite float observation ends the episode
      (``truncated=True``, ``info["physics_unstable"] = True``, reward 0, the last finite observation returned).
    * So that agents, which call ``env.unwrapped.sample_tasks(...)``, find the protocol, the wrapper also binds
      ``sample_tasks``, ``set_task``, ``get_task`` and ``task_descriptor`` onto ``env.unwrapped``; they act on this
      wrapper, so tasks still take effect when the env is reset through it.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``env`` | | the environment (must not already be a task env) |
    | ``ranges`` | | ``{attribute: (low, high)}`` over ``env.unwrapped``'s numeric attributes |
    | ``log_uniform`` | ``False`` | sample in log space (``low > 0``) |
    | ``ood_factor`` | ``2.0`` | width factor of the ood box; ``None``: no ``ood`` split |
    | ``on_set`` | ``None`` | ``on_set(env.unwrapped, {name: value})`` after the attributes are written |
    | ``cells`` | ``8`` | checkerboard cells per attribute |
    """

    def __init__(
        self,
        env: gym.Env,
        ranges: Mapping[str, tuple[float, float]],
        *,
        log_uniform: bool = False,
        ood_factor: float | None = 2.0,
        on_set: OnSet | None = None,
        cells: int = 8,
    ) -> None:
        if not isinstance(env, gym.Env):
            raise ValueError(f"AttributeTaskWrapper wraps a gymnasium.Env, got {type(env).__name__}")
        if is_task_env(env):
            raise ValueError(f"{env} already implements the task protocol; wrapping it would shadow its tasks")
        gym.utils.RecordConstructorArgs.__init__(
            self, ranges=ranges, log_uniform=log_uniform, ood_factor=ood_factor, on_set=on_set, cells=cells
        )
        gym.Wrapper.__init__(self, env)
        context = AttributeContext(ranges, log_uniform=log_uniform, ood_factor=ood_factor, cells=cells)
        self._init_context(env.unwrapped, context, on_set)
        self._box_actions = isinstance(env.action_space, spaces.Box)
        self._last_obs: Any = None
        base = env.unwrapped
        for name in ("sample_tasks", "set_task", "get_task", "task_descriptor"):
            setattr(base, name, getattr(self, name))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and "task" in options:
            self.set_task(options["task"])
            options = {key: value for key, value in options.items() if key != "task"} or None
        self._apply_pending_task()
        obs, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        info["task"] = self._task
        self._last_obs = obs
        return obs, info

    def step(self, action):
        if self._box_actions:
            check_finite_action(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not _finite(obs):
            last = self._last_obs.copy() if isinstance(self._last_obs, np.ndarray) else self._last_obs
            return last, 0.0, False, True, {"physics_unstable": True, "task": self._task}
        info = dict(info)
        if not any(key.startswith("reward_") for key in info):
            info["reward_env"] = reward
        info["task"] = self._task
        self._last_obs = obs
        return obs, reward, terminated, truncated, info
