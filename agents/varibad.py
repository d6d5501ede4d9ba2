"""VariBAD: a recurrent VAE's belief over the task, and a PPO policy acting on it, trained on whole trials.

Zintgraf, Shiarlis, Igl, Schulze, Gal, Hofmann & Whiteson, "VariBAD: A Very Good Method for Bayes-Adaptive Deep RL
via Meta-Learning", ICLR 2020 (arXiv:1910.08348). A Bayes-adaptive policy conditions its actions on the state *and*
on its uncertainty about the task; VariBAD learns that uncertainty as an approximate posterior over a latent task m.

Spec
    * **Trial.** As RL² (:mod:`metarl.core.trials`): one task, ``episodes_per_trial`` consecutive episodes, all
      trials of an iteration in lockstep; the per-step input x_t is (observation s_t, previous action, previous
      reward, done flag), the three "previous" entries 0 at the first step. The belief is carried across episode
      boundaries inside a trial and starts fresh with every trial.
    * **Encoder** q(m | τ:t) = N(μ, diag σ²): a GRU (``encoder_hidden_size``) over the inputs, a linear map of its
      state to (μ, log σ²) (``latent_dim``). Belief times k = 0 … T + 1 for a trial of T steps: k = 0 is the prior,
      from the zero state (before any data); belief k ≥ 1 has read x_0 … x_{k−1}, so the policy at step t acts on
      belief t + 1 (it has seen s_t and every reward before t) and belief T + 1, after the input that follows the
      last step, has seen every reward of the trial.
    * **Decoder.** p(r | s, a, s', m): an MLP (``decoder_hidden_sizes``) of (s_j, a_j, s'_j, m) predicting r_j, with
      s'_j the observation step j led to (the episode's last one where it ended); with ``decode_transitions`` also
      p(s' | s, a, m), an MLP of (s_j, a_j, m) predicting s'_j. Both are Gaussians of fixed variance ½, so their
      negative log-likelihoods are squared errors (up to a constant).
    * **ELBO** over the whole trial: for every belief time k, m_k = μ_k + σ_k ε_k (one ε_k ~ N(0, I) per belief
      time, reparameterised), and every step j of the trial, past *and* future, is reconstructed from m_k::

          loss = mean over trials of Σ_k [ Σ_j (r̂(s_j, a_j, s'_j, m_k) − r_j)² (+ Σ_j ‖ŝ'(s_j, a_j, m_k) − s'_j‖²)
                                          + kl_weight · KL(q_k ‖ q_{k−1}) ],   q_{−1} = N(0, I)

      over the real (unpadded) steps and belief times of each trial. ``elbo_subsample`` / ``decode_subsample`` use a
      random subset of that many belief times / decoded steps per trial, scaled by (how many there are / how many
      were drawn), an unbiased estimate of the full sum. The VAE (encoder and decoders) takes ``vae_updates`` Adam
      steps (``vae_learning_rate``) on the ELBO of each iteration's trials; it gets no gradient from the RL loss.
    * **Policy.** An MLP actor (categorical for ``Discrete`` actions, diagonal Gaussian with a state-independent
      log-std for 1-D ``Box``: :mod:`metarl.core.policies`) and an MLP critic, both tanh (``policy_hidden_sizes``),
      on (s_t, μ_t, σ_t) of the belief it acts on, detached: the paper's default. The features the policy saw are
      stored with the trial, so PPO's ratios use exactly the belief each action was taken on.
    * **PPO** as RL² (:class:`~metarl.core.trials.TrialAgent`): GAE(γ, λ) over the whole trial (episode ends inside
      it do not cut the bootstrap), ``update_epochs`` passes over minibatches of whole trials, clipped surrogate +
      value loss − entropy bonus, advantages normalised per minibatch, critic targets standardised by their running
      statistics, gradient norm clipped, Adam; a non-finite loss or gradient rejects the step (the VAE's too:
      ``charts/rejected_updates``).
    * **Meta-test.** ``meta_test(tasks, num_episodes, seed)``: one trial of ``num_episodes`` episodes per task from
      the prior, the belief updated at every step; ``[tasks, num_episodes]`` undiscounted returns. Actions are sampled
      (``deterministic_test=True``: the mode). :meth:`VariBAD.belief_trials` runs the same trials and returns the
      belief (μ, σ) at every belief time and the reward each belief's mean predicts for every step of the trial
      (for plots, and the test that the belief tightens as the trial goes on); ``render_episodes`` their frames.
    * **Randomness.** Tasks, env resets, actions, minibatch order, ε and the subsamples of iteration i all come from
      ``derive_seed(seed, <stream>, i)``: ``state_dict`` (networks, both Adam states, value statistics, counters) is
      all a resume needs.

Settings. Defaults follow the authors' released configuration for MuJoCo (lmzintgraf/varibad, HalfCheetahVel):
latent 5, GRU 128, reward decoder 64-32, policy 128-128 tanh, KL weight 1, VAE learning rate 1e-3, PPO learning
rate 7e-4 with clip 0.1, 2 epochs of 4 minibatches, entropy 0.01, 16 trials of 2 episodes; γ and λ stay at the
MDP defaults (0.99, 0.95; the reference's HalfCheetahVel has 0.97 and 0.9). Deviations: the VAE trains on the
current iteration's trials (the reference samples from a buffer of up to 10,000 recent trajectories), the GRU reads
the raw concatenated inputs (the reference embeds state, action and reward first), and the policy's inputs and
rewards are not normalised (the critic's targets are). Presets: ``experiments/presets/varibad_*.yaml``; figures:
``experiments/RESULTS.md``, the "Meta-RL: all agents" sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch
from torch import nn

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core import ppo
from metarl.core.agent_env import check_test_request
from metarl.core.config import check_fields, check_int, check_number, check_positive, check_sizes
from metarl.core.context import kl_between_gaussians, kl_to_unit_gaussian
from metarl.core.device import resolve_device, torch_threads
from metarl.core.networks import MLP
from metarl.core.policies import CategoricalMLPPolicy, GaussianMLPPolicy
from metarl.core.seeding import derive_seed, seeded
from metarl.core.trials import TrialAgent, TrialPPOConfig, collect_trials, make_trial_envs
from metarl.envs.vector import TaskVectorEnv


@dataclass
class VariBADConfig(TrialPPOConfig):
    """Hyperparameters of VariBAD (defaults: the authors' MuJoCo configuration; see the presets)."""

    meta_batch_size: int = 16
    """trials (one task each) sampled per iteration, run in parallel sub-envs"""
    learning_rate: float = 7e-4
    """Adam step size of the policy (actor and critic)"""
    update_epochs: int = 2
    """PPO passes over the trials of one iteration"""
    clip_coef: float = 0.1
    """PPO probability-ratio clip ε"""
    latent_dim: int = 5
    """dimension of the latent task m (the belief is a diagonal Gaussian over it)"""
    encoder_hidden_size: int = 128
    """GRU hidden units of the encoder q(m | trajectory so far)"""
    decoder_hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    """hidden layers of the reward decoder (and of the transition decoder)"""
    policy_hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """hidden layers of the actor and of the critic (tanh)"""
    decode_transitions: bool = False
    """also decode the next observation p(s' | s, a, m) in the ELBO"""
    kl_weight: float = 1.0
    """weight of each KL(q_t || q_{t-1}) term of the ELBO"""
    vae_learning_rate: float = 1e-3
    """Adam step size of the VAE (encoder and decoders)"""
    vae_updates: int = 3
    """VAE Adam steps on the ELBO of each iteration's trials"""
    elbo_subsample: int | None = None
    """belief times per trial in the ELBO, drawn at random (None: all of them)"""
    decode_subsample: int | None = None
    """steps per trial each belief reconstructs, drawn at random (None: every step of the trial)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("latent_dim", "encoder_hidden_size", "vae_updates"), check_int, minimum=1)
        check_fields(self, ("decoder_hidden_sizes", "policy_hidden_sizes"), check_sizes)
        self.decoder_hidden_sizes, self.policy_hidden_sizes = list(self.decoder_hidden_sizes), \
            list(self.policy_hidden_sizes)
        check_number(self.kl_weight, "kl_weight", low=0)
        check_positive(self.vae_learning_rate, "vae_learning_rate")
        check_fields(self, ("elbo_subsample", "decode_subsample"), check_int, minimum=1, optional=True)


class BeliefEncoder(nn.Module):
    """q(m | τ:t): a GRU over the trial inputs and a linear map of its state to the belief's (mean, log-variance)."""

    def __init__(self, input_size: int, hidden_size: int, latent_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.belief = nn.Linear(hidden_size, 2 * latent_dim)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor | None = None):
        """``inputs [B, T, in]`` -> mean, log-variance ``[B, T, d]`` after each input, and the GRU state."""
        states, hidden = self.gru(inputs, hidden)
        mean, logvar = self.belief(states).chunk(2, dim=-1)
        return mean, logvar, hidden

    def beliefs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs [B, T, in]`` -> mean, log-variance ``[B, T + 1, d]``: the prior (zero state), then each input's."""
        states, _ = self.gru(inputs)
        states = torch.cat([states.new_zeros(states.shape[0], 1, states.shape[2]), states], dim=1)
        return self.belief(states).chunk(2, dim=-1)


def subsample(mask: torch.Tensor, count: int | None, generator: torch.Generator):
    """A random subset of ``count`` valid positions per row of ``mask [N, L]`` (all of them when ``count`` is None
    or ≥ L): ``(index [N, S], selected mask [N, S], scale [N])``, scale = valid / selected (an unbiased sum)."""
    n, length = mask.shape
    if count is None or count >= length:
        return torch.arange(length).expand(n, length), mask, torch.ones(n)
    scores = torch.rand(n, length, generator=generator) + 2.0 * (mask == 0)  # invalid positions sort last
    index = scores.argsort(dim=1)[:, :count]
    selected = mask.gather(1, index)
    return index, selected, mask.sum(1) / selected.sum(1).clamp_min(1.0)


class VariBAD(TrialAgent):
    """VariBAD agent (the :class:`metarl.core.agent.MetaRLAgent` contract): ``VariBAD(env_id, VariBADConfig(...))``."""

    name = "varibad"

    def __init__(self, env_id: str, config: VariBADConfig | None = None) -> None:
        self.config = cfg = config or VariBADConfig()
        self.env_id = env_id
        self.device = resolve_device(cfg.device)
        self.inputs, self.env_pool, self.envs = make_trial_envs("VariBAD", env_id, cfg)
        self.task_env = self.envs.single_task_env
        obs, act, latent = self.inputs.obs_size, self.inputs.action_size, cfg.latent_dim
        features = obs + 2 * latent  # the policy reads (s, μ, σ)
        with seeded(derive_seed(cfg.seed, "init")):
            self.encoder = BeliefEncoder(self.inputs.size, cfg.encoder_hidden_size, latent)
            self.reward_decoder = MLP(obs + act + obs + latent, cfg.decoder_hidden_sizes, 1)
            self.vae = nn.ModuleDict({"encoder": self.encoder, "reward_decoder": self.reward_decoder})
            if cfg.decode_transitions:
                self.vae["transition_decoder"] = MLP(obs + act + latent, cfg.decoder_hidden_sizes, obs)
            if self.inputs.discrete:
                self.actor = CategoricalMLPPolicy(features, act, cfg.policy_hidden_sizes)
            else:
                self.actor = GaussianMLPPolicy(features, act, cfg.policy_hidden_sizes)
                nn.init.constant_(self.actor.log_std, cfg.init_log_std)
            self.critic = MLP(features, cfg.policy_hidden_sizes, 1, activation=nn.Tanh)
            self.policy = nn.ModuleDict({"actor": self.actor, "critic": self.critic})
        self.vae.to(self.device)
        self.policy.to(self.device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_learning_rate)
        self.value_stats = ppo.RunningMeanStd()  # stays the identity unless normalize_values
        self.advantage_stats = ppo.RunningMeanStd()  # used with running_advantage_scale
        self.iterations_done = 0
        self.total_env_steps = 0
        self.rejected_updates = 0

    # --- rollouts: one trial per sub-env, in lockstep (metarl.core.trials) --------------------------------------------
    @torch.no_grad()
    def collect_trials(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, env_seed: int,
                       generator: torch.Generator, deterministic: bool = False) -> dict[str, Any]:
        """One trial of ``num_episodes`` episodes per task from the prior: the batch of
        :func:`metarl.core.trials.collect_trials` (with ``next_obs``) plus ``features`` ``[N, T, s + 2d]`` (what the
        policy read: s_t, μ, σ), ``log_probs`` and ``values``."""
        obs_size = self.inputs.obs_size

        def act(x: torch.Tensor, hidden: torch.Tensor | None):
            # ALGO LOGIC: update the belief with this step's input, act on (s_t, μ_t, σ_t)
            mean, logvar, hidden = self.encoder(x[:, None].to(self.device), hidden)
            features = torch.cat([x[:, :obs_size].to(self.device), mean[:, 0], (0.5 * logvar[:, 0]).exp()], dim=1)
            dist = tuple(d.cpu() for d in self.actor(features))
            action = self.actor.mode(dist) if deterministic else self.actor.sample(dist, generator)
            value = self.value_stats.denormalize(self.critic(features)[:, 0].cpu())
            return action, hidden, {"features": features.cpu(), "log_probs": self.actor.log_prob(dist, action),
                                    "values": value}

        return collect_trials(envs, tasks, num_episodes, env_seed, self.inputs, act, None, record_next_obs=True)

    def trial_tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What the ELBO reads, on the agent's device: ``encoder_inputs`` ``[N, T + 1, in]`` (the inputs and the one
        after the last step), per step j ``obs``, ``actions`` (as the env got them), ``next_obs``, ``rewards``,
        ``mask`` ``[N, T, ...]``, and ``belief_mask`` ``[N, T + 2]`` (belief time k is in trial i iff k ≤ T_i + 1)."""
        o, a = self.inputs.obs_size, self.inputs.action_size
        encoder_inputs = torch.cat([batch["inputs"], batch["final_inputs"][:, None]], dim=1)
        mask = batch["mask"]
        out = {"encoder_inputs": encoder_inputs, "obs": batch["inputs"][..., :o],
               "actions": encoder_inputs[:, 1:, o:o + a], "next_obs": batch["next_obs"], "rewards": batch["rewards"],
               "mask": mask, "belief_mask": torch.cat([torch.ones(len(mask), 2), mask], dim=1)}
        return {k: v.to(self.device) for k, v in out.items()}

    # --- ALGO LOGIC: the ELBO -----------------------------------------------------------------------------------------
    def elbo(self, data: dict[str, torch.Tensor], noise: torch.Tensor, beliefs=None, steps=None):
        """The negative ELBO of the trials in ``data`` (:meth:`trial_tensors`), mean over trials, and its parts.

        ``noise`` ``[N, T + 2, d]``: ε of every belief time. ``beliefs`` / ``steps``: ``(index, mask, scale)`` of
        the belief times / decoded steps to use (:func:`subsample`; None: all)."""
        cfg = self.config
        mean, logvar = self.encoder.beliefs(data["encoder_inputs"])  # [N, K, d], K = T + 2
        var = logvar.exp()
        kl = torch.cat([kl_to_unit_gaussian(mean[:, :1], var[:, :1]),
                        kl_between_gaussians(mean[:, 1:], var[:, 1:], mean[:, :-1], var[:, :-1])], dim=1)  # [N, K]
        latents = mean + var.sqrt() * noise
        k_index, k_mask, k_scale = beliefs or (None, data["belief_mask"], torch.ones(len(mean)))
        j_index, j_mask, j_scale = steps or (None, data["mask"], torch.ones(len(mean)))
        if k_index is not None:
            kl, latents = kl.gather(1, k_index), latents.gather(1, k_index[..., None].expand(-1, -1, mean.shape[2]))
        step = {k: data[k] for k in ("obs", "actions", "next_obs", "rewards")}
        if j_index is not None:
            step = {k: v.gather(1, j_index.view(*j_index.shape, *[1] * (v.dim() - 2)).expand(-1, -1, *v.shape[2:]))
                    for k, v in step.items()}
        n, kk, jj = len(mean), latents.shape[1], step["rewards"].shape[1]
        z = latents[:, :, None].expand(n, kk, jj, -1)  # belief k reconstructs every (drawn) step j
        s, a, s_next = (step[k][:, None].expand(n, kk, jj, -1) for k in ("obs", "actions", "next_obs"))
        predicted = self.reward_decoder(torch.cat([s, a, s_next, z], dim=-1))[..., 0]
        errors = (predicted - step["rewards"][:, None]) ** 2
        if cfg.decode_transitions:
            predicted_next = self.vae["transition_decoder"](torch.cat([s, a, z], dim=-1))
            errors = errors + ((predicted_next - s_next) ** 2).sum(-1)
        pair_mask = k_mask.to(errors)[:, :, None] * j_mask.to(errors)[:, None, :]
        reconstruction = (errors * pair_mask).sum(2) * j_scale.to(errors)[:, None]  # [N, K']: Σ_j per belief time
        per_trial = ((reconstruction + cfg.kl_weight * kl) * k_mask).sum(1) * k_scale.to(errors)
        stats = {"losses/elbo": per_trial.mean().detach(),
                 "losses/reward_reconstruction": (errors * pair_mask).sum().detach() / pair_mask.sum().clamp_min(1),
                 "losses/kl": (kl * k_mask).sum().detach() / k_mask.sum().clamp_min(1)}
        return per_trial.mean(), stats

    def vae_update(self, batch: dict[str, Any], iteration: int) -> tuple[dict[str, float], int]:
        """``vae_updates`` Adam steps on the ELBO of the trials in ``batch`` (ε and subsamples from
        ``derive_seed(seed, "vae", iteration)``): the mean of the ELBO statistics and the rejected steps."""
        cfg = self.config
        data = self.trial_tensors(batch)
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae", iteration))
        n, k = data["belief_mask"].shape
        sums: dict[str, float] = {}
        rejected = 0
        for _ in range(cfg.vae_updates):
            noise = torch.randn(n, k, cfg.latent_dim, generator=generator).to(self.device)
            beliefs = subsample(data["belief_mask"].cpu(), cfg.elbo_subsample, generator)
            steps = subsample(data["mask"].cpu(), cfg.decode_subsample, generator)
            loss, stats = self.elbo(data, noise, *[tuple(t.to(self.device) for t in p) for p in (beliefs, steps)])
            self.vae_optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                rejected += 1
                continue
            loss.backward()
            if not all(torch.isfinite(p.grad).all() for p in self.vae.parameters() if p.grad is not None):
                self.vae_optimizer.zero_grad(set_to_none=True)
                rejected += 1
                continue
            self.vae_optimizer.step()
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value) / cfg.vae_updates
        return sums, rejected

    # --- meta-training -----------------------------------------------------------------------------------------------
    def minibatch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO loss of a minibatch of whole trials on the stored (detached) policy features."""
        dist = self.actor(batch["features"])
        values = self.critic(batch["features"])[..., 0]  # on the critic's (standardised) scale
        return self.ppo_loss(self.actor.log_prob(dist, batch["actions"]), self.actor.entropy(dist), values, batch)

    def train_iteration(self, iteration: int) -> dict[str, float]:
        """Sample ``meta_batch_size`` train tasks, run one trial each, take the PPO epochs and the VAE steps."""
        with torch_threads(self.config.torch_threads):
            return self._train_iteration(iteration)

    def _train_iteration(self, iteration: int) -> dict[str, float]:
        start = perf_counter()
        batch = self.sample_trials(iteration)
        rollout_time = perf_counter() - start
        # ALGO LOGIC: the policy: PPO over whole trials, on the beliefs it acted on (no gradient into the VAE)
        keys = ("features", "actions", "log_probs", "values", "mask")
        losses, rejected, returns = self.ppo_update(batch, iteration, keys, self.minibatch_loss,
                                                    list(self.policy.parameters()), self.policy_optimizer)
        # ALGO LOGIC: the VAE: its own Adam steps on the ELBO of the same trials
        vae_losses, vae_rejected = self.vae_update(batch, iteration)
        return self.finish_iteration(iteration, batch, returns, {**losses, **vae_losses}, rejected + vae_rejected,
                                     start, rollout_time)

    # --- beliefs along a trial, checkpoints (meta-test: metarl.core.trials.TrialAgent) --------------------------------
    @torch.no_grad()
    def belief_trials(self, tasks: list[Any], num_episodes: int, seed: int) -> dict[str, Any]:
        """The trials ``meta_test(tasks, num_episodes, seed)`` runs, with the belief along them: ``belief_mean`` and
        ``belief_std`` ``[N, T + 2, d]`` (belief time k: 0 the prior, t + 1 what step t acted on, T + 1 after the
        last reward), ``belief_mask`` ``[N, T + 2]``, ``reward_predictions`` ``[N, T + 2, T]`` (the reward each
        belief's mean predicts for every step of the trial), and per step ``observations``, ``next_obs``,
        ``actions`` (as the env got them), ``rewards``, ``dones``, ``mask`` ``[N, T, ...]``, ``episode_returns``."""
        check_test_request(tasks, num_episodes)
        batch = self.meta_test_trials(self.env_pool.test(len(tasks)), tasks, num_episodes, seed)
        data = self.trial_tensors(batch)
        with torch_threads(self.config.torch_threads):
            mean, logvar = self.encoder.beliefs(data["encoder_inputs"])
            n, k, t = len(mean), mean.shape[1], data["rewards"].shape[1]
            step = [data[key][:, None].expand(n, k, t, -1) for key in ("obs", "actions", "next_obs")]
            predictions = self.reward_decoder(torch.cat([*step, mean[:, :, None].expand(n, k, t, -1)], dim=-1))
        return {"belief_mean": mean.cpu(), "belief_std": (0.5 * logvar).exp().cpu(),
                "belief_mask": data["belief_mask"].cpu(), "reward_predictions": predictions[..., 0].cpu(),
                "observations": data["obs"].cpu(), "next_obs": data["next_obs"].cpu(),
                "actions": data["actions"].cpu(), "rewards": batch["rewards"], "dones": batch["dones"],
                "mask": batch["mask"], "episode_returns": batch["episode_returns"]}

    def checkpoint_parts(self) -> dict[str, Any]:
        """Networks and both Adam states (counters: :meth:`TrialAgent.state_dict`)."""
        return {"vae": self.vae, "policy": self.policy, "vae_optimizer": self.vae_optimizer,
                "policy_optimizer": self.policy_optimizer}
