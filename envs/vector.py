"""A task-aware vector environment: one task per sub-environment, stepped in one process, fast.

:class:`TaskVectorEnv` runs ``num_envs`` copies of a task environment in the calling process and follows
Gymnasium's :class:`~gymnasium.vector.VectorEnv` API (batched observations, rewards, terminations, truncations and
infos in Gymnasium's dict-of-arrays format, with ``_key`` masks), plus what a meta-RL sampler needs::

    envs = TaskVectorEnv("metarl/HalfCheetahVel-v0", num_envs=20)
    tasks = envs.single_task_env.sample_tasks(20, split="train", seed=0)
    envs.set_tasks(tasks)                     # one task per sub-env, in force from the next reset
    obs, infos = envs.reset(seed=0)           # seeds 0, 1, ..., 19
    obs, rewards, terminations, truncations, infos = envs.step(policy(obs))

Everything runs in the calling process (no worker process per sub-env), and the step does less than Gymnasium's
``SyncVectorEnv`` around the envs' own work, with the same results:

* **No per-env wrapper stack.** Each sub-env is built with ``gymnasium.make`` (or your factory); the pass-through
  wrappers ``gymnasium.make`` adds (``TimeLimit``, ``OrderEnforcing``, ``PassiveEnvChecker``) are peeled off and the
  time limit is applied here, as ``TimeLimit`` does (``truncated`` becomes True once ``max_episode_steps`` steps
  have been taken, whatever ``terminated`` says). Any other wrapper is kept and stepped as it is.
* **Preallocated batch buffers** and a batched merge of the per-env ``info`` dicts (:func:`batch_infos`: the same
  result as Gymnasium's ``VectorEnv._add_info``, fewer NumPy calls).
* **A lean step for MuJoCo task envs.** Sub-envs that are :class:`~metarl.envs.mujoco_base.MujocoTaskEnv`
  subclasses (and keep its ``step``) are stepped without the per-env action checks (done once for the batch: one
  clip of all actions, one NaN test), running the env's own ``_position_for_reward`` before and ``_finish_step``
  after the physics, exactly as ``MujocoTaskEnv.step`` does.
* **Physics on several threads** (``physics_threads``), from :mod:`metarl.envs.physics_worker`: the calling thread
  runs every sub-env's Python and the physics of its own share of them, extra threads step the physics of the
  others; the compiled worker (``envs/_physics_worker.c``, optional, built at install) or, without it, Python
  threads (``native_worker``). Each sub-env's physics is the very ``mj_step`` its own ``step`` makes, on its own
  ``MjData``, so trajectories (blow-ups included) are bit-identical to stepping the envs one by one (tested). By
  default (``physics_threads=None``) the threads are timed against the calling thread alone now and then and the
  faster is used.

Figures (against ``SyncVectorEnv``, for each physics path, with their commands): experiments/RESULTS.md, section
"Environments: step cost and vectorised stepping".

Autoreset mode
    ``NEXT_STEP`` by default (Gymnasium's default, as in ``SyncVectorEnv``): when a sub-env's episode ends, the
    following ``step`` call resets it (ignoring its action) and returns the reset observation with reward 0 and
    ``terminated = truncated = False``, the reset ``info`` merged into ``infos``. A task set with
    :meth:`set_tasks` takes effect at that reset. ``SAME_STEP`` is also available (the sub-env is reset within the
    step that ended its episode; ``infos["final_obs"]``/``infos["final_info"]`` carry the last observation and info)
    and ``DISABLED`` (reset finished sub-envs yourself with ``reset(options={"reset_mask": mask})``). The mode is in
    ``metadata["autoreset_mode"]``.

Bad input
    Actions of the wrong shape, with NaN or infinite entries, or a task list whose length is not ``num_envs`` raise
    ``ValueError`` before any sub-env is touched; a bad task raises the env's ``TaskError`` (a ``ValueError``) and
    leaves every sub-env's task as it was.
"""

from __future__ import annotations

import copy as _copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from . import physics_worker
from .base import TaskError
from .mujoco_base import MujocoTaskEnv

# the compiled worker's classes under their former names here (tests and benchmarks written before the move)
_NativeWorkerLibrary = physics_worker.NativeLibrary
_NativeWorker = physics_worker.NativeWorker

_PASS_THROUGH_WRAPPERS = (TimeLimit, OrderEnforcing, PassiveEnvChecker)


def _is_scalar(value: Any) -> bool:
    return type(value) in (int, float, bool) or isinstance(value, np.number)


def batch_infos(infos: Sequence[dict[str, Any] | None], num_envs: int) -> dict[str, Any]:
    """Merge per-env info dicts into Gymnasium's vector format (what ``VectorEnv._add_info`` builds env by env).

    ``infos[i]`` is sub-env ``i``'s info (``None`` or ``{}`` when it has none). Each key maps to an array over the
    sub-envs (dtype of the first value: Python/NumPy scalars and arrays are batched, anything else goes in an
    object array, nested dicts recursively) plus a boolean mask ``"_" + key`` saying which sub-envs gave it;
    ``"final_obs"`` is always an object array. One difference: where some sub-envs give a dict and others not
    (e.g. a user's env whose ``info["task"]`` is a dict at reset and an object at step, mixed by an autoreset
    step), the values go in an object array as they are; Gymnasium's merge fails or scrambles them there. The
    suite's own envs give the task object at reset and at step.
    """
    first_info = infos[0] if infos else None
    if first_info and len(infos) == num_envs and all(
        info is not None and info.keys() == first_info.keys() for info in infos
    ):
        # the common case: every sub-env reports the same keys
        out: dict[str, Any] = {}
        for key in first_info:
            values = [info[key] for info in infos]
            out[key] = _batch_values(key, values, list(range(num_envs)), num_envs)
            out["_" + key] = np.ones(num_envs, dtype=np.bool_)
        return out
    keys: dict[str, None] = {}
    for info in infos:
        if info:
            keys.update(dict.fromkeys(info))
    out = {}
    for key in keys:
        present = [i for i, info in enumerate(infos) if info and key in info]
        out[key] = _batch_values(key, [infos[i][key] for i in present], present, num_envs)
        mask = np.zeros(num_envs, dtype=np.bool_)
        mask[present] = True
        out["_" + key] = mask
    return out


def _batch_values(key: str, values: list[Any], present: list[int], num_envs: int) -> Any:
    first = values[0]
    types = set(map(type, values))
    dicts = [issubclass(t, dict) for t in types]
    if key != "final_obs" and (all(dicts) or not any(dicts)):
        if dicts[0]:
            nested: list[dict[str, Any] | None] = [None] * num_envs
            for i, value in zip(present, values):
                nested[i] = value
            return batch_infos(nested, num_envs)
        if _is_scalar(first):
            if len(present) == num_envs:
                return np.array(values, dtype=type(first))
            array = np.zeros(num_envs, dtype=type(first))
            array[present] = values
            return array
        if isinstance(first, np.ndarray):
            array = np.zeros((num_envs, *first.shape), dtype=first.dtype)
            for i, value in zip(present, values):
                array[i] = value
            return array
    array = np.full(num_envs, None, dtype=object)
    for i, value in zip(present, values):
        array[i] = value
    return array


def reset_request(seed: int | Sequence[int | None] | None, options: dict[str, Any] | None,
                  num_envs: int) -> tuple[list[int | None], dict[str, Any], np.ndarray | None]:
    """The arguments of a vector ``reset``, checked: one seed per sub-env (an int ``s`` gives sub-env ``i`` the
    seed ``s + i``), the other options, and ``options["reset_mask"]`` (None: every sub-env)."""
    if seed is None:
        seeds: list[int | None] = [None] * num_envs
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seeds = [int(seed) + i for i in range(num_envs)]
    else:
        seeds = list(seed)
        if len(seeds) != num_envs:
            raise ValueError(f"expected {num_envs} seeds (one per sub-env), got {len(seeds)}")
    options = dict(options or {})
    mask = options.pop("reset_mask", None)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (num_envs,) or mask.dtype != np.bool_ or not mask.any():
            raise ValueError(f"options['reset_mask'] must be a boolean array of shape ({num_envs},) with "
                             f"at least one True, got {mask!r}")
    return seeds, options, mask


def _peel(env: gym.Env) -> tuple[gym.Env, int | None]:
    """Strip the pass-through wrappers ``gymnasium.make`` adds; return the core env and the time limit found."""
    max_steps = None
    while isinstance(env, _PASS_THROUGH_WRAPPERS):
        if isinstance(env, TimeLimit) and max_steps is None:
            max_steps = getattr(env, "_max_episode_steps", None)
        env = env.env
    return env, max_steps


def _has_fast_physics(env: gym.Env) -> bool:
    """A MujocoTaskEnv that keeps the base ``step``: its step can be split into pre / physics / post."""
    return isinstance(env, MujocoTaskEnv) and type(env).step is MujocoTaskEnv.step


class TaskVectorEnv(VectorEnv):
    """``num_envs`` task environments in one process, one task each, stepped as a batch.

    Args:
        env: a registered environment id (built with ``gymnasium.make(env, **env_kwargs)``) or a zero-argument
            factory returning an environment (a ``TimeLimit`` it applies is honoured and lifted into this class).
        num_envs: number of sub-environments (>= 1).
        env_kwargs: keyword arguments for ``gymnasium.make`` (ids only).
        max_episode_steps: episode length applied here; default: the ``TimeLimit`` the env comes with, if any.
        autoreset_mode: ``"NextStep"`` (default), ``"SameStep"`` or ``"Disabled"`` (a :class:`AutoresetMode`).
        physics_threads: threads for the MuJoCo physics of fast-path sub-envs. ``None`` (default): as many as the
            CPUs this process may use (at most ``num_envs``), used only while timing shows they are faster than
            plain ``mj_step`` calls in the calling thread. ``1``: always ``mj_step``; ``k > 1``: always threads.
        native_worker: run the physics threads as the compiled worker (C threads that step a whole block without
            the GIL, :mod:`metarl.envs.physics_worker`) rather than Python threads. ``None`` (default): the compiled
            worker when it is available, else Python threads; ``False``: Python threads; ``True``: the compiled
            worker or an error saying why not. Same results either way.
        copy: return a copy of the observation batch (default, as ``SyncVectorEnv``); ``False`` returns the
            internal buffer, overwritten by the next call.
    """

    def __init__(
        self,
        env: str | Callable[[], gym.Env],
        num_envs: int,
        *,
        env_kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        physics_threads: int | None = None,
        native_worker: bool | None = None,
        copy: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            modes = ", ".join(repr(m.value) for m in AutoresetMode)
            raise ValueError(f"unknown autoreset_mode {autoreset_mode!r}: use one of {modes}") from None
        if isinstance(env, str):
            env_id, kwargs = env, dict(env_kwargs or {})
            factory: Callable[[], gym.Env] = lambda: gym.make(env_id, **kwargs)
        elif callable(env):
            if env_kwargs:
                raise ValueError("env_kwargs only apply to an environment id; bind them in your factory instead")
            factory = env
        else:
            raise ValueError(f"env must be an environment id or a factory, got {type(env).__name__}")

        self.num_envs = int(num_envs)
        self.copy = copy
        self.wrapped_envs: list[gym.Env] = [factory() for _ in range(self.num_envs)]
        peeled = [_peel(e) for e in self.wrapped_envs]
        self.envs: list[gym.Env] = [core for core, _ in peeled]
        limits = {limit for _, limit in peeled}
        if max_episode_steps is None and len(limits) > 1:
            raise ValueError(f"sub-environments disagree on their time limit: {sorted(map(str, limits))}")
        self.max_episode_steps: int | None = max_episode_steps if max_episode_steps is not None else limits.pop()
        self.spec = getattr(self.wrapped_envs[0], "spec", None)

        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        for i, sub in enumerate(self.envs):
            if sub.observation_space != self.single_observation_space:
                raise ValueError(f"sub-env {i} has observation space {sub.observation_space}, sub-env 0 has "
                                 f"{self.single_observation_space}")
            if sub.action_space != self.single_action_space:
                raise ValueError(f"sub-env {i} has action space {sub.action_space}, sub-env 0 has "
                                 f"{self.single_action_space}")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(first.metadata)
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = first.render_mode

        # buffers
        self._box_obs = isinstance(self.single_observation_space, spaces.Box)
        self._box_act = isinstance(self.single_action_space, spaces.Box)
        self._observations = create_empty_array(self.single_observation_space, n=self.num_envs, fn=np.zeros)
        self._env_obs: list[Any] = [None] * self.num_envs
        self._reward_list: list[float] = [0.0] * self.num_envs
        self._termination_list: list[bool] = [False] * self.num_envs
        self._truncation_list: list[bool] = [False] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = True

        # fast MuJoCo path
        self._fast = np.array([_has_fast_physics(e) for e in self.envs], dtype=np.bool_)
        self._fast_indices = np.flatnonzero(self._fast).tolist()
        self._slow_indices = np.flatnonzero(~self._fast).tolist()
        n_fast = int(self._fast.sum())
        self.physics_mode = "auto" if physics_threads is None else "fixed"
        if physics_threads is None:
            physics_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if (
            isinstance(physics_threads, bool)
            or not isinstance(physics_threads, (int, np.integer))
            or physics_threads < 1
        ):
            raise ValueError(f"physics_threads must be a positive integer or None (auto), got {physics_threads!r}")
        self.physics_threads = max(1, min(int(physics_threads), n_fast))
        self._physics = physics_worker.physics_threads(
            self.physics_threads - 1, n_fast, native_worker=native_worker, auto=self.physics_mode == "auto"
        )
        self.native_physics = self._physics is not None and self._physics.native
        """Whether the physics threads are the compiled worker (``envs/_physics_worker.c``) or Python threads."""
        self._bound_models: list[Any] = [None] * self.num_envs
        self._bound_datas: list[Any] = [None] * self.num_envs
        nu = self.single_action_space.shape[0] if self._box_act and self.single_action_space.shape else 0
        self._ctrl_low = np.zeros((self.num_envs, nu))
        self._ctrl_high = np.zeros((self.num_envs, nu))

    @property
    def uses_physics_threads(self) -> bool:
        """Whether the physics runs on several threads now (in auto mode: what the last timing round chose)."""
        return self._physics is not None and self._physics.using_threads

    @property
    def _pool(self) -> Any:
        """The Python threads' ``ThreadPoolExecutor`` when the physics threads are Python threads, else ``None``."""
        return getattr(self._physics, "pool", None)

    # --- tasks -------------------------------------------------------------------------------------------
    @property
    def single_task_env(self) -> Any:
        """Sub-env 0's task interface (``sample_tasks``, ``task_descriptor``, ...), e.g. to sample tasks."""
        return self._task_api(0)

    def _task_api(self, i: int) -> Any:
        core = self.envs[i]
        if callable(getattr(core, "set_task", None)):
            return core
        try:
            core.get_wrapper_attr("set_task")
        except AttributeError:
            raise ValueError(f"sub-env {i} ({type(core).__name__}) is not a task environment: no set_task") from None
        return core.unwrapped

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        """Give sub-env ``i`` the task ``tasks[i]``; each takes effect at that sub-env's next reset.

        All or nothing: if a task is rejected, the tasks already set in this call are set back.
        """
        if isinstance(tasks, (str, bytes, dict)) or not isinstance(tasks, Sequence):
            raise ValueError(f"tasks must be a sequence of {self.num_envs} tasks, got {type(tasks).__name__}")
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per sub-env), got {len(tasks)}")
        previous = self.get_tasks()
        for i, task in enumerate(tasks):
            try:
                self._task_api(i).set_task(task)
            except ValueError as err:
                for j in range(i):
                    self._task_api(j).set_task(previous[j])
                raise TaskError(f"task {i}: {err}") from err

    def get_tasks(self) -> list[Any]:
        """The task of each sub-env (a task set since its last reset counts once it is reset)."""
        return [self._task_api(i).get_task() for i in range(self.num_envs)]

    def task_descriptors(self) -> np.ndarray:
        """``[num_envs, task_descriptor_dim]`` float32 descriptors of the sub-envs' tasks."""
        return np.stack([self._task_api(i).task_descriptor() for i in range(self.num_envs)])

    # --- reset -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-env (or those in ``options["reset_mask"]``); ``options["tasks"]`` sets tasks first.

        ``seed``: ``None``, an int (sub-env ``i`` gets ``seed + i``) or one seed per sub-env. Other options are
        passed to each sub-env's ``reset``.
        """
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            super().reset(seed=int(seed))
        seeds, options, mask = reset_request(seed, options, self.num_envs)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        if "tasks" in options:
            self.set_tasks(options.pop("tasks"))
        sub_options = options or None
        infos: list[dict[str, Any] | None] = [None] * self.num_envs
        for i in np.flatnonzero(mask):
            self._env_obs[i], infos[i] = self.envs[i].reset(seed=seeds[i], options=sub_options)
            self._elapsed[i] = 0
        for i in np.flatnonzero(mask).tolist():
            self._termination_list[i] = self._truncation_list[i] = False
        self._autoreset[mask] = False
        self._needs_reset = False
        return self._batched_obs(np.flatnonzero(mask)), batch_infos(infos, self.num_envs)

    # --- step --------------------------------------------------------------------------------------------
    def step(self, actions: Any):
        """Step every sub-env with its row of ``actions``; see the module docstring for autoreset."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        n, envs = self.num_envs, self.envs
        infos: list[dict[str, Any] | None] = [None] * n
        # per-env results go into Python lists (cheap item writes) and become arrays once, at the end
        rewards, terminations, truncations = self._reward_list, self._termination_list, self._truncation_list

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = self._autoreset
        else:
            if self.autoreset_mode == AutoresetMode.DISABLED and self._autoreset.any():
                done = np.flatnonzero(self._autoreset).tolist()
                raise RuntimeError(f"sub-envs {done} finished their episode: reset them (autoreset is disabled)")
            resetting = np.zeros(n, dtype=np.bool_)
        if resetting.any():
            stepping = ~resetting
            fast = np.flatnonzero(stepping & self._fast).tolist()
            slow = np.flatnonzero(stepping & ~self._fast).tolist()
        else:
            stepping = None
            fast, slow = self._fast_indices, self._slow_indices
        if fast:
            self._step_fast(fast, actions, infos)
        if slow:
            rows = actions if self._box_act else list(iterate(self.action_space, actions))
            for i in slow:
                self._env_obs[i], rewards[i], terminations[i], truncations[i], infos[i] = envs[i].step(rows[i])
        if self.max_episode_steps is not None:
            if stepping is None:
                self._elapsed += 1
                over = np.flatnonzero(self._elapsed >= self.max_episode_steps).tolist()
            else:
                self._elapsed[stepping] += 1
                over = np.flatnonzero(stepping & (self._elapsed >= self.max_episode_steps)).tolist()
            for i in over:
                truncations[i] = True
        if stepping is not None:
            for i in np.flatnonzero(resetting).tolist():
                self._env_obs[i], infos[i] = envs[i].reset()
                self._elapsed[i] = 0
                rewards[i], terminations[i], truncations[i] = 0.0, False, False

        terminated = np.array(terminations, dtype=np.bool_)
        truncated = np.array(truncations, dtype=np.bool_)
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            finals: list[dict[str, Any] | None] = [None] * n
            for i in np.flatnonzero(done).tolist():
                finals[i] = {"final_obs": self._env_obs[i], "final_info": infos[i] or {}}
                self._env_obs[i], infos[i] = envs[i].reset()
                self._elapsed[i] = 0
            merged = batch_infos(finals, n)
            merged.update(batch_infos(infos, n))
        else:
            merged = batch_infos(infos, n)
        self._autoreset = done if self.autoreset_mode != AutoresetMode.SAME_STEP else np.zeros(n, dtype=np.bool_)
        return self._batched_obs(range(n)), np.array(rewards, dtype=np.float64), terminated, truncated, merged

    def _check_actions(self, actions: Any) -> Any:
        if self._box_act:
            arr = np.asarray(actions)
            expected = (self.num_envs, *self.single_action_space.shape)
            if arr.shape != expected:
                raise ValueError(f"actions must have shape {expected} (num_envs x action shape), got {arr.shape}")
            kind = arr.dtype.kind
            if kind in "fc":
                if not np.isfinite(arr).all():
                    finite = np.isfinite(arr).reshape(self.num_envs, -1).all(axis=1)
                    bad = np.flatnonzero(~finite).tolist()
                    raise ValueError(f"actions for sub-envs {bad} contain NaN or infinite values")
            elif kind not in "iub":
                raise ValueError(f"actions must be numeric, got dtype {arr.dtype}")
            return arr
        try:
            count = len(actions)
        except TypeError:
            raise ValueError(f"actions must be a batch of {self.num_envs} actions, got {actions!r}") from None
        if count != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one per sub-env), got {count}")
        return actions

    def _batched_obs(self, changed: Sequence[int]) -> Any:
        if self._box_obs and len(changed) == self.num_envs:
            np.stack(self._env_obs, axis=0, out=self._observations)  # as Gymnasium's concatenate does
        elif self._box_obs:
            for i in changed:
                self._observations[i] = self._env_obs[i]
        else:
            self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        if not self.copy:
            return self._observations
        return np.copy(self._observations) if self._box_obs else _copy.deepcopy(self._observations)

    # --- the fast MuJoCo path ----------------------------------------------------------------------------
    def _step_fast(self, indices: list[int], actions: np.ndarray, infos: list[dict[str, Any] | None]) -> None:
        """``MujocoTaskEnv.step`` for the sub-envs in ``indices``: row ``r`` of the batch is sub-env ``indices[r]``;
        the physics on the calling thread alone or with the physics threads (module docstring)."""
        envs, physics = self.envs, self._physics
        for i in indices:
            env = envs[i]
            if env.model is not self._bound_models[i] or env.data is not self._bound_datas[i]:
                self._bound_models[i], self._bound_datas[i] = env.model, env.data
                self._ctrl_low[i], self._ctrl_high[i] = env._ctrl_low, env._ctrl_high
                if physics is not None:
                    physics.bind(i, env.model, env.data)
        if len(indices) == self.num_envs:
            controls = actions.astype(np.float64)
            np.clip(controls, self._ctrl_low, self._ctrl_high, out=controls)
        else:
            controls = actions[indices].astype(np.float64)
            np.clip(controls, self._ctrl_low[indices], self._ctrl_high[indices], out=controls)

        if physics is None or len(indices) < 2:
            self._step_here(indices, controls, infos, len(indices))
            return
        befores: list[tuple[Any, float]] = [None] * len(indices)  # type: ignore[list-item]

        def prepare(row: int) -> int:
            env = envs[indices[row]]
            befores[row] = self._pre(env, controls[row])
            return env.frame_skip

        def here(count: int) -> None:
            self._step_here(indices, controls, infos, count)

        def finish(row: int) -> None:
            i = indices[row]
            self._post(i, envs[i], *befores[row], infos)

        physics.step(indices, prepare, here, finish)

    def _step_here(self, indices: list[int], controls: np.ndarray, infos: list, count: int) -> None:
        """Step the first ``count`` sub-envs of ``indices`` in the calling thread, one at a time (Python, physics,
        Python); ``mj_step`` releases the GIL meanwhile."""
        envs, step = self.envs, mujoco.mj_step
        for row in range(count):
            i = indices[row]
            env = envs[i]
            x_before, time_before = self._pre(env, controls[row])
            step(env.model, env.data, env.frame_skip)  # positional: pybind's keyword path costs more per call
            self._post(i, env, x_before, time_before, infos)

    def _pre(self, env: MujocoTaskEnv, control: np.ndarray) -> tuple[Any, float]:
        """``MujocoTaskEnv.step`` before ``mj_step``: the clipped control into ``data.ctrl``, ``x_before``, time."""
        ctrl = env._ctrl
        ctrl[:] = control
        env._ctrl_norm2 = float(ctrl.dot(ctrl))
        return env._position_for_reward(), env._time

    def _post(self, i: int, env: MujocoTaskEnv, x_before: Any, time_before: float, infos: list) -> None:
        """``MujocoTaskEnv.step`` after ``mj_step``: the env's own ``_finish_step``."""
        (self._env_obs[i], self._reward_list[i], self._termination_list[i], self._truncation_list[i],
         infos[i]) = env._finish_step(x_before, time_before)

    # --- helpers -----------------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every sub-env (or read attribute ``name``); one result per sub-env."""
        results = []
        for sub in self.envs:
            attr = sub.get_wrapper_attr(name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every sub-env."""
        return tuple(sub.get_wrapper_attr(name) for sub in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` of every sub-env: one value for all, or a list/tuple with one per sub-env."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} values (one per sub-env), got {len(values)}")
        for sub, value in zip(self.envs, values):
            sub.set_wrapper_attr(name, value)

    def render(self) -> tuple[Any, ...]:
        return tuple(sub.render() for sub in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        if self._physics is not None:
            self._physics.close()
            self._physics = None
        for sub in self.wrapped_envs:
            sub.close()

    def __repr__(self) -> str:
        name = self.spec.id if self.spec is not None else type(self.envs[0]).__name__
        return f"TaskVectorEnv({name}, num_envs={self.num_envs})"
