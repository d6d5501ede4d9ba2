"""Meta-SGD: MAML with a learned step size for every parameter element.

Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.

Spec: θ' = θ − α ∘ ∇_θ L_support(θ), where α has the shape of θ and is meta-learned jointly with θ by the outer
optimiser (initialised to ``inner_lr``; the paper initialises α uniformly in [0.005, 0.1], a constant is the common
reimplementation). Second order through the inner step unless ``first_order``. The step sizes are a
:class:`metarl.core.adaptation.StepSizes` module, the same one MAML-TRPO's ``learn_inner_lr`` uses.
"""

from __future__ import annotations

import torch
from torch import nn

from metarl.core.adaptation import StepSizes, parameters_of

from .maml import MAML, MAMLConfig


class MetaSGD(MAML):
    """MAML whose inner-loop step sizes are per-parameter tensors learned in the outer loop."""

    name = "meta-sgd"

    def __init__(self, model: nn.Module, kind: str, config: MAMLConfig | None = None) -> None:
        super().__init__(model, kind, config)
        self.learned_step_sizes = StepSizes(parameters_of(model), self.config.inner_lr)

    # ALGO LOGIC: the inner loop steps with the learned sizes
    def step_sizes(self) -> dict[str, torch.Tensor]:
        return self.learned_step_sizes.as_dict()
