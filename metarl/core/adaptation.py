"""Fast weights and the inner loop, shared by every gradient-based learner (supervised and RL).

Fast weights are plain ``dict[str, Tensor]`` used through :func:`torch.func.functional_call`; a module is never
cloned nor are weights swapped in and out of a live module.

The inner loop (:func:`adapt`) runs ``steps`` gradient steps on a *task loss* for every task of a meta-batch at
once. How it batches tasks: each adapted parameter is expanded to ``[tasks, *shape]`` (a view: the meta-gradient
flows back through ``expand`` into the shared initialisation), the per-task loss is evaluated for all tasks with
:func:`torch.func.vmap`, and one :func:`torch.autograd.grad` of the *sum* of the task losses returns each task's own
gradient (tasks do not share fast weights, so the sum separates). This keeps ordinary autograd for the outer loop:
second order by default (``create_graph=True``), first order by flag (the inner gradients are detached, so the
adapted weights depend on the initialisation through the identity only; Finn et al. 2017, section 5.2).

The one mechanism for *what* adapts and *how far*, used the same way by the supervised learners (``agents/maml.py``,
``meta_sgd.py``, ``anil.py``) and by MAML-TRPO (``learn_inner_lr``, ``adapt_head_only``):

* MAML (Finn, Abbeel & Levine, ICML 2017): ``step_size`` a float.
* Meta-SGD (Li et al. 2017): ``step_size`` the dict of learned per-parameter tensors shaped like the parameters that
  a :class:`StepSizes` module holds (``StepSizes.as_dict()``); the outer optimiser updates them with the weights.
* ANIL (Raghu et al., ICLR 2020): ``adapt_keys`` the head's parameter names
  (:func:`metarl.core.networks.head_parameter_names`); the rest stay shared (not expanded).
* RL (MAML-TRPO): the task loss is a policy-gradient surrogate over a task's support episodes; same function.

Continuing an adaptation: ``adapt(..., batched_params=True)`` starts from fast weights that already carry the task
dimension (the output of an earlier ``adapt``), e.g. MAML-TRPO's meta-test, which takes a step after every batch
of fresh rollouts. ``k`` steps and then ``m`` more from the result give the same weights (and, second order, the
same meta-gradient) as ``k + m`` steps in one call (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]
TaskLoss = Callable[[Params, Any], torch.Tensor]


def parameters_of(module: nn.Module) -> Params:
    """The module's parameters as a name -> tensor dict (the tensors themselves: gradients flow to the module)."""
    return dict(module.named_parameters())


def functional_forward(module: nn.Module) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """``forward(params, x)``: run ``module`` with the given (fast) weights; buffers are taken from the module."""

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, params, (x,))

    return forward


def flatten_params(params: Params, names: Sequence[str], batch_dims: int = 0) -> torch.Tensor:
    """Concatenate ``params[names]`` into ``[*batch, n]`` (``batch_dims`` leading dimensions kept): fast weights as
    one flat vector per task (the coordinates of the coordinate-wise optimisers, the particles of SVGD)."""
    return torch.cat([params[name].flatten(batch_dims) for name in names], dim=-1)


def unflatten_params(flat: torch.Tensor, like: Params, names: Sequence[str]) -> Params:
    """Views of ``flat`` (``[*batch, n]``) shaped like ``like[names]`` with the leading batch dimensions of ``flat``."""
    batch = flat.shape[:-1]
    sizes = [like[name].numel() for name in names]
    return {name: piece.view(*batch, *like[name].shape) for name, piece in zip(names, flat.split(sizes, dim=-1))}


def num_tasks_of(task_data: Any) -> int:
    """The leading (task) dimension shared by every tensor of a pytree of task data."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(task_data) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise ValueError("task data holds no tensors")
    n = leaves[0].shape[0]
    if any(t.shape[0] != n for t in leaves):
        raise ValueError("every tensor of the task data must have the same leading (task) dimension")
    return int(n)


def expand_for_tasks(params: Mapping[str, torch.Tensor], num_tasks: int, adapt_keys: Iterable[str]) -> Params:
    """Give every adapted parameter a leading task dimension (a view of the shared initialisation).

    Parameters that need a gradient but do not carry one (evaluation under ``no_grad``, Reptile's detached
    initialisation) become fresh leaves so the inner loop can differentiate through them.
    """
    keys = set(adapt_keys)
    fast: Params = {}
    for name, value in params.items():
        if name in keys:
            expanded = value.unsqueeze(0).expand(num_tasks, *value.shape)
            if not expanded.requires_grad:
                expanded = expanded.detach().clone().requires_grad_(True)
            fast[name] = expanded
        else:
            fast[name] = value
    return fast


def continue_from_batched(fast: Mapping[str, torch.Tensor], num_tasks: int, adapt_keys: Iterable[str]) -> Params:
    """Fast weights to continue adapting: check each adapted entry's task dimension; detached entries become leaves.

    An entry that is part of a graph (second-order adaptation in progress) is kept as it is, so a meta-gradient
    flows through the earlier steps too.
    """
    keys = set(adapt_keys)
    out: Params = dict(fast)
    for name in keys:
        value = fast[name]
        if value.dim() == 0 or value.shape[0] != num_tasks:
            raise ValueError(
                f"batched_params: parameter {name!r} has shape {tuple(value.shape)}, expected a leading "
                f"task dimension of {num_tasks}"
            )
        if not value.requires_grad:
            out[name] = value.detach().requires_grad_(True)
    return out


def batched_task_loss(
    task_loss: TaskLoss, fast: Params, adapt_keys: set[str], task_data: Any, vectorized: bool = False
) -> torch.Tensor:
    """``[tasks]`` losses: ``task_loss`` of each task under its own fast weights, vectorised with ``vmap``.

    With ``vectorized=True`` the loss already handles the task dimension itself (e.g. an MLP written with batched
    matrix products) and is called once on the batched fast weights; that skips ``vmap``'s dispatch overhead.
    """
    if vectorized:
        return task_loss(fast, task_data)
    in_dims = ({name: (0 if name in adapt_keys else None) for name in fast}, 0)
    return vmap(task_loss, in_dims=in_dims, randomness="different")(fast, task_data)


def adapt(
    task_loss: TaskLoss,
    params: Mapping[str, torch.Tensor],
    task_data: Any,
    *,
    steps: int,
    step_size: float | Mapping[str, torch.Tensor],
    first_order: bool = False,
    adapt_keys: Iterable[str] | None = None,
    vectorized: bool = False,
    batched_params: bool = False,
) -> Params:
    """Adapt ``params`` to every task of ``task_data`` with ``steps`` gradient steps; returns batched fast weights.

    Args:
        task_loss: ``task_loss(params, data_of_one_task) -> scalar``; written for ONE task, vectorised here.
        params: the initialisation (shared across tasks), e.g. :func:`parameters_of(model)`; or, with
            ``batched_params``, fast weights to continue from.
        task_data: a pytree of tensors whose leading dimension is the task, e.g. ``(support_x, support_y)``.
        steps: number of inner gradient steps (0 returns the expanded initialisation).
        step_size: one learning rate, or a dict of per-parameter step-size tensors (Meta-SGD).
        first_order: detach the inner gradients (first-order MAML); default is the exact second-order gradient.
        adapt_keys: names of the parameters to adapt (ANIL: the head); default all.
        vectorized: ``task_loss`` takes batched fast weights and all tasks' data and returns ``[tasks]`` losses
            itself (see :func:`batched_task_loss`); the two give the same numbers (tested).
        batched_params: ``params`` are fast weights already: the ``adapt_keys`` entries carry the leading task
            dimension (``[tasks, *shape]``, e.g. an earlier ``adapt``'s result) and are continued from as they are,
            not expanded; the other entries are shared. Entries without a gradient history (detached) become fresh
            leaves, so the steps can be taken under ``no_grad`` too.

    Returns:
        Fast weights: adapted parameters shaped ``[tasks, *shape]``; others are the shared tensors unchanged.
        Use them with :func:`batched_task_loss` or :func:`batched_forward`.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    keys = list(params) if adapt_keys is None else [k for k in params if k in set(adapt_keys)]
    unknown = set(adapt_keys or ()) - set(params)
    if unknown:
        raise ValueError(f"adapt_keys name parameters the model does not have: {sorted(unknown)}")
    if isinstance(step_size, Mapping):
        missing = [k for k in keys if k not in step_size]
        if missing:
            raise ValueError(f"per-parameter step sizes are missing for {missing}")
    key_set = set(keys)
    num_tasks = num_tasks_of(task_data)
    with torch.enable_grad():
        if batched_params:
            fast = continue_from_batched(params, num_tasks, keys)
        else:
            fast = expand_for_tasks(params, num_tasks, keys)
        for _ in range(steps):
            losses = batched_task_loss(task_loss, fast, key_set, task_data, vectorized)
            grads = torch.autograd.grad(losses.sum(), [fast[k] for k in keys], create_graph=not first_order)
            updated = dict(fast)
            for name, grad in zip(keys, grads):
                if first_order:
                    grad = grad.detach()
                lr = step_size[name] if isinstance(step_size, Mapping) else step_size
                updated[name] = fast[name] - lr * grad
            fast = updated
    return fast


class StepSizes(nn.Module):
    """Learned per-parameter step sizes (Meta-SGD): one tensor shaped like each adapted parameter, initialised to
    ``init``. A module, so optimisers and checkpoints see them; :meth:`as_dict` gives them under the parameters' own
    names, the ``step_size`` argument of :func:`adapt` (inside, ``.`` in a name is stored as ``__``)."""

    def __init__(self, params: Mapping[str, torch.Tensor], init: float, names: Iterable[str] | None = None) -> None:
        super().__init__()
        wanted = list(params) if names is None else [name for name in params if name in set(names)]
        self.names = wanted
        self.values = nn.ParameterDict(
            {self._key(name): nn.Parameter(torch.full_like(params[name].detach(), init)) for name in wanted})

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def as_dict(self) -> Params:
        """``{parameter name: step-size tensor}`` in the parameters' order (the tensors themselves: differentiable)."""
        return {name: self.values[self._key(name)] for name in self.names}

    def mean(self) -> torch.Tensor:
        """The mean of all the step sizes (detached; e.g. to log how they move)."""
        return torch.cat([lr.detach().reshape(-1) for lr in self.as_dict().values()]).mean()

    def load_checked(self, state: Mapping[str, torch.Tensor], required: bool = True) -> None:
        """Copy a :meth:`state_dict` in; a different set of step sizes is a one-line ``ValueError`` (an empty
        ``state`` is accepted when not ``required``: a warm start from a run with fixed steps keeps these)."""
        mine = self.state_dict()
        if set(state) != set(mine):
            if required or state:
                raise ValueError(f"the checkpoint's learned step sizes {sorted(state)} do not match these "
                                 f"{sorted(mine)}")
            return
        self.load_state_dict(dict(state))


def task_chunks(num_tasks: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` tasks covering ``range(num_tasks)`` (one slice if ``size`` is 0)."""
    size = size or num_tasks
    return [slice(start, min(start + size, num_tasks)) for start in range(0, num_tasks, size)]


def batched_forward(module: nn.Module, fast: Params, x: torch.Tensor, adapt_keys: Iterable[str] | None = None):
    """Run ``module`` for every task with its own fast weights: ``x`` is ``[tasks, n, ...]``."""
    keys = set(fast) if adapt_keys is None else set(adapt_keys)

    def one_task(p: Params, xt: torch.Tensor) -> torch.Tensor:
        return functional_call(module, p, (xt,))

    in_dims = ({name: (0 if name in keys else None) for name in fast}, 0)
    return vmap(one_task, in_dims=in_dims, randomness="different")(fast, x)


def reptile_pseudo_gradient(params: Mapping[str, torch.Tensor], adapted: Mapping[str, torch.Tensor]) -> Params:
    """The Reptile update direction (Nichol, Achiam & Schulman 2018): ``params - mean_over_tasks(adapted)``.

    Used as a gradient by any optimiser: SGD with learning rate ε gives ``φ ← φ + ε (mean W̃ − φ)``.
    """
    return {name: (params[name] - adapted[name].detach().mean(dim=0)) for name in params if name in adapted}
