"""Reptile: first-order meta-learning by moving the initialisation towards task-adapted weights.

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.

Spec: for each task of a meta-batch, start from φ and take ``inner_steps`` SGD steps of size ``inner_lr`` on the
task's training data (here support ∪ query: Reptile has no query loss), giving W̃_i; then
φ ← φ + ε (mean_i W̃_i − φ). The update direction φ − mean W̃ is handed to an SGD optimiser with learning rate
ε = ``meta_step_size`` as a pseudo-gradient (the paper's batched version). A task whose inner SGD diverged
(its training loss after the steps is higher than before, or not finite) is left out of the mean, and an
iteration where every task diverged makes no update (``train/diverged_tasks`` counts them); without this guard
one exploding task moves φ a tenth of the way to its blown-up weights, and the next inner loops start there.
At meta-test, adaptation is the same SGD steps on the support set. The tasks of a meta-batch are adapted together
(``vmap``/batched matmuls).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metarl.core.adaptation import adapt, batched_task_loss, parameters_of, reptile_pseudo_gradient
from metarl.core.batch import EpisodeBatch
from metarl.core.config import check_number

from .maml import MAML, MAMLConfig


@dataclass
class ReptileConfig(MAMLConfig):
    """Reptile settings: the inner SGD steps and the outer interpolation step ε."""

    inner_lr: float = 0.02
    """SGD step size of the inner loop"""
    inner_steps: int = 5
    """SGD steps per task during meta-training"""
    meta_step_size: float = 0.1
    """ε: how far φ moves towards the mean adapted weights per meta-iteration"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.meta_step_size, "meta_step_size", low=0, high=1, low_open=True)


class Reptile(MAML):
    """Reptile shares MAML's adaptation (first order) and replaces the outer update."""

    name = "reptile"

    def __init__(self, model: nn.Module, kind: str, config: ReptileConfig | None = None) -> None:
        super().__init__(model, kind, config or ReptileConfig())
        self.config.first_order = True

    def configure_optimizer(self, outer_lr: float) -> torch.optim.Optimizer:
        # the pseudo-gradient already is the whole step: plain SGD with ε as its learning rate
        return torch.optim.SGD(self.parameters(), lr=self.config.meta_step_size)

    def outer_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        # ALGO LOGIC: adapt every task from a detached φ on all its data, then step φ towards the mean of the W̃_i
        params = {name: p.detach() for name, p in parameters_of(self.model).items()}
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        fast = adapt(
            self._vectorized_loss if self._vectorized else self._task_loss,
            params,
            (x, y),
            steps=self.config.inner_steps,
            step_size=self.config.inner_lr,
            first_order=True,
            vectorized=self._vectorized,
        )
        # a task whose inner SGD diverged (its loss rose, or is not finite) would throw φ far off: leave it out
        loss = self._vectorized_loss if self._vectorized else self._task_loss
        with torch.no_grad():
            before = batched_task_loss(loss, params, set(), (x, y), self._vectorized)
            after = batched_task_loss(loss, fast, set(fast), (x, y), self._vectorized)
        kept = torch.isfinite(after) & (after <= before)
        if not bool(kept.any()):
            return {"skipped_nonfinite": 1.0, "diverged_tasks": float(kept.numel())}
        if not bool(kept.all()):
            fast = {name: value[kept] for name, value in fast.items()}
        pseudo_gradient = reptile_pseudo_gradient(params, fast)
        if not all(torch.isfinite(g).all() for g in pseudo_gradient.values()):
            return {"skipped_nonfinite": 1.0}
        optimizer.zero_grad(set_to_none=True)
        for name, p in self.model.named_parameters():
            p.grad = pseudo_gradient[name]
        optimizer.step()
        with torch.no_grad():
            _, metrics = self.meta_loss(batch)
        metrics["diverged_tasks"] = float((~kept).sum())
        return metrics
