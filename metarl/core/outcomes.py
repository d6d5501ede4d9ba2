"""Episode success: read from the environment's ``info["success"]`` by every collector, recorded per episode for the
run loop (``metrics.csv``) and the meta-test protocol (``evaluation.json``), for any environment that reports it.

Definition (Meta-World's success rate, Yu et al. 2019; ``metaworld.evaluation.evaluation`` in
metaworld 3.1.1 counts an evaluation episode as a success when ``info["success"]`` is set at the step that ends it,
with its environments ending the episode at the first successful step, ``terminate_on_success``): an episode is a
**success when ``info["success"]`` is truthy (non-zero) at any of its steps**. Episodes here are not cut at success
(training and meta-test episodes run to their end, as Meta-World's own training and adaptation episodes do), so
"at any step" is the same count Meta-World's evaluation makes. An episode none of whose steps report the key has no
success value (NaN), so environments without ``info["success"]`` add nothing.

How it travels:

* The collectors (:func:`metarl.core.sampling.collect_episodes` → ``Episodes.successes``,
  :func:`metarl.core.trials.collect_trials` → ``batch["episode_successes"]``, :func:`metarl.core.replay.
  collect_transitions`, :func:`metarl.core.context.posterior_sampling`) compute each finished episode's success with
  :func:`step_successes` and :class:`EpisodeSuccess`, and pass every finished episode to :func:`record_episodes`.
* The meta-test drivers (:func:`metarl.core.maml_rl.adaptation_stages`, ``TrialAgent.meta_test_trials``,
  :func:`metarl.core.context.posterior_sampling`) also say which meta-test column (adaptation stage) each task's
  success belongs to, :func:`record_meta_test_column`.
* Whoever wants them opens :func:`record_success` around the work: the run loop around each ``train_iteration``
  (``charts/success_rate`` in ``metrics.csv``: the fraction of the episodes the iteration finished that succeeded),
  :func:`metarl.evaluation.evaluate_meta_rl` around each ``meta_test`` (the success rate of every adaptation
  episode, per task, in ``evaluation.json``). Nothing is recorded when no recorder is open; agents are not changed.

Collectors that run in other processes (a distributed sampler) must return the successes with the episodes and call
:func:`record_episodes` / :func:`record_meta_test_column` in the driver process: the recorder is a context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUCCESS_KEY = "success"
"""The info key read (Meta-World's; any environment may report it)."""


def _flags(infos: Mapping[str, Any] | None, num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """(success [num_envs] bool, reported [num_envs] bool) from one batched (vector-env) info dict."""
    success = np.zeros(num_envs, dtype=np.bool_)
    reported = np.zeros(num_envs, dtype=np.bool_)
    if not infos or SUCCESS_KEY not in infos:
        return success, reported
    values = np.asarray(infos[SUCCESS_KEY])
    mask = infos.get("_" + SUCCESS_KEY)
    reported[:] = True if mask is None else np.asarray(mask, dtype=np.bool_)
    try:
        success[:] = np.asarray(values, dtype=np.float64) != 0
    except (TypeError, ValueError):  # an object array (a user's env reporting None somewhere)
        success[:] = [bool(v) if v is not None else False for v in values]
        reported &= np.array([v is not None for v in values], dtype=np.bool_)
    return success & reported, reported


def step_successes(infos: Mapping[str, Any] | None, num_envs: int,
                   done: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(success, reported)``, both ``[num_envs]`` bool, for the step a vector env just took: whether each sub-env's
    info says success, and whether it reported the key at all. ``done``: the sub-envs whose episode that step ended
    in a ``SAME_STEP``-autoreset vector env, whose step info is in ``infos["final_info"]`` (the top-level info is
    then the next episode's reset info); None for ``NEXT_STEP`` envs."""
    success, reported = _flags(infos, num_envs)
    if done is not None and np.any(done) and infos and "final_info" in infos:
        final_success, final_reported = _flags(infos["final_info"], num_envs)
        done = np.asarray(done, dtype=np.bool_)
        success = np.where(done, final_success, success)
        reported = np.where(done, final_reported, reported)
    return success, reported


@dataclass
class EpisodeSuccess:
    """Running success of the current episode of each of ``num_envs`` sub-envs (any step's success counts)."""

    num_envs: int
    success: np.ndarray = field(init=False)
    reported: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.success = np.zeros(self.num_envs, dtype=np.bool_)
        self.reported = np.zeros(self.num_envs, dtype=np.bool_)

    def update(self, step_success: np.ndarray, step_reported: np.ndarray, active: np.ndarray | None = None) -> None:
        """Fold one step in; ``active``: the sub-envs whose step belongs to the episode being tracked."""
        keep = np.ones(self.num_envs, dtype=np.bool_) if active is None else np.asarray(active, dtype=np.bool_)
        self.success |= step_success & keep
        self.reported |= step_reported & keep

    def values(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Float success (1.0/0.0) of the sub-envs ``index``, NaN where no step reported the key."""
        return np.where(self.reported[index], self.success[index].astype(np.float64), np.nan)

    def clear(self, index: np.ndarray | slice = slice(None)) -> None:
        """Start new episodes on the sub-envs ``index``."""
        self.success[index] = False
        self.reported[index] = False


@dataclass
class SuccessRecorder:
    """What :func:`record_success` collects: finished episodes and the meta-test columns."""

    episodes: int = 0
    """finished episodes whose steps reported the key"""
    successes: int = 0
    """of those, the successful ones"""
    columns: dict[int, np.ndarray] = field(default_factory=dict)
    """meta-test column -> ``[tasks]`` success rate of each task in that column (NaN where not reported)"""

    @property
    def success_rate(self) -> float | None:
        """Fraction of the recorded episodes that succeeded; None when none reported success."""
        return self.successes / self.episodes if self.episodes else None

    def column_matrix(self, num_tasks: int, num_columns: int) -> np.ndarray | None:
        """``[num_tasks, num_columns]`` success rates of the meta-test (NaN where missing); None when no column was
        recorded with a success value (the env has no ``info["success"]`` or the agent's collector records none)."""
        if not any(np.isfinite(v).any() for v in self.columns.values()):
            return None
        matrix = np.full((num_tasks, num_columns), np.nan)
        for column, values in self.columns.items():
            if 0 <= column < num_columns and len(values) == num_tasks:
                matrix[:, column] = values
        return matrix


_ACTIVE: contextvars.ContextVar[SuccessRecorder | None] = contextvars.ContextVar("metarl_success_recorder",
                                                                                 default=None)


@contextlib.contextmanager
def record_success() -> Iterator[SuccessRecorder]:
    """Collect the success of every episode finished (and every meta-test column recorded) inside the block; an
    inner block collects for itself only."""
    recorder = SuccessRecorder()
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def record_episodes(successes: np.ndarray | Any) -> None:
    """Count finished episodes' successes (float 1/0, NaN: not reported) in the open recorder, if any."""
    recorder = _ACTIVE.get()
    if recorder is None:
        return
    values = np.asarray(successes, dtype=np.float64).reshape(-1)
    known = values[np.isfinite(values)]
    recorder.episodes += int(known.size)
    recorder.successes += int((known > 0).sum())


def record_meta_test_column(column: int, success_per_task: np.ndarray | Any) -> None:
    """Record meta-test column ``column``'s success rate of each task (``[tasks]``, NaN: not reported)."""
    recorder = _ACTIVE.get()
    if recorder is None:
        return
    recorder.columns[int(column)] = np.asarray(success_per_task, dtype=np.float64).reshape(-1).copy()
