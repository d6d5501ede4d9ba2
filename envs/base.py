"""The task-environment contract shared by every task distribution in :mod:`metarl.envs`.

A *task environment* is a Gymnasium environment whose ``env.unwrapped`` implements::

    sample_tasks(n, *, split="train", seed=None) -> list[Task]
    set_task(task) -> None          # takes effect at the next reset()
    get_task() -> Task

plus, for oracle and context-conditioned agents, ``task_descriptor(task) -> np.ndarray`` of fixed length
``task_descriptor_dim``.

Splits are disjoint *by construction*: continuous task parameters are drawn from a checkerboard of cells over
the parameter box (see :func:`checkerboard_uniform`); ``train`` draws from the "white" cells and ``test`` from the
"black" ones, so both cover the whole range yet no test task can ever be sampled for training. ``ood`` (where a
distribution offers it) lies outside the training box altogether.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "test")
SPLITS_WITH_OOD: tuple[str, ...] = ("train", "test", "ood")


class TaskError(ValueError):
    """A task is malformed: missing keys, wrong type or a value outside the distribution's range."""


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    """Return ``split`` if it is one of ``allowed``; otherwise raise a one-line ``ValueError``."""
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}: this task distribution offers {', '.join(allowed)}")
    return split


def make_rng(seed: int | None, fallback: np.random.Generator | None = None) -> np.random.Generator:
    """An explicit generator: from ``seed`` if given, else ``fallback`` (an env's ``np_random``), else fresh entropy."""
    if seed is not None:
        return np.random.default_rng(seed)
    if fallback is not None:
        return fallback
    return np.random.default_rng()


def checkerboard_uniform(
    rng: np.random.Generator,
    low: Sequence[float] | np.ndarray,
    high: Sequence[float] | np.ndarray,
    n: int,
    split: str,
    cells: int = 8,
) -> np.ndarray:
    """Sample ``n`` points uniformly from the ``train`` or ``test`` half of a checkerboard over a box.

    The box ``[low, high]`` (``d`` dimensions) is cut into ``cells`` equal cells per dimension (``cells`` even).
    A cell belongs to ``train`` when the sum of its integer coordinates is even, to ``test`` when odd. Each split
    is uniform over its own cells, the two splits never overlap, and both span the full range of every coordinate.
    Returns an array of shape ``[n, d]``.
    """
    low_arr, high_arr = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if low_arr.shape != high_arr.shape or low_arr.ndim != 1:
        raise ValueError("low and high must be 1-D and of equal length")
    if cells < 2 or cells % 2:
        raise ValueError(f"cells must be an even number >= 2, got {cells}")
    parity = {"train": 0, "test": 1}[check_split(split)]
    d = low_arr.shape[0]
    cell = rng.integers(0, cells, size=(n, d))
    wrong = (cell.sum(axis=1) % 2) != parity
    # flipping the lowest bit of the last coordinate moves to the neighbouring cell and flips the parity
    cell[wrong, -1] ^= 1
    unit = (cell + rng.random((n, d))) / cells
    return low_arr + unit * (high_arr - low_arr)


def checkerboard_split_of(value: Sequence[float] | np.ndarray, low, high, cells: int = 8) -> str:
    """Which checkerboard split a point lies in (inverse of :func:`checkerboard_uniform`; used by tests)."""
    low_arr, high_arr = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    unit = (np.asarray(value, dtype=np.float64) - low_arr) / (high_arr - low_arr)
    cell = np.clip(np.floor(unit * cells).astype(int), 0, cells - 1)
    return "train" if cell.sum() % 2 == 0 else "test"


def task_to_dict(task: Any) -> dict[str, Any]:
    """A JSON-ready dict of a task: dataclasses through ``asdict``, mappings copied, anything else as ``repr``."""
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        return dataclasses.asdict(task)
    if isinstance(task, dict):
        return dict(task)
    return {"task": repr(task)}


def check_task_fields(task: Any, task_type: type, ranges: dict[str, tuple[float, float]] | None = None) -> Any:
    """Validate a task for ``set_task``: accept an instance of ``task_type`` or a dict with its fields.

    ``ranges`` maps field names to inclusive ``(low, high)`` bounds for numeric fields (scalars or sequences).
    Returns a ``task_type`` instance; raises :class:`TaskError` with one line saying what is wrong.
    """
    fields = [f.name for f in dataclasses.fields(task_type)]
    if isinstance(task, dict):
        missing = [f for f in fields if f not in task]
        if missing:
            raise TaskError(f"task for {task_type.__name__} is missing {', '.join(missing)} (expects {fields})")
        unknown = [k for k in task if k not in fields]
        if unknown:
            raise TaskError(f"task for {task_type.__name__} has unknown keys {unknown} (expects {fields})")
        try:
            task = task_type(**task)
        except (TypeError, ValueError) as err:
            raise TaskError(f"bad task for {task_type.__name__}: {err}") from None
    if not isinstance(task, task_type):
        raise TaskError(f"expected a {task_type.__name__} (or a dict with {fields}), got {type(task).__name__}")
    for name, (lo, hi) in (ranges or {}).items():
        value = np.asarray(getattr(task, name), dtype=np.float64)
        if not np.all(np.isfinite(value)):
            raise TaskError(f"task field {name}={getattr(task, name)!r} is not finite")
        if np.any(value < lo) or np.any(value > hi):
            raise TaskError(f"task field {name}={getattr(task, name)!r} is outside the allowed range [{lo}, {hi}]")
    return task


def check_finite_action(action: Any) -> np.ndarray:
    """Return ``action`` as a float array, raising ``ValueError`` if any entry is NaN or infinite."""
    arr = np.asarray(action, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action contains NaN or infinite values: {arr}")
    return arr


class TaskEnvMixin:
    """Default pieces of the task-environment protocol; a subclass defines ``_sample_task_list`` and ``_validate``.

    Subclasses set ``task_type`` (a frozen dataclass) and ``splits``; call ``self._init_task(default_task)`` in
    ``__init__``. ``set_task`` validates and stores the task as *pending*; ``reset`` must call
    ``self._apply_pending_task()`` so the task takes effect at the next reset, as the contract says.
    """

    task_type: type
    splits: tuple[str, ...] = SPLITS
    #: False only where a distribution is too small to hold tasks out (HalfCheetahDir: two directions)
    splits_disjoint: bool = True
    #: most steps of an episode where the env ends every episode itself (no TimeLimit needed); None: unbounded
    episode_step_limit: int | None = None
    _task: Any
    _pending_task: Any

    def _init_task(self, task: Any) -> None:
        self._task = self._validate_task(task)
        self._pending_task = None

    # --- the protocol -------------------------------------------------------------------------------------
    def sample_tasks(self, n: int, *, split: str = "train", seed: int | None = None) -> list[Any]:
        """Sample ``n`` tasks from ``split``; the same ``seed`` gives the same tasks."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        check_split(split, self.splits)
        rng = make_rng(seed, getattr(self, "np_random", None) if seed is None else None)
        return self._sample_task_list(int(n), split, rng)

    def set_task(self, task: Any) -> None:
        """Validate ``task`` and make it current from the next ``reset()`` on."""
        self._pending_task = self._validate_task(task)

    def get_task(self) -> Any:
        """The task in force (a task set since the last reset counts once ``reset`` is called)."""
        return self._pending_task if self._pending_task is not None else self._task

    def task_descriptor(self, task: Any | None = None) -> np.ndarray:
        """Fixed-length float32 vector describing ``task`` (default: the current one)."""
        task = self.get_task() if task is None else self._validate_task(task)
        return np.asarray(self._descriptor(task), dtype=np.float32)

    @property
    def task_descriptor_dim(self) -> int:
        return int(self.task_descriptor().shape[0])

    # --- to implement -------------------------------------------------------------------------------------
    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[Any]:
        raise NotImplementedError

    def _validate_task(self, task: Any) -> Any:
        return check_task_fields(task, self.task_type)

    def _descriptor(self, task: Any) -> Sequence[float]:
        return [float(v) for v in dataclasses.astuple(task) if isinstance(v, (int, float))]

    # --- helpers for subclasses ---------------------------------------------------------------------------
    def _apply_pending_task(self) -> bool:
        """Install the pending task, if any; returns True when the task changed."""
        if self._pending_task is None:
            return False
        self._task, self._pending_task = self._pending_task, None
        self._on_task_change(self._task)
        return True

    def _on_task_change(self, task: Any) -> None:  # noqa: B027 - optional hook
        """Called by ``_apply_pending_task`` when a new task takes effect (e.g. to rebuild a model)."""


def is_task_env(env: Any) -> bool:
    """Whether ``env`` (or its ``unwrapped``) implements the three task methods."""
    base = getattr(env, "unwrapped", env)
    return all(callable(getattr(base, name, None)) for name in ("sample_tasks", "set_task", "get_task"))


def angle_tasks_in_split(rng: np.random.Generator, n: int, split: str, sectors: int = 16) -> np.ndarray:
    """Angles in [0, 2π) from alternating sectors: even sectors for ``train``, odd for ``test``."""
    return 2 * math.pi * checkerboard_uniform(rng, [0.0], [1.0], n, split, cells=sectors)[:, 0]
