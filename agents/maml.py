"""MAML and first-order MAML for few-shot supervised learning.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.

Spec: the meta-parameters θ are an initialisation. For each task of a meta-batch, the inner loop takes ``inner_steps``
SGD steps of size ``inner_lr`` on the support loss, θ'_i = θ − α ∇_θ L_support_i(θ) (repeated); the outer loop
minimises the mean query loss Σ_i L_query_i(θ'_i) with Adam, differentiating through the inner steps (second order)
or, with ``first_order=True`` (FOMAML, section 5.2), treating ∇L_support as a constant. Paper settings for sinusoid:
MLP 1-40-40-1 ReLU, α = 0.01, one inner step, 25 tasks per meta-batch, K = 5/10/20 shots, Adam β = 1e-3.
The inner loop is :func:`metarl.core.adaptation.adapt` (all tasks of the meta-batch at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from metarl.core.adaptation import Params, adapt, batched_forward, parameters_of
from metarl.core.config import check_int, check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig, single_task_loss, task_losses
from metarl.core.networks import MLP


@dataclass
class MAMLConfig(FewShotLearnerConfig):
    """Settings of MAML and its family (defaults: the MAML paper's sinusoid settings)."""

    inner_lr: float = 0.01
    """step size α of the inner SGD steps"""
    inner_steps: int = 1
    """gradient steps on the support set during meta-training (evaluation may use more)"""
    first_order: bool = False
    """drop second-order terms (FOMAML)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.inner_lr, "inner_lr")
        check_int(self.inner_steps, "inner_steps", minimum=1)


@dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML: MAML's settings with the second-order terms dropped."""

    first_order: bool = True
    """drop second-order terms (FOMAML)"""


class MAML(FewShotLearner):
    """A model whose initialisation is meta-learned so that a few gradient steps fit a new task."""

    name = "maml"
    uses_gradient_steps = True
    fixed_ways = True

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> MAML:
        from metarl.core.networks import standard_backbone

        model, _ = standard_backbone(source.input_shape, outputs, running_stats=False)
        return cls(model, source.kind, config)

    def __init__(self, model: nn.Module, kind: str, config: MAMLConfig | None = None) -> None:
        super().__init__(kind)
        self.model = model
        self.config = config or MAMLConfig()
        # an MLP evaluates all tasks with batched matrix products (same numbers as vmap, several times faster)
        self._vectorized = isinstance(model, MLP)

    # ALGO LOGIC: which parameters adapt, and with which step sizes (ANIL and Meta-SGD override these)
    def adapt_keys(self) -> list[str] | None:
        return None

    def step_sizes(self) -> float | dict[str, torch.Tensor]:
        return self.config.inner_lr

    def _task_loss(self, params: Params, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        return single_task_loss(functional_call(self.model, params, (x,)), y, self.kind)

    def _vectorized_loss(self, params: Params, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        return task_losses(self.model.batched(params, x), y, self.kind)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> Params:
        # without an outer gradient to compute (evaluation), second-order terms would only cost time
        first_order = self.config.first_order or not torch.is_grad_enabled()
        return adapt(
            self._vectorized_loss if self._vectorized else self._task_loss,
            parameters_of(self.model),
            (support_x, support_y),
            steps=self.config.inner_steps if steps is None else steps,
            step_size=self.step_sizes(),
            first_order=first_order,
            adapt_keys=self.adapt_keys(),
            vectorized=self._vectorized,
        )

    def predict(self, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        if self._vectorized:
            return self.model.batched(state, query_x)
        return batched_forward(self.model, state, query_x, self.adapt_keys())
