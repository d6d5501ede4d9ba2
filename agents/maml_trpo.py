"""MAML-TRPO: model-agnostic meta-learning for reinforcement learning with a TRPO outer loop.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, section 3.2
and 5.3 (reference code: cbfinn/maml_rl on rllab). TRPO: Schulman et al., ICML 2015.

Spec. The meta-parameters θ are a policy initialisation. One meta-iteration:

1. sample ``meta_batch_size`` tasks of the ``train`` split; roll out ``episodes_per_task`` *support* episodes of
   each with π_θ;
2. inner loop (:func:`metarl.core.adaptation.adapt`, all tasks at once): ``inner_steps`` policy-gradient steps
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
action bounds (rllab's ``normalize(env)``). ``adapt_head_only`` adapts only the policy's output layer in the inner
loop (an ANIL-style variant, Raghu et al. 2020). ``learn_inner_lr`` learns a step size per adapted parameter element
(Meta-SGD, Li et al. 2017): α becomes a tensor shaped like θ,
initialised to ``inner_lr`` and updated by the same TRPO step as θ (it is part of the parameter vector whose
post-adaptation KL is limited). Box and Discrete action spaces.

Cost. The Fisher-vector products go through the inner loop (Gauss-Newton form, :func:`metarl.core.trpo.
gauss_newton_fvp`); each costs about seven forward passes over the support and query steps (about 1.5 GFLOP per
HalfCheetah task), and CG needs ten (the step size comes from CG's own dᵀFd = dᵀb). ``fisher_subsample`` (the
presets use 0.2) computes them on a random fifth of the tasks: with 8 of 40 HalfCheetah tasks they are still over
half of the learner's 203 GFLOP per iteration, and the learner 26-31% of it (``experiments/bench_maml_trpo.py
--count-flops``, RESULTS.md); the gradient and the line search (surrogate and KL) always use every task. A subsample
costs step quality: on a trained HalfCheetahVel policy a step with the Fisher on 8 of 40 tasks gained ~0.72 of the
all-task step's surrogate and backtracked ~4.7 times instead of ~1.7 (``experiments/fisher_subsample_quality.py``).
``fisher_step_subsample`` keeps every task and gives the products a random fraction of each task's support and query
steps instead: with all 40 tasks and 10% of their steps the learner is ~0.21 of a HalfCheetahVel iteration (the
presets' 8 tasks: ~0.30) for ~0.64 of the exact step's progress (8 tasks: ~0.76), and the line search backtracks
about once (RESULTS.md). Everything else runs ``task_chunk`` tasks at a time (smaller buffers, same maths). Too few
tasks misjudge the KL: with 2 of 10 HalfCheetahDir tasks the line search backtracked 5-9 times per step and training
stalled near 100 (125.6 held out; 285.3 with all 10 tasks, experiments/RESULTS.md), so a config whose subsample
leaves fewer than ``MIN_FISHER_TASKS`` tasks gets a warning.

Meta-test (:meth:`MAMLTRPO.meta_test`): column k of the returned ``[tasks, num_episodes]`` array is the mean
undiscounted return of the ``adapt_episodes`` rollouts per task collected with the policy after k adaptation
batches: column 0 with θ, column k+1 after ``inner_steps`` policy-gradient step(s) from the column-k policy on the
rollouts of column k ("return after k gradient steps", the MAML paper's protocol with fresh rollouts each step).
The stages come from one generator, :meth:`MAMLTRPO.adaptation_stages`, which :meth:`MAMLTRPO.render_episodes` also
drives: at each stage it renders one more episode of the policy of that stage (``metarl evaluate --video``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import metarl.envs  # noqa: F401  (registers the environments)
from metarl.core.adaptation import Params, adapt, expand_for_tasks
from metarl.core.agent import AgentConfig
from metarl.core.baselines import linear_baseline_values
from metarl.core.device import resolve_device
from metarl.core.policies import Policy, make_policy
from metarl.core.rl import discounted_returns, generalized_advantages, normalize_per_task
from metarl.core.sampling import Episodes, collect_episodes
from metarl.core.seeding import derive_seed, seeded
from metarl.core.trpo import gauss_newton_fvp, trpo_step
from metarl.envs.base import is_task_env
from metarl.envs.recording import make_recording_envs
from metarl.envs.vector import TaskVectorEnv

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


MIN_FISHER_TASKS = 4
"""Below this many tasks in the Fisher-vector products (``fisher_subsample`` x ``meta_batch_size``) a config warns."""
INNER_LR_PREFIX = "inner_lr:"
"""Learned step sizes (``learn_inner_lr``) travel in the parameter dict under this prefix + the parameter's name."""


@dataclass
class MAMLTRPOConfig(AgentConfig):
    """Settings of MAML-TRPO (defaults: Finn et al. 2017 / rllab maml_rl)."""

    meta_batch_size: int = 40
    """tasks per meta-iteration"""
    episodes_per_task: int = 20
    """episodes per task for the support set, and again for the query set"""
    envs_per_task: int | None = None
    """sub-environments per task stepped together (memory vs speed); None: episodes_per_task (one round)"""
    inner_lr: float = 0.1
    """step size α of the inner policy-gradient steps"""
    inner_steps: int = 1
    """inner policy-gradient steps per adaptation"""
    first_order: bool = False
    """drop the second-order terms of the meta-gradient (first-order MAML)"""
    adapt_head_only: bool = False
    """adapt only the policy's output layer in the inner loop (ANIL-style)"""
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
    discount: float = 0.99
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
    surrogate and KL, the meta-gradient, the line search): smaller buffers (HalfCheetah, 100 units: 12.8 MB per layer
    for 8 tasks, 64 MB for 40; this machine's L3 holds 32 MB, and glibc serves blocks over 32 MB by fresh mmap). Same
    maths, sums in another order; 0: all tasks at once"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        positive_ints = ["meta_batch_size", "episodes_per_task", "inner_steps", "cg_iters", "max_backtracks"]
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.task_chunk, bool) or not isinstance(self.task_chunk, int) or self.task_chunk < 0:
            raise ValueError(f"task_chunk must be an integer >= 0, got {self.task_chunk!r}")
        for name in ("envs_per_task", "adapt_episodes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        for name in ("inner_lr", "max_kl", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("cg_damping", "baseline_reg"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("fisher_subsample", "fisher_step_subsample"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        fisher_tasks = max(1, round(self.fisher_subsample * self.meta_batch_size))
        if fisher_tasks < min(MIN_FISHER_TASKS, self.meta_batch_size):
            warnings.warn(
                f"fisher_subsample={self.fisher_subsample} x meta_batch_size={self.meta_batch_size} leaves "
                f"{fisher_tasks} task(s) for the Fisher-vector products: the natural step may misjudge the KL "
                f"(raise fisher_subsample to keep at least {MIN_FISHER_TASKS})",
                UserWarning,
                stacklevel=3,
            )
        if not 0 < self.backtrack_ratio < 1:
            raise ValueError(f"backtrack_ratio must be in (0, 1), got {self.backtrack_ratio!r}")
        for name in ("discount", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be a non-empty list of positive sizes, got {self.hidden_sizes!r}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict, got {type(self.env_kwargs).__name__}")


class TaskBatch(NamedTuple):
    """Learner data of one phase, flattened over episodes and time: ``[tasks, N, ...]`` (a pytree for ``vmap``)."""

    observations: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


def process_episodes(episodes: Episodes, config: MAMLTRPOConfig) -> TaskBatch:
    """Returns, per-task linear baseline, GAE and standardisation, all tasks at once."""
    # ALGO LOGIC: advantages against a linear feature baseline fitted per task (Duan et al. 2016)
    rewards, mask = episodes.rewards, episodes.mask
    returns = discounted_returns(rewards, config.discount, mask)
    values = linear_baseline_values(episodes.observations, returns, mask, config.baseline_reg)
    advantages = generalized_advantages(rewards, values, config.discount, config.gae_lambda, mask)
    if config.normalize_advantages:
        advantages = normalize_per_task(advantages, mask)
    tasks = rewards.shape[0]
    obs = episodes.observations.reshape(tasks, -1, episodes.observations.shape[-1])
    actions = episodes.actions.reshape(tasks, -1, *episodes.actions.shape[3:])
    return TaskBatch(obs, actions, advantages.reshape(tasks, -1), mask.reshape(tasks, -1))


def inner_loss(policy: Policy, params: Params, data: TaskBatch) -> torch.Tensor:
    """REINFORCE loss −mean_t log π(a_t|s_t) Â_t per task (``[tasks]`` for batched fast weights; a scalar for one
    task's weights and data, e.g. under ``vmap``)."""
    log_prob = policy.log_prob(policy.distribution(params, data.observations), data.actions)
    return -(log_prob * data.advantages * data.mask).sum(-1) / data.mask.sum(-1).clamp(min=1)


def split_step_sizes(params: Params, config: MAMLTRPOConfig) -> tuple[Params, float | Params]:
    """``(policy weights, step size)``: the learned per-parameter step sizes of ``params`` (``INNER_LR_PREFIX``
    entries, with ``learn_inner_lr``) or ``config.inner_lr``."""
    weights = {k: v for k, v in params.items() if not k.startswith(INNER_LR_PREFIX)}
    learned = {k[len(INNER_LR_PREFIX):]: v for k, v in params.items() if k.startswith(INNER_LR_PREFIX)}
    return weights, learned or config.inner_lr


def adapt_policy(policy: Policy, params: Params, support: TaskBatch, config: MAMLTRPOConfig,
                 first_order: bool, batched_params: bool = False) -> Params:
    """The inner loop: ``config.inner_steps`` policy-gradient steps per task from ``params``, the shared
    initialisation or (``batched_params``) fast weights to continue from, with the learned step sizes ``params``
    carries if any; returns batched fast weights (policy weights only)."""
    weights, step_size = split_step_sizes(params, config)
    return adapt(
        lambda p, d: inner_loss(policy, p, d), weights, support, steps=config.inner_steps,
        step_size=step_size, first_order=first_order,
        adapt_keys=policy.head_keys if config.adapt_head_only else None, vectorized=True,
        batched_params=batched_params,
    )


def adapted_keys(policy: Policy, config: MAMLTRPOConfig) -> list[str]:
    """Names of the parameters the inner loop adapts: the output layer's with ``adapt_head_only``, else all."""
    return list(policy.head_keys) if config.adapt_head_only else [name for name, _ in policy.named_parameters()]


def task_chunks(num_tasks: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` tasks covering ``range(num_tasks)`` (one slice if ``size`` is 0)."""
    size = size or num_tasks
    return [slice(start, min(start + size, num_tasks)) for start in range(0, num_tasks, size)]


def adapt_in_chunks(policy: Policy, params: Params, support: TaskBatch, config: MAMLTRPOConfig,
                    first_order: bool) -> list[Params]:
    """:func:`adapt_policy` over ``config.task_chunk`` tasks at a time: one batched fast-weight dict per chunk."""
    return [adapt_policy(policy, params, _subset(support, part), config, first_order)
            for part in task_chunks(support.observations.shape[0], config.task_chunk)]


def meta_objective(policy: Policy, params: Params, support: TaskBatch, query: TaskBatch, old_dist: tuple,
                   config: MAMLTRPOConfig, differentiable: bool = True,
                   fast: list[Params] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(−surrogate, mean KL)`` of the post-adaptation policies adapt(params) on the query steps, against the
    distributions ``old_dist`` of the policies that collected them, both means over tasks of per-task means.
    Computed ``config.task_chunk`` tasks at a time. ``fast``: adapt(params) already built, chunk by chunk (as
    :func:`adapt_in_chunks` returns it; with its graph when ``differentiable``), e.g. the adaptation that chose the
    query policies."""
    # ALGO LOGIC: re-adapt from the support episodes so the outer gradient flows through the inner step
    if fast is None:
        fast = adapt_in_chunks(policy, params, support, config, first_order=config.first_order or not differentiable)
    parts = task_chunks(query.observations.shape[0], config.task_chunk)
    if len(fast) != len(parts):
        raise ValueError(f"fast weights in {len(fast)} chunks, expected {len(parts)} (task_chunk={config.task_chunk})")
    surrogate_sum, kl_sum = 0.0, 0.0
    for part, fast_part in zip(parts, fast):
        data, old = _subset(query, part), _subset(old_dist, part)
        dist = policy.distribution(fast_part, data.observations)
        ratio = torch.exp(policy.log_prob(dist, data.actions) - policy.log_prob(old, data.actions))
        steps = data.mask.sum(-1).clamp(min=1)
        surrogate_sum = surrogate_sum + ((ratio * data.advantages * data.mask).sum(-1) / steps).sum()
        kl_sum = kl_sum + ((policy.kl(old, dist) * data.mask).sum(-1) / steps).sum()
    tasks = query.observations.shape[0]
    return -surrogate_sum / tasks, kl_sum / tasks


def meta_fisher(policy: Policy, params: Params, support: TaskBatch, query: TaskBatch, old_dist: tuple,
                config: MAMLTRPOConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fisher-vector products of the mean post-adaptation KL wrt θ, through the inner loop (Gauss-Newton form)."""
    fast = adapt_policy(policy, params, support, config, first_order=config.first_order)
    outputs = policy.distribution(fast, query.observations)
    weight = (query.mask / query.mask.sum(-1, keepdim=True).clamp(min=1) / query.mask.shape[0]).unsqueeze(-1)
    metric = lambda tangent: policy.fisher_product(old_dist, tuple(t * weight for t in tangent))
    return gauss_newton_fvp(outputs, list(params.values()), metric, config.cg_damping)


def _check_test_request(tasks: list[Any], num_episodes: int) -> None:
    """``ValueError`` unless there is at least one task and one episode."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if len(tasks) < 1:
        raise ValueError("meta_test needs at least one task")


def _subset(batch: tuple, index: torch.Tensor | slice, steps: torch.Tensor | slice | None = None) -> Any:
    """The tasks ``index`` (and of those, the steps ``steps``, second axis) of a TaskBatch or a distribution tuple."""
    parts = [t[index] if steps is None else t[index][:, steps] for t in batch]
    return TaskBatch(*parts) if isinstance(batch, TaskBatch) else tuple(parts)


class MAMLTRPO:
    """MAML-TRPO agent (the :class:`metarl.core.agent.MetaRLAgent` contract)."""

    name = "maml-trpo"

    def __init__(self, env_id: str, config: MAMLTRPOConfig | None = None) -> None:
        self.config = config = config or MAMLTRPOConfig()
        self.env_id = env_id
        self.device = resolve_device(config.device)
        try:
            probe = gym.make(env_id, **config.env_kwargs)
        except (gym.error.Error, TypeError, ModuleNotFoundError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"cannot make environment {env_id!r} with {config.env_kwargs}: {message}") from None
        try:
            if not is_task_env(probe):
                raise ValueError(f"{env_id} is not a task environment: env.unwrapped needs sample_tasks, set_task, "
                                 "get_task (see metarl.envs.base)")
            with seeded(derive_seed(config.seed, "init")):
                self.policy = make_policy(probe.observation_space, probe.action_space, config.hidden_sizes,
                                          config.init_std, ACTIVATIONS[config.activation],
                                          config.normalize_actions).to(self.device)
            self.continuous = not self.policy.discrete
            adapted = adapted_keys(self.policy, config)
            self.inner_lrs: Params = {
                name: torch.full_like(p, config.inner_lr).requires_grad_(True)
                for name, p in self.policy.named_parameters() if name in adapted
            } if config.learn_inner_lr else {}
        finally:
            probe.close()
        self.envs_per_task = config.envs_per_task or config.episodes_per_task
        self.envs = self._make_envs(config.meta_batch_size * self.envs_per_task)
        self.task_api = self.envs.single_task_env  # sample_tasks for training (and for callers)
        self._test_envs: dict[int, TaskVectorEnv] = {}
        self.iteration = 0
        self.total_env_steps = 0
        self.rejected_updates = 0

    def _make_envs(self, num_envs: int) -> TaskVectorEnv:
        return TaskVectorEnv(self.env_id, num_envs, env_kwargs=self.config.env_kwargs,
                             max_episode_steps=self.config.max_episode_steps)

    def _params(self) -> Params:
        """The meta-parameters TRPO updates: the policy's weights and, with ``learn_inner_lr``, the step sizes."""
        return {**dict(self.policy.named_parameters()),
                **{INNER_LR_PREFIX + name: lr for name, lr in self.inner_lrs.items()}}

    def _generator(self, *stream: int | str) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.config.seed, *stream))

    def fisher_tasks(self, iteration: int, num_tasks: int) -> torch.Tensor:
        """Indices of the meta-batch's tasks whose KL curvature iteration ``iteration``'s Fisher-vector products use:
        a random ``fisher_subsample`` fraction (at least one), drawn from (seed, iteration)."""
        count = max(1, round(self.config.fisher_subsample * num_tasks))
        generator = self._generator("fisher", iteration)
        return torch.randperm(num_tasks, generator=generator, device=self.device)[:count]

    def fisher_steps(self, iteration: int, num_steps: int, phase: str) -> torch.Tensor | slice:
        """Positions (along the flattened episodes x time axis, the same in every task) of the ``phase``
        ("support" or "query") steps iteration ``iteration``'s Fisher-vector products use: a random
        ``fisher_step_subsample`` fraction in increasing order, drawn from (seed, iteration, phase); all of them
        (``slice(None)``) at 1."""
        if self.config.fisher_step_subsample >= 1:
            return slice(None)
        count = max(1, round(self.config.fisher_step_subsample * num_steps))
        generator = self._generator("fisher-steps", phase, iteration)
        return torch.randperm(num_steps, generator=generator, device=self.device)[:count].sort().values

    # --- meta-training ---------------------------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One meta-iteration (see the module docstring); everything random derives from (seed, iteration)."""
        cfg, policy = self.config, self.policy
        start = perf_counter()
        tasks = self.task_api.sample_tasks(cfg.meta_batch_size, split="train",
                                           seed=derive_seed(cfg.seed, "tasks", iteration))

        # ALGO LOGIC: support episodes with θ, adapted policies, query episodes with θ'
        theta = {k: v.detach() for k, v in self.policy.named_parameters()}
        support_episodes = collect_episodes(self.envs, policy, theta, tasks, cfg.episodes_per_task,
                                            seed=derive_seed(cfg.seed, "support", iteration),
                                            generator=self._generator("support", iteration))
        learner_start = perf_counter()
        support = process_episodes(support_episodes, cfg)
        params = self._params()
        # the adaptation at θ, with the graph the meta-gradient needs: it picks the query policies now and is the
        # TRPO step's differentiable objective at θ later (built once instead of twice)
        fast_at_theta = adapt_in_chunks(policy, params, support, cfg, first_order=cfg.first_order)
        adapted = adapted_keys(policy, cfg)  # batched per task in each chunk; the rest is θ's, shared
        old_fast = {k: torch.cat([part[k] for part in fast_at_theta]).detach() if k in adapted else v.detach()
                    for k, v in fast_at_theta[0].items()}
        learner_seconds = perf_counter() - learner_start
        query_episodes = collect_episodes(self.envs, policy, old_fast, tasks, cfg.episodes_per_task,
                                          seed=derive_seed(cfg.seed, "query", iteration),
                                          generator=self._generator("query", iteration))

        # ALGO LOGIC: TRPO on θ for the post-adaptation surrogate, KL(π_old' || π_θ') ≤ δ
        learner_start = perf_counter()
        query = process_episodes(query_episodes, cfg)
        with torch.no_grad():
            chunk_dists = [policy.distribution(fast, query.observations[part])
                           for part, fast in zip(task_chunks(len(tasks), cfg.task_chunk), fast_at_theta, strict=True)]
        old_dist = tuple(torch.cat(pieces) for pieces in zip(*chunk_dists))
        index = self.fisher_tasks(iteration, len(tasks))
        support_steps = self.fisher_steps(iteration, support.observations.shape[1], "support")
        query_steps = self.fisher_steps(iteration, query.observations.shape[1], "query")

        def objective(differentiable: bool) -> tuple[torch.Tensor, torch.Tensor]:
            # trpo_step asks for the differentiable objective once, at θ: hand it the adaptation built above, then
            # let its graph go (the line search's candidates re-adapt)
            nonlocal fast_at_theta
            fast = fast_at_theta if differentiable else None
            fast_at_theta = None
            return meta_objective(policy, params, support, query, old_dist, cfg, differentiable, fast)

        stats = trpo_step(
            list(params.values()), objective,
            max_kl=cfg.max_kl, cg_iters=cfg.cg_iters, damping=cfg.cg_damping,
            backtrack_ratio=cfg.backtrack_ratio, max_backtracks=cfg.max_backtracks,
            fisher=lambda: meta_fisher(policy, params, _subset(support, index, support_steps),
                                       _subset(query, index, query_steps), _subset(old_dist, index, query_steps),
                                       cfg),
        )
        learner_seconds += perf_counter() - learner_start
        if not stats.accepted:
            self.rejected_updates += 1

        # logging
        env_steps = support_episodes.num_steps + query_episodes.num_steps
        self.iteration = iteration + 1
        self.total_env_steps += env_steps
        seconds = perf_counter() - start
        sampling = support_episodes.env_seconds + support_episodes.policy_seconds
        sampling += query_episodes.env_seconds + query_episodes.policy_seconds
        metrics = {
            "env_steps": float(env_steps),
            "charts/pre_adaptation_return": float(support_episodes.returns.mean()),
            "charts/post_adaptation_return": float(query_episodes.returns.mean()),
            "charts/update_accepted": float(stats.accepted),
            "charts/rejected_updates": float(self.rejected_updates),
            "charts/nonfinite_updates": float(stats.reason.startswith("non-finite")),
            "charts/backtracks": float(stats.backtracks),
            "charts/SPS": env_steps / seconds,
            "charts/policy_std": float(self.policy.log_std.detach().exp().mean()) if self.continuous else 0.0,
            "charts/inner_lr_mean": (float(torch.cat([lr.detach().reshape(-1) for lr in self.inner_lrs.values()])
                                           .mean()) if self.inner_lrs else cfg.inner_lr),
            "losses/surrogate_before": -stats.loss_before,
            "losses/surrogate_after": -stats.loss_after,
            "losses/kl": stats.kl_after,
            "losses/grad_norm": stats.grad_norm,
            "losses/step_size": stats.step_size,
            "losses/cg_residual": stats.cg_residual,
            "time/iteration_seconds": seconds,
            "time/env_seconds": support_episodes.env_seconds + query_episodes.env_seconds,
            "time/policy_inference_seconds": support_episodes.policy_seconds + query_episodes.policy_seconds,
            "time/learner_seconds": learner_seconds,
            "time/other_seconds": seconds - sampling - learner_seconds,
        }
        return metrics

    # --- meta-test -------------------------------------------------------------------------------------------
    def adaptation_stages(self, tasks: list[Any], num_stages: int, seed: int) -> Iterator[tuple[Params, Episodes]]:
        """The meta-test adaptation, stage by stage: yields ``(fast weights, rollouts)`` for k = 0..num_stages−1.

        Stage k's fast weights (batched over ``tasks``, detached) are the policy after k adaptation batches (θ for
        k = 0); its rollouts are the ``adapt_episodes`` episodes per task collected with them. After the caller has
        used a stage, the next one takes ``inner_steps`` policy-gradient steps from these weights on these
        rollouts (no meta-gradient). Deterministic given ``seed``; does not change the agent.
        """
        cfg, policy = self.config, self.policy
        _check_test_request(tasks, num_stages)
        rollouts = cfg.adapt_episodes or cfg.episodes_per_task
        per_task = min(self.envs_per_task, rollouts)
        envs = self._test_envs.get(len(tasks))
        if envs is None:
            envs = self._test_envs[len(tasks)] = self._make_envs(len(tasks) * per_task)
        weights = {k: v.detach() for k, v in self.policy.named_parameters()}
        step_sizes = {INNER_LR_PREFIX + k: v.detach() for k, v in self.inner_lrs.items()}
        fast = expand_for_tasks(weights, len(tasks), adapted_keys(policy, cfg))
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(seed, "meta_test", "actions"))
        for stage in range(num_stages):
            episodes = collect_episodes(envs, policy, fast, tasks, rollouts,
                                        seed=derive_seed(seed, "meta_test", stage), generator=generator)
            yield fast, episodes
            if stage + 1 < num_stages:
                # ALGO LOGIC: continue adapting from the current fast weights on this stage's rollouts
                adapted = adapt_policy(policy, {**fast, **step_sizes}, process_episodes(episodes, cfg), cfg,
                                       first_order=True, batched_params=True)
                fast = {k: v.detach() for k, v in adapted.items()}

    def meta_test(self, tasks: list[Any], num_episodes: int, seed: int) -> np.ndarray:
        """``[len(tasks), num_episodes]``: column k = mean return of the ``adapt_episodes`` rollouts per task
        collected after k adaptation batches (k policy-gradient steps with ``inner_steps = 1``); see the module
        docstring and :meth:`adaptation_stages`. Deterministic given ``seed``; does not change the agent."""
        _check_test_request(tasks, num_episodes)
        returns = np.zeros((len(tasks), num_episodes))
        for column, (_, episodes) in enumerate(self.adaptation_stages(tasks, num_episodes, seed)):
            returns[:, column] = episodes.returns.mean(1).cpu().numpy()
        return returns

    def render_episodes(self, task: Any, num_episodes: int, seed: int) -> list[list[np.ndarray]]:
        """RGB frames of one episode per adaptation stage of ``task`` (episode 0 before adaptation): at each stage
        of :meth:`adaptation_stages` one more episode is rolled out with that stage's policy on an ``rgb_array``
        env of the task and rendered; the adaptation itself is meta_test's (``meta_test([task], num_episodes,
        seed)`` measures the same policies). Deterministic given ``seed``; does not change the agent."""
        _check_test_request([task], num_episodes)
        envs, recorder = make_recording_envs(self.env_id, self.config.env_kwargs, self.config.max_episode_steps)
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(seed, "render", "actions"))
        try:
            for stage, (fast, _) in enumerate(self.adaptation_stages([task], num_episodes, seed)):
                collect_episodes(envs, self.policy, fast, [task], 1, seed=derive_seed(seed, "render", stage),
                                 generator=generator)
        finally:
            envs.close()
        return recorder.episodes

    # --- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy weights and counters (everything else is derived from (seed, iteration)); weights_only-safe."""
        return {
            "name": self.name,
            "policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
            "inner_lrs": {k: v.detach().clone() for k, v in self.inner_lrs.items()},
            "iteration": self.iteration,
            "total_env_steps": self.total_env_steps,
            "rejected_updates": self.rejected_updates,
            "config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"this checkpoint is from agent {state.get('name')!r}, not {self.name!r}")
        self.policy.load_state_dict(state["policy"])
        self._load_inner_lrs(state, required=True)
        self.iteration = int(state["iteration"])
        self.total_env_steps = int(state["total_env_steps"])
        self.rejected_updates = int(state["rejected_updates"])

    def load_weights(self, state: dict[str, Any]) -> None:
        """Warm start (``metarl train --init-from RUN``): only the policy of another run's ``state_dict``."""
        if state.get("name") != self.name:
            raise ValueError(f"this checkpoint is from agent {state.get('name')!r}, not {self.name!r}")
        self.policy.load_state_dict(state["policy"])
        self._load_inner_lrs(state, required=False)

    def _load_inner_lrs(self, state: dict[str, Any], required: bool) -> None:
        """Copy the checkpoint's learned step sizes in (a warm start from a fixed-step run keeps ``inner_lr``)."""
        stored = state.get("inner_lrs") or {}
        if not self.inner_lrs:
            return
        if set(stored) != set(self.inner_lrs):
            if required or stored:
                raise ValueError(f"the checkpoint's learned step sizes {sorted(stored)} do not match this agent's "
                                 f"{sorted(self.inner_lrs)} (learn_inner_lr / adapt_head_only differ)")
            return
        with torch.no_grad():
            for name, lr in self.inner_lrs.items():
                lr.copy_(stored[name])

    def close(self) -> None:
        self.envs.close()
        for envs in self._test_envs.values():
            envs.close()
        self._test_envs.clear()
