"""PEARL: off-policy meta-RL with a probabilistic context encoder, and the oracle (the same SAC given the true task).

Rakelly, Zhou, Quillen, Finn & Levine, "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic Context
Variables", ICML 2019 (reference code: katerakelly/oyster, on rlkit). SAC: :mod:`metarl.core.sac`.

Spec
    * **Encoder.** An MLP maps each context transition c_n = (s, a, r) (plus s' with ``use_next_obs_in_context``)
      to a Gaussian factor Ψ(z|c_n) = N(μ_n, σ_n²) (σ² = softplus, at least 1e-7). The posterior is their product,
      q(z|c) ∝ Π_n Ψ(z|c_n): σ² = 1 / Σ_n σ_n⁻², μ = σ² Σ_n μ_n / σ_n² (:mod:`metarl.core.context`), invariant to
      the order of the context. With no context at all, q is the prior N(0, I).
    * **Data.** Per-task replay buffers (:class:`~metarl.core.replay.TaskReplayBuffer`) for ``num_train_tasks``
      fixed train-split tasks: an RL buffer and an encoder buffer. Iteration 0 first collects ``num_initial_steps``
      per train task with z ~ prior into both. Every iteration then draws ``num_tasks_sample`` train tasks; for
      each, the encoder buffer is emptied (it holds only recent data, as the reference; kept when
      ``num_steps_prior`` is 0) and it collects ``num_steps_prior`` steps with z ~ prior (into both buffers),
      ``num_steps_posterior`` with z ~ q(z|c) (both),
      and ``num_extra_rl_steps_posterior`` with z ~ q(z|c) (RL buffer only), where c is an ``embedding_batch_size``
      sample of the task's encoder buffer and z is redrawn at the start of every episode. All tasks step together
      in one :class:`~metarl.envs.vector.TaskVectorEnv`.
    * **Update** (``gradient_steps`` per iteration, all tasks of a meta-batch in ONE forward pass of
      ``meta_batch_size × batch_size`` rows): draw ``meta_batch_size`` train tasks; a context batch of
      ``embedding_batch_size`` transitions per task from the encoder buffer and an RL batch of ``batch_size`` from
      the RL buffer; z ~ q(z|c) reparameterised. Critic + encoder: the SAC critic loss with Q(s, a, z) plus
      ``kl_lambda`` · Σ_tasks KL(q(z|c) || N(0, I)) (the encoder learns only from these); target
      y = ``reward_scale`` · r + γ(1 − d)(min Q'(s', a', z) − α log π(a'|s', z)). Actor: SAC's loss with z
      detached, plus ``policy_mean_reg`` · mean μ² + ``policy_std_reg`` · mean (log σ)² (the reference's
      regularisers). Temperature: SAC's automatic α (``learn_temperature``). Target critics: Polyak with ``tau``.
      A non-finite critic + encoder loss rejects the whole step, a non-finite actor or temperature loss the actor
      and α updates (``charts/rejected_updates`` counts them): nothing is ever trained through a NaN.
    * **Meta-test** (posterior sampling): per task, episode 0 acts with z ~ prior; after each episode the posterior
      is inferred from all transitions of this task collected so far and episode k acts with a fresh z ~ q(z|c).
      Actions are the squashed mean (the reference's ``eval_deterministic``) unless ``deterministic_test=False``.
      ``render_episodes(task, num_episodes, seed)`` runs the same episodes (:meth:`PEARL.posterior_sampling`) on an
      ``rgb_array`` env of the task and returns their frames (``metarl evaluate --video``).
    * **Oracle** (:class:`~metarl.agents.oracle.Oracle`): the same SAC with z the env's ``task_descriptor(task)``
      (no encoder, no KL): the upper bound a context could reach. Its meta-test columns are flat.
    * **Randomness.** Iteration i draws everything (tasks, env resets, z, action noise, batches) from
      ``derive_seed(seed, ..., i)``; ``state_dict`` holds networks, optimisers, α, both replay buffers and counters,
      so a resumed run reproduces an uninterrupted one exactly on CPU.

Reference configuration: ``experiments/presets/pearl_reference.yaml`` (oyster ``configs/default.py``; the preset
lists every value). The defaults are the reference's except where its size makes one iteration take long on a CPU:
narrower networks, fewer train tasks, fewer steps and gradient steps per iteration, a smaller replay (the fields say
which). A tqdm bar shows the gradient steps of an iteration on a terminal
(``progress``). Deviation: the reference trains SAC v1 (a V network, α fixed at 1, the reward scale setting the
entropy weight); here SAC v2 (twin target critics, no V) with a learned α by default; ``learn_temperature=False,
init_temperature=1`` gives the fixed-α objective. Figures: ``experiments/RESULTS.md``, the "Meta-RL: all agents"
sections (their commands name the presets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, ClassVar

import numpy as np
import torch

import metarl.envs  # noqa: F401  (registers the metarl/* environments)
from metarl.core.agent import AgentConfig
from metarl.core.agent_env import (
    EnvPool,
    agent_state,
    check_memory,
    check_test_request,
    env_bytes_estimate,
    load_agent_state,
    make_task_env,
    stream_generator,
    terminal_progress,
)
from metarl.core.config import ConfigError, check_fields, check_int, check_number, check_positive, check_sizes
from metarl.core.context import ContextEncoder, context_transitions, kl_to_unit_gaussian, posterior_sampling
from metarl.core.device import resolve_device
from metarl.core.replay import TaskReplayBuffer, collect_conditioned, transition_fields
from metarl.core.sac import (
    actor_critic,
    adam_groups,
    check_sac_config,
    check_sac_spaces,
    conditioned_actor_losses,
    conditioned_critic_loss,
    conditioned_rows,
    soft_update_,
)
from metarl.core.seeding import derive_seed, seeded
from metarl.envs.vector import TaskVectorEnv

COUNTERS = ("iteration", "total_env_steps", "total_gradient_steps", "rejected_updates")


@dataclass
class PEARLConfig(AgentConfig):
    """Settings of PEARL (defaults: the reference's, smaller where it is slow on a CPU; see the module docstring and
    ``experiments/presets/pearl_reference.yaml``)."""

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"discount": "gamma"}

    num_train_tasks: int = 40
    """fixed train-split tasks with their own replay buffers"""
    latent_dim: int = 5
    """size of the latent context z"""
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """hidden layers of the actor and of each critic"""
    encoder_hidden_sizes: list[int] = field(default_factory=lambda: [128, 128])
    """hidden layers of the context encoder"""
    use_next_obs_in_context: bool = False
    """context transitions (s, a, r, s') instead of (s, a, r)"""
    meta_batch_size: int = 16
    """tasks per gradient step"""
    batch_size: int = 256
    """RL transitions per task per gradient step"""
    embedding_batch_size: int = 64
    """context transitions per task for the encoder (training and data collection)"""
    num_initial_steps: int = 500
    """steps per train task collected with z ~ prior before training"""
    num_tasks_sample: int = 5
    """train tasks whose data is refreshed each iteration"""
    num_steps_prior: int = 200
    """steps per sampled task with z ~ prior (RL and encoder buffers)"""
    num_steps_posterior: int = 0
    """steps per sampled task with z ~ posterior (RL and encoder buffers)"""
    num_extra_rl_steps_posterior: int = 200
    """steps per sampled task with z ~ posterior, RL buffer only"""
    gradient_steps: int = 250
    """gradient steps per iteration"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    reward_scale: float = 5.0
    """rewards are multiplied by this in the critic target (env-dependent)"""
    kl_lambda: float = 0.1
    """weight of the KL(posterior || prior) term in the encoder loss"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics"""
    encoder_lr: float = 3e-4
    """Adam learning rate of the context encoder"""
    temperature_lr: float = 3e-4
    """Adam learning rate of log α"""
    learn_temperature: bool = True
    """learn α for the target entropy (SAC v2); False keeps α = init_temperature"""
    init_temperature: float = 1.0
    """initial (or fixed) entropy temperature α"""
    target_entropy: float | None = None
    """target policy entropy for the learned α; None: −dim(A)"""
    policy_mean_reg: float = 1e-3
    """weight of mean μ² in the actor loss"""
    policy_std_reg: float = 1e-3
    """weight of mean (log σ)² in the actor loss"""
    replay_capacity: int = 100_000
    """transitions kept per task in each replay buffer (memory: tasks × capacity × transition size)"""
    deterministic_test: bool = True
    """meta-test with the squashed mean action (False: sampled actions)"""
    progress: bool = True
    """show a progress bar over the gradient steps of an iteration (only when stderr is a terminal)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("num_train_tasks", "latent_dim", "meta_batch_size", "batch_size", "embedding_batch_size",
                            "num_tasks_sample", "replay_capacity"), check_int, minimum=1)
        check_fields(self, ("num_initial_steps", "num_steps_prior", "num_steps_posterior",
                            "num_extra_rl_steps_posterior", "gradient_steps"), check_int, minimum=0)
        if self.num_initial_steps + self.num_steps_prior + self.num_steps_posterior < 1:
            raise ConfigError("the encoder needs data: make num_initial_steps or num_steps_prior positive")
        check_fields(self, ("actor_lr", "critic_lr", "encoder_lr"), check_positive)
        check_fields(self, ("kl_lambda", "policy_mean_reg", "policy_std_reg"), check_number, low=0)
        check_sac_config(self)  # gamma, tau, the temperature's and the reward scale (metarl.core.sac)
        check_fields(self, ("hidden_sizes", "encoder_hidden_sizes"), check_sizes)
        self.hidden_sizes, self.encoder_hidden_sizes = list(self.hidden_sizes), list(self.encoder_hidden_sizes)


class PEARL:
    """PEARL agent (the :class:`metarl.core.agent.MetaRLAgent` contract); see the module docstring."""

    name = "pearl"
    uses_encoder = True

    def __init__(self, env_id: str, config: PEARLConfig | None = None) -> None:
        self.config = cfg = config or PEARLConfig()
        self.env_id = env_id
        self.device = resolve_device(cfg.device)
        probe = make_task_env(env_id, cfg)
        try:
            obs_space, act_space = probe.observation_space, probe.action_space
            check_sac_spaces(self.name, env_id, obs_space, act_space)
            check_memory(self.name, max(cfg.num_train_tasks, cfg.num_tasks_sample), env_bytes_estimate(probe),
                         what="num_train_tasks for the initial collection")
            self.task_env = probe.unwrapped
            self.latent_dim = self._latent_dim()
            self.train_tasks = self.task_env.sample_tasks(cfg.num_train_tasks, split="train",
                                                          seed=derive_seed(cfg.seed, "train_tasks"))
        finally:
            probe.close()
        self.obs_dim, self.action_dim = int(obs_space.shape[0]), int(act_space.shape[0])
        self.context_dim = self.obs_dim * (2 if cfg.use_next_obs_in_context else 1) + self.action_dim + 1
        self.target_entropy = -float(self.action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        with seeded(derive_seed(cfg.seed, "init")):
            networks = actor_critic(self.obs_dim + self.latent_dim, act_space, cfg.hidden_sizes)
            self.actor, self.critic, self.target_critic = (network.to(self.device) for network in networks)
            self.encoder = (ContextEncoder(self.context_dim, cfg.encoder_hidden_sizes, self.latent_dim).to(self.device)
                            if self.uses_encoder else None)
        self.log_alpha = torch.tensor(float(np.log(cfg.init_temperature)), device=self.device, requires_grad=True)
        self.critic_optimizer = adam_groups((self.critic, cfg.critic_lr), (self.encoder, cfg.encoder_lr))
        self.actor_optimizer = adam_groups((self.actor, cfg.actor_lr),
                                           ([self.log_alpha] if cfg.learn_temperature else None, cfg.temperature_lr))
        fields = transition_fields(self.obs_dim, self.action_dim)
        self.replay = TaskReplayBuffer(cfg.num_train_tasks, cfg.replay_capacity, fields, device=self.device)
        self.encoder_replay = (TaskReplayBuffer(cfg.num_train_tasks, cfg.replay_capacity, fields, device=self.device)
                               if self.uses_encoder else None)
        self.train_descriptors = self._descriptors(self.train_tasks)
        self.env_pool = EnvPool(env_id, cfg)
        self.envs = self.env_pool.make(cfg.num_tasks_sample)
        self.iteration = self.total_env_steps = self.total_gradient_steps = self.rejected_updates = 0

    # --- the conditioning vector z (the only place PEARL and the oracle differ) ------------------------------
    def _latent_dim(self) -> int:
        return self.config.latent_dim

    def _descriptors(self, tasks: list[Any]) -> torch.Tensor | None:
        return None

    def _context(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        return context_transitions(data, self.config.use_next_obs_in_context)

    @property
    def episodes_per_stage(self) -> int:
        """1: each meta-test column is one more episode, acting on the posterior of the ones before."""
        return 1

    # --- data collection ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, envs: TaskVectorEnv, task_ids: torch.Tensor, steps: int, posterior: bool,
                generator: torch.Generator, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[float]]:
        """``steps`` transitions from each train task ``task_ids`` (one sub-env each, stepped together), z redrawn
        at every episode start: (transitions ``[n·steps, ...]``, their task ids, returns of finished episodes)."""
        latents = lambda index: self._collection_latents(task_ids[index], posterior, generator)
        tasks = [self.train_tasks[i] for i in task_ids.tolist()]
        data, env_index, returns = collect_conditioned(envs, tasks, steps, self.actor, latents, self.latent_dim,
                                                       generator, seed, self.device)
        return data, task_ids[env_index], returns

    def _collection_latents(self, task_ids: torch.Tensor, posterior: bool, generator: torch.Generator) -> torch.Tensor:
        """z ``[n, latent]`` for collecting on train tasks ``task_ids``: prior, or posterior of a context batch."""
        noise = torch.randn(len(task_ids), self.latent_dim, generator=generator, device=self.device)
        if not posterior:
            return noise
        context = self._context(self.encoder_replay.sample(task_ids, self.config.embedding_batch_size, generator))
        return self.encoder.sample(context, noise)[0]

    # --- meta-training -----------------------------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One iteration: collect (see the module docstring), then ``gradient_steps`` SAC/encoder updates."""
        cfg = self.config
        start = perf_counter()
        generator = stream_generator(cfg.seed, "iteration", iteration, device=self.device)
        env_steps, prior_returns, posterior_returns = 0, [], []

        # ALGO LOGIC: data collection with z ~ prior (encoder + RL buffers) and z ~ posterior
        def gather(envs, ids, steps, posterior, to_encoder, stream):
            nonlocal env_steps
            data, task_of, returns = self.collect(envs, ids, steps, posterior, generator,
                                                  derive_seed(cfg.seed, stream, iteration))
            self.replay.add(task_of, data)
            if to_encoder and self.encoder_replay is not None:
                self.encoder_replay.add(task_of, data)
            env_steps += len(task_of)
            (posterior_returns if posterior else prior_returns).extend(returns)

        if len(self.replay) == 0 and cfg.num_initial_steps > 0:
            initial_envs = self.env_pool.make(cfg.num_train_tasks, keep=False)
            gather(initial_envs, torch.arange(cfg.num_train_tasks), cfg.num_initial_steps, False, True, "initial")
            initial_envs.close()
        chosen = torch.randint(cfg.num_train_tasks, (cfg.num_tasks_sample,), generator=generator, device=self.device)
        if self.encoder_replay is not None and cfg.num_steps_prior > 0:
            self.encoder_replay.clear(chosen)  # the encoder buffer holds the most recent data of a task
        for steps, posterior, to_encoder, stream in ((cfg.num_steps_prior, False, True, "prior"),
                                                     (cfg.num_steps_posterior, True, True, "posterior"),
                                                     (cfg.num_extra_rl_steps_posterior, True, False, "extra")):
            if steps > 0:
                gather(self.envs, chosen, steps, posterior, to_encoder, stream)
        collect_seconds = perf_counter() - start

        # ALGO LOGIC: meta-batches of tasks, one batched SAC + encoder step each
        stats: dict[str, list[float]] = {}
        for _ in terminal_progress(range(cfg.gradient_steps), f"{self.name} iteration {iteration}: gradient steps",
                                   cfg.progress):
            ids = torch.randint(cfg.num_train_tasks, (cfg.meta_batch_size,), generator=generator, device=self.device)
            batch = self.replay.sample(ids, cfg.batch_size, generator)
            context = (self._context(self.encoder_replay.sample(ids, cfg.embedding_batch_size, generator))
                       if self.encoder_replay is not None else None)
            for key, value in self.gradient_step(ids, batch, context, generator).items():
                stats.setdefault(key, []).append(value)

        self.iteration = iteration + 1
        self.total_env_steps += env_steps
        seconds = perf_counter() - start
        metrics = {
            "env_steps": float(env_steps),
            "charts/pre_adaptation_return": float(np.mean(prior_returns)) if prior_returns else float("nan"),
            "charts/post_adaptation_return": float(np.mean(posterior_returns)) if posterior_returns else float("nan"),
            "charts/alpha": float(self.log_alpha.detach().exp()),
            "charts/rejected_updates": float(self.rejected_updates),
            "charts/gradient_steps_per_s": cfg.gradient_steps / max(seconds - collect_seconds, 1e-9),
            "time/collect_seconds": collect_seconds,
            "time/update_seconds": seconds - collect_seconds,
        }
        metrics.update({k: float(np.nanmean(v)) for k, v in stats.items() if np.isfinite(v).any()})
        return metrics

    def gradient_step(self, ids: torch.Tensor, batch: dict[str, torch.Tensor], context: torch.Tensor | None,
                      generator: torch.Generator) -> dict[str, float]:
        """One update from an RL batch ``[M, B, ...]`` and a context batch ``[M, C, dim]`` of train tasks ``ids``
        ``[M]``: every network sees all ``M × B`` rows in one forward pass."""
        cfg = self.config
        # ALGO LOGIC: z for each task: a reparameterised posterior sample (PEARL) or the descriptor (oracle)
        if self.encoder is not None:
            noise = torch.randn(len(ids), self.latent_dim, generator=generator, device=self.device)
            z, mean, var = self.encoder.sample(context, noise)
            kl = kl_to_unit_gaussian(mean, var).sum()  # summed over the meta-batch, as the reference
        else:
            z, kl = self.train_descriptors[ids], torch.zeros((), device=self.device)
        alpha = self.log_alpha.detach().exp()
        # the rows of all tasks with the actor's noise for the next and the current actions, drawn once
        data, z_rows = conditioned_rows(batch, z, self.action_dim, generator)

        # ALGO LOGIC: critics + encoder: Bellman error of Q(s, a, z) + kl_lambda · KL(q(z|c) || prior)
        q_loss, q_mean = conditioned_critic_loss(self.actor, self.critic, self.target_critic, data, z_rows, alpha,
                                                 cfg.gamma, cfg.reward_scale)
        total = q_loss + cfg.kl_lambda * kl
        if not bool(torch.isfinite(total)):
            self.rejected_updates += 1
            return {"losses/critic": float("nan")}
        self.critic_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.critic_optimizer.step()

        # ALGO LOGIC: actor (z detached) against the updated critics, and the temperature
        pi_loss, alpha_loss, log_prob = conditioned_actor_losses(
            self.actor, self.critic, self.log_alpha, data, z_rows, alpha, self.target_entropy, cfg.policy_mean_reg,
            cfg.policy_std_reg)
        if not bool(torch.isfinite(pi_loss + alpha_loss)):
            self.rejected_updates += 1
            soft_update_(self.target_critic, self.critic, cfg.tau)
            return {"losses/critic": float(q_loss.detach())}
        self.actor_optimizer.zero_grad(set_to_none=True)
        (pi_loss + alpha_loss if cfg.learn_temperature else pi_loss).backward()
        self.actor_optimizer.step()
        soft_update_(self.target_critic, self.critic, cfg.tau)
        self.total_gradient_steps += 1
        return {"losses/critic": float(q_loss.detach()), "losses/kl": float(kl.detach()) / len(ids),
                "losses/actor": float(pi_loss.detach()), "losses/temperature": float(alpha_loss.detach()),
                "charts/q_mean": float(q_mean), "charts/entropy": -float(log_prob)}

    # --- meta-test ---------------------------------------------------------------------------------------------
    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """``[len(tasks), num_episodes]`` returns: episode 0 with z ~ prior, episode k with z ~ q(z | episodes
        0..k−1 of that task) (:meth:`posterior_sampling`). Deterministic given ``seed``; the agent is not changed."""
        check_test_request(tasks, num_episodes)
        return self.posterior_sampling(self.env_pool.test(len(tasks)), tasks, num_episodes, seed)

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of each meta-test episode of ``task``: episode 0 with z ~ prior, episode k with z from the
        posterior of episodes 0..k−1 (for the oracle, z is the task descriptor throughout): the episodes
        ``meta_test([task], num_episodes, seed)`` runs, on an ``rgb_array`` env. The agent is not changed."""
        check_test_request([task], num_episodes)
        return self.env_pool.record(lambda envs: self.posterior_sampling(envs, [task], num_episodes, seed))

    def posterior_sampling(self, envs: TaskVectorEnv, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """The meta-test episodes on ``envs`` (:func:`metarl.core.context.posterior_sampling`, z the descriptors for
        the oracle); returns ``[len(tasks), num_episodes]`` returns."""
        return posterior_sampling(envs, tasks, num_episodes, seed, self.actor, self.encoder, self._context,
                                  self.latent_dim, self._descriptors(tasks), self.device,
                                  self.config.deterministic_test)

    # --- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_parts(self) -> dict[str, Any]:
        """Networks, optimisers and replay buffers by checkpoint key (the oracle has no encoder nor its buffer)."""
        parts = {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic,
                 "actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer,
                 "replay": self.replay}
        if self.encoder is not None:
            parts.update(encoder=self.encoder, encoder_replay=self.encoder_replay)
        return parts

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, α, both replay buffers and counters (plain tensors: weights_only-safe)."""
        return agent_state(self, self.checkpoint_parts(), COUNTERS, log_alpha=self.log_alpha.detach().cpu().clone())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_agent_state(self, state, self.checkpoint_parts(), COUNTERS)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])

    def close(self) -> None:
        self.env_pool.close()

