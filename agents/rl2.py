"""RL²: a recurrent policy whose hidden state is the adaptation, trained with recurrent PPO on whole trials.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement
Learning" (arXiv:1611.02779). The paper trains with TRPO; PPO on whole trials is the usual modern substitute.

Spec
    * **Trial.** One task, ``episodes_per_trial`` consecutive episodes. A GRU policy reads, at every step, the
      observation, the previous action (one-hot for ``Discrete``, the clipped action the env received for ``Box``),
      the previous reward and a done flag (1 when the previous step ended an episode of the trial). All three
      "previous" entries are 0 at the first step of a trial. The hidden state starts at 0 for every trial and is
      carried across the episode boundaries inside it: what the policy learned about the task in episode k informs
      episode k+1. Observation spaces: ``Box`` (flattened) and ``Discrete`` (one-hot); action spaces: ``Discrete``
      (categorical) and ``Box`` (diagonal Gaussian with a learned state-independent log-std).
    * **Sampling.** ``meta_batch_size`` train-split tasks per iteration, one per sub-env of a
      :class:`~metarl.envs.vector.TaskVectorEnv` (``set_tasks``, then ``reset``), all trials in lockstep. The vector
      env runs in ``SAME_STEP`` autoreset mode: the step that ends an episode already returns the next episode's
      first observation, so every vector step is a real transition and step ``t`` means the same thing in every
      trial (``NEXT_STEP`` would insert a dummy step after every episode; for a bandit, every other step). Episodes
      are counted per sub-env; a sub-env that finished its trial is padded (``mask`` 0) until all have finished.
      For ``metarl/BernoulliBandit-v0`` an episode is one pull, so a trial of n episodes is n pulls.
    * **Advantages.** GAE(γ, λ) over the whole trial (:func:`metarl.core.rl.generalized_advantages`): the trial is
      the RL² episode, so episode ends *inside* a trial do not cut the bootstrap; the end of the trial is terminal.
      Defaults γ = 0.99, λ = 0.95 (MDPs, MuJoCo). For bandits the paper's objective is the undiscounted trial
      return, so the bandit settings (``experiments/rl2_bandits.py``, ``experiments/presets/rl2_bandit5.yaml``)
      use γ = 1, with λ = 0.3 for 10-pull trials and λ = 0.95 for 100-pull trials.
    * **Update.** Recurrent PPO: ``update_epochs`` passes over the trials in ``num_minibatches`` minibatches *of
      whole trials*; for each minibatch the GRU is recomputed over the full trial from a zero hidden state (no
      stored hidden states, so the gradient flows through the whole trial), and the loss is the clipped surrogate
      (ratio clip ``clip_coef`` = 0.2) + ``value_coef`` · value loss − ``entropy_coef`` · entropy
      (:mod:`metarl.core.ppo`), averaged over real (unpadded) steps, advantages normalised per minibatch, gradient
      norm clipped, Adam. The critic shares the GRU and predicts returns standardised by their running mean and
      std (``normalize_values``), so that targets of any size (a trial's return grows with its length) do not
      swamp the policy gradient through the shared GRU.
      A non-finite loss or gradient norm rejects that minibatch step (counted in ``charts/rejected_updates``);
      the parameters are never trained through a NaN.
    * **Meta-test.** ``meta_test(tasks, num_episodes, seed)``: one trial of ``num_episodes`` episodes per task
      from a fresh hidden state; returns the undiscounted return of each episode, ``[tasks, num_episodes]``.
      Actions are *sampled* by default, as in the paper (the stochastic policy is how RL² explores);
      ``deterministic_test=True`` takes the mode (argmax / Gaussian mean) instead. ``render_episodes(task,
      num_episodes, seed)`` runs the same trial (:meth:`RL2.meta_test_trials`) on an ``rgb_array`` env of the
      task and returns the frames of each of its episodes (``metarl evaluate --video``).
    * **Randomness.** Tasks, env resets, action sampling and minibatch order of iteration ``i`` all come from
      ``derive_seed(seed, <stream>, i)``, so ``state_dict`` (network, Adam state, value statistics, counters) is
      all a resume needs.

Reference configurations: ``experiments/presets/rl2_*.yaml``; figures: ``experiments/RESULTS.md``, "Meta-RL: RL² on
Bernoulli bandits (Duan et al. 2016, section 4.1)" and the all-agents tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import nn

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core import ppo
from metarl.core.agent import AgentConfig
from metarl.core.agent_env import (
    EnvPool,
    check_checkpoint,
    check_memory,
    check_test_request,
    env_bytes_estimate,
    make_task_env,
)
from metarl.core.config import ConfigError, check_fields, check_int, check_number, check_positive
from metarl.core.device import resolve_device, torch_threads
from metarl.core.recurrent import RecurrentPolicy
from metarl.core.rl import generalized_advantages
from metarl.core.seeding import derive_seed, seeded
from metarl.envs.vector import TaskVectorEnv

MAX_STEPS_PER_EPISODE = 100_000  # guard for envs without a time limit that never end an episode


@dataclass
class RL2Config(AgentConfig):
    """Hyperparameters of RL² with recurrent PPO (defaults: MDP-style; see the presets for bandits and MuJoCo)."""

    meta_batch_size: int = 64
    """trials (one task each) sampled per iteration, run in parallel sub-envs"""
    episodes_per_trial: int = 2
    """episodes of one task per trial during meta-training; the hidden state is carried across them"""
    hidden_size: int = 256
    """GRU hidden units (256 in Duan et al. 2016)"""
    learning_rate: float = 3e-4
    """Adam step size"""
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
    normalize_advantages: bool = True
    """normalise advantages to zero mean, unit std within each minibatch"""
    normalize_values: bool = True
    """the critic predicts returns standardised by their running mean and std"""
    init_log_std: float = 0.0
    """initial log standard deviation of the Gaussian policy (Box actions only)"""
    deterministic_test: bool = False
    """meta_test with the mode of the policy instead of sampled actions (sampling is the RL² standard)"""
    torch_threads: int | None = 1
    """torch intra-op threads during train_iteration/meta_test (restored after; None: leave torch's setting); a
    small GRU stepped one time step at a time runs fastest on one"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("meta_batch_size", "episodes_per_trial", "hidden_size", "update_epochs",
                            "num_minibatches"), check_int, minimum=1)
        if self.num_minibatches > self.meta_batch_size:
            raise ConfigError(f"num_minibatches ({self.num_minibatches}) must be <= meta_batch_size "
                              f"({self.meta_batch_size}): a minibatch holds whole trials")
        check_fields(self, ("learning_rate", "clip_coef", "max_grad_norm"), check_positive)
        check_fields(self, ("gamma", "gae_lambda"), check_number, low=0, high=1)
        check_fields(self, ("value_coef", "entropy_coef"), check_number, low=0)
        check_positive(self.value_clip, "value_clip", optional=True)
        check_number(self.init_log_std, "init_log_std")
        check_int(self.torch_threads, "torch_threads", minimum=1, optional=True)


class RL2:
    """RL² agent (the :class:`metarl.core.agent.MetaRLAgent` contract): ``RL2(env_id, RL2Config(...))``."""

    name = "rl2"

    def __init__(self, env_id: str, config: RL2Config | None = None) -> None:
        self.config = config = config or RL2Config()
        self.env_id = env_id
        self.device = resolve_device(config.device)
        probe = make_task_env(env_id, config)
        try:
            obs_space, act_space = probe.observation_space, probe.action_space
            check_memory(self.name, config.meta_batch_size, env_bytes_estimate(probe), what="meta_batch_size")
        finally:
            probe.close()
        if isinstance(obs_space, spaces.Box):
            self.obs_size = int(np.prod(obs_space.shape))
        elif isinstance(obs_space, spaces.Discrete):
            self.obs_size = int(obs_space.n)
        else:
            raise ValueError(f"RL² needs a Box or Discrete observation space, {env_id} has {obs_space}")
        self.discrete = isinstance(act_space, spaces.Discrete)
        if self.discrete:
            self.action_size = int(act_space.n)
        elif isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
            self.action_size = int(act_space.shape[0])
            self._action_low = torch.as_tensor(act_space.low, dtype=torch.float32)
            self._action_high = torch.as_tensor(act_space.high, dtype=torch.float32)
        else:
            raise ValueError(f"RL² needs a Discrete or 1-D Box action space, {env_id} has {act_space}")
        input_size = self.obs_size + self.action_size + 2  # observation, previous action, previous reward, done
        with seeded(derive_seed(config.seed, "init")):
            self.policy = RecurrentPolicy(input_size, config.hidden_size, self.action_size, self.discrete,
                                          config.init_log_std).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.value_stats = ppo.RunningMeanStd()  # stays the identity unless normalize_values
        self.env_pool = EnvPool(env_id, config, autoreset_mode=AutoresetMode.SAME_STEP, physics_threads=1)
        self.envs = self.env_pool.make(config.meta_batch_size)
        self.task_env = self.envs.single_task_env
        self.iterations_done = 0
        self.total_env_steps = 0
        self.rejected_updates = 0

    @property
    def episodes_per_stage(self) -> int:
        """1: each meta-test column is one more episode of the trial (the hidden state carried)."""
        return 1

    # --- rollouts: one trial per sub-env, in lockstep ----------------------------------------------------------------
    def _encode_obs(self, obs: np.ndarray) -> torch.Tensor:
        if isinstance(self.envs.single_observation_space, spaces.Discrete):
            return nn.functional.one_hot(torch.as_tensor(obs, dtype=torch.long), self.obs_size).float()
        return torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1))

    def _encode_action(self, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return nn.functional.one_hot(actions, self.action_size).float()
        return actions.clamp(self._action_low, self._action_high)

    @torch.no_grad()
    def collect_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, env_seed: int,
                       generator: torch.Generator, deterministic: bool = False,
                       record_hidden: bool = False) -> dict[str, Any]:
        """Run one trial of ``num_episodes`` episodes per task (task ``i`` on sub-env ``i``) from a zero hidden state.

        Returns ``[N, T]`` tensors ``inputs`` (``[N, T, in]``: exactly what the GRU read), ``actions``,
        ``log_probs``, ``values``, ``rewards``, ``dones`` (step ended an episode), ``mask`` (step inside the trial);
        ``episode_returns`` ``[N, num_episodes]`` (numpy), ``env_steps`` (sub-env steps simulated: ``N * T``, the
        padding included) and, with ``record_hidden``, ``hidden``
        ``[N, T, H]`` (the hidden state *entering* step t; row 0 is the fresh trial state).
        """
        n = len(tasks)
        envs.set_tasks(tasks)
        obs, _ = envs.reset(seed=env_seed)
        hidden = torch.zeros(1, n, self.config.hidden_size, device=self.device)  # a trial starts from scratch
        prev_action = torch.zeros(n, self.action_size)
        prev_reward = torch.zeros(n)
        prev_done = torch.zeros(n)
        episode = np.zeros(n, dtype=np.int64)
        active = np.ones(n, dtype=bool)
        episode_returns = np.zeros((n, num_episodes))
        columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("inputs", "actions", "log_probs", "values",
                                                                  "rewards", "dones", "mask", "hidden")}
        limit = num_episodes * (envs.max_episode_steps or MAX_STEPS_PER_EPISODE)
        while active.any():
            if len(columns["mask"]) >= limit:
                raise RuntimeError(f"a trial of {num_episodes} episodes ran past {limit} steps: set max_episode_steps")
            # ALGO LOGIC: the RL² input is (observation, previous action, previous reward, done flag)
            x = torch.cat([self._encode_obs(obs), prev_action, prev_reward[:, None], prev_done[:, None]], dim=1)
            if record_hidden:
                columns["hidden"].append(hidden[0].cpu())
            head, value, hidden, _ = self.policy(x[:, None].to(self.device), hidden)
            head, value = head[:, 0].cpu(), self.value_stats.denormalize(value[:, 0].cpu())
            if self.discrete:
                if deterministic:
                    action = head.argmax(-1)
                else:
                    action = torch.multinomial(torch.softmax(head, -1), 1, generator=generator)[:, 0]
            else:
                std = self.policy.log_std.detach().exp().cpu()
                noise = torch.randn(head.shape, generator=generator)
                action = head if deterministic else head + std * noise
            log_prob, _ = self.policy.log_prob_entropy(head.to(self.device), action.to(self.device))
            env_action = self._encode_action(action)
            obs, reward, terminated, truncated, _ = envs.step(action.numpy() if self.discrete else env_action.numpy())
            done = terminated | truncated
            # bookkeeping: rewards go to the current episode of each still-running trial
            episode_returns[active, episode[active]] += reward[active]
            step_mask = torch.as_tensor(active, dtype=torch.float32)
            episode += done & active
            active &= episode < num_episodes
            for key, val in (("inputs", x), ("actions", action), ("log_probs", log_prob.cpu()), ("values", value),
                             ("rewards", torch.as_tensor(reward, dtype=torch.float32) * step_mask),
                             ("dones", torch.as_tensor(done, dtype=torch.float32)), ("mask", step_mask)):
                columns[key].append(val)
            prev_action, prev_reward = env_action, torch.as_tensor(reward, dtype=torch.float32)
            prev_done = torch.as_tensor(done, dtype=torch.float32)
        batch: dict[str, Any] = {k: torch.stack(v, dim=1) for k, v in columns.items() if v}
        batch["episode_returns"] = episode_returns
        batch["env_steps"] = n * len(columns["mask"])
        return batch

    # --- meta-training -----------------------------------------------------------------------------------------------
    def trial_advantages(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over whole trials (episode ends inside a trial do not cut the bootstrap): (advantages, returns)."""
        advantages = generalized_advantages(batch["rewards"], batch["values"], self.config.gamma,
                                            self.config.gae_lambda, mask=batch["mask"])
        return advantages, advantages + batch["values"]

    def minibatch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO loss of a minibatch of whole trials, recomputing the GRU over each trial from a zero hidden state."""
        cfg = self.config
        mask = batch["mask"]
        head, values, _, _ = self.policy(batch["inputs"])  # values on the critic's (standardised) scale
        log_probs, entropy = self.policy.log_prob_entropy(head, batch["actions"])
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

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Sample ``meta_batch_size`` train tasks, run one trial each, and take the PPO epochs on those trials."""
        with torch_threads(self.config.torch_threads):
            return self._train_iteration(iteration)

    def _train_iteration(self, iteration: int) -> dict[str, float]:
        cfg = self.config
        start = perf_counter()
        tasks = self.task_env.sample_tasks(cfg.meta_batch_size, split="train",
                                           seed=derive_seed(cfg.seed, "tasks", iteration))
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "actions", iteration))
        batch = self.collect_trials(self.envs, tasks, cfg.episodes_per_trial, derive_seed(cfg.seed, "env", iteration),
                                    generator)
        rollout_time = perf_counter() - start

        # ALGO LOGIC: advantages over the whole trial, then PPO epochs over minibatches of whole trials
        advantages, returns = self.trial_advantages(batch)
        if cfg.normalize_values:
            self.value_stats.update(returns[batch["mask"].bool()])
        data = {k: batch[k].to(self.device) for k in ("inputs", "actions", "log_probs", "values", "mask")}
        data["advantages"], data["returns"] = advantages.to(self.device), returns.to(self.device)
        order_generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "minibatches", iteration))
        sums: dict[str, float] = {}
        steps_taken = rejected = 0
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.meta_batch_size, generator=order_generator)
            for indices in order.tensor_split(cfg.num_minibatches):
                indices = indices.to(self.device)
                loss, stats = self.minibatch_loss({k: v[indices] for k, v in data.items()})
                self.optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    rejected += 1
                    continue
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    rejected += 1
                    continue
                self.optimizer.step()
                steps_taken += 1
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
        self.rejected_updates += rejected
        self.iterations_done = iteration + 1
        self.total_env_steps += batch["env_steps"]

        mask = batch["mask"].bool()
        residual = (returns - batch["values"])[mask]
        explained = 1.0 - float(residual.var() / returns[mask].var().clamp_min(1e-8))
        trial_returns = batch["episode_returns"].sum(axis=1)
        metrics = {key: value / max(steps_taken, 1) for key, value in sums.items()}
        metrics.update({
            "charts/trial_return": float(trial_returns.mean()),
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

    # --- meta-test, checkpoints --------------------------------------------------------------------------------------
    def meta_test_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, seed: int) -> dict[str, Any]:
        """The meta-test trials on ``envs`` (one sub-env per task): one trial of ``num_episodes`` episodes per task
        from a fresh hidden state, actions from a generator seeded by ``seed`` (see :meth:`collect_trials`)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, "meta_test", "actions"))
        with torch_threads(self.config.torch_threads):
            return self.collect_trials(envs, list(tasks), int(num_episodes), derive_seed(seed, "meta_test", "env"),
                                       generator, self.config.deterministic_test)

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """One trial of ``num_episodes`` episodes per task from a fresh hidden state: ``[tasks, num_episodes]`` returns.

        Actions are sampled (``deterministic_test=False``, the RL² standard) from a generator seeded by ``seed``.
        """
        check_test_request(tasks, num_episodes)
        return self.meta_test_trials(self.env_pool.test(len(tasks)), tasks, num_episodes, seed)["episode_returns"]

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of each episode of one meta-test trial of ``task`` (the hidden state carried across them):
        the trial ``meta_test([task], num_episodes, seed)`` runs, on an ``rgb_array`` env. Episode 0 starts from
        a fresh hidden state (before adaptation)."""
        check_test_request([task], num_episodes)
        envs, recorder = self.env_pool.recording()
        try:
            self.meta_test_trials(envs, [task], num_episodes, seed)
        finally:
            envs.close()
        return recorder.episodes[:num_episodes]  # the step that ends the trial also resets: one frame more

    def state_dict(self) -> dict[str, Any]:
        """Network, Adam state and counters (random streams derive from the seed and iteration: nothing else)."""
        return {
            "name": self.name,
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iterations_done": self.iterations_done,
            "total_env_steps": self.total_env_steps,
            "rejected_updates": self.rejected_updates,
            "value_stats": self.value_stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint(state, self.name)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iterations_done = int(state["iterations_done"])
        self.total_env_steps = int(state["total_env_steps"])
        self.rejected_updates = int(state["rejected_updates"])
        self.value_stats.load_state_dict(state["value_stats"])

    def close(self) -> None:
        self.env_pool.close()
