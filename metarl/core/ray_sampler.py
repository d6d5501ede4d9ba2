"""Rollout workers as Ray actors behind the vector-env interface every agent already collects with.

:class:`RayVectorEnv` is a :class:`~metarl.envs.vector.TaskVectorEnv` whose ``num_envs`` sub-envs live in ``W`` Ray
actors (:class:`RolloutWorker`, one process each, anywhere in the Ray cluster): sub-envs ``[a_k, b_k)`` of the batch,
a contiguous slice of about ``num_envs / W``, are a local ``TaskVectorEnv`` inside worker ``k``. Each call
(``set_tasks``, ``reset``, ``step``, ...) goes to every worker at once (one remote call per worker) and the slices'
results are put back together in order: observations, rewards, terminations and truncations as NumPy arrays, the
``info`` dicts merged by the same :func:`~metarl.envs.vector.batch_infos` the local env uses. Autoreset, time limits,
seeds (``reset(seed=s)`` gives sub-env ``i`` the seed ``s + i`` whichever worker holds it) and bad-input checks are
the local env's own, so a run gives the same numbers with either sampler (tested for MAML-TRPO, RL² and PEARL).
Agents choose it with two fields of their config (:class:`~metarl.core.agent.AgentConfig`): ``sampler="ray"`` and
``num_workers=W``; :class:`~metarl.core.agent_env.EnvPool` then makes one :class:`WorkerGroup` of ``W`` actors per
agent, which holds the slices of all its vector envs (training and meta-test).

Two levels (issue 19). ``sampler="ray"`` splits at the vector env: every agent's collection loop (MAML-TRPO's
:func:`~metarl.core.sampling.collect_episodes`, RL²/VariBAD's trials, PEARL's transitions and posterior sampling)
keeps running in the learner's process and only the env steps move, so no agent changes and none can tell where its
episodes came from. The price is one round trip per vector step (observations out, actions in); for MuJoCo tasks a
step of a slice costs more than that round trip, for toy tasks it does not (experiments/RESULTS.md, "Ray sampler").
``sampler="ray-episodes"`` also moves the policy: a :func:`~metarl.core.sampling.collect_episodes` call (MAML-TRPO,
CAVIA-TRPO and every agent that collects whole episodes with it) puts the policy and its weights into the object
store once, splits the batch's tasks × episodes into one block per worker (:func:`episode_blocks`: as even as the
grid allows, so a batch of few tasks still spreads over many workers), and each worker rolls out its block's whole
episodes on a local vector env of its own (:meth:`RolloutWorker.collect`, at most the agent's sub-envs per task)
and sends back the padded arrays: one round trip per call instead of one per step. Its episodes equal the local
sampler's run with per-episode random streams (``rollout_streams="per-episode"``, which ``"ray-episodes"`` implies;
see :mod:`metarl.core.sampling`): the shared stream of the default local sampler draws every episode's actions from
one generator in step order, so no split of the batch can reproduce it. Collection by other loops (trials,
transitions) stays step-level under ``"ray-episodes"``.

Faults: a worker that dies (``ray.kill``, a lost node) is replaced by a new actor and the state of its slices is
rebuilt by replaying their journal: the tasks in force and the reset seeds of the last reset of the whole slice
with seeds, and every ``set_tasks``/``reset``/``step`` since (plus every ``set_attr``), then the failed call is
made again. This is exact for environments whose state after ``reset(seed=s)`` depends only on their task and
``s`` (the Gymnasium contract; every metarl env): the test kills a worker mid-iteration and gets the undisturbed
run's numbers. A slice reset without seeds keeps its journal growing until the next seeded reset (every agent here
resets with seeds). ``call``/``get_attr`` are assumed not to change a sub-env. An episode-level collection keeps no
state between calls (each round sets the tasks and resets with seeds), so a worker that dies during one is replaced
and its part of the tasks collected again from the start, with the same seeds.

Resources: each worker asks Ray for ``num_cpus=1`` and workers are spread over the nodes (``SPREAD``); each local
``TaskVectorEnv`` steps its physics on the worker's one thread unless the agent asks for ``physics_threads``.
Ray is imported (by :mod:`metarl.core.distributed`) only when a group is made.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from metarl.envs.base import TaskError
from metarl.envs.vector import TaskVectorEnv, batch_infos, reset_request

from .config import ConfigError
from .distributed import connect

START_TIMEOUT = 120.0
"""seconds the workers of a group may take to start before the request is refused (e.g. the cluster is full)"""
MAX_REPLACEMENTS = 3
"""times one call may replace a dead worker before it gives up"""


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """The per-env info dicts back from Gymnasium's dict-of-arrays (the inverse of ``batch_infos`` on what it
    builds): sub-env ``i``'s dict has key ``k`` where the mask ``infos["_" + k][i]`` is True."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_") and key[1:] in infos:
            continue
        mask = infos.get("_" + key)
        values = unbatch_infos(value, num_envs) if isinstance(value, dict) else value
        for i in range(num_envs):
            if mask is None or mask[i]:
                out[i][key] = values[i]
    return out


class RolloutWorker:
    """The Ray actor: the local :class:`TaskVectorEnv` of each slice it holds, keyed by the vector env's id."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], max_episode_steps: int | None) -> None:
        import metarl.envs  # noqa: F401  (registers the metarl/* ids in this process)

        self.env_id, self.env_kwargs, self.max_episode_steps = env_id, env_kwargs, max_episode_steps
        self.slices: dict[int, TaskVectorEnv] = {}
        self.episode_envs: dict[tuple[int, int], TaskVectorEnv] = {}  # (vector env, sub-envs) -> episode-level env

    def ready(self) -> tuple[int, str]:
        """This worker's process id and Ray node id (placement)."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def make(self, key: int, num_envs: int, vector_kwargs: dict[str, Any], journal: list[tuple]) -> None:
        """A new slice of ``num_envs`` sub-envs, brought to its state by replaying ``journal`` (empty: fresh)."""
        self.drop(key)
        self.slices[key] = TaskVectorEnv(self.env_id, num_envs, env_kwargs=self.env_kwargs,
                                         max_episode_steps=self.max_episode_steps, **vector_kwargs)
        for name, *args in journal:
            getattr(self, name)(key, *args)

    def drop(self, key: int) -> None:
        envs = self.slices.pop(key, None)
        if envs is not None:
            envs.close()
        for size_key in [k for k in self.episode_envs if k[0] == key]:
            self.episode_envs.pop(size_key).close()

    def collect(self, key: int, num_envs: int, vector_kwargs: dict[str, Any], payload: tuple[Any, Any],
                tasks: list[Any], episodes: tuple[int, int], seed: int, offset: int, max_steps: int | None) -> Any:
        """Episodes ``[c, d)`` of ``tasks`` (meta-batch indices ``offset``, ``offset + 1``, ...) with per-episode
        streams, on a local vector env of ``num_envs`` sub-envs made at the first call of this size and kept;
        ``payload``: the policy and its weights, shared or with a leading dimension over the whole meta-batch
        (sliced here)."""
        from .sampling import collect_episodes

        envs = self.episode_envs.get((key, num_envs))
        if envs is None:
            envs = self.episode_envs[(key, num_envs)] = TaskVectorEnv(
                self.env_id, num_envs, env_kwargs=self.env_kwargs, max_episode_steps=self.max_episode_steps,
                **vector_kwargs)
        policy, params = payload
        own = dict(policy.named_parameters())
        part = {name: value[offset:offset + len(tasks)] if name in own and value.dim() > own[name].dim() else value
                for name, value in params.items()}
        first, end = episodes
        return collect_episodes(envs, policy, part, tasks, end - first, seed=seed, generator=torch.Generator(),
                                max_steps=max_steps, streams="per-episode", task_offset=offset, episode_offset=first)

    def set_tasks(self, key: int, tasks: list[Any]) -> tuple[int, str] | None:
        """None, or (index in the slice, message) of a rejected task (the slice's tasks unchanged)."""
        try:
            self.slices[key].set_tasks(tasks)
        except TaskError as err:
            text = str(err)
            index, _, message = text.partition(": ")
            return int(index.split()[-1]), message
        return None

    def get_tasks(self, key: int) -> list[Any]:
        return self.slices[key].get_tasks()

    def reset(self, key: int, seeds: list[int | None], options: dict[str, Any] | None) -> tuple[Any, list[dict]]:
        envs = self.slices[key]
        obs, infos = envs.reset(seed=seeds, options=options)
        return obs, unbatch_infos(infos, envs.num_envs)

    def step(self, key: int, actions: Any) -> tuple[Any, ...]:
        envs = self.slices[key]
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        return obs, rewards, terminated, truncated, unbatch_infos(infos, envs.num_envs)

    def set_attr(self, key: int, name: str, values: list[Any]) -> None:
        self.slices[key].set_attr(name, values)

    def call(self, key: int, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        return self.slices[key].call(name, *args, **kwargs)

    def get_attr(self, key: int, name: str) -> tuple[Any, ...]:
        return self.slices[key].get_attr(name)

    def task_descriptors(self, key: int) -> np.ndarray:
        return self.slices[key].task_descriptors()

    def render(self, key: int) -> tuple[Any, ...]:
        return self.slices[key].render()


class WorkerGroup:
    """``num_workers`` :class:`RolloutWorker` actors of one env (id, ``env_kwargs``, time limit) and the vector envs
    whose slices they hold; replaces a dead worker and restores every slice it held (module docstring)."""

    def __init__(self, env_id: str, num_workers: int, env_kwargs: dict[str, Any] | None = None,
                 max_episode_steps: int | None = None) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
            raise ConfigError(f"num_workers must be a positive integer, got {num_workers!r}")
        self.ray = ray = connect()
        total = ray.cluster_resources().get("CPU", 0)
        if num_workers > total:
            raise ConfigError(f"num_workers={num_workers} Ray workers need {num_workers} CPUs, the Ray cluster has "
                              f"{total:g}: ask for fewer workers or add nodes")
        self.env_id, self.num_workers = env_id, int(num_workers)
        self.env_kwargs, self.max_episode_steps = dict(env_kwargs or {}), max_episode_steps
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(RolloutWorker)
        self.vector_envs: dict[int, RayVectorEnv] = {}
        self._next_key = 0
        self.replacements = 0
        self.workers = [self._start() for _ in range(self.num_workers)]
        self.placement = self._wait_ready(self.workers)

    def _start(self) -> Any:
        return self._actor_class.options(scheduling_strategy="SPREAD").remote(
            self.env_id, self.env_kwargs, self.max_episode_steps)

    def _wait_ready(self, workers: list[Any]) -> list[tuple[int, str]]:
        try:
            return self.ray.get([w.ready.remote() for w in workers], timeout=START_TIMEOUT)
        except self.ray.exceptions.GetTimeoutError:
            for worker in workers:
                self.ray.kill(worker)
            raise ConfigError(f"{len(workers)} Ray workers did not start within {START_TIMEOUT:g} s (the cluster's "
                              f"free CPUs: {self.ray.available_resources().get('CPU', 0):g}): ask for fewer "
                              "num_workers") from None

    def vector_env(self, num_envs: int, strict: bool = True, **vector_kwargs: Any) -> RayVectorEnv:
        """A :class:`RayVectorEnv` of ``num_envs`` sub-envs over the workers: all of them (``strict``: more workers
        than sub-envs is refused) or, when not ``strict``, the first ``min(num_workers, num_envs)``."""
        if strict and self.num_workers > num_envs:
            raise ConfigError(f"num_workers={self.num_workers} is more than the {num_envs} sub-environments this "
                              f"agent steps: use at most {num_envs} workers")
        key, self._next_key = self._next_key, self._next_key + 1
        envs = RayVectorEnv(self, key, num_envs, **vector_kwargs)
        self.vector_envs[key] = envs
        return envs

    def is_dead(self, err: BaseException) -> bool:
        return isinstance(err, self.ray.exceptions.RayActorError)

    def replace(self, k: int) -> None:
        """Worker ``k`` is dead: start a new one and rebuild every slice the old one held."""
        self.ray.kill(self.workers[k])
        self.workers[k] = self._start()
        self.placement[k] = self._wait_ready([self.workers[k]])[0]
        self.replacements += 1
        self.ray.get([envs._restore(k) for envs in self.vector_envs.values() if k in envs.slice_of])

    def close(self) -> None:
        for envs in list(self.vector_envs.values()):
            envs.close()
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []


class RayVectorEnv(VectorEnv):
    """A :class:`TaskVectorEnv` (same constructor settings, same results) whose sub-envs live in the workers of a
    :class:`WorkerGroup`; made by :meth:`WorkerGroup.vector_env`. See the module docstring."""

    def __init__(self, group: WorkerGroup, key: int, num_envs: int, episode_level: bool = False,
                 **vector_kwargs: Any) -> None:
        super().__init__()
        self.group, self.key = group, key
        self.episode_level = bool(episode_level)
        """collect_episodes calls run whole episodes on the workers (sampler "ray-episodes")"""
        self.rollout_streams = "per-episode" if self.episode_level else "shared"
        vector_kwargs.setdefault("physics_threads", 1)
        if vector_kwargs["physics_threads"] is None:
            vector_kwargs["physics_threads"] = 1
        self.vector_kwargs = vector_kwargs
        # a one-env local copy: spaces, time limit, metadata and the task interface (sample_tasks, ...)
        self._local = TaskVectorEnv(group.env_id, 1, env_kwargs=group.env_kwargs,
                                    max_episode_steps=group.max_episode_steps, **vector_kwargs)
        self.num_envs = int(num_envs)
        self.autoreset_mode = AutoresetMode(self._local.autoreset_mode)
        self.max_episode_steps = self._local.max_episode_steps
        self.single_observation_space = self._local.single_observation_space
        self.single_action_space = self._local.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(self._local.metadata)
        self.render_mode, self.spec = self._local.render_mode, self._local.spec
        self.physics_threads = 1  # no physics in this process (metarl.core.sampling.torch_threads_for_rollouts)
        self._box_act = self._local._box_act
        workers = min(group.num_workers, self.num_envs)
        bounds = np.linspace(0, self.num_envs, workers + 1).round().astype(int)
        self.bounds = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.slice_of = {k: k for k in range(workers)}  # worker -> its slice of this env
        self._journal: list[list[tuple]] = [[] for _ in range(workers)]
        self._attrs: list[list[tuple]] = [[] for _ in range(workers)]
        self._tasks: list[Any] = [None] * workers  # the tasks last set on each slice (None: never)
        self._obs: list[Any] = [None] * workers
        self._closed = False
        self._run_all("make", lambda k: (self.bounds[k][1] - self.bounds[k][0], self.vector_kwargs, []),
                      journal=False)

    # --- remote calls, with dead workers replaced ---------------------------------------------------------
    def _restore(self, k: int) -> Any:
        a, b = self.bounds[k]
        return self.group.workers[k].make.remote(self.key, b - a, self.vector_kwargs,
                                                 self._attrs[k] + self._journal[k])

    def _run_all(self, name: str, args_of: Any, *, workers: Sequence[int] | None = None,
                 journal: bool = True) -> dict[int, Any]:
        """``worker.name(key, *args_of(k))`` on each worker ``k`` at once; results by worker. A worker found dead
        is replaced (its slices restored) and the call made again on it; on success the call joins the journal."""
        workers = list(range(len(self.bounds))) if workers is None else list(workers)
        pending = {k: getattr(self.group.workers[k], name).remote(self.key, *args_of(k)) for k in workers}
        results: dict[int, Any] = {}
        tries = dict.fromkeys(workers, 0)
        while pending:
            k, ref = next(iter(pending.items()))
            try:
                results[k] = self.group.ray.get(ref)
            except Exception as err:
                if not self.group.is_dead(err):
                    raise
                tries[k] += 1
                if tries[k] > MAX_REPLACEMENTS:
                    raise RuntimeError(f"Ray worker {k} of {self} died {tries[k]} times in one call") from err
                self.group.replace(k)
                pending[k] = getattr(self.group.workers[k], name).remote(self.key, *args_of(k))
                continue
            del pending[k]
        if journal:
            for k in workers:
                self._journal[k].append((name, *args_of(k)))
        return results

    # --- tasks -------------------------------------------------------------------------------------------
    @property
    def single_task_env(self) -> Any:
        """A local env's task interface (``sample_tasks``, ``task_descriptor``, ...), as ``TaskVectorEnv``'s."""
        return self._local.single_task_env

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        """As :meth:`TaskVectorEnv.set_tasks`, all or nothing over the workers."""
        if isinstance(tasks, (str, bytes, dict)) or not isinstance(tasks, Sequence):
            raise ValueError(f"tasks must be a sequence of {self.num_envs} tasks, got {type(tasks).__name__}")
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks (one per sub-env), got {len(tasks)}")
        tasks = list(tasks)
        previous = self._run_all("get_tasks", lambda k: (), journal=False)
        rejected = self._run_all("set_tasks", lambda k: (tasks[slice(*self.bounds[k])],), journal=False)
        failed = [(k, r) for k, r in rejected.items() if r is not None]
        if failed:
            done = [k for k, r in rejected.items() if r is None]
            self._run_all("set_tasks", lambda k: (previous[k],), workers=done, journal=False)
            k, (index, message) = min(failed)
            raise TaskError(f"task {self.bounds[k][0] + index}: {message}")
        for k in rejected:
            self._tasks[k] = tasks[slice(*self.bounds[k])]
            self._journal[k].append(("set_tasks", self._tasks[k]))

    def get_tasks(self) -> list[Any]:
        results = self._run_all("get_tasks", lambda k: (), journal=False)
        return [task for k in sorted(results) for task in results[k]]

    def task_descriptors(self) -> np.ndarray:
        results = self._run_all("task_descriptors", lambda k: (), journal=False)
        return np.concatenate([results[k] for k in sorted(results)])

    # --- reset and step ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """As :meth:`TaskVectorEnv.reset`: ``seed`` an int (sub-env ``i`` gets ``seed + i``) or one per sub-env."""
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            super().reset(seed=int(seed))
        seeds, options, mask = reset_request(seed, options, self.num_envs)
        seeds = [None if s is None else int(s) for s in seeds]
        if "tasks" in options:
            self.set_tasks(options.pop("tasks"))
        workers = [k for k, (a, b) in enumerate(self.bounds) if mask is None or mask[a:b].any()]

        def args_of(k: int) -> tuple:
            a, b = self.bounds[k]
            sub = dict(options)
            if mask is not None and not mask[a:b].all():
                sub["reset_mask"] = mask[a:b].copy()
            return seeds[a:b], sub or None

        for k in workers:  # a seeded reset of a whole slice fixes its state: the journal starts again there
            a, b = self.bounds[k]
            if (mask is None or mask[a:b].all()) and all(s is not None for s in seeds[a:b]):
                self._journal[k] = [] if self._tasks[k] is None else [("set_tasks", self._tasks[k])]
        results = self._run_all("reset", args_of, workers=workers)
        infos: list[dict[str, Any] | None] = [None] * self.num_envs
        for k, (obs, slice_infos) in results.items():
            self._obs[k] = obs
            a, _ = self.bounds[k]
            for j, info in enumerate(slice_infos):
                if mask is None or mask[a + j]:
                    infos[a + j] = info
        return self._batched_obs(), batch_infos(infos, self.num_envs)

    def step(self, actions: Any):
        """As :meth:`TaskVectorEnv.step` (the same checks of ``actions`` here, before any worker is called)."""
        actions = TaskVectorEnv._check_actions(self, actions)  # its checks read num_envs, _box_act and the spaces
        if isinstance(actions, np.ndarray):
            parts = [actions[a:b].copy() for a, b in self.bounds]  # the journal keeps them
        else:
            rows = list(iterate(self.action_space, actions))
            parts = [concatenate(self.single_action_space, rows[a:b],
                                 create_empty_array(self.single_action_space, n=b - a)) for a, b in self.bounds]
        results = self._run_all("step", lambda k: (parts[k],))
        infos: list[dict[str, Any]] = []
        for k in range(len(self.bounds)):
            self._obs[k] = results[k][0]
            infos.extend(results[k][4])
        rewards, terminated, truncated = (np.concatenate([results[k][i] for k in range(len(self.bounds))])
                                          for i in (1, 2, 3))
        return self._batched_obs(), rewards, terminated, truncated, batch_infos(infos, self.num_envs)

    def _batched_obs(self) -> Any:
        if any(obs is None for obs in self._obs):
            raise RuntimeError("call reset() before step()")
        if all(isinstance(obs, np.ndarray) for obs in self._obs):
            return np.concatenate(self._obs)
        rows = [row for k, obs in enumerate(self._obs)
                for row in iterate(batch_space(self.single_observation_space, self.bounds[k][1] - self.bounds[k][0]),
                                   obs)]
        return concatenate(self.single_observation_space, rows,
                           create_empty_array(self.single_observation_space, n=self.num_envs))

    # --- whole episodes on the workers (sampler "ray-episodes") --------------------------------------------
    def collect_episodes(self, policy: Any, params: dict[str, torch.Tensor], tasks: Sequence[Any],
                         episodes_per_task: int, *, seed: int, max_steps: int | None = None,
                         streams: str = "per-episode") -> Any:
        """:func:`~metarl.core.sampling.collect_episodes` with per-episode streams, one block of tasks × episodes
        per worker (module docstring), called by it after its checks of the request; the same episodes as the local
        call. ``env_seconds`` is the wall time of the
        whole remote collection (the workers' policy included), ``policy_seconds`` 0."""
        from .outcomes import record_episodes
        from .sampling import Episodes

        if streams != "per-episode":
            raise ValueError("episode-level Ray collection needs per-episode random streams (rollout_streams)")
        num_tasks = len(tasks)
        start = perf_counter()
        per_task = self.num_envs // num_tasks
        blocks = episode_blocks(num_tasks, int(episodes_per_task), self.group.num_workers)
        device = next(iter(params.values())).device
        payload = self.group.ray.put((copy.deepcopy(policy).cpu(), {k: v.detach().cpu() for k, v in params.items()}))
        tasks = list(tasks)

        def args_of(k: int) -> tuple:
            (a, b), (c, d) = blocks[k]
            return ((b - a) * min(per_task, d - c), self.vector_kwargs, payload, tasks[a:b], (c, d), int(seed), a,
                    max_steps)

        results = self._run_all("collect", args_of, workers=range(len(blocks)), journal=False)
        horizon = max(r.mask.shape[2] for r in results.values())

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros(*t.shape[:2], horizon - t.shape[2], *t.shape[3:])], dim=2)

        def joined(get: Any) -> Any:
            """Blocks back into ``[tasks, episodes, ...]``: episode blocks side by side, task groups stacked."""
            rows: dict[tuple[int, int], list] = {}
            for k, ((a, b), _) in enumerate(blocks):
                rows.setdefault((a, b), []).append(get(results[k]))
            cat = np.concatenate if isinstance(get(results[0]), np.ndarray) else torch.cat
            return cat([cat(parts, 1) for _, parts in sorted(rows.items())], 0)

        successes = None
        if any(r.successes is not None for r in results.values()):
            successes = joined(lambda r: r.successes if r.successes is not None
                               else torch.full(r.terminated.shape, float("nan"), dtype=r.rewards.dtype))
            record_episodes(successes.numpy())
            successes = successes.to(device)
        return Episodes(
            observations=joined(lambda r: padded(r.observations)).to(device),
            actions=joined(lambda r: padded(r.actions)).to(device),
            rewards=joined(lambda r: padded(r.rewards)).to(device),
            mask=joined(lambda r: padded(r.mask)).to(device), terminated=joined(lambda r: r.terminated),
            reset_seeds=joined(lambda r: r.reset_seeds), env_seconds=perf_counter() - start, policy_seconds=0.0,
            successes=successes)

    # --- helpers -----------------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Method ``name`` of every sub-env (or attribute ``name``); assumed not to change the sub-envs."""
        results = self._run_all("call", lambda k: (name, args, kwargs), journal=False)
        return tuple(r for k in sorted(results) for r in results[k])

    def get_attr(self, name: str) -> tuple[Any, ...]:
        results = self._run_all("get_attr", lambda k: (name,), journal=False)
        return tuple(r for k in sorted(results) for r in results[k])

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} values (one per sub-env), got {len(values)}")
        self._run_all("set_attr", lambda k: (name, list(values[slice(*self.bounds[k])])), journal=False)
        for k, (a, b) in enumerate(self.bounds):
            self._attrs[k].append(("set_attr", name, list(values[a:b])))

    def render(self) -> tuple[Any, ...]:
        results = self._run_all("render", lambda k: (), journal=False)
        return tuple(r for k in sorted(results) for r in results[k])

    def close_extras(self, **kwargs: Any) -> None:
        if self._closed:
            return
        self._closed = True
        self._local.close()
        self.group.vector_envs.pop(self.key, None)
        for worker in self.group.workers[:len(self.bounds)]:
            try:
                worker.drop.remote(self.key)
            except Exception:  # a dead worker holds nothing
                pass

    def __repr__(self) -> str:
        return f"RayVectorEnv({self.group.env_id}, num_envs={self.num_envs}, workers={len(self.bounds)})"


def episode_blocks(num_tasks: int, num_episodes: int,
                   num_workers: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The blocks ``((task a, task b), (episode c, episode d))`` a batch of ``num_tasks`` × ``num_episodes`` is split
    into for ``num_workers`` workers: a grid of task groups × episode groups (contiguous, as even as
    ``np.array_split`` makes them) of at most ``num_workers`` blocks whose largest block is smallest (then: fewest
    blocks), in task-major order."""
    best = None
    for task_groups in range(1, min(num_workers, num_tasks) + 1):
        episode_groups = min(num_workers // task_groups, num_episodes)
        largest = math.ceil(num_tasks / task_groups) * math.ceil(num_episodes / episode_groups)
        key = (largest, task_groups * episode_groups)
        if best is None or key < best[0]:
            best = (key, task_groups, episode_groups)
    _, task_groups, episode_groups = best

    def bounds(n: int, groups: int) -> list[tuple[int, int]]:
        return [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(n), groups)]

    return [(t, e) for t in bounds(num_tasks, task_groups) for e in bounds(num_episodes, episode_groups)]


def make_vector_env(env_id: str, num_envs: int, num_workers: int, *, env_kwargs: dict[str, Any] | None = None,
                    max_episode_steps: int | None = None, **vector_kwargs: Any) -> RayVectorEnv:
    """A stand-alone :class:`RayVectorEnv` with its own :class:`WorkerGroup` (closed with it)."""
    group = WorkerGroup(env_id, num_workers, env_kwargs, max_episode_steps)
    envs = group.vector_env(num_envs, **vector_kwargs)
    original = envs.close_extras

    def close_all(**kwargs: Any) -> None:
        original(**kwargs)
        group.close()

    envs.close_extras = close_all  # type: ignore[method-assign]
    return envs


__all__ = ["RayVectorEnv", "RolloutWorker", "WorkerGroup", "episode_blocks", "make_vector_env", "unbatch_infos"]
