"""Per-task replay buffers in one preallocated tensor per field, for off-policy meta-RL (PEARL, the oracle).

:class:`TaskReplayBuffer` holds ``num_tasks`` ring buffers of ``capacity`` transitions each. Every field (e.g.
``observations``, ``actions``, ``rewards``, ``next_observations``, ``terminated``) is one tensor
``[num_tasks, capacity, *shape]``, so a batch for a whole meta-batch of tasks is one advanced-indexing op::

    buffer = TaskReplayBuffer(num_tasks=40, capacity=10_000, fields={"observations": (2,), "rewards": ()})
    buffer.add(task_ids, {"observations": obs, "rewards": rewards})     # transitions of any tasks, in order
    batch = buffer.sample(torch.tensor([3, 7, 7]), 256, generator)     # each field [3, 256, *shape]

Sampling is uniform with replacement among the transitions a task holds (as rlkit/PEARL's ``random_batch``).
When a task's buffer is full the oldest transitions are overwritten first. :meth:`clear` empties tasks (PEARL's
encoder buffer keeps only the most recent data of a task). :meth:`state_dict` holds only the filled part, as plain
tensors, so checkpoints load with ``torch.load(weights_only=True)``.

:func:`collect_transitions` fills such buffers: a fixed number of transitions per task from a task vector env.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .outcomes import EpisodeSuccess, record_episodes, step_successes


class TaskReplayBuffer:
    """``num_tasks`` ring buffers of ``capacity`` transitions, each field one tensor ``[num_tasks, capacity, ...]``.

    Args:
        num_tasks: how many tasks (task ids are ``0 .. num_tasks - 1``).
        capacity: transitions kept per task (the oldest are overwritten first).
        fields: name -> shape of one transition's entry (``()`` for scalars).
        dtype: dtype of every field; device: where the storage lives (sampling happens there).
    """

    def __init__(self, num_tasks: int, capacity: int, fields: Mapping[str, Sequence[int]],
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        for name, value in (("num_tasks", num_tasks), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not fields:
            raise ValueError("a replay buffer needs at least one field")
        self.num_tasks, self.capacity = num_tasks, capacity
        self.device = torch.device(device)
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in fields.items()}
        # torch.empty: the operating system commits memory only as transitions are written
        self.storage = {name: torch.empty(num_tasks, capacity, *shape, dtype=dtype, device=self.device)
                        for name, shape in self.shapes.items()}
        self.sizes = torch.zeros(num_tasks, dtype=torch.long, device=self.device)
        self.pointers = torch.zeros(num_tasks, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        """Transitions held over all tasks."""
        return int(self.sizes.sum())

    def add(self, task_ids: torch.Tensor | Sequence[int], data: Mapping[str, torch.Tensor]) -> None:
        """Append transitions: ``task_ids`` ``[n]`` says which task each row of every ``data[field]`` ``[n, ...]``
        belongs to; rows of the same task are stored in the order given. Every field must be present."""
        task_ids = torch.as_tensor(task_ids, dtype=torch.long, device=self.device).reshape(-1)
        n = task_ids.shape[0]
        if set(data) != set(self.shapes):
            raise ValueError(f"add needs exactly the fields {sorted(self.shapes)}, got {sorted(data)}")
        for name, value in data.items():
            if tuple(value.shape) != (n, *self.shapes[name]):
                raise ValueError(f"field {name!r} has shape {tuple(value.shape)}, expected {(n, *self.shapes[name])}")
        if n == 0:
            return
        if task_ids.min() < 0 or task_ids.max() >= self.num_tasks:
            raise ValueError(f"task ids must lie in [0, {self.num_tasks - 1}], got {task_ids.tolist()}")
        # the rank of each row among the rows of its own task, in order: one cumulative sum over one-hot rows
        one_hot = torch.nn.functional.one_hot(task_ids, self.num_tasks)
        rank = (one_hot.cumsum(0) - 1).gather(1, task_ids[:, None]).squeeze(1)
        counts = one_hot.sum(0)
        # more rows than capacity for a task: only its last `capacity` rows survive (no duplicate write slots)
        keep = rank >= (counts[task_ids] - self.capacity)
        slots = (self.pointers[task_ids] + rank) % self.capacity
        rows, slots, tasks = keep.nonzero().squeeze(1), slots[keep], task_ids[keep]
        for name, value in data.items():
            self.storage[name][tasks, slots] = value[rows].to(self.storage[name].dtype).to(self.device)
        self.pointers = (self.pointers + counts) % self.capacity
        self.sizes = torch.clamp(self.sizes + counts, max=self.capacity)

    def sample(self, task_ids: torch.Tensor | Sequence[int], batch_size: int,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of ``batch_size`` transitions per entry of ``task_ids`` ``[m]`` (repeats allowed), uniform with
        replacement within each task: every field ``[m, batch_size, ...]``. Raises if a requested task is empty."""
        task_ids = torch.as_tensor(task_ids, dtype=torch.long, device=self.device).reshape(-1)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sizes = self.sizes[task_ids]
        if bool((sizes == 0).any()):
            empty = sorted(set(task_ids[sizes == 0].tolist()))
            raise ValueError(f"cannot sample from empty task buffers {empty}: collect data for them first")
        uniform = torch.rand(task_ids.shape[0], batch_size, generator=generator, device=self.device)
        index = (uniform * sizes[:, None]).long().clamp_(max=self.capacity - 1)
        return {name: storage[task_ids[:, None], index] for name, storage in self.storage.items()}

    def clear(self, task_ids: torch.Tensor | Sequence[int] | None = None) -> None:
        """Empty the given tasks' buffers (all tasks if None)."""
        if task_ids is None:
            self.sizes.zero_()
            self.pointers.zero_()
            return
        task_ids = torch.as_tensor(task_ids, dtype=torch.long, device=self.device)
        self.sizes[task_ids] = 0
        self.pointers[task_ids] = 0

    def recent(self, task_id: int, count: int) -> dict[str, torch.Tensor]:
        """The ``count`` most recent transitions of one task (fewer if it holds fewer), oldest first."""
        size = int(self.sizes[task_id])
        count = min(count, size)
        slots = (int(self.pointers[task_id]) - count + torch.arange(count, device=self.device)) % self.capacity
        return {name: storage[task_id, slots] for name, storage in self.storage.items()}

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """The filled part of the storage, sizes and write pointers (plain tensors: weights_only-safe)."""
        filled = int(self.sizes.max()) if self.num_tasks else 0
        return {
            "capacity": self.capacity,
            "sizes": self.sizes.cpu().clone(),
            "pointers": self.pointers.cpu().clone(),
            "storage": {name: storage[:, :filled].cpu().clone() for name, storage in self.storage.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity {state['capacity']} in the checkpoint differs from {self.capacity}")
        storage = state["storage"]
        if set(storage) != set(self.shapes):
            raise ValueError(f"replay fields {sorted(storage)} in the checkpoint differ from {sorted(self.shapes)}")
        sizes = torch.as_tensor(state["sizes"], dtype=torch.long)
        if sizes.shape != (self.num_tasks,):
            raise ValueError(f"the checkpoint's replay holds {sizes.shape[0]} tasks, this buffer {self.num_tasks}")
        for name, value in storage.items():
            filled = value.shape[1]
            self.storage[name][:, :filled] = value.to(self.storage[name].dtype).to(self.device)
        self.sizes = sizes.to(self.device)
        self.pointers = torch.as_tensor(state["pointers"], dtype=torch.long).to(self.device)


def transition_fields(obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    """The field shapes of the transitions :func:`collect_transitions` returns, for a :class:`TaskReplayBuffer`."""
    return {"observations": (obs_dim,), "actions": (action_dim,), "rewards": (), "next_observations": (obs_dim,),
            "terminated": ()}


def collect_transitions(envs: Any, tasks: Sequence[Any], steps: int, act: Callable[[np.ndarray], np.ndarray],
                        on_episode_start: Callable[[np.ndarray], None], seed: int,
                        ) -> tuple[dict[str, np.ndarray], np.ndarray, list[float]]:
    """``steps`` transitions from each of ``len(tasks)`` sub-envs of a NEXT_STEP-autoreset ``TaskVectorEnv``, for
    replay: sub-env ``i`` runs ``tasks[i]``; episodes follow each other and the last one is cut at ``steps``.

    ``act(obs [n, obs_dim]) -> actions [n, ...]`` is called once per vector step for all sub-envs;
    ``on_episode_start(indices)`` is called with the sub-envs that start an episode (all of them after the first
    reset, then those just reset by autoreset) before the next ``act``: the place to redraw a per-episode latent.
    The autoreset steps themselves are not transitions and are dropped. Reset seeds come from
    ``np.random.default_rng(seed)``. Returns ``(fields, env_index, finished_returns)``: ``fields`` maps
    observations, actions, rewards, next_observations and terminated (float; truncation is not termination) to
    arrays ``[n · steps, ...]`` in time-major order, ``env_index`` ``[n · steps]`` the sub-env of each row, and
    the undiscounted returns of the episodes that finished.
    """
    n = len(tasks)
    if envs.num_envs != n:
        raise ValueError(f"the vector env has {envs.num_envs} sub-envs for {n} tasks: one sub-env per task")
    envs.set_tasks(list(tasks))
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n)
    obs, _ = envs.reset(seed=[int(s) for s in seeds])
    on_episode_start(np.arange(n))
    counts = np.zeros(n, dtype=np.int64)
    resetting = np.zeros(n, dtype=np.bool_)
    running, finished = np.zeros(n), []
    success = EpisodeSuccess(n)
    rows: list[tuple] = []
    while counts.min() < steps:
        action = np.asarray(act(obs))
        next_obs, reward, term, trunc, infos = envs.step(action)
        keep = ~resetting & (counts < steps)  # a NEXT_STEP autoreset step is not a transition
        rows.append((keep, obs, action, reward, next_obs, term))
        counts += keep
        running += reward * keep
        success.update(*step_successes(infos, n), keep)
        ended = keep & (term | trunc)
        finished += running[ended].tolist()
        running[ended] = 0.0
        record_episodes(success.values(ended))
        success.clear(ended)
        if resetting.any():
            on_episode_start(np.flatnonzero(resetting))
        resetting = ~resetting & (term | trunc)
        obs = next_obs
    keep = np.stack([r[0] for r in rows])
    names = ("observations", "actions", "rewards", "next_observations", "terminated")
    fields = {name: np.stack([r[k] for r in rows])[keep].astype(np.float32) for k, name in enumerate(names, 1)}
    env_index = np.broadcast_to(np.arange(n), keep.shape)[keep]
    return fields, env_index, finished


@torch.no_grad()
def collect_conditioned(envs: Any, tasks: Sequence[Any], steps: int, actor: Any,
                        latents: Callable[[torch.Tensor], torch.Tensor], latent_dim: int, generator: torch.Generator,
                        seed: int, device: torch.device | str = "cpu",
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[float]]:
    """:func:`collect_transitions` with a SAC ``actor`` (``actor.sample(inputs, generator)``) acting on ``[obs, z]``,
    z ``[len(tasks), latent_dim]`` redrawn as ``latents(indices)`` for the sub-envs that start an episode. Returns
    the fields as tensors on ``device``, the sub-env index of each row (a tensor) and the finished returns."""
    z = torch.zeros(len(tasks), latent_dim, device=device)

    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return actor.sample(torch.cat([obs_t, z], -1), generator)[0].cpu().numpy()

    def new_episode(index: np.ndarray) -> None:
        z[index] = latents(torch.as_tensor(index))

    fields, env_index, returns = collect_transitions(envs, tasks, steps, act, new_episode, seed)
    data = {name: torch.as_tensor(value, device=device) for name, value in fields.items()}
    return data, torch.as_tensor(env_index), returns
