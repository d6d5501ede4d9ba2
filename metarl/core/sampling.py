"""Collect episodes for a batch of tasks with a :class:`~metarl.envs.vector.TaskVectorEnv` into padded tensors.

:func:`collect_episodes` rolls out ``episodes_per_task`` episodes of every task of a meta-batch under a policy given
as (fast) weights — shared weights, or per-task adapted weights with a leading task dimension — and returns an
:class:`Episodes` batch shaped ``[tasks, episodes, T, ...]`` with a mask of the real steps.

How: the vector env holds ``k = num_envs / len(tasks)`` sub-envs per task (task-major: sub-env ``i`` runs task
``i // k``). Episodes are collected in rounds of one episode per sub-env: every round sets the tasks, resets every
sub-env with its own seed, and steps all of them together until each has finished its episode (sub-envs that are
done early keep being stepped by the vector env's autoreset, and those steps are discarded). Each step runs the
policy once for the whole batch (observations ``[tasks, k, obs_dim]`` against the weights of each task) and samples
every action from one explicit ``torch.Generator``. ``T`` is the longest episode of the batch.

Random streams (``streams``). ``"shared"`` (the default, and what every published MAML-TRPO number used): the
reset seeds of a round come from one ``np.random.default_rng(seed)`` and the actions of the whole batch from the one
``generator``, in step order, so an episode's numbers depend on every other episode of the batch. ``"per-episode"``:
episode ``e`` of task ``g`` (meta-batch indices: ``task_offset`` + the task's position in ``tasks``,
``episode_offset`` + the episode's) draws its reset seed and its actions from a stream of its own, seeded by
``derive_seed(seed, "episode", g, e)`` (``generator`` unused), so an episode is the same whichever sub-env, round
or call collects it: with the whole batch, or any block of tasks × episodes collected on its own — what lets
:class:`~metarl.core.ray_sampler.RayVectorEnv` roll out whole episodes on the workers (``sampler="ray-episodes"``)
with the local sampler's numbers. It costs one small sampling call per sub-env and step. A vector env may carry its
mode as ``rollout_streams`` (:class:`~metarl.core.agent_env.EnvPool` sets it from the agent's config), and one
marked ``episode_level`` (the Ray env of ``sampler="ray-episodes"``) is handed the whole call (its
``collect_episodes``).

Reset seeds are returned (``reset_seeds``), so any episode can be replayed alone: ``env.set_task(task);
env.reset(seed=s)`` and the recorded actions give the recorded observations and rewards exactly (tested).
Truncation by the time limit and termination are both recorded (``terminated`` says which); returns and advantages
treat both as the end of the episode (no bootstrapping, as rllab's MAML-RL).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import torch

from .adaptation import Params
from .device import torch_threads
from .outcomes import EpisodeSuccess, record_episodes, step_successes
from .policies import Policy
from .seeding import derive_seed

MAX_STEPS_WITHOUT_LIMIT = 10_000


@dataclass
class Episodes:
    """A padded batch of episodes, ``[tasks, episodes, T, ...]``; every padded entry is 0."""

    observations: torch.Tensor
    """``[tasks, E, T, obs_dim]``: the observation each action was taken at"""
    actions: torch.Tensor
    """``[tasks, E, T, action_dim]`` float (Box) or ``[tasks, E, T]`` int64 (Discrete), in the policy's units (the
    env got ``policy.env_action(actions)``)"""
    rewards: torch.Tensor
    """``[tasks, E, T]``"""
    mask: torch.Tensor
    """``[tasks, E, T]``: 1.0 for real steps, 0.0 for padding"""
    terminated: torch.Tensor
    """``[tasks, E]`` bool: the episode ended by termination (else by truncation)"""
    reset_seeds: np.ndarray
    """``[tasks, E]`` the seed each episode's sub-env was reset with"""
    env_seconds: float = 0.0
    """wall time spent in ``envs.reset``/``envs.step``"""
    successes: torch.Tensor | None = None
    """``[tasks, E]`` float: 1.0 when ``info["success"]`` was set at any step of the episode, 0.0 when not, NaN where
    no step reported it (:mod:`metarl.core.outcomes`); None when the env reports no success at all"""
    policy_seconds: float = 0.0
    """wall time spent computing and sampling actions"""

    @property
    def lengths(self) -> torch.Tensor:
        """``[tasks, E]`` steps of each episode."""
        return self.mask.sum(-1).long()

    @property
    def returns(self) -> torch.Tensor:
        """``[tasks, E]`` undiscounted return of each episode."""
        return (self.rewards * self.mask).sum(-1)

    @property
    def num_steps(self) -> int:
        """Real environment steps in the batch."""
        return int(self.mask.sum())


def _same_tasks(current: Sequence[Any], wanted: Sequence[Any]) -> bool:
    try:
        return len(current) == len(wanted) and all(bool(a == b) for a, b in zip(current, wanted))
    except (ValueError, TypeError):  # tasks holding arrays: compare by setting them again
        return False


def torch_threads_for_rollouts(envs: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """One torch thread while a vector env that steps its physics on a second thread is rolled out on the CPU
    (:func:`metarl.core.device.torch_threads`; the caller's thread count is restored afterwards).

    torch's intra-op threads take the core that :class:`~metarl.envs.vector.TaskVectorEnv`'s physics threads need,
    and the policy's forward pass on one batch of observations is too small to gain from them. Does nothing on other
    devices or when the vector env has no physics threads. Figures (env-steps/s of a MAML-TRPO iteration with one
    and two torch threads, ``experiments/bench_maml_trpo.py --threads {1,2}``): experiments/RESULTS.md, "Meta-RL:
    MAML-TRPO on 2D navigation (MAML paper spec)", the paragraph on the learner's share.
    """
    if device.type != "cpu" or getattr(envs, "physics_threads", 1) < 2:
        return contextlib.nullcontext()
    return torch_threads(1)


def time_split(seconds: float, learner_seconds: float, *episodes: Episodes) -> dict[str, float]:
    """An iteration's ``time/`` metrics: its wall time ``seconds``, of which sampling ``episodes`` spent
    ``env_seconds`` in the envs and ``policy_seconds`` in the policy, ``learner_seconds`` the learner, and the rest
    (the sampler's bookkeeping around the env and policy calls)."""
    sampling = sum(part.env_seconds + part.policy_seconds for part in episodes)
    return {
        "time/iteration_seconds": seconds,
        "time/env_seconds": sum(part.env_seconds for part in episodes),
        "time/policy_inference_seconds": sum(part.policy_seconds for part in episodes),
        "time/learner_seconds": learner_seconds,
        "time/other_seconds": seconds - sampling - learner_seconds,
    }


def collect_episodes(
    envs: Any,
    policy: Policy,
    params: Params,
    tasks: Sequence[Any],
    episodes_per_task: int,
    *,
    seed: int,
    generator: torch.Generator,
    max_steps: int | None = None,
    streams: str | None = None,
    task_offset: int = 0,
    episode_offset: int = 0,
) -> Episodes:
    """Roll out ``episodes_per_task`` episodes of each task in ``tasks`` (see the module docstring).

    Args:
        envs: a ``TaskVectorEnv`` with ``num_envs`` a multiple of ``len(tasks)`` (NEXT_STEP autoreset).
        policy: the policy; ``params`` its weights, shared or with a leading task dimension (fast weights).
        seed: seeds the sub-envs' resets. ``generator``: draws the actions (on the policy's device).
        max_steps: longest episode allowed; default the vector env's time limit, else ``MAX_STEPS_WITHOUT_LIMIT``
            (an episode still running then raises ``RuntimeError``).
        streams: ``"shared"`` or ``"per-episode"`` random streams (module docstring); None: the vector env's
            ``rollout_streams`` attribute, else ``"shared"``. ``task_offset``, ``episode_offset``: the meta-batch
            indices of ``tasks[0]`` and of the first episode (per-episode streams: a block of a batch collected on its
            own).
    """
    if streams is None:
        streams = getattr(envs, "rollout_streams", "shared")
    if streams not in ("shared", "per-episode"):
        raise ValueError(f"streams must be 'shared' or 'per-episode', got {streams!r}")
    num_tasks, num_envs = len(tasks), envs.num_envs
    if num_tasks < 1 or num_envs % num_tasks:
        raise ValueError(f"the vector env has {num_envs} sub-envs, not a multiple of the {num_tasks} tasks")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if getattr(envs, "episode_level", False):  # whole episodes on Ray workers (metarl.core.ray_sampler)
        return envs.collect_episodes(policy, params, tasks, episodes_per_task, seed=seed, max_steps=max_steps,
                                     streams=streams)
    per_task = num_envs // num_tasks
    rounds = math.ceil(episodes_per_task / per_task)
    limit = max_steps or envs.max_episode_steps or MAX_STEPS_WITHOUT_LIMIT
    reference = next(iter(params.values()))
    device, dtype = reference.device, reference.dtype
    rng = np.random.default_rng(seed)
    env_seconds = policy_seconds = 0.0
    env_tasks = [tasks[i // per_task] for i in range(num_envs)]

    per_episode = streams == "per-episode"
    round_data = []
    with torch_threads_for_rollouts(envs, device):
        for round_index in range(rounds):
            if per_episode:  # sub-env i runs episode round_index * per_task + i % per_task of task i // per_task
                episode_seeds = [derive_seed(seed, "episode", task_offset + i // per_task,
                                             episode_offset + round_index * per_task + i % per_task)
                                 for i in range(num_envs)]
                seeds = np.array([s % (2**31 - 1) for s in episode_seeds])
                generators = [torch.Generator(device=device).manual_seed(s) for s in episode_seeds]
            else:
                seeds = rng.integers(0, 2**31 - 1, size=num_envs)
            start = perf_counter()
            if not _same_tasks(envs.get_tasks(), env_tasks):  # re-setting a task can rebuild a model (morphologies)
                envs.set_tasks(env_tasks)
            obs, _ = envs.reset(seed=[int(s) for s in seeds])
            env_seconds += perf_counter() - start
            active = np.ones(num_envs, dtype=np.bool_)
            terminated = np.zeros(num_envs, dtype=np.bool_)
            success = EpisodeSuccess(num_envs)
            steps_obs, steps_act, steps_rew, steps_mask = [], [], [], []
            for _ in range(limit):
                start = perf_counter()
                obs_t = torch.as_tensor(obs, dtype=dtype).to(device).reshape(num_tasks, per_task, -1)
                with torch.no_grad():
                    dist = policy.distribution(params, obs_t)
                    if per_episode:
                        action = torch.stack([policy.sample(tuple(d[i // per_task, i % per_task] for d in dist),
                                                            generators[i]) for i in range(num_envs)])
                        action = action.reshape(num_tasks, per_task, *action.shape[1:])
                    else:
                        action = policy.sample(dist, generator)
                action_np = policy.env_action(action).reshape(num_envs, *action.shape[2:]).cpu().numpy()
                mid = perf_counter()
                obs, reward, term, trunc, infos = envs.step(action_np)
                env_seconds += perf_counter() - mid
                success.update(*step_successes(infos, num_envs), active)
                policy_seconds += mid - start
                steps_obs.append(obs_t)
                steps_act.append(action)
                steps_rew.append(reward * active)
                steps_mask.append(active.copy())
                terminated |= active & term
                active &= ~(term | trunc)
                if not active.any():
                    break
            if active.any():
                raise RuntimeError(f"episodes ran past {limit} steps: give the env a time limit (max_episode_steps)")
            mask = torch.as_tensor(np.stack(steps_mask, axis=-1), dtype=dtype).reshape(num_tasks, per_task, -1)
            observations = torch.stack(steps_obs, dim=2) * mask.unsqueeze(-1).to(device)
            actions = torch.stack(steps_act, dim=2)
            action_mask = mask.to(device) if policy.discrete else mask.unsqueeze(-1).to(device)
            actions = actions * action_mask.to(actions.dtype)
            rewards = torch.as_tensor(np.stack(steps_rew, axis=-1), dtype=dtype).reshape(num_tasks, per_task, -1)
            terminated_t = torch.as_tensor(terminated).reshape(num_tasks, per_task)
            round_data.append((observations, actions, rewards.to(device), mask.to(device), terminated_t,
                               seeds.reshape(num_tasks, per_task), success.values().reshape(num_tasks, per_task)))

    horizon = max(d[0].shape[2] for d in round_data)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = horizon - t.shape[2]
        if extra == 0:
            return t
        return torch.cat([t, t.new_zeros(*t.shape[:2], extra, *t.shape[3:])], dim=2)

    def gather(i: int, padded: bool = True) -> Any:
        parts = [pad(d[i]) if padded else d[i] for d in round_data]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=1)[:, :episodes_per_task]
        return torch.cat(parts, dim=1)[:, :episodes_per_task]

    # the last round may run surplus episodes (dropped above) longer than every kept one: cut their padding
    mask = gather(3)
    keep = int(mask.sum(dim=2).max())
    successes = gather(6, padded=False)
    record_episodes(successes)
    return Episodes(
        observations=gather(0)[:, :, :keep], actions=gather(1)[:, :, :keep], rewards=gather(2)[:, :, :keep],
        mask=mask[:, :, :keep], terminated=gather(4, padded=False), reset_seeds=gather(5, padded=False),
        env_seconds=env_seconds, policy_seconds=policy_seconds,
        successes=torch.as_tensor(successes, dtype=dtype) if np.isfinite(successes).any() else None,
    )
