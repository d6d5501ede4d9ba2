"""The plumbing every meta-RL agent shares, written once: making and checking its environment, its vector envs,
per-stream generators, the checks of a meta-test request and of a checkpoint, and a memory check up front.

An agent's constructor reads, in this order::

    probe = make_task_env(env_id, config)    # one-line ValueError: unknown id, bad env_kwargs, not a task env
    check_memory(self.name, num_envs, env_bytes_estimate(probe))   # refuse what cannot fit, before building it
    self.env_pool = EnvPool(env_id, config)   # its vector envs: made, kept for meta-test by size, closed together
    self.envs = self.env_pool.make(num_envs)

and its meta-test and checkpoint methods start with :func:`check_test_request` and :func:`check_checkpoint`. Its
``state_dict`` / ``load_state_dict`` are :func:`agent_state` / :func:`load_agent_state` of its parts (networks,
optimisers, replay buffers) and counters; its ``render_episodes`` plays meta-test episodes under
:meth:`EnvPool.record`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.envs.base import is_task_env
from metarl.envs.recording import FrameRecorder, make_recording_envs
from metarl.envs.vector import TaskVectorEnv

from .seeding import derive_seed

SMALL_ENV_BYTES = 4 * 2**10
"""Host memory one sub-environment takes at least (a lower bound, from a Bernoulli bandit's)."""
MUJOCO_ENV_BYTES = 2**20
"""Host memory one MuJoCo sub-environment takes at least (its model and data)."""


def env_bytes_estimate(env: gym.Env) -> int:
    """A lower bound of the host memory one more sub-environment like ``env`` takes (:func:`check_memory`)."""
    unwrapped = env.unwrapped
    return MUJOCO_ENV_BYTES if hasattr(unwrapped, "model") and hasattr(unwrapped, "data") else SMALL_ENV_BYTES

TASK_ENV_METHODS = "env.unwrapped needs sample_tasks, set_task and get_task (see metarl.envs.base)"


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, max_episode_steps: int | None = None,
             **make_kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id, **env_kwargs)`` with a one-line ``ValueError`` naming the env when it cannot be made:
    an unknown id or module, or a keyword argument the environment does not take (``env_kwargs={"bogus": 1}``)."""
    env_kwargs = dict(env_kwargs or {})
    extra = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    try:
        return gym.make(env_id, **env_kwargs, **extra, **make_kwargs)
    except TypeError as err:
        bad = re.search(r"keyword argument '(\w+)'", str(err))
        if bad is None:
            raise ValueError(f"cannot make environment {env_id!r} with env_kwargs {env_kwargs}: {_one_line(err)}") \
                from None
        raise ValueError(f"cannot make environment {env_id!r}: it takes no keyword argument {bad.group(1)!r} "
                         f"(env_kwargs {env_kwargs})") from None
    except (gym.error.Error, ImportError, AttributeError) as err:
        raise ValueError(f"cannot make environment {env_id!r}: {_one_line(err)}") from None


def check_task_env(env: gym.Env, env_id: str) -> None:
    """One-line ``ValueError`` unless ``env.unwrapped`` implements the task methods."""
    if not is_task_env(env):
        raise ValueError(f"{env_id} is not a task environment: {TASK_ENV_METHODS}")


def make_task_env(env_id: str, config: Any) -> gym.Env:
    """The agent's probe: one env made from ``config.env_kwargs`` (and ``config.max_episode_steps``) and checked to
    be a task environment; the caller reads its spaces and task methods, then closes it. One-line errors."""
    env = make_env(env_id, config.env_kwargs, config.max_episode_steps)
    try:
        check_task_env(env, env_id)
    except ValueError:
        env.close()
        raise
    return env


def available_memory() -> int | None:
    """Bytes of host memory available to new allocations (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.3g} EiB"


def check_memory(agent: str, num_envs: int, env_bytes: int = SMALL_ENV_BYTES, extra_bytes: int = 0,
                 what: str = "") -> None:
    """Refuse (one-line ``ValueError``) a request whose ``num_envs`` sub-envs at ``env_bytes`` each, plus
    ``extra_bytes``, exceed the available host memory, naming the size it would need; nothing is built first.
    ``what`` says where the count comes from (e.g. ``"meta_batch_size x envs_per_task"``)."""
    need = int(num_envs) * int(env_bytes) + int(extra_bytes)
    have = available_memory()
    if have is not None and need > have:
        source = f" ({what})" if what else ""
        raise ValueError(f"{agent}: {num_envs} sub-environments{source} need at least {_size(need)} of memory, "
                         f"{_size(have)} is available: make the request smaller")


def stream_generator(seed: int, *stream: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by ``derive_seed(seed, *stream)``: one per named random stream."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *stream))


def check_test_request(tasks: list[Any], num_episodes: int) -> None:
    """One-line ``ValueError`` unless ``num_episodes`` is a positive integer and there is at least one task."""
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, (int, np.integer)) or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
    if len(tasks) < 1:
        raise ValueError("meta_test needs at least one task")


def check_checkpoint(state: dict[str, Any], name: str) -> None:
    """One-line ``ValueError`` unless ``state`` is a ``state_dict`` of agent ``name``."""
    found = state.get("name") if isinstance(state, dict) else None
    if found != name:
        raise ValueError(f"this checkpoint is from agent {found!r}, not {name!r}")


def _copied(state: Any) -> Any:
    """``state`` with every tensor in it (nested in mappings) a detached copy, mappings as plain dicts."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, Mapping):
        return {key: _copied(value) for key, value in state.items()}
    return state


def agent_state(agent: Any, parts: Mapping[str, Any], counters: Sequence[str], copy: bool = False,
                **extra: Any) -> dict[str, Any]:
    """An agent's ``state_dict``: its ``name`` and ``config`` (as a dict), then each of ``parts`` (anything with a
    ``state_dict``: networks, optimisers, replay buffers; a ``None`` part, one this configuration does not have, as
    an empty dict) under its key, the integer attributes named in ``counters``, and the ``extra`` entries as given.
    ``copy``: the parts' tensors are detached copies, so that training on does not change the returned state."""
    state: dict[str, Any] = {"name": agent.name, "config": dataclasses.asdict(agent.config)}
    for key, part in parts.items():
        part_state = {} if part is None else part.state_dict()
        state[key] = _copied(part_state) if copy else part_state
    state.update({name: getattr(agent, name) for name in counters})
    state.update(extra)
    return state


def load_agent_state(agent: Any, state: dict[str, Any], parts: Mapping[str, Any], counters: Sequence[str]) -> None:
    """Load an :func:`agent_state` into ``agent``: :func:`check_checkpoint`, each (not ``None``) part's
    ``load_state_dict`` from its key, the ``counters`` as ints (the ``extra`` entries are the caller's to load)."""
    check_checkpoint(state, agent.name)
    for key, part in parts.items():
        if part is not None:
            part.load_state_dict(state[key])
    for name in counters:
        setattr(agent, name, int(state[name]))


def terminal_progress(steps: Iterable[Any], desc: str, enabled: bool = True) -> Iterable[Any]:
    """``steps`` under a transient tqdm bar (``desc``) when ``enabled`` and stderr is a terminal, else as they are."""
    from tqdm import tqdm

    return tqdm(steps, desc=desc, leave=False, disable=not (enabled and sys.stderr.isatty()))


def task_numbers(task: Any) -> np.ndarray | None:
    """The numbers of a task, flattened into a float32 vector: a number, a dict (entries in sorted key order) or
    dataclass (fields in their order) of numbers, tuples/lists/arrays of numbers, nested; None when anything in
    it is not a number (a string, None, an object)."""
    values: list[float] = []

    def walk(item: Any) -> bool:
        if isinstance(item, bool) or item is None or isinstance(item, (str, bytes)):
            return False
        if isinstance(item, (int, float, np.integer, np.floating)):
            values.append(float(item))
            return True
        if isinstance(item, np.ndarray):
            if not np.issubdtype(item.dtype, np.number):
                return False
            values.extend(float(v) for v in item.reshape(-1))
            return True
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return all(walk(getattr(item, f.name)) for f in dataclasses.fields(item))
        if isinstance(item, dict):
            return all(isinstance(k, str) for k in item) and all(walk(item[k]) for k in sorted(item))
        if isinstance(item, (tuple, list)):
            return all(walk(v) for v in item)
        return False

    if not walk(task) or not values:
        return None
    return np.asarray(values, dtype=np.float32)


class EnvPool:
    """The vector envs of one agent, all made alike from ``(env_id, config)``: :meth:`make` builds one, :meth:`test`
    keeps one per number of tasks for meta-test, :meth:`recording` a one-env ``rgb_array`` copy for videos, and
    :meth:`close` closes every env it made and kept. ``vector_kwargs`` go to every :class:`TaskVectorEnv`
    (e.g. RL²'s ``autoreset_mode``).

    Every vector env carries the config's random streams of :func:`~metarl.core.sampling.collect_episodes` as
    ``rollout_streams``. With ``config.sampler`` ``"ray"`` or ``"ray-episodes"`` the vector envs are
    :class:`~metarl.core.ray_sampler.RayVectorEnv` (the same interface and results) over one group of
    ``config.num_workers`` Ray actors, started at the first :meth:`make` (the agent's training envs: more workers
    than their sub-envs is refused there) and shared by the meta-test envs (spread over at most as many workers as
    they have sub-envs); :meth:`close` stops the actors."""

    def __init__(self, env_id: str, config: Any, **vector_kwargs: Any) -> None:
        self.env_id, self.config, self.vector_kwargs = env_id, config, vector_kwargs
        self._kept: list[TaskVectorEnv] = []
        self._test: dict[int, TaskVectorEnv] = {}
        self._workers: Any = None  # the Ray worker group (sampler "ray"), made at the first make()

    def _make_ray(self, num_envs: int) -> Any:
        from .ray_sampler import WorkerGroup  # imports Ray: only for sampler "ray"

        strict = self._workers is None
        if strict:
            if self.config.num_workers > num_envs:  # refused before any actor starts
                raise ValueError(f"num_workers={self.config.num_workers} is more than the {num_envs} "
                                 f"sub-environments this agent steps: use at most {num_envs} workers")
            self._workers = WorkerGroup(self.env_id, self.config.num_workers, self.config.env_kwargs,
                                        self.config.max_episode_steps)
        return self._workers.vector_env(num_envs, strict=strict, episode_level=self.config.sampler == "ray-episodes",
                                        **self.vector_kwargs)

    def make(self, num_envs: int, keep: bool = True) -> TaskVectorEnv:
        """A new vector env of ``num_envs`` sub-envs; closed by :meth:`close` unless ``keep`` is False (the caller
        closes it)."""
        try:
            if getattr(self.config, "sampler", "local") != "local":
                envs = self._make_ray(num_envs)
            else:
                envs = TaskVectorEnv(self.env_id, num_envs, env_kwargs=self.config.env_kwargs,
                                     max_episode_steps=self.config.max_episode_steps, **self.vector_kwargs)
            envs.rollout_streams = getattr(self.config, "streams", "shared")  # read by collect_episodes
        except (gym.error.Error, TypeError) as err:
            raise ValueError(f"cannot make environment {self.env_id!r}: {_one_line(err)}") from None
        if keep:
            self._kept.append(envs)
        return envs

    def test(self, num_envs: int) -> TaskVectorEnv:
        """The meta-test vector env of ``num_envs`` sub-envs, made at the first request and kept."""
        if num_envs not in self._test:
            self._test[num_envs] = self.make(num_envs, keep=False)
        return self._test[num_envs]

    def recording(self) -> tuple[TaskVectorEnv, FrameRecorder]:
        """A one-env ``rgb_array`` vector env and its frame recorder (the caller closes the env)."""
        autoreset = self.vector_kwargs.get("autoreset_mode")
        extra = {} if autoreset is None else {"autoreset_mode": autoreset}
        return make_recording_envs(self.env_id, self.config.env_kwargs, self.config.max_episode_steps, **extra)

    def record(self, play: Callable[[TaskVectorEnv], Any]) -> list[list[np.ndarray]]:
        """The RGB frames, one list per episode, of the episodes ``play(envs)`` runs on a :meth:`recording` env
        (closed after, also when ``play`` raises)."""
        envs, recorder = self.recording()
        try:
            play(envs)
        finally:
            envs.close()
        return recorder.episodes

    def close(self) -> None:
        for envs in [*self._kept, *self._test.values()]:
            envs.close()
        self._kept.clear()
        self._test.clear()
        if self._workers is not None:
            self._workers.close()
            self._workers = None
