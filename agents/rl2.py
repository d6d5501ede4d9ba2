"""RL²: a recurrent policy whose hidden state is the adaptation, trained with recurrent PPO on whole trials.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement
Learning" (arXiv:1611.02779). The paper trains with TRPO; PPO on whole trials is the usual modern substitute.

Spec
    * **Trial.** One task, ``episodes_per_trial`` consecutive episodes. A GRU policy reads, at every step, the
      observation, the previous action (one-hot for ``Discrete``, the clipped action the env received for ``Box``),
      the previous reward and a done flag (1 when the previous step ended an episode of the trial). All three
      "previous" entries are 0 at the first step of a trial (``previous_observation`` adds the observation the previous
      action was taken in: :mod:`metarl.core.trials`). The hidden state starts at 0 for every trial and is
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
    * **Transformer option** (``sequence_model = "transformer"``, :mod:`metarl.core.sequence`). The GRU replaced by
      a causal Transformer over the whole trial (Vaswani et al. 2017, "Attention Is All You Need": scaled
      dot-product multi-head attention; pre-LayerNorm blocks as in GPT-2), everything else unchanged: the same
      per-step input as the GRU (observation, previous action, previous reward, done flag; Duan et al. 2016), one
      token per step, PPO on whole trials recomputed from the trial's first step. *Positions* run over the whole
      trial, 0 … ``transformer_context`` − 1, and do not restart at an episode boundary: the done flag tells
      episodes apart, the position how far into the trial a step is (``transformer_positions``: learned, or
      Vaswani's sinusoids). *Context*: ``transformer_context`` steps (default: the training trial,
      ``episodes_per_trial`` × the env's episode step limit); a shorter one, or a meta-test trial
      (``--eval-episodes``) that would not fit, is refused in one line before training. *Acting* keeps a
      preallocated key/value cache per layer (the trial's state, empty at its start): a step projects one token and
      attends over the cached keys, never re-running the context (the cached steps equal the full causal pass; cost
      per step and what the cache buys: ``experiments/bench_sequence_policy.py``). *Shape checks*: at least one
      layer and head, ``transformer_heads`` dividing ``transformer_d_model``. No dropout (PPO's ratio needs the
      same network at acting and at training). *What AMAGO does differently* (Grigsby et al., "AMAGO: Scalable
      In-Context Reinforcement Learning for Adaptive Agents", ICLR 2024): it is off-policy — a replay of whole
      trajectories, actor and critic heads on one shared Transformer encoder of the trajectory, a loss at every
      timestep with several discount factors at once — and built for contexts of thousands of steps; here the
      Transformer is only RL²'s sequence model under on-policy PPO (the off-policy in-context agent of issue 18 is
      AMAGO's shape).
    * **Shared with VariBAD** (:mod:`metarl.core.trials`): the PPO settings (:class:`~metarl.core.trials.
      TrialPPOConfig`), the per-step input, the lockstep trials, whole-trial GAE, the PPO loss and epochs, meta-test.
    * **Randomness.** Tasks, env resets, action sampling and minibatch order of iteration ``i`` all come from
      ``derive_seed(seed, <stream>, i)``, so ``state_dict`` (network, Adam state, value statistics, counters) is
      all a resume needs.

Reference configurations: ``experiments/presets/rl2_*.yaml``; figures: ``experiments/RESULTS.md``, "Meta-RL: RL² on
Bernoulli bandits (Duan et al. 2016, section 4.1)" and the all-agents tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core import ppo
from metarl.core.device import resolve_device, torch_threads
from metarl.core.recurrent import TrialPolicy
from metarl.core.seeding import derive_seed, seeded
from metarl.core.sequence import check_sequence_fields, make_sequence_model, trial_context
from metarl.core.trials import TrialAgent, TrialPPOConfig, collect_trials, episode_step_limit, make_trial_envs
from metarl.envs.vector import TaskVectorEnv


@dataclass
class RL2Config(TrialPPOConfig):
    """Hyperparameters of RL² with recurrent PPO (defaults: MDP-style; see the presets for bandits and MuJoCo)."""

    sequence_model: str = "gru"
    """the policy's sequence model over the trial: gru (Duan et al. 2016) or transformer (causal, with a key/value
    cache: metarl.core.sequence)"""
    hidden_size: int = 256
    """GRU hidden units (256 in Duan et al. 2016)"""
    transformer_layers: int = 2
    """Transformer blocks (sequence_model transformer)"""
    transformer_heads: int = 4
    """attention heads per block; must divide transformer_d_model"""
    transformer_d_model: int = 64
    """width of the Transformer's tokens and features"""
    transformer_context: int | None = None
    """most steps of a trial the Transformer attends over (its cache and learned positions); None: the training
    trial's steps, episodes_per_trial x the env's episode step limit; must be >= them"""
    transformer_positions: str = "learned"
    """absolute positions over the whole trial (across episode boundaries): learned or sinusoidal"""
    previous_observation: bool = False
    """each step's input also holds the previous observation, one token a whole transition (metarl.core.trials);
    False: RL²'s input"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sequence_fields(self)


class RL2(TrialAgent):
    """RL² agent (the :class:`metarl.core.agent.MetaRLAgent` contract): ``RL2(env_id, RL2Config(...))``."""

    name = "rl2"

    def __init__(self, env_id: str, config: RL2Config | None = None) -> None:
        self.config = config = config or RL2Config()
        self.env_id = env_id
        self.device = resolve_device(config.device)
        self.inputs, self.env_pool, self.envs = make_trial_envs("RL²", env_id, config,
                                                                config.previous_observation)
        self.task_env = self.envs.single_task_env
        self.discrete, self.action_size = self.inputs.discrete, self.inputs.action_size
        with seeded(derive_seed(config.seed, "init")):
            self.policy = self.make_policy().to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        self.value_stats = ppo.RunningMeanStd()  # stays the identity unless normalize_values
        self.advantage_stats = ppo.RunningMeanStd()  # used with running_advantage_scale
        self.iterations_done = 0
        self.total_env_steps = 0
        self.rejected_updates = 0

    def make_policy(self) -> TrialPolicy:
        """The GRU, or the causal Transformer with a context of ``transformer_context`` steps (default: the
        training trial's); one-line ``ValueError`` when that context cannot hold a training trial."""
        cfg = self.config
        per_episode = episode_step_limit(self.envs)
        context = None if cfg.sequence_model == "gru" else trial_context(
            cfg, None if per_episode is None else cfg.episodes_per_trial * per_episode, self.env_id, "RL²")
        return make_sequence_model(cfg, self.inputs.size, self.action_size, self.discrete, cfg.init_log_std, context)

    # --- rollouts: one trial per sub-env, in lockstep (metarl.core.trials) --------------------------------------------
    @torch.no_grad()
    def collect_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, env_seed: int,
                       generator: torch.Generator, deterministic: bool = False,
                       record_hidden: bool = False) -> dict[str, Any]:
        """Run one trial of ``num_episodes`` episodes per task (task ``i`` on sub-env ``i``) from a fresh state (a
        zero hidden state, an empty key/value cache).

        Returns ``[N, T]`` tensors ``inputs`` (``[N, T, in]``: exactly what the GRU read), ``actions``,
        ``log_probs``, ``values``, ``rewards``, ``dones`` (step ended an episode), ``mask`` (step inside the trial);
        ``episode_returns`` ``[N, num_episodes]`` (numpy), ``env_steps`` (sub-env steps simulated: ``N * T``, the
        padding included) and, with ``record_hidden`` (GRU only), ``hidden``
        ``[N, T, H]`` (the hidden state *entering* step t; row 0 is the fresh trial state).
        """

        def act(x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            # ALGO LOGIC: the sequence model reads (observation, previous action, previous reward, done) and acts
            entering = hidden[0].cpu() if record_hidden else None
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
            columns = {"log_probs": log_prob.cpu(), "values": value}
            if record_hidden:
                columns["hidden"] = entering
            return action, hidden, columns

        hidden = self.policy.initial_state(len(tasks), self.device)  # a trial starts from scratch
        return collect_trials(envs, tasks, num_episodes, env_seed, self.inputs, act, hidden)

    # --- meta-training -----------------------------------------------------------------------------------------------
    def minibatch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO loss of a minibatch of whole trials, recomputing the sequence model over each trial from its start."""
        head, values, _, _ = self.policy(batch["inputs"])  # values on the critic's (standardised) scale
        log_probs, entropy = self.policy.log_prob_entropy(head, batch["actions"])
        return self.ppo_loss(log_probs, entropy, values, batch)

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Sample ``meta_batch_size`` train tasks, run one trial each, and take the PPO epochs on those trials."""
        with torch_threads(self.config.torch_threads):
            return self._train_iteration(iteration)

    def _train_iteration(self, iteration: int) -> dict[str, float]:
        start = perf_counter()
        batch = self.sample_trials(iteration)
        rollout_time = perf_counter() - start
        # ALGO LOGIC: advantages over the whole trial, then PPO epochs over minibatches of whole trials
        keys = ("inputs", "actions", "log_probs", "values", "mask")
        losses, rejected, returns = self.ppo_update(batch, iteration, keys, self.minibatch_loss,
                                                    list(self.policy.parameters()), self.optimizer)
        return self.finish_iteration(iteration, batch, returns, losses, rejected, start, rollout_time)

    # --- meta-test (metarl.core.trials.TrialAgent), checked against the Transformer's context ------------------------
    def check_meta_test(self, num_episodes: int) -> None:
        """One-line ``ValueError`` when a trial of ``num_episodes`` episodes cannot fit the Transformer's context
        (the run loop calls it with ``--eval-episodes`` before training)."""
        per_episode = episode_step_limit(self.envs)
        context = getattr(self.policy, "context", None)
        if context is not None and per_episode is not None and int(num_episodes) * per_episode > context:
            raise ValueError(f"a meta-test trial of {num_episodes} episodes x {per_episode} steps exceeds the "
                             f"Transformer's context of {context} steps: evaluate at most {context // per_episode} "
                             "episodes or raise transformer_context")

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int):
        self.check_meta_test(num_episodes)
        return super().meta_test(tasks, num_episodes, seed)

    def render_episodes(self, task: Any, num_episodes: int, seed: int):
        self.check_meta_test(num_episodes)
        return super().render_episodes(task, num_episodes, seed)

    # --- checkpoints -------------------------------------------------------------------------------------------------
    def checkpoint_parts(self) -> dict[str, Any]:
        return {"policy": self.policy, "optimizer": self.optimizer}
