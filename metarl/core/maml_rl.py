"""Gradient-based meta-RL: policy-gradient adaptation and the TRPO meta-objective through it.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017, section 3.2
(reference code: cbfinn/maml_rl). The mechanism of MAML-TRPO (``agents/maml_trpo.py``) and of every variant whose
inner loop is a policy-gradient step on a subset of the policy's inputs and weights (ANIL's head, Meta-SGD's learned
step sizes, a context vector only as CAVIA), written once. Spec:

* **Episodes to task batches** (:func:`process_episodes`): ``[tasks, episodes, T]`` episodes become a
  :class:`TaskBatch` flattened over episodes and time, with advantages Â from GAE(γ, λ) against a linear feature
  baseline fitted per task (Duan et al. 2016; :mod:`metarl.core.baselines`), standardised per task on request.
* **Inner loss** (:func:`inner_loss`): REINFORCE, L_i(φ) = −mean_t log π_φ(a_t|s_t) Â_t over task i's steps.
* **Inner loop** (:func:`adapt_policy`, :class:`InnerLoop`): ``steps`` steps φ'_i = φ − α ∇ L_i(φ) for all tasks at
  once through :func:`metarl.core.adaptation.adapt`, on the parameters ``names`` only (the rest stay shared), α a
  float or per-parameter tensors (differentiated by the outer loop); second order unless ``first_order``.
  :func:`adapt_in_chunks` runs it ``task_chunk`` tasks at a time (the same maths, smaller buffers);
  :func:`joined_chunks` and :func:`chunked_distributions` put the chunks' adapted policies together.
* **Meta-objective** (:func:`meta_objective`): for the query steps collected by policies with distributions
  π_old, ``(−mean_i E[π_φ'_i(a|s) / π_old(a|s) · Â], mean_i E[KL(π_old || π_φ'_i)])`` with φ'_i = adapt(params)
  re-adapted from the support batch, so the outer gradient flows through the inner step; means over tasks of
  per-task means over the valid (masked) steps.
* **Fisher-vector products** (:func:`meta_fisher`): of that mean KL wrt the outer parameters, through the inner
  loop, in Gauss-Newton form (:func:`metarl.core.trpo.gauss_newton_fvp`, each about seven forward passes over the
  support and query steps); :func:`task_subset` picks the tasks and steps of a subsampled Fisher.
* **Meta-test** (:func:`adaptation_stages`): stage 0 rolls out the initial policy, stage k+1 the policy after
  ``inner.steps`` more steps from stage k's on stage k's rollouts (fresh rollouts every stage, no meta-gradient).
* **Config** (:func:`check_maml_rl_config`, :func:`inner_loop`): the checks of the fields of a MAML-style RL config
  that the above reads (the meta-batch, the inner loop, the advantages, the TRPO step and its Fisher subsample), and
  the :class:`InnerLoop` (and :func:`learned_step_sizes`) such a config describes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import torch

from .adaptation import Params, StepSizes, adapt, expand_for_tasks, task_chunks
from .agent_env import stream_generator
from .baselines import linear_baseline_values
from .config import ConfigError, check_choice, check_fields, check_int, check_number, check_positive
from .networks import head_parameter_names
from .outcomes import record_meta_test_column
from .policies import Policy
from .rl import discounted_returns, generalized_advantages, normalize_per_task
from .sampling import Episodes, collect_episodes
from .seeding import derive_seed
from .trpo import gauss_newton_fvp


class AdvantageSettings(Protocol):
    """What :func:`process_episodes` reads (a policy-gradient agent's config has these fields)."""

    gamma: float
    gae_lambda: float
    normalize_advantages: bool
    baseline_reg: float


class TaskBatch(NamedTuple):
    """Learner data of one phase, flattened over episodes and time: ``[tasks, N, ...]`` (a pytree for ``vmap``)."""

    observations: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


def process_episodes(episodes: Episodes, settings: AdvantageSettings) -> TaskBatch:
    """Returns, per-task linear baseline, GAE and standardisation, all tasks at once."""
    rewards, mask = episodes.rewards, episodes.mask
    returns = discounted_returns(rewards, settings.gamma, mask)
    values = linear_baseline_values(episodes.observations, returns, mask, settings.baseline_reg)
    advantages = generalized_advantages(rewards, values, settings.gamma, settings.gae_lambda, mask)
    if settings.normalize_advantages:
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


ADAPTED_SUBSETS = ("all", "head", "context")
"""What an inner loop can adapt: every parameter (MAML), the output layer (ANIL), the context only (CAVIA)."""


def adapted_names(policy: Policy, adapt: str | bool = "all") -> list[str]:
    """Names of the parameters an inner loop adapts (``adapt`` one of :data:`ADAPTED_SUBSETS`): ``"all"`` (MAML;
    a context too, where the policy has one), ``"head"`` the output layer's (ANIL), ``"context"`` the context
    vector's only (CAVIA; the policy needs ``context_dim > 0``). A bool is the older ``head_only`` flag."""
    if isinstance(adapt, bool):
        adapt = "head" if adapt else "all"
    if adapt == "head":
        return head_parameter_names(policy)
    if adapt == "context":
        if not getattr(policy, "context_dim", 0):
            raise ValueError("adapting the context needs a policy with a context (context_dim >= 1)")
        return ["context"]
    if adapt != "all":
        raise ValueError(f"adapt must be one of {', '.join(ADAPTED_SUBSETS)}, got {adapt!r}")
    return [name for name, _ in policy.named_parameters()]


MIN_FISHER_TASKS = 4
"""Below this many tasks in the Fisher-vector products (``fisher_subsample`` x ``meta_batch_size``) a config warns."""


def check_maml_rl_config(config: Any, stacklevel: int = 4) -> None:
    """Check (one-line :class:`~metarl.core.config.ConfigError`) the fields of a MAML-style RL config that this module
    and the TRPO outer step read: ``meta_batch_size``, ``episodes_per_task``, the inner loop's (``inner_steps``,
    ``inner_lr``, ``adapt``, ``adapt_head_only``, ``context_dim``, ``task_chunk``), the advantages' (``gamma``,
    ``gae_lambda``, ``baseline_reg``) and TRPO's (``max_kl``, ``cg_iters``, ``cg_damping``, ``backtrack_ratio``,
    ``max_backtracks``, ``fisher_subsample``, ``fisher_step_subsample``). Sets ``adapt`` and ``adapt_head_only``
    to agree; warns (``stacklevel`` as :func:`warnings.warn`'s, 4: the caller of the config's ``__init__`` when
    this runs in its ``__post_init__``) when the Fisher subsample leaves fewer than :data:`MIN_FISHER_TASKS`
    tasks."""
    check_fields(config, ("meta_batch_size", "episodes_per_task", "inner_steps", "cg_iters", "max_backtracks"),
                 check_int, minimum=1)
    check_int(config.task_chunk, "task_chunk", minimum=0)
    check_fields(config, ("inner_lr", "max_kl"), check_positive)
    check_fields(config, ("cg_damping", "baseline_reg"), check_number, low=0)
    check_fields(config, ("fisher_subsample", "fisher_step_subsample"), check_number, low=0, high=1, low_open=True)
    check_number(config.backtrack_ratio, "backtrack_ratio", low=0, high=1, low_open=True, high_open=True)
    check_fields(config, ("gamma", "gae_lambda"), check_number, low=0, high=1)
    check_choice(config.adapt, "adapt", ADAPTED_SUBSETS)
    check_int(config.context_dim, "context_dim", minimum=0)
    if not isinstance(config.adapt_head_only, bool):
        raise ConfigError(f"adapt_head_only must be true or false, got {config.adapt_head_only!r}")
    if config.adapt_head_only and config.adapt == "context":
        raise ConfigError("adapt_head_only (adapt='head') contradicts adapt='context': set one of them")
    if config.adapt_head_only:
        config.adapt = "head"
    config.adapt_head_only = config.adapt == "head"  # the two spellings always agree (config.json records both)
    if config.adapt == "context" and config.context_dim < 1:
        raise ConfigError(f"adapt='context' needs context_dim >= 1 (the context the inner loop adapts), got "
                          f"{config.context_dim}")
    fisher_tasks = max(1, round(config.fisher_subsample * config.meta_batch_size))
    if fisher_tasks < min(MIN_FISHER_TASKS, config.meta_batch_size):
        warnings.warn(
            f"fisher_subsample={config.fisher_subsample} x meta_batch_size={config.meta_batch_size} leaves "
            f"{fisher_tasks} task(s) for the Fisher-vector products: the natural step may misjudge the KL "
            f"(raise fisher_subsample to keep at least {MIN_FISHER_TASKS})", UserWarning, stacklevel=stacklevel)


def outer_parameters(params: Params) -> list[torch.Tensor]:
    """The parameters an outer step moves: those that require a gradient (a policy's context is zero, not learned)."""
    return [value for value in params.values() if value.requires_grad]


@dataclass(frozen=True)
class InnerLoop:
    """What the inner loop adapts and how: the arguments of :func:`adapt_policy` and of the meta-objective."""

    names: tuple[str, ...]
    """parameters adapted per task (every one, the head's, or a context's); the rest stay shared"""
    steps: int = 1
    """policy-gradient steps per adaptation (several reuse the same support batch)"""
    step_size: float | Params = 0.1
    """α: a float, or learned per-parameter tensors by name (Meta-SGD; the outer loop differentiates them)"""
    first_order: bool = False
    """drop the second-order terms of the meta-gradient"""
    task_chunk: int = 0
    """tasks adapted (and scored) at a time; 0: all at once"""


def inner_loop(policy: Policy, config: Any, step_sizes: Params | None = None) -> InnerLoop:
    """The inner loop a MAML-style RL config describes: ``inner_steps`` steps of ``inner_lr``, or of the learned
    ``step_sizes`` (``learn_inner_lr``), on the parameters ``adapt`` names (all, the head's, the context's), with
    its ``first_order`` and ``task_chunk``."""
    return InnerLoop(tuple(adapted_names(policy, config.adapt)), config.inner_steps,
                     config.inner_lr if step_sizes is None else step_sizes, config.first_order, config.task_chunk)


def learned_step_sizes(policy: Policy, config: Any) -> StepSizes | None:
    """Meta-SGD's learned step sizes where a MAML-style RL config asks for them (``learn_inner_lr``): one per element
    of the parameters ``adapt`` names, initialised to ``inner_lr``; None with a fixed ``inner_lr``."""
    if not config.learn_inner_lr:
        return None
    return StepSizes(dict(policy.named_parameters()), config.inner_lr, adapted_names(policy, config.adapt))


def adapt_policy(policy: Policy, params: Params, support: TaskBatch, inner: InnerLoop,
                 batched_params: bool = False) -> Params:
    """``inner.steps`` policy-gradient steps per task from ``params``, the shared initialisation or
    (``batched_params``) fast weights to continue from; returns batched fast weights."""
    return adapt(lambda p, d: inner_loss(policy, p, d), params, support, steps=inner.steps,
                 step_size=inner.step_size, first_order=inner.first_order, adapt_keys=inner.names, vectorized=True,
                 batched_params=batched_params)


def adapt_in_chunks(policy: Policy, params: Params, support: TaskBatch, inner: InnerLoop) -> list[Params]:
    """:func:`adapt_policy` over ``inner.task_chunk`` tasks at a time: one batched fast-weight dict per chunk."""
    return [adapt_policy(policy, params, task_subset(support, part), inner)
            for part in task_chunks(support.observations.shape[0], inner.task_chunk)]


def joined_chunks(fast: list[Params], names: Sequence[str]) -> Params:
    """One detached fast-weight dict over all tasks from :func:`adapt_in_chunks`' chunks: the adapted ``names``
    concatenated along the task axis, the shared rest as it is (e.g. to roll out the adapted policies)."""
    return {k: torch.cat([part[k] for part in fast]).detach() if k in names else v.detach()
            for k, v in fast[0].items()}


@torch.no_grad()
def chunked_distributions(policy: Policy, fast: list[Params], observations: torch.Tensor, task_chunk: int) -> tuple:
    """The distribution parameters of the chunks' adapted policies on ``observations`` ``[tasks, N, ...]``, over
    all tasks (e.g. π_old of the query steps the meta-objective compares against)."""
    parts = task_chunks(observations.shape[0], task_chunk)
    pieces = [policy.distribution(part_fast, observations[part]) for part, part_fast in zip(parts, fast, strict=True)]
    return tuple(torch.cat(chunk) for chunk in zip(*pieces))


def meta_objective(policy: Policy, params: Params, support: TaskBatch, query: TaskBatch, old_dist: tuple,
                   inner: InnerLoop, differentiable: bool = True,
                   fast: list[Params] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(−surrogate, mean KL)`` of the post-adaptation policies adapt(params) on the query steps, against the
    distributions ``old_dist`` of the policies that collected them, both means over tasks of per-task means.
    Computed ``inner.task_chunk`` tasks at a time. ``fast``: adapt(params) already built, chunk by chunk (as
    :func:`adapt_in_chunks` returns it; with its graph when ``differentiable``), e.g. the adaptation that chose the
    query policies; not ``differentiable``: the re-adaptation builds no second-order graph."""
    if fast is None:
        fast = adapt_in_chunks(policy, params, support, inner if differentiable else replace(inner, first_order=True))
    parts = task_chunks(query.observations.shape[0], inner.task_chunk)
    if len(fast) != len(parts):
        raise ValueError(f"fast weights in {len(fast)} chunks, expected {len(parts)} (task_chunk={inner.task_chunk})")
    surrogate_sum, kl_sum = 0.0, 0.0
    for part, fast_part in zip(parts, fast):
        data, old = task_subset(query, part), task_subset(old_dist, part)
        dist = policy.distribution(fast_part, data.observations)
        ratio = torch.exp(policy.log_prob(dist, data.actions) - policy.log_prob(old, data.actions))
        steps = data.mask.sum(-1).clamp(min=1)
        surrogate_sum = surrogate_sum + ((ratio * data.advantages * data.mask).sum(-1) / steps).sum()
        kl_sum = kl_sum + ((policy.kl(old, dist) * data.mask).sum(-1) / steps).sum()
    tasks = query.observations.shape[0]
    return -surrogate_sum / tasks, kl_sum / tasks


def meta_fisher(policy: Policy, params: Params, support: TaskBatch, query: TaskBatch, old_dist: tuple,
                inner: InnerLoop, wrt: Sequence[torch.Tensor],
                damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> F v + damping v``: F the Hessian of the mean post-adaptation KL (as :func:`meta_objective`'s) wrt the
    outer parameters ``wrt`` (those of ``params`` and the learned step sizes the outer step moves), through the
    inner loop (Gauss-Newton form)."""
    fast = adapt_policy(policy, params, support, inner)
    outputs = policy.distribution(fast, query.observations)
    weight = (query.mask / query.mask.sum(-1, keepdim=True).clamp(min=1) / query.mask.shape[0]).unsqueeze(-1)
    metric = lambda tangent: policy.fisher_product(old_dist, tuple(t * weight for t in tangent))
    return gauss_newton_fvp(outputs, wrt, metric, damping)


def task_subset(batch: tuple, index: torch.Tensor | slice, steps: torch.Tensor | slice | None = None) -> Any:
    """The tasks ``index`` (and of those, the steps ``steps``, second axis) of a TaskBatch or a distribution tuple."""
    parts = [t[index] if steps is None else t[index][:, steps] for t in batch]
    return TaskBatch(*parts) if isinstance(batch, TaskBatch) else tuple(parts)


def adaptation_stages(envs: Any, policy: Policy, weights: Params, inner: InnerLoop, tasks: list[Any],
                      num_stages: int, episodes_per_stage: int, settings: AdvantageSettings, seed: int,
                      device: torch.device | str = "cpu") -> Iterator[tuple[Params, Episodes]]:
    """Yields ``(fast weights, rollouts)`` for stages k = 0..num_stages−1 on ``envs``: the fast weights (batched
    over ``tasks``, detached) start at ``weights`` and take ``inner``'s steps on each stage's
    ``episodes_per_stage`` rollouts per task (advantages from ``settings``) once the caller has used that stage,
    first-order and from detached weights and step sizes (no meta-gradient). Deterministic given ``seed``."""
    detached = lambda params: {k: v.detach() for k, v in params.items()}
    step_size = detached(inner.step_size) if isinstance(inner.step_size, Mapping) else inner.step_size
    inner = replace(inner, step_size=step_size, first_order=True)
    fast = expand_for_tasks(detached(weights), len(tasks), inner.names)
    generator = stream_generator(seed, "meta_test", "actions", device=device)
    for stage in range(num_stages):
        episodes = collect_episodes(envs, policy, fast, tasks, episodes_per_stage,
                                    seed=derive_seed(seed, "meta_test", stage), generator=generator)
        if episodes.successes is not None:  # the stage's success rate per task (metarl.core.outcomes)
            record_meta_test_column(stage, episodes.successes.double().nanmean(1).cpu().numpy())
        yield fast, episodes
        if stage + 1 < num_stages:
            adapted = adapt_policy(policy, fast, process_episodes(episodes, settings), inner, batched_params=True)
            fast = {k: v.detach() for k, v in adapted.items()}
