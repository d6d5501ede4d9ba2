"""In-context meta-RL on whole trials, the part RL² and VariBAD share: their PPO settings, the per-step input,
lockstep trial collection, whole-trial advantages and PPO epochs, and the meta-test plumbing.

A **trial** is one task and ``num_episodes`` consecutive episodes of it; what the agent learns about the task in
episode k is carried (a recurrent state) into episode k+1. :func:`collect_trials` runs one trial per sub-env of a
:class:`~metarl.envs.vector.TaskVectorEnv` in ``SAME_STEP`` autoreset mode, all in lockstep: the step that ends an
episode already returns the next episode's first observation, so every vector step is a real transition and step
``t`` means the same thing in every trial. Episodes are counted per sub-env; a sub-env that finished its trial is
padded (``mask`` 0) until all have finished.

The per-step input (:class:`TrialInputs`, RL²'s) is the observation (flattened ``Box``, one-hot ``Discrete``), the
previous action (one-hot ``Discrete``, or the clipped action the env received for a 1-D ``Box``), the previous
reward and a done flag (1 when the previous step ended an episode of the trial); the three "previous" entries are 0
at the first step of a trial. With ``previous_observation`` the previous step's observation follows them (0 at the
first step), so that one token holds a whole transition (s_{t-1}, a_{t-1}, r_{t-1}, s_t), as the transition tokens
of in-context RL from learning histories (Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm
Distillation"): an attention layer can then bind a reward to the state-action pair that earned it within one token,
where RL²'s input splits them over two (the state in token t−1, the action and reward in token t).

:class:`TrialAgent` holds what both agents do the same way on top of it: GAE over the whole trial (episode ends
inside a trial do not cut the bootstrap; the trial's end is terminal), the PPO loss and its epochs over minibatches
of whole trials (a non-finite loss or gradient norm rejects that step), the iteration's metrics, and ``meta_test`` /
``render_episodes`` as one trial per task from a fresh recurrent state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import nn

from metarl.envs.vector import TaskVectorEnv

from . import ppo
from .agent import AgentConfig
from .agent_env import (
    EnvPool,
    agent_state,
    check_memory,
    check_test_request,
    env_bytes_estimate,
    load_agent_state,
    make_task_env,
)
from .config import ConfigError, check_fields, check_int, check_number, check_positive
from .device import torch_threads
from .outcomes import EpisodeSuccess, record_episodes, record_meta_test_column, step_successes
from .rl import generalized_advantages
from .seeding import derive_seed

MAX_STEPS_PER_EPISODE = 100_000  # guard for envs without a time limit that never end an episode
TRIAL_COUNTERS = ("iterations_done", "total_env_steps", "rejected_updates")
"""The counters a :class:`TrialAgent` checkpoints (AMAGO adds its gradient steps)."""


@dataclass
class TrialPPOConfig(AgentConfig):
    """PPO on whole trials: the settings of the in-context agents (RL², VariBAD). Subclass it; the subclass may
    redeclare a field to change its default."""

    meta_batch_size: int = 64
    """trials (one task each) sampled per iteration, run in parallel sub-envs"""
    episodes_per_trial: int = 2
    """episodes of one task per trial during meta-training; the recurrent state is carried across them"""
    learning_rate: float = 3e-4
    """Adam step size of the policy"""
    gamma: float = 0.99
    """discount over the whole trial (use 1.0 for bandits: the objective is the total reward of the trial)"""
    gae_lambda: float = 0.95
    """GAE λ over the whole trial"""
    update_epochs: int = 4
    """PPO passes over the trials of one iteration"""
    num_minibatches: int = 4
    """minibatches of whole trials per PPO pass (each holds meta_batch_size / num_minibatches trials)"""
    clip_coef: float = 0.2
    """PPO probability-ratio clip ε"""
    value_clip: float | None = None
    """clip of the value change per update (None: plain squared error)"""
    value_coef: float = 0.5
    """weight of the value loss"""
    entropy_coef: float = 0.01
    """weight of the entropy bonus"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    anneal_lr_iterations: int | None = None
    """decay the policy's Adam step size linearly over this many iterations (CleanRL's PPO ``anneal_lr``; give the
    run's ``--iterations``): iteration i steps with learning_rate · (1 − i / anneal_lr_iterations); an iteration past
    it is refused. None: a constant step size"""
    normalize_advantages: bool = True
    """normalise advantages to zero mean, unit std within each minibatch (PPO implementations' default)"""
    running_advantage_scale: bool = False
    """instead (set normalize_advantages false with it): divide the advantages by the running std of every advantage
    seen so far (all iterations, checkpointed). As scale-free as the per-minibatch standardisation, but when nearly
    every trial of a batch does the same (all recall the cue) the advantages stay as small as they are, where
    standardising blows their noise up to unit variance and the policy drifts off what it learnt (Transformer-RL²
    on the T-Maze, experiments/RESULTS.md "Memory ...")"""
    normalize_values: bool = True
    """the critic predicts returns standardised by their running mean and std"""
    init_log_std: float = 0.0
    """initial log standard deviation of the Gaussian policy (Box actions only)"""
    deterministic_test: bool = False
    """meta_test with the mode of the policy instead of sampled actions (sampling is the in-context standard)"""
    torch_threads: int | None = 1
    """torch intra-op threads during train_iteration/meta_test (restored after; None: leave torch's setting); a
    small recurrent network stepped one time step at a time runs fastest on one"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("meta_batch_size", "episodes_per_trial", "update_epochs", "num_minibatches"), check_int,
                     minimum=1)
        if self.num_minibatches > self.meta_batch_size:
            raise ConfigError(f"num_minibatches ({self.num_minibatches}) must be <= meta_batch_size "
                              f"({self.meta_batch_size}): a minibatch holds whole trials")
        check_fields(self, ("learning_rate", "clip_coef", "max_grad_norm"), check_positive)
        check_fields(self, ("gamma", "gae_lambda"), check_number, low=0, high=1)
        check_fields(self, ("value_coef", "entropy_coef"), check_number, low=0)
        check_positive(self.value_clip, "value_clip", optional=True)
        check_number(self.init_log_std, "init_log_std")
        check_int(self.torch_threads, "torch_threads", minimum=1, optional=True)
        check_int(self.anneal_lr_iterations, "anneal_lr_iterations", minimum=1, optional=True)
        if self.running_advantage_scale and self.normalize_advantages:
            raise ConfigError("running_advantage_scale replaces the per-minibatch standardisation: set "
                              "normalize_advantages to false with it")


class TrialInputs:
    """The per-step input for a pair of spaces (see the module docstring); one-line ``ValueError`` for spaces it
    cannot encode. Layout: ``[observation (obs_size), previous action (action_size), previous reward, done]``, then
    with ``previous_observation`` the previous observation (obs_size) after them."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, agent: str, env_id: str,
                 previous_observation: bool = False) -> None:
        if isinstance(observation_space, spaces.Box):
            self.obs_size = int(np.prod(observation_space.shape))
        elif isinstance(observation_space, spaces.Discrete):
            self.obs_size = int(observation_space.n)
        else:
            raise ValueError(f"{agent} needs a Box or Discrete observation space, {env_id} has {observation_space}")
        self.one_hot_obs = isinstance(observation_space, spaces.Discrete)
        self.discrete = isinstance(action_space, spaces.Discrete)
        if self.discrete:
            self.action_size = int(action_space.n)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            self.action_size = int(action_space.shape[0])
            self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32)
        else:
            raise ValueError(f"{agent} needs a Discrete or 1-D Box action space, {env_id} has {action_space}")
        self.previous_observation = previous_observation
        self.size = self.obs_size * (2 if previous_observation else 1) + self.action_size + 2

    def step_input(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                   prev_done: torch.Tensor, prev_obs: torch.Tensor) -> torch.Tensor:
        """``[n, size]``: one step's input from encoded ``obs`` and ``prev_obs`` (:meth:`observations`), the previous
        ``[n, action_size]`` action and the ``[n]`` previous reward and done flag (the class docstring's layout)."""
        parts = [obs, prev_action, prev_reward[:, None], prev_done[:, None]]
        return torch.cat(parts + [prev_obs] if self.previous_observation else parts, dim=1)

    def observations(self, obs: np.ndarray) -> torch.Tensor:
        """``[n, obs_size]``: one-hot ``Discrete`` observations, flattened ``Box`` ones."""
        if self.one_hot_obs:
            return nn.functional.one_hot(torch.as_tensor(obs, dtype=torch.long), self.obs_size).float()
        return torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1))

    def actions(self, actions: torch.Tensor) -> torch.Tensor:
        """``[n, action_size]``: one-hot ``Discrete`` actions, ``Box`` actions clipped to the bounds (the env's)."""
        if self.discrete:
            return nn.functional.one_hot(actions, self.action_size).float()
        return actions.clamp(self.action_low, self.action_high)


def make_trial_envs(agent: str, env_id: str, config: TrialPPOConfig,
                    previous_observation: bool = False) -> tuple[TrialInputs, EnvPool, TaskVectorEnv]:
    """An in-context agent's environment, checked: its :class:`TrialInputs` (with the previous observation in each
    step's input if ``previous_observation``), its env pool (``SAME_STEP`` autoreset) and the vector env of
    ``meta_batch_size`` training sub-envs. One-line ``ValueError`` for an env that cannot be
    made, is no task env, has spaces the inputs cannot encode or whose meta-batch cannot fit in memory."""
    probe = make_task_env(env_id, config)
    try:
        obs_space, act_space = probe.observation_space, probe.action_space
        check_memory(agent, config.meta_batch_size, env_bytes_estimate(probe), what="meta_batch_size")
    finally:
        probe.close()
    inputs = TrialInputs(obs_space, act_space, agent, env_id, previous_observation)
    pool = EnvPool(env_id, config, autoreset_mode=AutoresetMode.SAME_STEP, physics_threads=1)
    return inputs, pool, pool.make(config.meta_batch_size)


def episode_step_limit(envs: TaskVectorEnv) -> int | None:
    """Most steps one episode of ``envs`` can take: its time limit, else the ``episode_step_limit`` its task env
    declares (one that ends every episode itself: a bandit's single pull, a tabular MDP's or a T-Maze's horizon),
    the smaller of the two where both exist; None when neither bounds an episode."""
    limits = [limit for limit in (envs.max_episode_steps, getattr(envs.single_task_env, "episode_step_limit", None))
              if limit is not None]
    return min(limits) if limits else None


Act = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any, dict[str, torch.Tensor]]]
"""``act(x, state) -> (action, state, columns)``: the agent's step on inputs ``x`` ``[n, size]`` from its recurrent
``state``; ``action`` as the policy samples it (indices, or unclipped ``Box`` actions), ``columns`` per-step tensors
``[n, ...]`` to record (log-probabilities, values, ...)."""


@torch.no_grad()
def collect_trials(envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, env_seed: int, inputs: TrialInputs,
                   act: Act, state: Any, record_next_obs: bool = False) -> dict[str, Any]:
    """Run one trial of ``num_episodes`` episodes per task (task ``i`` on sub-env ``i``) in lockstep, ``act`` choosing
    the actions from ``state`` (the fresh trial state).

    Returns ``[N, T]`` tensors ``inputs`` (``[N, T, size]``: what ``act`` read), ``actions``, ``rewards`` (0 on
    padding), ``dones`` (step ended an episode), ``mask`` (step inside the trial) and ``act``'s columns;
    ``final_inputs`` ``[N, size]`` (the input after the last step: it carries the last step's reward);
    ``episode_returns`` ``[N, num_episodes]`` (numpy), ``episode_successes`` ``[N, num_episodes]`` (numpy: 1.0 when
    ``info["success"]`` was set at any step of the episode, NaN where not reported; :mod:`metarl.core.outcomes`),
    ``env_steps`` (sub-env steps simulated: ``N * T``, the padding
    included) and, with ``record_next_obs``, ``next_obs`` ``[N, T, obs_size]`` (the observation each step led to:
    the episode's last one where it ended, not the next episode's first).
    """
    n = len(tasks)
    envs.set_tasks(tasks)
    obs, _ = envs.reset(seed=env_seed)
    prev_action = torch.zeros(n, inputs.action_size)
    prev_reward = torch.zeros(n)
    prev_done = torch.zeros(n)
    prev_obs = torch.zeros(n, inputs.obs_size)
    episode = np.zeros(n, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    episode_returns = np.zeros((n, num_episodes))
    episode_successes = np.full((n, num_episodes), np.nan)
    success = EpisodeSuccess(n)
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("inputs", "actions", "rewards", "dones", "mask",
                                                              "next_obs")}
    limit = num_episodes * (envs.max_episode_steps or MAX_STEPS_PER_EPISODE)
    while active.any():
        if len(columns["mask"]) >= limit:
            raise RuntimeError(f"a trial of {num_episodes} episodes ran past {limit} steps: set max_episode_steps")
        current_obs = inputs.observations(obs)
        x = inputs.step_input(current_obs, prev_action, prev_reward, prev_done, prev_obs)
        action, state, extra = act(x, state)
        env_action = inputs.actions(action)
        obs, reward, terminated, truncated, infos = envs.step(action.numpy() if inputs.discrete
                                                              else env_action.numpy())
        done = terminated | truncated
        # bookkeeping: rewards go to the current episode of each still-running trial
        episode_returns[active, episode[active]] += reward[active]
        success.update(*step_successes(infos, n, done), active)
        ended = np.flatnonzero(done & active)
        episode_successes[ended, episode[ended]] = success.values(ended)
        success.clear(ended)
        step_mask = torch.as_tensor(active, dtype=torch.float32)
        episode += done & active
        active &= episode < num_episodes
        if record_next_obs:
            next_obs = list(obs)
            for i in np.flatnonzero(done).tolist():
                next_obs[i] = infos["final_obs"][i]
            columns["next_obs"].append(inputs.observations(np.stack(next_obs)))
        for key, val in (("inputs", x), ("actions", action),
                         ("rewards", torch.as_tensor(reward, dtype=torch.float32) * step_mask),
                         ("dones", torch.as_tensor(done, dtype=torch.float32)), ("mask", step_mask), *extra.items()):
            columns.setdefault(key, []).append(val)
        prev_action, prev_reward = env_action, torch.as_tensor(reward, dtype=torch.float32)
        prev_done, prev_obs = torch.as_tensor(done, dtype=torch.float32), current_obs
    batch: dict[str, Any] = {k: torch.stack(v, dim=1) for k, v in columns.items() if v}
    batch["final_inputs"] = inputs.step_input(inputs.observations(obs), prev_action, prev_reward, prev_done, prev_obs)
    batch["episode_returns"] = episode_returns
    batch["episode_successes"] = episode_successes
    record_episodes(episode_successes)
    batch["env_steps"] = n * len(columns["mask"])
    return batch


class TrialAgent:
    """The methods RL², VariBAD and the off-policy AMAGO agent share (see the module docstring). A subclass sets
    ``config`` (a :class:`TrialPPOConfig`, or any config with ``meta_batch_size``, ``episodes_per_trial``,
    ``torch_threads`` and ``deterministic_test``), ``device``, ``env_pool``, ``envs`` (its training envs) and
    ``task_env``, ``value_stats`` (:class:`~metarl.core.ppo.RunningMeanStd`; None where it has none) and the counters
    ``iterations_done``, ``total_env_steps`` and ``rejected_updates``, and defines ``collect_trials(envs, tasks,
    num_episodes, env_seed, generator, deterministic=False)``; its ``train_iteration`` reads top to bottom in its own
    file."""

    config: Any
    device: torch.device
    env_pool: EnvPool
    envs: TaskVectorEnv
    task_env: Any
    value_stats: ppo.RunningMeanStd | None = None  # None: an agent without a value normaliser (off-policy)
    advantage_stats: ppo.RunningMeanStd | None = None  # PPO agents: the running_advantage_scale statistics
    iterations_done: int
    total_env_steps: int
    rejected_updates: int

    @property
    def episodes_per_stage(self) -> int:
        """1: each meta-test column is one more episode of the trial (the recurrent state carried)."""
        return 1

    def sample_trials(self, iteration: int) -> dict[str, Any]:
        """Iteration ``iteration``'s trials: ``meta_batch_size`` train tasks (``derive_seed(seed, "tasks", i)``), one
        trial each on the training envs, env resets and actions from the ``"env"`` and ``"actions"`` streams."""
        cfg = self.config
        tasks = self.task_env.sample_tasks(cfg.meta_batch_size, split="train",
                                           seed=derive_seed(cfg.seed, "tasks", iteration))
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "actions", iteration))
        return self.collect_trials(self.envs, tasks, cfg.episodes_per_trial, derive_seed(cfg.seed, "env", iteration),
                                   generator)

    # --- ALGO LOGIC shared: whole-trial GAE, the PPO loss and its epochs ----------------------------------------------
    def trial_advantages(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over whole trials (episode ends inside a trial do not cut the bootstrap): (advantages, returns)."""
        advantages = generalized_advantages(batch["rewards"], batch["values"], self.config.gamma,
                                            self.config.gae_lambda, mask=batch["mask"])
        return advantages, advantages + batch["values"]

    def ppo_loss(self, log_probs: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor,
                 batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + ``value_coef`` · value loss − ``entropy_coef`` · entropy over the real steps of a
        minibatch of trials, from the recomputed ``log_probs``, ``entropy`` and ``values`` (on the critic's
        standardised scale); advantages standardised per minibatch with ``normalize_advantages`` (with
        ``running_advantage_scale`` :meth:`ppo_update` has scaled them already)."""
        cfg = self.config
        mask = batch["mask"]
        advantages = batch["advantages"]
        if cfg.normalize_advantages:
            advantages = ppo.normalize_advantages(advantages, mask)
        policy_loss = ppo.clipped_surrogate_loss(log_probs, batch["log_probs"], advantages, cfg.clip_coef, mask)
        scale = self.value_stats
        v_loss = ppo.value_loss(values, scale.normalize(batch["returns"]), scale.normalize(batch["values"]),
                                cfg.value_clip, mask)
        entropy_mean = ppo.masked_mean(entropy, mask)
        loss = policy_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy_mean
        stats = {"losses/policy": policy_loss, "losses/value": v_loss, "losses/entropy": entropy_mean,
                 "losses/approx_kl": ppo.approx_kl(log_probs, batch["log_probs"], mask),
                 "losses/clip_fraction": ppo.clip_fraction(log_probs, batch["log_probs"], cfg.clip_coef, mask)}
        return loss, stats

    def ppo_update(self, batch: dict[str, Any], iteration: int, keys: tuple[str, ...],
                   minibatch_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
                   parameters: list[nn.Parameter],
                   optimizer: torch.optim.Optimizer) -> tuple[dict[str, float], int, torch.Tensor]:
        """Advantages and returns over whole trials (the value statistics updated with the returns when
        ``normalize_values``; the advantages divided by the running std of all advantages so far, this batch's
        included, when ``running_advantage_scale``), then :meth:`ppo_epochs` on the ``keys`` of ``batch`` with
        them: (losses, rejected steps, returns). With ``anneal_lr_iterations`` the optimizer's step size is set for
        ``iteration`` first (``ValueError`` past the schedule)."""
        anneal = self.config.anneal_lr_iterations
        if anneal is not None:
            if iteration >= anneal:
                raise ValueError(f"iteration {iteration} is past anneal_lr_iterations ({anneal}): the step size "
                                 "would be 0; set anneal_lr_iterations to the run's iterations")
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate * (1.0 - iteration / anneal)
        advantages, returns = self.trial_advantages(batch)
        real = batch["mask"].bool()
        if self.config.normalize_values:
            self.value_stats.update(returns[real])
        if self.config.running_advantage_scale:
            self.advantage_stats.update(advantages[real])
            advantages = advantages / self.advantage_stats.std  # the returns above stay unscaled
        data = {k: batch[k].to(self.device) for k in keys}
        data["advantages"], data["returns"] = advantages.to(self.device), returns.to(self.device)
        losses, rejected = self.ppo_epochs(data, iteration, minibatch_loss, parameters, optimizer)
        return losses, rejected, returns

    def ppo_epochs(self, data: dict[str, torch.Tensor], iteration: int,
                   minibatch_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
                   parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> tuple[dict[str, float], int]:
        """``update_epochs`` passes over the trials of ``data`` (tensors ``[trials, ...]``) in ``num_minibatches``
        minibatches of whole trials (order from ``derive_seed(seed, "minibatches", iteration)``), one clipped Adam
        step each. Returns the mean of each loss statistic over the steps taken and the number rejected."""
        cfg = self.config
        order_generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "minibatches", iteration))
        sums: dict[str, float] = {}
        steps_taken = rejected = 0
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.meta_batch_size, generator=order_generator)
            for indices in order.tensor_split(cfg.num_minibatches):
                indices = indices.to(self.device)
                loss, stats = minibatch_loss({k: v[indices] for k, v in data.items()})
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    rejected += 1
                    continue
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    rejected += 1
                    continue
                optimizer.step()
                steps_taken += 1
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
        return {key: value / max(steps_taken, 1) for key, value in sums.items()}, rejected

    def finish_iteration(self, iteration: int, batch: dict[str, Any], returns: torch.Tensor, losses: dict[str, float],
                         rejected: int, start: float, rollout_time: float) -> dict[str, float]:
        """Count the iteration (its rejected updates, env steps) and return its metrics: ``losses``, trial and
        first/last episode returns, rejected updates, timing, the critic's explained variance and ``env_steps``."""
        self.rejected_updates += rejected
        self.iterations_done = iteration + 1
        self.total_env_steps += batch["env_steps"]
        mask = batch["mask"].bool()
        residual = (returns - batch["values"])[mask]
        explained = 1.0 - float(residual.var() / returns[mask].var().clamp_min(1e-8))
        metrics = dict(losses)
        metrics.update({
            "charts/trial_return": float(batch["episode_returns"].sum(axis=1).mean()),
            "charts/first_episode_return": float(batch["episode_returns"][:, 0].mean()),
            "charts/last_episode_return": float(batch["episode_returns"][:, -1].mean()),
            "charts/rejected_updates": float(rejected),
            "charts/rejected_updates_total": float(self.rejected_updates),
            "charts/rollout_seconds": rollout_time,
            "charts/SPS": batch["env_steps"] / max(perf_counter() - start, 1e-9),
            "losses/explained_variance": explained,
            "env_steps": float(batch["env_steps"]),
        })
        return metrics

    # --- checkpoints -----------------------------------------------------------------------------------------------
    def checkpoint_parts(self) -> dict[str, Any]:
        """The agent's networks and optimisers by checkpoint key (each has ``state_dict``/``load_state_dict``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Name, config, the :meth:`checkpoint_parts`, counters and value statistics: all a resume needs (random
        streams derive from the seed and the iteration)."""
        stats = {name: getattr(self, name).state_dict() for name in ("value_stats", "advantage_stats")
                 if getattr(self, name) is not None}
        return agent_state(self, self.checkpoint_parts(), TRIAL_COUNTERS, **stats)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self.checkpoint_parts(), TRIAL_COUNTERS)
        if self.value_stats is not None:
            self.value_stats.load_state_dict(state["value_stats"])
        if self.advantage_stats is not None and "advantage_stats" in state:  # absent from checkpoints before it
            self.advantage_stats.load_state_dict(state["advantage_stats"])

    # --- meta-test ---------------------------------------------------------------------------------------------------
    def meta_test_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, seed: int) -> dict[str, Any]:
        """The meta-test trials on ``envs`` (one sub-env per task): one trial of ``num_episodes`` episodes per task
        from a fresh recurrent state, actions from a generator seeded by ``seed`` (see ``collect_trials``)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, "meta_test", "actions"))
        with torch_threads(self.config.torch_threads):
            batch = self.collect_trials(envs, list(tasks), int(num_episodes), derive_seed(seed, "meta_test", "env"),
                                        generator, self.config.deterministic_test)
        for column in range(int(num_episodes)):  # episode k of the trial is meta-test column k
            record_meta_test_column(column, batch["episode_successes"][:, column])
        return batch

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """One trial of ``num_episodes`` episodes per task from a fresh state: ``[tasks, num_episodes]`` returns.

        Actions are sampled (``deterministic_test=False``, the standard) from a generator seeded by ``seed``.
        """
        check_test_request(tasks, num_episodes)
        return self.meta_test_trials(self.env_pool.test(len(tasks)), tasks, num_episodes, seed)["episode_returns"]

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of each episode of one meta-test trial of ``task`` (the state carried across them): the trial
        ``meta_test([task], num_episodes, seed)`` runs, on an ``rgb_array`` env. Episode 0 starts from a fresh
        state (before adaptation)."""
        check_test_request([task], num_episodes)
        frames = self.env_pool.record(lambda envs: self.meta_test_trials(envs, [task], num_episodes, seed))
        return frames[:num_episodes]  # the step that ends the trial also resets: one frame more

    def close(self) -> None:
        self.env_pool.close()
