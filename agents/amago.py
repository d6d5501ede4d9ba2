"""AMAGO-style off-policy in-context meta-RL: one sequence model over whole trials shared by a SAC actor and twin
critics, trained from a replay of whole trials on every timestep at once.

Grigsby, Fan & Zhu, "AMAGO: Scalable In-Context Reinforcement Learning for Adaptive Agents", ICLR 2024
(arXiv:2310.09971; reference code UT-Austin-RPL/amago). SAC pieces: :mod:`metarl.core.sac`; the trial envs and
inputs: :mod:`metarl.core.trials`; the sequence models: :mod:`metarl.core.sequence` (causal Transformer with a
key/value cache) and :mod:`metarl.core.recurrent` (GRU).

Spec
    * **Trial and inputs.** As RL² (:mod:`metarl.core.trials`): one task, ``episodes_per_trial`` consecutive episodes
      in ``SAME_STEP`` autoreset, the per-step input is the observation, the previous action (the clipped action the
      env received), the previous reward and a done flag (the previous step ended an episode), with
      ``previous_observation`` the previous observation too (:mod:`metarl.core.trials`). The time step enters
      as the Transformer's absolute position over the whole trial (not restarted at episode boundaries); the GRU
      counts for itself. Observations: what the trial inputs encode (a ``Box``, one-hot ``Discrete``); actions:
      a bounded ``Box`` (the tanh-Gaussian squashes into it) or ``Discrete(n)`` (a categorical actor, critics with
      one output per action, discrete SAC's exact expectations: :func:`~metarl.core.sac.discrete_sac_losses`; the
      replay keeps the actions one-hot).
    * **Shared encoder.** ``sequence_model`` transformer (default) or gru reads the trial causally: its features h_t
      (``[B, T, F]``, step t sees steps 0 … t) are the agent's state at every step. On them sit the SAC actor
      π(a | h_t) (tanh-squashed Gaussian) and twin critics Q_j(h_t, a) with Polyak target copies Q'_j (as AMAGO,
      the encoder has no target copy: the next state in a target is the online encoder's h_{t+1}, no gradient).
      The sequence model's own linear heads (RL²'s policy and value heads) are not used. With ``input_shortcut``
      the heads' state is [h_t, x_t], x_t the step's own input (the current observation beside the memory, as
      recurrent off-policy SAC's shortcut, Ni, Eysenbach & Salakhutdinov 2022; an addition to AMAGO).
    * **Replay.** Whole trials: a :class:`~metarl.core.replay.TaskReplayBuffer` of one "task" whose entries are
      trials padded to ``trial_steps = episodes_per_trial × episode step limit`` (fields inputs, actions, rewards,
      mask), ``replay_capacity`` trials, the oldest overwritten first, sampled uniformly with replacement.
    * **Loss at every timestep, one pass.** A gradient step draws ``batch_size`` trials, runs the encoder once over
      them (no cache) and forms a transition at each real step t: (h_t, a_t, r_t, h_{t+1}, d_t) with d_t = 1 only at
      the trial's last step. The trial is the RL episode (AMAGO's meta-RL rollouts, RL²'s GAE): episode ends inside
      a trial bootstrap into the next episode, so exploring in episode k is credited with the reward it earns in
      episode k + 1. Critic: y_t = ``reward_scale`` · r_t + γ (1 − d_t)(min_j Q'_j(h_{t+1}, a') − α log π(a'|h_{t+1})),
      a' ~ π(·|h_{t+1}), loss Σ_j mean_t (Q_j(h_t, a_t) − y_t)² over all real steps of all trials
      (:func:`~metarl.core.sac.conditioned_critic_loss`; its gradient reaches the encoder through h_t). Actor: SAC's
      mean_t (α log π(ã|h_t) − min_j Q_j(sg(h_t), ã)), ã ~ π(·|h_t) reparameterised, against the critics frozen and
      with the critics' state input detached, as AMAGO: the actor's gradient reaches the encoder only through the
      actor's own input (``actor_trains_encoder=False`` detaches that too). With ``popart_beta`` (AMAGO's PopArt,
      :class:`~metarl.core.sac.PopArt`) the critics' values are σ n + μ over running statistics of y, updated on
      each batch's targets with the heads rescaled to keep their values, and the critic loss is divided by σ², the
      actor loss by σ: the combined gradient keeps one scale while the returns' grows. Temperature: SAC's learned α
      (``learn_temperature``). One Adam step on ``actor + critic_loss_weight · critic + temperature`` (AMAGO's single
      combined update; its critic weight 10 by default), global gradient norm clipped (``max_grad_norm``), then
      θ' ← (1 − τ) θ' + τ θ for the target critics. A non-finite loss or gradient norm rejects the step
      (``charts/rejected_updates``).
    * **Iteration.** Collect ``meta_batch_size`` train-split trials with the current policy (sampled actions, cached
      acting: one token per step), add them to the replay, take ``gradient_steps`` gradient steps.
    * **Meta-test.** As RL² (:class:`~metarl.core.trials.TrialAgent`): one trial of ``num_episodes`` episodes per
      task from an empty cache / zero hidden state; episode 0 is before adaptation. Actions sampled unless
      ``deterministic_test`` (the squashed mean).
    * **Multi-gamma** (AMAGO's many discounts at once): with ``extra_gammas`` each further discount γ_g has its own
      actor, twin critics and target critics on the same h_t, trained by the losses above at γ_g and added to the
      combined loss (every head's critic and actor losses; the temperature follows ``gamma``'s actor), so short
      horizons shape the shared encoder beside the long one; only ``gamma``'s actor acts and is meta-tested.
      ``losses/critic`` and ``losses/actor`` are the sums over the discounts (what the step minimises).
    * **Deviations from AMAGO**, for a readable agent on a CPU budget: twin critics with the clipped double-Q minimum
      and SAC's entropy temperature instead of AMAGO's critic ensemble (REDQ subsets) and its filtered
      behaviour-cloning actor term; multi-gamma only with ``extra_gammas``, PopArt only with ``popart_beta``; SAC's
      current actor for a' instead of a target actor; the encoder is RL²'s pre-LayerNorm Transformer, not AMAGO's.
    * **Randomness.** Tasks, env resets and collection actions of iteration i from ``derive_seed(seed, <stream>,
      i)`` (:meth:`TrialAgent.sample_trials`), replay batches and the actor's noise from ``derive_seed(seed,
      "updates", i)``; ``state_dict`` holds the networks, the optimiser, α, the replay and the counters, so a resumed
      run reproduces an uninterrupted one exactly on CPU.

Presets: ``experiments/presets/amago_*.yaml`` (navigation, cheetah_vel, walker_params, tmaze, bandit, mdp); figures:
``experiments/RESULTS.md``, "Meta-RL: the off-policy in-context agent (AMAGO-style)" and the sections on RL²'s grid
and the T-Maze.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import nn

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core.agent import AgentConfig
from metarl.core.agent_env import stream_generator
from metarl.core.config import (
    ConfigError,
    check_discounts,
    check_fields,
    check_int,
    check_number,
    check_positive,
    check_sizes,
)
from metarl.core.device import resolve_device, torch_threads
from metarl.core.recurrent import TrialPolicy
from metarl.core.replay import TaskReplayBuffer
from metarl.core.sac import (
    actor_critic,
    adam_groups,
    check_sac_config,
    check_sac_spaces,
    conditioned_actor_losses,
    conditioned_critic_loss,
    default_target_entropy,
    discrete_sac_losses,
    soft_update_,
)
from metarl.core.seeding import derive_seed, seeded
from metarl.core.sequence import check_sequence_fields, make_sequence_model, trial_context
from metarl.core.trials import TrialAgent, collect_trials, episode_step_limit, make_trial_envs
from metarl.envs.vector import TaskVectorEnv

TRIAL_FIELDS = ("inputs", "actions", "rewards", "mask")


@dataclass
class AMAGOConfig(AgentConfig):
    """Settings of the AMAGO-style agent (defaults: small, for a CPU; see ``experiments/presets/amago_*.yaml``)."""

    meta_batch_size: int = 16
    """trials (one train task each) collected per iteration, in parallel sub-envs"""
    episodes_per_trial: int = 3
    """episodes of one task per trial; the sequence model's context runs across them"""
    sequence_model: str = "transformer"
    """the shared encoder over the trial: transformer (causal, key/value cache; AMAGO's) or gru"""
    hidden_size: int = 128
    """GRU hidden units (sequence_model gru)"""
    transformer_layers: int = 2
    """Transformer blocks"""
    transformer_heads: int = 4
    """attention heads per block; must divide transformer_d_model"""
    transformer_d_model: int = 64
    """width of the Transformer's tokens and features"""
    transformer_context: int | None = None
    """most steps of a trial the Transformer attends over; None: the trial's steps (episodes_per_trial x the env's
    episode step limit); must be >= them"""
    transformer_positions: str = "learned"
    """absolute positions over the whole trial: learned or sinusoidal"""
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """hidden layers of the actor and of each critic on the encoder's features"""
    input_shortcut: bool = False
    """the actor and the critics see the step's own input (observation, previous action, reward, done) beside the
    encoder's features h_t, as the current-observation shortcut of recurrent off-policy agents (Ni et al. 2022) and
    PEARL's and VariBAD's policies (the state beside the task variable); False: h_t alone (AMAGO)"""
    previous_observation: bool = False
    """each step's input also holds the previous observation, one token a whole transition (metarl.core.trials);
    False: RL²'s and AMAGO's input"""
    replay_capacity: int = 2_000
    """whole trials kept in the replay (the oldest overwritten first)"""
    batch_size: int = 16
    """trials per gradient step (every real timestep of each is a transition of the loss)"""
    gradient_steps: int = 50
    """gradient steps per iteration"""
    learning_rate: float = 3e-4
    """Adam step size of the encoder, the actor and the critics (one optimiser, one combined loss)"""
    temperature_lr: float = 3e-4
    """Adam step size of log α"""
    gamma: float = 0.99
    """discount over the whole trial (episode ends inside a trial bootstrap); the acting actor's"""
    extra_gammas: list[float] = field(default_factory=list)
    """AMAGO's multi-gamma: more discounts, each learned by its own actor and twin critics on the shared encoder
    (their losses added to the combined loss, so they shape h_t too); only ``gamma``'s actor acts. []: one discount"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    reward_scale: float = 1.0
    """rewards are multiplied by this in the critic target"""
    popart_beta: float | None = None
    """PopArt-normalised critics (:class:`metarl.core.sac.PopArt`, AMAGO's) with this rate of the target statistics
    (AMAGO: 5e-4); None: raw values"""
    critic_loss_weight: float = 10.0
    """weight of the critic loss against the actor loss in the combined loss (AMAGO: 10); it sets how much each
    trains the shared encoder"""
    actor_trains_encoder: bool = True
    """the actor loss reaches the encoder through the actor's input (AMAGO); False: only the critic trains it"""
    learn_temperature: bool = True
    """learn α for the target entropy (SAC v2); False keeps α = init_temperature"""
    init_temperature: float = 0.1
    """initial (or fixed) entropy temperature α"""
    target_entropy: float | None = None
    """target policy entropy for the learned α; None: −dim(A) for a Box, 0.1 · log n for Discrete(n)"""
    max_grad_norm: float | None = 1.0
    """global gradient-norm clip of the combined step (None: no clip)"""
    deterministic_test: bool = False
    """meta-test with the squashed mean action instead of sampled actions"""
    torch_threads: int | None = 1
    """torch intra-op threads during train_iteration/meta_test (restored after; None: leave torch's setting)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("meta_batch_size", "episodes_per_trial", "replay_capacity", "batch_size"), check_int,
                     minimum=1)
        check_sequence_fields(self)
        check_int(self.gradient_steps, "gradient_steps", minimum=0)
        check_int(self.torch_threads, "torch_threads", minimum=1, optional=True)
        if self.meta_batch_size > self.replay_capacity:
            raise ConfigError(f"replay_capacity ({self.replay_capacity}) must hold one iteration's trials "
                              f"(meta_batch_size {self.meta_batch_size})")
        check_sizes(self.hidden_sizes, "hidden_sizes")
        self.hidden_sizes = list(self.hidden_sizes)
        check_positive(self.learning_rate, "learning_rate")
        check_positive(self.max_grad_norm, "max_grad_norm", optional=True)
        check_number(self.critic_loss_weight, "critic_loss_weight", low=0)
        check_number(self.popart_beta, "popart_beta", low=0, high=1, low_open=True, optional=True)
        check_sac_config(self)  # gamma, tau, the temperature's and the reward scale (metarl.core.sac)
        self.extra_gammas = check_discounts(self.extra_gammas, "extra_gammas", exclude={"gamma": self.gamma})


class AMAGO(TrialAgent):
    """The AMAGO-style agent (the :class:`metarl.core.agent.MetaRLAgent` contract); see the module docstring."""

    name = "amago"

    def __init__(self, env_id: str, config: AMAGOConfig | None = None) -> None:
        self.config = cfg = config or AMAGOConfig()
        self.env_id = env_id
        self.device = resolve_device(cfg.device)
        self.inputs, self.env_pool, self.envs = make_trial_envs(self.name, env_id, cfg,
                                                                cfg.previous_observation)
        try:
            # observations: any that the trial inputs encode (a Box, one-hot Discrete); actions: Box or Discrete
            check_sac_spaces(self.name, env_id, None, self.envs.single_action_space, discrete=True)
            per_episode = episode_step_limit(self.envs)
            if per_episode is None:
                raise ValueError(f"{self.name} replays whole trials of a fixed length: {env_id} sets no episode "
                                 "step limit, give a max_episode_steps")
            self.trial_steps = cfg.episodes_per_trial * per_episode
            context = None if cfg.sequence_model == "gru" else trial_context(cfg, self.trial_steps, env_id, self.name)
        except ValueError:
            self.env_pool.close()
            raise
        self.task_env = self.envs.single_task_env
        space = self.envs.single_action_space
        self.action_size, self.discrete = self.inputs.action_size, self.inputs.discrete
        self.target_entropy = float(default_target_entropy(space) if cfg.target_entropy is None
                                    else cfg.target_entropy)
        with seeded(derive_seed(cfg.seed, "init")):
            self.encoder: TrialPolicy = make_sequence_model(cfg, self.inputs.size, self.action_size, False, 0.0,
                                                            context)
            features = cfg.hidden_size if cfg.sequence_model == "gru" else cfg.transformer_d_model
            features += self.inputs.size if cfg.input_shortcut else 0
            self.actor, self.critic, self.target_critic = actor_critic(features, space, cfg.hidden_sizes,
                                                                        cfg.popart_beta)
            # multi-gamma: one more actor and twin critics per extra discount, made after gamma's (same init)
            self.extra_heads = nn.ModuleList(
                nn.ModuleDict(dict(zip(("actor", "critic", "target_critic"),
                                       actor_critic(features, space, cfg.hidden_sizes, cfg.popart_beta))))
                for _ in cfg.extra_gammas)
        self.heads = [(self.actor, self.critic, self.target_critic, cfg.gamma)] + [
            (head["actor"], head["critic"], head["target_critic"], gamma)
            for head, gamma in zip(self.extra_heads, cfg.extra_gammas)]
        self.temperature = nn.Module()
        self.temperature.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_temperature))))
        for module in (self.encoder, self.actor, self.critic, self.target_critic, self.temperature, self.extra_heads):
            module.to(self.device)
        self.log_alpha = self.temperature.log_alpha
        extra = [p for head in self.extra_heads for p in (*head["actor"].parameters(), *head["critic"].parameters())]
        self.optimizer = adam_groups((self.encoder, cfg.learning_rate), (self.actor, cfg.learning_rate),
                                     (self.critic, cfg.learning_rate), (extra or None, cfg.learning_rate),
                                     ([self.log_alpha] if cfg.learn_temperature else None, cfg.temperature_lr))
        shapes = {"inputs": (self.trial_steps, self.inputs.size), "actions": (self.trial_steps, self.action_size),
                  "rewards": (self.trial_steps,), "mask": (self.trial_steps,)}
        self.replay = TaskReplayBuffer(1, cfg.replay_capacity, shapes, device=self.device)
        self.iterations_done = self.total_env_steps = self.rejected_updates = self.total_gradient_steps = 0

    # --- acting: one token per step through the cache (metarl.core.trials.collect_trials) ----------------------------
    @torch.no_grad()
    def collect_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, env_seed: int,
                       generator: torch.Generator, deterministic: bool = False) -> dict[str, Any]:
        """One trial of ``num_episodes`` episodes per task from an empty cache (zero hidden state): the ``[N, T]``
        tensors of :func:`metarl.core.trials.collect_trials` (``inputs``, ``actions``, ``rewards``, ``mask``, ...)."""

        def act(x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
            # ALGO LOGIC: the encoder reads (observation, previous action, reward, done); the actor acts on h_t
            # (and, with input_shortcut, on the step's input beside it: head_features)
            x = x[:, None].to(self.device)
            _, _, state, features = self.encoder(x, state)
            noise = self.actor.noise(len(x), generator).to(self.device)  # a CPU stream
            action = self.actor.sample(self.head_features(features, x)[:, 0], deterministic=deterministic,
                                       noise=noise)[0]
            return action.cpu(), state, {}

        state = self.encoder.initial_state(len(tasks), self.device)
        return collect_trials(envs, tasks, num_episodes, env_seed, self.inputs, act, state)

    def head_features(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The actor's and critics' state ``[B, T, ·]``: the encoder's ``features``, with ``input_shortcut`` the
        steps' own ``inputs`` beside them."""
        return torch.cat([features, inputs], -1) if self.config.input_shortcut else features

    # --- meta-training -----------------------------------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Collect ``meta_batch_size`` trials into the replay, then ``gradient_steps`` all-timestep updates."""
        with torch_threads(self.config.torch_threads):
            return self._train_iteration(iteration)

    def _train_iteration(self, iteration: int) -> dict[str, float]:
        cfg = self.config
        start = perf_counter()
        batch = self.sample_trials(iteration)
        self.replay.add(torch.zeros(len(batch["mask"]), dtype=torch.long), self.padded(batch))
        rollout_time = perf_counter() - start
        # ALGO LOGIC: gradient steps on batches of whole trials from the replay, every timestep at once
        generator = stream_generator(cfg.seed, "updates", iteration, device=self.device)
        stats: dict[str, list[float]] = {}
        rejected_before = self.rejected_updates
        for _ in range(cfg.gradient_steps):
            trials = {k: v[0] for k, v in self.replay.sample([0], cfg.batch_size, generator).items()}
            for key, value in self.gradient_step(trials, generator).items():
                stats.setdefault(key, []).append(value)
        self.iterations_done = iteration + 1
        self.total_env_steps += batch["env_steps"]
        returns = batch["episode_returns"]
        metrics = {k: float(np.mean(v)) for k, v in stats.items()}
        metrics.update({
            "charts/trial_return": float(returns.sum(axis=1).mean()),
            "charts/first_episode_return": float(returns[:, 0].mean()),
            "charts/last_episode_return": float(returns[:, -1].mean()),
            "charts/alpha": float(self.log_alpha.detach().exp()),
            "charts/value_std": float(self.critic.value_std()),
            "charts/rejected_updates": float(self.rejected_updates - rejected_before),
            "charts/rejected_updates_total": float(self.rejected_updates),
            "charts/replay_trials": float(self.replay.sizes[0]),
            "charts/rollout_seconds": rollout_time,
            "charts/gradient_steps_per_s": cfg.gradient_steps / max(perf_counter() - start - rollout_time, 1e-9),
            "env_steps": float(batch["env_steps"]),
        })
        return metrics

    def padded(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The replay fields of collected trials, padded with zeros (``mask`` 0) to ``trial_steps``."""
        steps = batch["mask"].shape[1]
        if steps > self.trial_steps:
            raise RuntimeError(f"a trial of {steps} steps is longer than the replay's {self.trial_steps}")
        pad = lambda x: nn.functional.pad(x.float(), (0, 0) * (x.dim() - 2) + (0, self.trial_steps - steps))
        fields = {**batch, "actions": self.inputs.actions(batch["actions"]) if self.discrete else batch["actions"]}
        return {key: pad(fields[key]) for key in TRIAL_FIELDS}

    def transitions(self, features: torch.Tensor, trials: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The transition rows (h_t, a_t, r_t, h_{t+1}, d_t) of every real step of ``trials`` (``[B, T, ...]``) from
        the heads' state of the encoder's one pass ``features`` ``[B, T, F]`` (:meth:`head_features`): row order is
        trial-major; d_t = 1 at a trial's last step (where h_{t+1} is a zero placeholder that the target never
        uses)."""
        mask = trials["mask"]
        next_mask = nn.functional.pad(mask[:, 1:], (0, 1))
        real = mask.bool()
        next_features = nn.functional.pad(features[:, 1:], (0, 0, 0, 1)).detach()  # the target's state: no gradient
        return {"observations": features[real], "actions": trials["actions"][real],
                "rewards": trials["rewards"][real], "next_observations": next_features[real],
                "terminated": (mask - next_mask)[real]}

    def head_losses(self, actor: nn.Module, critic: nn.Module, target_critic: nn.Module, gamma: float,
                    data: dict[str, torch.Tensor], actor_input: torch.Tensor,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One discount's SAC losses (``critic``, ``actor``, ``temperature``; ``q_mean``, ``entropy`` detached) on the
        transition rows ``data``, the actor reading ``actor_input``."""
        cfg = self.config
        if self.discrete:  # ALGO LOGIC: discrete SAC, every expectation over the n actions exact (metarl.core.sac)
            return discrete_sac_losses(actor, critic, target_critic, data, actor_input, self.log_alpha, gamma,
                                       cfg.reward_scale, self.target_entropy)
        noise = dict(zip(("next_noise", "noise"), torch.randn(2, len(data["rewards"]), self.action_size,
                                                                generator=generator, device=self.device)))
        alpha = self.log_alpha.detach().exp()
        no_context = data["observations"].new_zeros(len(data["rewards"]), 0)
        q_loss, q_mean = conditioned_critic_loss(actor, critic, target_critic, {**data, **noise}, no_context, alpha,
                                                 gamma, cfg.reward_scale)
        # ALGO LOGIC: actor against the critics frozen, their state input detached (AMAGO)
        pi_loss, alpha_loss, log_prob = conditioned_actor_losses(
            actor, critic, self.log_alpha, {"observations": actor_input, "noise": noise["noise"]}, no_context, alpha,
            self.target_entropy, critic_observations=data["observations"].detach())
        return {"critic": q_loss, "actor": pi_loss, "temperature": alpha_loss, "q_mean": q_mean, "entropy": -log_prob}

    def gradient_step(self, trials: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        """One combined update (see the module docstring) on a batch of whole trials ``[B, T, ...]``."""
        cfg = self.config
        # ALGO LOGIC: one causal pass of the shared encoder over whole trials; a transition at every real step
        _, _, _, features = self.encoder(trials["inputs"])
        data = self.transitions(self.head_features(features, trials["inputs"]), trials)
        rows = len(data["rewards"])
        actor_input = data["observations"] if cfg.actor_trains_encoder else data["observations"].detach()
        # ALGO LOGIC: each discount's actor and critics (multi-gamma); α follows the acting actor's entropy
        losses = [self.head_losses(*head, data, actor_input, generator) for head in self.heads]
        alpha_loss, q_mean, entropy = (losses[0][key] for key in ("temperature", "q_mean", "entropy"))
        q_loss, pi_loss = (sum(part[key] for part in losses) for key in ("critic", "actor"))
        total = pi_loss + cfg.critic_loss_weight * q_loss + (alpha_loss if cfg.learn_temperature else 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(total)):
            self.rejected_updates += 1
            return {}
        total.backward()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm or float("inf"))
        if not bool(torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.rejected_updates += 1
            return {}
        self.optimizer.step()
        for _, critic, target_critic, _ in self.heads:
            soft_update_(target_critic, critic, cfg.tau)
        self.total_gradient_steps += 1
        return {"losses/critic": float(q_loss.detach()), "losses/actor": float(pi_loss.detach()),
                "losses/temperature": float(alpha_loss.detach()), "losses/grad_norm": float(grad_norm),
                "charts/q_mean": float(q_mean), "charts/entropy": float(entropy),
                "charts/transitions_per_step": float(rows)}

    # --- checkpoints (meta-test: metarl.core.trials.TrialAgent) -----------------------------------------------------
    def checkpoint_parts(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "actor": self.actor, "critic": self.critic,
                "target_critic": self.target_critic, "temperature": self.temperature, "optimizer": self.optimizer,
                "replay": self.replay, **({"extra_heads": self.extra_heads} if self.config.extra_gammas else {})}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "total_gradient_steps": self.total_gradient_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.total_gradient_steps = int(state["total_gradient_steps"])
