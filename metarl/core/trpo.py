"""Trust Region Policy Optimization's update (Schulman et al. 2015, "Trust Region Policy Optimization", appendix C):
conjugate gradient on Fisher-vector products, step size from the KL limit, backtracking line search.

Spec of :func:`trpo_step`, for parameters θ, a surrogate loss ``L(θ)`` (to minimise) and the mean KL divergence
``D(θ) = KL(π_old || π_θ)`` (0 at θ_old):

1. ``g = ∇L(θ_old)``; the Fisher-vector product ``F v = ∇²D(θ_old) v + damping · v`` is the Hessian-vector product
   of the mean KL. Two exact ways (tested equal): :func:`fisher_vector_product`, Pearlmutter's double backward of
   D; and :func:`gauss_newton_fvp`, ``Jᵀ M J v`` with ``J`` the Jacobian of the distribution parameters wrt θ and
   ``M`` the KL's Hessian in those parameters — exact at θ_old because ∇D vanishes there, so the second-derivative
   terms of ``J`` drop out (through MAML's inner loop this skips third derivatives; about twice as fast).
2. ``s ≈ −F⁻¹ g`` by ``cg_iters`` conjugate-gradient iterations (10, as rllab / garage); ``damping`` regularises F
   (rllab and garage use 1e-5; 0.1 as in OpenAI baselines is safer when F is badly conditioned, e.g. few samples).
3. Full step ``β s`` with ``β = sqrt(2 δ / sᵀ F s)`` (the step that reaches ``D = δ`` under the quadratic model).
4. Backtracking line search: candidates ``θ_old + ratio^k β s`` for ``k = 0 .. max_backtracks − 1``; the first one
   with a finite loss that *improves* on ``L(θ_old)`` and ``D ≤ δ`` is accepted. If none is, or anything before
   was not finite (loss, gradient, CG direction, ``sᵀ F s ≤ 0``), θ is left exactly as it was and the step is
   reported rejected with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Objective = Callable[[bool], tuple[torch.Tensor, torch.Tensor]]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def assign_flat(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the flat vector ``flat`` into ``params`` in place (no autograd history)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}")


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> tuple[torch.Tensor, float]:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given as ``matvec``.

    Returns ``(x, ‖b − A x‖²)`` after at most ``iters`` iterations (stops early once the squared residual is below
    ``residual_tol``). Exact in ``len(b)`` iterations in exact arithmetic.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / torch.dot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float(rr)


def _grads_or_zeros(outputs, inputs: list[torch.Tensor], grad_outputs, **kwargs) -> list[torch.Tensor]:
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def fisher_vector_product(kl: torch.Tensor, params: Sequence[torch.Tensor],
                          damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H v + damping v`` with ``H`` the Hessian of the scalar ``kl`` wrt ``params`` (graph kept for reuse)."""
    params = list(params)
    flat_grad = flatten(_grads_or_zeros(kl, params, None, create_graph=True))

    def product(v: torch.Tensor) -> torch.Tensor:
        hv = _grads_or_zeros(torch.dot(flat_grad, v), params, None, retain_graph=True)
        return flatten(hv) + damping * v

    return product


def gauss_newton_fvp(outputs: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                     metric: Callable[[tuple[torch.Tensor, ...]], Sequence[torch.Tensor]],
                     damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> Jᵀ M J v + damping v``: ``J = ∂outputs/∂params`` (``outputs`` built with a graph differentiable twice
    wrt ``params``), ``metric(t) = M t`` on a tuple of tangents shaped like ``outputs``.

    ``J v`` comes from the double-vjp trick: ``Jᵀ u`` is built once with a graph in a dummy ``u``, and its vjp wrt
    ``u`` is ``J v``; ``Jᵀ (M J v)`` is one ordinary backward through ``outputs``.
    """
    params = list(params)
    outputs = tuple(outputs)
    dummies = tuple(torch.zeros_like(o, requires_grad=True) for o in outputs)
    transposed = flatten(_grads_or_zeros(outputs, params, dummies, create_graph=True))

    def product(v: torch.Tensor) -> torch.Tensor:
        jv = tuple(_grads_or_zeros(transposed, list(dummies), v, retain_graph=True))
        back = _grads_or_zeros(outputs, params, tuple(metric(jv)), retain_graph=True)
        return flatten(back) + damping * v

    return product


@dataclass
class TRPOStats:
    """What one :func:`trpo_step` did."""

    accepted: bool
    reason: str
    """``accepted``, ``non-finite loss``, ``non-finite gradient``, ``non-finite direction``, ``line search``"""
    loss_before: float
    loss_after: float
    kl_after: float
    backtracks: int
    step_size: float
    grad_norm: float
    cg_residual: float


def trpo_step(params: Sequence[torch.Tensor], objective: Objective, *, max_kl: float, cg_iters: int = 10,
              damping: float = 1e-5, backtrack_ratio: float = 0.8, max_backtracks: int = 15,
              fisher: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None) -> TRPOStats:
    """One TRPO update of ``params`` (leaf tensors, changed in place) — see the module docstring.

    ``objective(differentiable)`` returns ``(loss, mean_kl)`` at the parameters' current values; with
    ``differentiable=False`` it may skip building graphs (line search), with ``True`` both must be differentiable
    twice wrt ``params`` (MAML: through the inner loop). ``kl`` is measured from the policy at the values ``params``
    have when this function is called. ``fisher()``, if given, returns the Fisher-vector product to use (with its
    damping), e.g. a :func:`gauss_newton_fvp` or one on a subsample; by default the double backward of ``kl``.
    """
    params = list(params)
    start = flatten([p.detach() for p in params]).clone()
    loss, kl = objective(True)
    loss_before = float(loss.detach())
    nan = float("nan")

    def reject(reason: str, grad_norm: float = nan, step: float = nan, residual: float = nan,
               backtracks: int = 0, loss_after: float = loss_before, kl_after: float = nan) -> TRPOStats:
        assign_flat(params, start)
        return TRPOStats(False, reason, loss_before, loss_after, kl_after, backtracks, step, grad_norm, residual)

    if not math.isfinite(loss_before):
        return reject("non-finite loss")
    grad = flatten(_grads_or_zeros(loss, params, None, retain_graph=True))
    grad_norm = float(grad.norm())
    if not math.isfinite(grad_norm):
        return reject("non-finite gradient")
    fvp = fisher_vector_product(kl, params, damping) if fisher is None else fisher()
    direction, residual = conjugate_gradient(fvp, -grad, cg_iters)
    # dᵀ F d without an 11th Fisher-vector product: conjugate gradient started at 0 leaves its residual b − F d
    # orthogonal to d (d lies in the Krylov space the residual is orthogonal to), so dᵀ F d = dᵀ b, b = −grad
    curvature = float(torch.dot(direction, -grad))
    if not (math.isfinite(curvature) and curvature > 0 and bool(torch.isfinite(direction).all())):
        return reject("non-finite direction", grad_norm, residual=residual)
    step_size = math.sqrt(2 * max_kl / curvature)
    full_step = step_size * direction.detach()
    del fvp, loss, kl  # free the double-backward graph before the line search

    loss_after, kl_after = nan, nan
    for k in range(max_backtracks):
        assign_flat(params, start + backtrack_ratio**k * full_step)
        with torch.no_grad():
            new_loss, new_kl = objective(False)
        loss_after, kl_after = float(new_loss), float(new_kl)
        if math.isfinite(loss_after) and math.isfinite(kl_after) and loss_after < loss_before and kl_after <= max_kl:
            return TRPOStats(True, "accepted", loss_before, loss_after, kl_after, k, step_size, grad_norm, residual)
    return reject("line search", grad_norm, step_size, residual, max_backtracks, loss_after, kl_after)


def random_subset(fraction: float, size: int, generator: torch.Generator, *, ordered: bool = False,
                  device: torch.device | str = "cpu") -> torch.Tensor | slice:
    """A random ``fraction`` (at least one) of ``range(size)`` drawn from ``generator`` (a subsampled Fisher's
    tasks or steps); ``ordered``: in increasing order. ``fraction >= 1`` with ``ordered``: all, as ``slice(None)``."""
    if ordered and fraction >= 1:
        return slice(None)
    count = max(1, round(fraction * size))
    chosen = torch.randperm(size, generator=generator, device=device)[:count]
    return chosen.sort().values if ordered else chosen

