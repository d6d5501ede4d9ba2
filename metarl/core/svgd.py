"""Stein variational gradient descent (SVGD) on flattened particles, and SVGD as an inner loop over network weights.

Liu & Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian Inference Algorithm", NeurIPS 2016.

SVGD moves ``n`` particles ``x_1 … x_n`` towards a density ``p`` known up to a constant, by ``x_i ← x_i + ε φ(x_i)``
with

    φ(x_i) = (1/n) Σ_j [ k(x_j, x_i) ∇_{x_j} log p(x_j) + ∇_{x_j} k(x_j, x_i) ],

the direction in the unit ball of the kernel's RKHS that decreases KL(q ‖ p) fastest. The first term drives the
particles up the log-density, smoothed by the kernel; the second, the repulsive term, pushes them apart so that they
spread over the target instead of collapsing on its mode. With one particle ``φ = ∇ log p``: gradient ascent.

Kernel: the RBF ``k(x, y) = exp(−‖x − y‖² / h)``, with a fixed bandwidth ``h`` or Liu & Wang's median heuristic
``h = med² / log(n + 1)`` (``med²`` the median of the squared distances between distinct particles; ``h = 1`` for a
single particle). Since ``∇_{x_j} k(x_j, x_i) = (2/h) (x_i − x_j) k(x_j, x_i)`` the update is, with ``K`` the
kernel matrix and ``S`` the stacked scores, ``φ = (1/n) [K S + (2/h) (diag(K 1) X − K X)]`` (:func:`stein_direction`).

Particles are tensors ``[..., n, D]`` (leading batch dimensions, e.g. the tasks of a meta-batch, each with its own
particles and its own target). Everything is differentiable, the median bandwidth included (its gradient flows to
the median pair), so an outer loop can backpropagate through SVGD steps.

:func:`svgd_adapt` is the inner loop of Bayesian MAML (``agents/bmaml.py``): each particle is a whole set of
network weights, flattened (:func:`metarl.core.adaptation.flatten_params`), and every task of a meta-batch moves
its own copy of the particles by SVGD on its log-posterior. Tasks × particles are flattened into the task dimension
of the shared fast-weights machinery (:func:`metarl.core.adaptation.batched_task_loss`: ``vmap`` or a vectorised
loss), so one ``autograd.grad`` of the summed energies gives every particle's score on its own task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_map

from .adaptation import Params, TaskLoss, batched_task_loss, num_tasks_of, unflatten_params


def pairwise_squared_distances(x: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]``: ``‖x_i − x_j‖²`` between the particles ``x`` (``[..., n, D]``); exact zeros on the diagonal.

    Computed from the Gram matrix of the particles centred on their mean (the distances do not change; centring
    keeps the rounding of ``‖x‖² + ‖y‖² − 2 x·y`` small for weight vectors far from the origin)."""
    centred = x - x.mean(dim=-2, keepdim=True)
    squared_norms = (centred * centred).sum(dim=-1)
    gram = centred @ centred.transpose(-1, -2)
    distances = (squared_norms.unsqueeze(-1) + squared_norms.unsqueeze(-2) - 2 * gram).clamp_min(0.0)
    n = x.shape[-2]
    return distances.masked_fill(torch.eye(n, dtype=torch.bool, device=x.device), 0.0)


def median_bandwidth(squared_distances: torch.Tensor) -> torch.Tensor:
    """``[...]``: Liu & Wang's ``h = med² / log(n + 1)`` from ``[..., n, n]`` squared distances (``med²``: the
    median over the ``n (n − 1) / 2`` distinct pairs, interpolated for an even count; ``h = 1`` when ``n = 1``)."""
    n = squared_distances.shape[-1]
    batch = squared_distances.shape[:-2]
    if n < 2:
        return torch.ones(batch, dtype=squared_distances.dtype, device=squared_distances.device)
    rows, cols = torch.triu_indices(n, n, offset=1, device=squared_distances.device)
    median = torch.quantile(squared_distances[..., rows, cols], 0.5, dim=-1)
    tiny = torch.finfo(squared_distances.dtype).tiny
    return median.clamp_min(tiny) / math.log(n + 1)


def rbf_kernel(x: torch.Tensor, bandwidth: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, h)``: the RBF kernel matrix ``K_ij = exp(−‖x_i − x_j‖² / h)`` (``[..., n, n]``) of the particles
    ``x`` (``[..., n, D]``) and its bandwidth ``h`` (``[...]``): ``bandwidth``, or the median heuristic if None."""
    squared = pairwise_squared_distances(x)
    if bandwidth is None:
        h = median_bandwidth(squared)
    else:
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 (or None: the median heuristic), got {bandwidth!r}")
        h = torch.full(x.shape[:-2], float(bandwidth), dtype=x.dtype, device=x.device)
    return torch.exp(-squared / h[..., None, None]), h


def stein_direction(x: torch.Tensor, score: torch.Tensor, *, bandwidth: float | None = None,
                    repulsive: bool = True) -> torch.Tensor:
    """SVGD's ``φ(x_i) = (1/n) Σ_j [k(x_j, x_i) score_j + ∇_{x_j} k(x_j, x_i)]`` for every particle: ``[..., n, D]``.

    ``score``: ``∇ log p`` at each particle (``[..., n, D]``). ``repulsive=False`` drops the kernel-gradient term
    (then the particles follow the kernel-smoothed gradient and collapse onto a mode: the ablation of the tests).
    """
    if x.shape != score.shape:
        raise ValueError(f"particles {tuple(x.shape)} and scores {tuple(score.shape)} differ in shape")
    n = x.shape[-2]
    kernel, h = rbf_kernel(x, bandwidth)
    direction = kernel @ score  # K is symmetric: row i is Σ_j k(x_j, x_i) score_j
    if repulsive:
        centred = x - x.mean(dim=-2, keepdim=True)  # the repulsion is translation invariant; centring rounds less
        direction = direction + (2.0 / h)[..., None, None] * (kernel.sum(dim=-1, keepdim=True) * centred
                                                              - kernel @ centred)
    return direction / n


def svgd_adapt(
    energy: TaskLoss,
    particles: torch.Tensor,
    like: Params,
    names: Sequence[str],
    task_data: Any,
    *,
    steps: int,
    step_size: float | torch.Tensor,
    first_order: bool = False,
    vectorized: bool = False,
    bandwidth: float | None = None,
    batched_particles: bool = False,
) -> torch.Tensor:
    """SVGD steps of every task's particles on that task's posterior; returns the particles ``[tasks, n, D]``.

    Args:
        energy: ``energy(params, data)``: the negative log-posterior (up to a constant) of one particle's weights
            ``params`` (a dict shaped like ``like``) on one task's ``data`` — or, with ``vectorized=True``, of
            weights carrying a leading ``[tasks × particles]`` dimension on the matching data, returning
            ``[tasks × particles]`` energies (as :func:`metarl.core.adaptation.batched_task_loss`).
        particles: ``[n, D]`` initial particles shared by every task (each row the flattened weights
            ``flatten_params(params, names)``), or with ``batched_particles=True`` ``[tasks, n, D]`` particles
            to continue from (an earlier call's result).
        like, names: the parameters' shapes (any tensors of those shapes) and their order in the flat vector.
        task_data: a pytree of tensors with a leading task dimension (e.g. ``(support_x, support_y)``).
        steps: SVGD steps (0 returns the particles expanded to every task).
        step_size: ε (a float, or a 0-d tensor through which the outer loop may differentiate).
        first_order: detach the scores ∇ log p (no second-order terms); the kernel terms stay differentiable.
        bandwidth: a fixed RBF bandwidth ``h``, or None for the median heuristic at every step.

    Tasks × particles are flattened into the task dimension of :func:`batched_task_loss` (task-major: row
    ``t · n + m`` is particle ``m`` of task ``t``); one gradient of the summed energies gives each particle its
    own score (the energies do not share weights, so the sum separates). Second order by default.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    num_tasks = num_tasks_of(task_data)
    keys = set(names)
    with torch.enable_grad():
        if batched_particles:
            if particles.dim() != 3 or particles.shape[0] != num_tasks:
                raise ValueError(f"batched particles must be [tasks={num_tasks}, n, D], got {tuple(particles.shape)}")
            x = particles
        else:
            x = particles.unsqueeze(0).expand(num_tasks, *particles.shape)
        if not x.requires_grad:  # evaluation under no_grad, or continuing from detached particles
            x = x.detach().requires_grad_(True)
        n, dim = x.shape[1:]
        per_particle = tree_map(lambda t: t.repeat_interleave(n, dim=0) if isinstance(t, torch.Tensor) else t,
                                task_data)
        for _ in range(steps):
            fast = unflatten_params(x.reshape(num_tasks * n, dim), like, names)
            energies = batched_task_loss(energy, fast, keys, per_particle, vectorized)
            (gradient,) = torch.autograd.grad(energies.sum(), x, create_graph=not first_order)
            score = -(gradient.detach() if first_order else gradient)
            x = x + step_size * stein_direction(x, score, bandwidth=bandwidth)
    return x
