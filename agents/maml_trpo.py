"""MAML-TRPO: model-agnostic meta-learning for reinforcement learning with a TRPO outer loop.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, section 3.2
and 5.3 (reference code: cbfinn/maml_rl on rllab). TRPO: Schulman et al., ICML 2015.

Spec. The meta-parameters θ are a policy initialisation. One meta-iteration:

1. sample ``meta_batch_size`` tasks of the ``train`` split; roll out ``episodes_per_task`` *support* episodes of
   each with π_θ;
2. inner loop (:func:`metarl.core.maml_rl.adapt_policy`, all tasks at once): ``inner_steps`` policy-gradient steps
   θ'_i = θ − α ∇_θ L_i(θ) with the REINFORCE loss L_i = −mean_t log π_θ(a_t|s_t) Â_t over task i's support steps,
   Â from GAE(γ, λ) on a linear feature baseline fitted per task (Duan et al. 2016; :mod:`metarl.core.baselines`)
   and standardised per task; second order by default (``first_order`` drops ∇² terms). Several inner steps reuse
   the same support episodes;
3. roll out ``episodes_per_task`` *query* episodes of each task with its adapted policy π_θ'_i;
4. outer loop: one TRPO step (:func:`metarl.core.trpo.trpo_step`) on θ for the surrogate
   mean_i E_query[π_θ'_i(a|s) / π_old'_i(a|s) · Â] under mean_i KL(π_old'_i || π_θ'_i) ≤ ``max_kl``, where θ'_i =
   adapt(θ) is recomputed from the support episodes for every candidate θ (so the meta-gradient and the
   Fisher-vector products flow through the inner step), conjugate gradient on the Hessian of the mean KL, step
   sqrt(2δ / sᵀFs), backtracking line search; a candidate that does not improve the surrogate or exceeds the KL
   limit is refused, and if none passes (or a loss is NaN) θ is unchanged and ``charts/rejected_updates`` counts it.

Defaults are the paper's (rllab's): 40 tasks, 20 episodes per task for support and query, α = 0.1, one inner step,
δ = 0.01, γ = 0.99, λ = 1, 64x64 tanh Gaussian policy with state-independent log std (init std 1); CG 10 iterations,
damping 1e-5, backtracking ratio 0.8, at most 15 backtracks; the Gaussian policy acts in ``[-1, 1]`` scaled to the
action bounds (rllab's ``normalize(env)``).

What the inner loop adapts (``adapt``, :func:`metarl.core.maml_rl.adapted_names`): ``"all"`` the policy's
parameters (MAML); ``"head"`` only its output layer (an ANIL-style variant, Raghu et al. 2020; ``adapt_head_only``
is the older spelling of it, kept for presets and recorded commands); ``"context"`` only a context vector φ of
``context_dim`` entries that the policy reads beside the observation, ``[s, φ]``, reset to φ = 0 for every task
and never meta-learned, while TRPO meta-learns every other weight through the context's inner step (CAVIA,
Zintgraf et al., ICML 2019, section 4.3; registered as ``cavia-trpo``, :class:`CAVIATRPOConfig`).
``learn_inner_lr`` learns a step size per adapted parameter element (Meta-SGD, Li et al. 2017): α becomes a
:class:`~metarl.core.adaptation.StepSizes` module shaped like the adapted parameters, initialised to ``inner_lr``
and updated by the same TRPO step as θ (it is part of the parameter vector whose post-adaptation KL is limited).
All of them go through the core inner loop exactly as the supervised Meta-SGD, ANIL and CAVIA do. Box and Discrete
action spaces. The presets (``experiments/presets/maml_trpo_*.yaml``) are the reference configurations per env.

Cost. The Fisher-vector products go through the inner loop (:func:`metarl.core.maml_rl.meta_fisher`), ``cg_iters`` of
them per step. ``fisher_subsample`` computes them on a random fraction of the tasks, ``fisher_step_subsample`` on all
tasks but a random fraction of each task's steps; the gradient and the line search (surrogate and KL) always use every
task. Both trade step quality for time, and too few Fisher tasks misjudge the KL (a config that leaves fewer than
:data:`metarl.core.maml_rl.MIN_FISHER_TASKS` warns). Everything else runs ``task_chunk`` tasks at a time (smaller
buffers, same maths). Measured costs, step quality and their commands: ``experiments/RESULTS.md``, "Meta-RL: MAML-TRPO
on 2D navigation (MAML paper spec)" (the learner's share, the FLOP count, the Fisher subsample's cost per step) and
"Meta-RL: MAML-TRPO on HalfCheetahDir" (too few Fisher tasks).

Meta-test (:meth:`MAMLTRPO.meta_test`): column k of the returned ``[tasks, num_episodes]`` array is the mean
undiscounted return of the ``adapt_episodes`` rollouts per task collected with the policy after k adaptation
batches: column 0 with θ, column k+1 after ``inner_steps`` policy-gradient step(s) from the column-k policy on the
rollouts of column k ("return after k gradient steps", the MAML paper's protocol with fresh rollouts each step);
``episodes_per_stage`` is that ``adapt_episodes``.
The stages come from one generator, :meth:`MAMLTRPO.adaptation_stages`, which :meth:`MAMLTRPO.render_episodes` also
drives: at each stage it renders one more episode of the policy of that stage (``metarl evaluate --video``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, ClassVar

import numpy as np
import torch

import metarl.envs  # noqa: F401  (registers the environments)
from metarl.core.adaptation import Params
from metarl.core.agent import AgentConfig
from metarl.core.agent_env import (
    EnvPool,
    agent_state,
    check_checkpoint,
    check_memory,
    check_test_request,
    env_bytes_estimate,
    load_agent_state,
    make_task_env,
    stream_generator,
)
from metarl.core.config import check_choice, check_fields, check_int, check_positive, check_sizes
from metarl.core.device import resolve_device
from metarl.core.maml_rl import (
    adapt_in_chunks,
    adaptation_stages,
    check_maml_rl_config,
    chunked_distributions,
    inner_loop,
    joined_chunks,
    learned_step_sizes,
    meta_fisher,
    meta_objective,
    outer_parameters,
    process_episodes,
    task_subset,
)
from metarl.core.policies import ACTIVATIONS, make_policy
from metarl.core.sampling import Episodes, collect_episodes, time_split
from metarl.core.seeding import derive_seed, seeded
from metarl.core.trpo import random_subset, trpo_step
from metarl.envs.vector import TaskVectorEnv

COUNTERS = ("iteration", "total_env_steps", "rejected_updates")


@dataclass
class MAMLTRPOConfig(AgentConfig):
    """Settings of MAML-TRPO (defaults: Finn et al. 2017 / rllab maml_rl)."""

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"discount": "gamma"}
    agent_name: ClassVar[str] = "maml-trpo"
    """the agent's name in checkpoints and evaluations (a variant's config names its own)"""

    meta_batch_size: int = 40
    """tasks per meta-iteration"""
    episodes_per_task: int = 20
    """episodes per task for the support set, and again for the query set"""
    envs_per_task: int | None = None
    """sub-environments per task stepped together (memory vs speed); None: episodes_per_task (one round)"""
    inner_lr: float = 0.1
    """step size α of the inner policy-gradient steps (the initial value of the learned ones with learn_inner_lr)"""
    inner_steps: int = 1
    """inner policy-gradient steps per adaptation"""
    first_order: bool = False
    """drop the second-order terms of the meta-gradient (first-order MAML)"""
    adapt: str = "all"
    """what the inner loop adapts: "all" parameters (MAML), the output layer only ("head", ANIL-style) or the
    context vector only ("context", CAVIA: needs context_dim >= 1)"""
    adapt_head_only: bool = False
    """adapt only the policy's output layer in the inner loop (ANIL-style); the same as --adapt head"""
    context_dim: int = 0
    """context parameters φ appended to the policy's input, [obs, φ], zero at the start of every task (CAVIA);
    0: none"""
    learn_inner_lr: bool = False
    """learn a step size per adapted parameter element, initialised to inner_lr (Meta-SGD)"""
    max_kl: float = 0.01
    """TRPO's KL limit δ on the post-adaptation policies"""
    cg_iters: int = 10
    """conjugate-gradient iterations"""
    cg_damping: float = 1e-5
    """damping added to the Fisher matrix (1e-5 rllab/garage; up to 0.1 when it is badly conditioned)"""
    fisher_subsample: float = 1.0
    """fraction of the meta-batch's tasks (drawn at random) whose KL curvature the Fisher-vector products use
    (rllab's subsample_factor); 1: all tasks, exact"""
    fisher_step_subsample: float = 1.0
    """fraction of each Fisher task's support and query steps (random positions, the same in every task, drawn per
    iteration) the Fisher-vector products use; the adaptation inside them then sees those support steps only, a
    noisier estimate of how θ' moves with θ. 1: all steps, exact"""
    backtrack_ratio: float = 0.8
    """line-search step shrink factor"""
    max_backtracks: int = 15
    """line-search candidates at most"""
    gamma: float = 0.99
    """discount γ"""
    gae_lambda: float = 1.0
    """GAE λ (1: Monte-Carlo returns minus the baseline)"""
    normalize_advantages: bool = True
    """standardise advantages per task (rllab's center_adv)"""
    baseline_reg: float = 1e-5
    """ridge coefficient of the linear feature baseline"""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """hidden layer sizes of the policy MLP"""
    activation: str = "tanh"
    """hidden activation of the policy MLP: "tanh" (rllab default) or "relu" (the MAML paper's 100x100 policy)"""
    init_std: float = 1.0
    """initial standard deviation of the Gaussian policy (in normalised units with normalize_actions)"""
    normalize_actions: bool = True
    """the Gaussian policy acts in [-1, 1] scaled to the action bounds (rllab's normalize(env), as MAML-RL)"""
    adapt_episodes: int | None = None
    """meta-test rollouts per task per adaptation step; None: episodes_per_task"""
    task_chunk: int = 8
    """tasks per chunk of the learner's batched work outside the Fisher products (the adaptation at θ, the
    surrogate and KL, the meta-gradient, the line search): smaller buffers, the same maths with sums in another
    order; 0: all tasks at once"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("envs_per_task", "adapt_episodes"), check_int, minimum=1, optional=True)
        check_positive(self.init_std, "init_std")
        check_choice(self.activation, "activation", ACTIVATIONS)
        check_sizes(self.hidden_sizes, "hidden_sizes")
        self.hidden_sizes = list(self.hidden_sizes)
        check_maml_rl_config(self)  # the meta-batch, inner loop, advantages and TRPO step (metarl.core.maml_rl)


@dataclass
class CAVIATRPOConfig(MAMLTRPOConfig):
    """CAVIA for meta-RL (Zintgraf et al., ICML 2019): MAML-TRPO whose inner step adapts only a context vector
    appended to the policy's input (defaults: MAML-TRPO's, with the authors' released 2D-navigation context size and
    inner step: 2 context parameters, α = 1)."""

    agent_name: ClassVar[str] = "cavia-trpo"
    adapt: str = "context"
    """what the inner loop adapts: "all" parameters (MAML), the output layer only ("head", ANIL-style) or the
    context vector only ("context", CAVIA: needs context_dim >= 1)"""
    context_dim: int = 2
    """context parameters φ appended to the policy's input, [obs, φ], zero at the start of every task (CAVIA);
    0: none"""
    inner_lr: float = 1.0
    """step size α of the inner policy-gradient steps (the initial value of the learned ones with learn_inner_lr)"""


class MAMLTRPO:
    """MAML-TRPO agent (the :class:`metarl.core.agent.MetaRLAgent` contract)."""

    name = "maml-trpo"

    def __init__(self, env_id: str, config: MAMLTRPOConfig | None = None) -> None:
        self.config = config = config or MAMLTRPOConfig()
        self.name = config.agent_name
        self.env_id = env_id
        self.device = resolve_device(config.device)
        self.envs_per_task = config.envs_per_task or config.episodes_per_task
        probe = make_task_env(env_id, config)
        try:
            check_memory(self.name, config.meta_batch_size * self.envs_per_task, env_bytes_estimate(probe),
                         what="meta_batch_size x envs_per_task")
            with seeded(derive_seed(config.seed, "init")):
                self.policy = make_policy(probe.observation_space, probe.action_space, config.hidden_sizes,
                                          config.init_std, ACTIVATIONS[config.activation],
                                          config.normalize_actions, config.context_dim).to(self.device)
        finally:
            probe.close()
        self.continuous = not self.policy.discrete
        self.step_sizes = learned_step_sizes(self.policy, config)  # learn_inner_lr (Meta-SGD), else None
        self.env_pool = EnvPool(env_id, config)
        self.envs = self.env_pool.make(config.meta_batch_size * self.envs_per_task)
        self.task_env = self.envs.single_task_env  # sample_tasks for training (and for callers)
        self.iteration = 0
        self.total_env_steps = 0
        self.rejected_updates = 0

    @property
    def episodes_per_stage(self) -> int:
        """Rollouts per task behind each meta-test column (``adapt_episodes``, default ``episodes_per_task``)."""
        return self.config.adapt_episodes or self.config.episodes_per_task

    @property
    def inner_lrs(self) -> Params:
        """The learned step sizes by parameter name (``learn_inner_lr``); empty with a fixed ``inner_lr``."""
        return self.step_sizes.as_dict() if self.step_sizes is not None else {}

    def _generator(self, *stream: int | str) -> torch.Generator:
        return stream_generator(self.config.seed, *stream, device=self.device)

    def fisher_tasks(self, iteration: int, num_tasks: int) -> torch.Tensor:
        """The meta-batch's tasks whose KL curvature iteration ``iteration``'s Fisher-vector products use: a random
        ``fisher_subsample`` fraction (at least one), drawn from (seed, iteration)."""
        return random_subset(self.config.fisher_subsample, num_tasks, self._generator("fisher", iteration),
                             device=self.device)

    def fisher_steps(self, iteration: int, num_steps: int, phase: str) -> torch.Tensor | slice:
        """Positions (along the flattened episodes x time axis, the same in every task) of the ``phase`` ("support"
        or "query") steps the Fisher-vector products use: a random ``fisher_step_subsample`` fraction in increasing
        order, drawn from (seed, iteration, phase); all of them (``slice(None)``) at 1."""
        return random_subset(self.config.fisher_step_subsample, num_steps,
                             self._generator("fisher-steps", phase, iteration), ordered=True, device=self.device)

    # --- meta-training ---------------------------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One meta-iteration (see the module docstring); everything random derives from (seed, iteration)."""
        cfg, policy = self.config, self.policy
        start = perf_counter()
        tasks = self.task_env.sample_tasks(cfg.meta_batch_size, split="train",
                                           seed=derive_seed(cfg.seed, "tasks", iteration))

        # ALGO LOGIC: support episodes with θ, adapted policies, query episodes with θ'
        theta = {k: v.detach() for k, v in self.policy.named_parameters()}
        support_episodes = collect_episodes(self.envs, policy, theta, tasks, cfg.episodes_per_task,
                                            seed=derive_seed(cfg.seed, "support", iteration),
                                            generator=self._generator("support", iteration))
        learner_start = perf_counter()
        support = process_episodes(support_episodes, cfg)
        params, step_sizes = dict(policy.named_parameters()), self.inner_lrs or None
        inner = inner_loop(policy, cfg, step_sizes)
        # the adaptation at θ, with the graph the meta-gradient needs: it picks the query policies now and is the
        # TRPO step's differentiable objective at θ later (built once instead of twice)
        fast_at_theta = adapt_in_chunks(policy, params, support, inner)
        old_fast = joined_chunks(fast_at_theta, inner.names)
        learner_seconds = perf_counter() - learner_start
        query_episodes = collect_episodes(self.envs, policy, old_fast, tasks, cfg.episodes_per_task,
                                          seed=derive_seed(cfg.seed, "query", iteration),
                                          generator=self._generator("query", iteration))

        # ALGO LOGIC: TRPO on θ (and the learned step sizes) for the post-adaptation surrogate, KL(π_old'||π_θ') ≤ δ
        learner_start = perf_counter()
        query = process_episodes(query_episodes, cfg)
        old_dist = chunked_distributions(policy, fast_at_theta, query.observations, cfg.task_chunk)
        index = self.fisher_tasks(iteration, len(tasks))
        support_steps = self.fisher_steps(iteration, support.observations.shape[1], "support")
        query_steps = self.fisher_steps(iteration, query.observations.shape[1], "query")

        def objective(differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
            # trpo_step asks for the differentiable objective once, at θ: hand it the adaptation built above, then
            # let its graph go (the line search's candidates re-adapt)
            nonlocal fast_at_theta
            fast = fast_at_theta if differentiable else None
            fast_at_theta = None
            return meta_objective(policy, params, support, query, old_dist, inner, differentiable, fast)

        outer = [*outer_parameters(params), *(step_sizes or {}).values()]  # not the context: it restarts at 0
        stats = trpo_step(
            outer, objective,
            max_kl=cfg.max_kl, cg_iters=cfg.cg_iters, damping=cfg.cg_damping,
            backtrack_ratio=cfg.backtrack_ratio, max_backtracks=cfg.max_backtracks,
            fisher=lambda: meta_fisher(policy, params, task_subset(support, index, support_steps),
                                       task_subset(query, index, query_steps),
                                       task_subset(old_dist, index, query_steps), inner, outer, cfg.cg_damping),
        )
        learner_seconds += perf_counter() - learner_start
        if not stats.accepted:
            self.rejected_updates += 1

        # logging
        env_steps = support_episodes.num_steps + query_episodes.num_steps
        self.iteration = iteration + 1
        self.total_env_steps += env_steps
        seconds = perf_counter() - start
        return {
            "env_steps": float(env_steps),
            "charts/pre_adaptation_return": float(support_episodes.returns.mean()),
            "charts/post_adaptation_return": float(query_episodes.returns.mean()),
            "charts/update_accepted": float(stats.accepted),
            "charts/rejected_updates": float(self.rejected_updates),
            "charts/nonfinite_updates": float(stats.reason.startswith("non-finite")),
            "charts/backtracks": float(stats.backtracks),
            "charts/SPS": env_steps / seconds,
            "charts/policy_std": float(self.policy.log_std.detach().exp().mean()) if self.continuous else 0.0,
            "charts/inner_lr_mean": float(self.step_sizes.mean()) if step_sizes else cfg.inner_lr,
            "losses/surrogate_before": -stats.loss_before,
            "losses/surrogate_after": -stats.loss_after,
            "losses/kl": stats.kl_after,
            "losses/grad_norm": stats.grad_norm,
            "losses/step_size": stats.step_size,
            "losses/cg_residual": stats.cg_residual,
            **time_split(seconds, learner_seconds, support_episodes, query_episodes),
        }

    # --- meta-test -------------------------------------------------------------------------------------------
    def adaptation_stages(self, tasks: list[Any], num_stages: int, seed: int) -> Iterator[tuple[Params, Episodes]]:
        """The meta-test adaptation, stage by stage: yields ``(fast weights, rollouts)`` for k = 0..num_stages−1.

        Stage k's fast weights (batched over ``tasks``, detached) are the policy after k adaptation batches (θ for
        k = 0); its rollouts are the ``adapt_episodes`` episodes per task collected with them. After the caller has
        used a stage, the next one takes ``inner_steps`` policy-gradient steps from these weights on these
        rollouts (no meta-gradient). Deterministic given ``seed``; does not change the agent.
        """
        check_test_request(tasks, num_stages)
        envs = self.env_pool.test(len(tasks) * min(self.envs_per_task, self.episodes_per_stage))
        inner = inner_loop(self.policy, self.config, self.inner_lrs or None)  # detached, first-order there
        return adaptation_stages(envs, self.policy, dict(self.policy.named_parameters()), inner, tasks, num_stages,
                                 self.episodes_per_stage, self.config, seed, self.device)

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """``[len(tasks), num_episodes]``: column k = mean return of the ``adapt_episodes`` rollouts per task
        collected after k adaptation batches (k policy-gradient steps with ``inner_steps = 1``); see the module
        docstring and :meth:`adaptation_stages`. Deterministic given ``seed``; does not change the agent."""
        check_test_request(tasks, num_episodes)
        returns = np.zeros((len(tasks), num_episodes))
        for column, (_, episodes) in enumerate(self.adaptation_stages(tasks, num_episodes, seed)):
            returns[:, column] = episodes.returns.mean(1).cpu().numpy()
        return returns

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of one episode per adaptation stage of ``task`` (episode 0 before adaptation): at each stage
        of :meth:`adaptation_stages` one more episode is rolled out with that stage's policy on an ``rgb_array``
        env of the task and rendered; the adaptation itself is meta_test's (``meta_test([task], num_episodes,
        seed)`` measures the same policies). Deterministic given ``seed``; does not change the agent."""
        check_test_request([task], num_episodes)
        generator = stream_generator(seed, "render", "actions", device=self.device)

        def play(envs: TaskVectorEnv) -> None:
            for stage, (fast, _) in enumerate(self.adaptation_stages([task], num_episodes, seed)):
                collect_episodes(envs, self.policy, fast, [task], 1, seed=derive_seed(seed, "render", stage),
                                 generator=generator)

        return self.env_pool.record(play)

    # --- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy weights, learned step sizes (empty with a fixed ``inner_lr``) and counters, copied (everything else
        derives from (seed, iteration))."""
        return agent_state(self, {"policy": self.policy, "step_sizes": self.step_sizes}, COUNTERS, copy=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_weights(state, required=True)
        load_agent_state(self, state, {}, COUNTERS)

    def load_weights(self, state: dict[str, Any], required: bool = False) -> None:
        """Warm start (``metarl train --init-from RUN``): the policy (and learned step sizes, where both runs learn
        them) of another run's ``state_dict``; a warm start from a fixed-step run keeps ``inner_lr``."""
        check_checkpoint(state, self.name)
        self.policy.load_state_dict(state["policy"])
        if self.step_sizes is not None:
            self.step_sizes.load_checked(state.get("step_sizes") or {}, required=required)

    def close(self) -> None:
        self.env_pool.close()
