"""The meta-learner LSTM: the learner's weights are the cell state of an LSTM that learns how to update them.

Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.

Spec. The learner is the source's standard classifier (MAML's model: Conv-4 with a ``ways`` head for images, the MLP
40-40 for vectors), its parameters flattened into one vector θ. For each task, ``inner_steps`` (T) updates on the
support set; at step t, with L_t and ∇_t = ∇_{θ_{t−1}} L_t the support loss and gradient at θ_{t−1}:

* a first, ordinary LSTM layer (``hidden`` = 20 units, the paper's) reads, for every coordinate, the preprocessed
  gradient and loss — Andrychowicz et al.'s ``(log|x|/p, sign x)`` pairs, p = 10 (:func:`~metarl.agents.l2o.
  preprocess_gradient`) — and gives x_t (``[coordinates, hidden]``, its own state carried across steps);
* the meta-learner cell (:class:`MetaLSTMCell`) updates the cell state c_t = θ_t:

      i_t = σ(W_I · [x_t, θ_{t−1}, i_{t−1}] + b_I)        (the learned learning rate)
      f_t = σ(W_F · [x_t, θ_{t−1}, f_{t−1}] + b_F)        (the learned forgetting)
      θ_t = c_t = f_t ⊙ c_{t−1} + i_t ⊙ (−∇_t),           c_0 = θ_0 (the meta-learned initialisation), i_0 = f_0 = 0.

  Both layers are shared by all coordinates (each coordinate is a row of one batch), so the meta-learner has the same
  handful of parameters for a learner of any size; W_I, W_F ~ U(−0.01, 0.01), b_F ~ U(4, 6) (f ≈ 1: start by
  remembering) and b_I ~ U(−5, −4) (i ≈ 0.01: a small learning rate), as the paper suggests.
* The query loss of θ_T is the meta-loss; the outer loop (Adam, gradient norm clipped at ``grad_clip``, 0.25 as in
  common reimplementations of the paper) trains both layers and θ_0 together by backpropagating through the T steps.

All tasks of a meta-batch adapt at once: θ has a task dimension (``[tasks, n]``) and the support losses of all tasks
are one ``vmap`` (Conv-4) or batched matrix product (MLP) of the fast weights, as in MAML
(:func:`metarl.core.adaptation.batched_task_loss`).

What differs from the paper, and why:

* Second derivatives: as in the paper, ∇_t and L_t are inputs that the meta-gradient does not differentiate
  (``second_order=False``: they are detached; θ_{t−1} still enters the gates and the forget path with its gradient).
  ``second_order=True`` keeps the terms through ∇_t.
* Batch norm uses the statistics of the batch at hand, in training and at test (the paper's choice for the meta-test
  too); its scale and shift are coordinates of θ like every other weight.
* The paper feeds the support set in mini-batches and uses T = 5 (1-shot) or 12 (5-shot) updates with 32-filter
  Conv-4s on Mini-ImageNet; here every step sees the whole support set.
* Regression sources work too (the MLP learner, MSE support loss): nothing in the update is specific to classes.

Results beside MAML at the same budget: experiments/RESULTS.md, section "Meta-learner LSTM on Omniglot 5-way".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metarl.core.adaptation import Params, batched_task_loss, flatten_params, parameters_of, unflatten_params
from metarl.core.config import check_int, check_number
from metarl.core.learner import FewShotLearnerConfig

from .l2o import learner_backbone, lstm_step, preprocess_gradient
from .maml import MAML


@dataclass
class MetaLSTMConfig(FewShotLearnerConfig):
    """Settings of the meta-learner LSTM (defaults: the paper's 1-shot settings where they carry over)."""

    inner_steps: int = 5
    """updates of the learner on the support set during meta-training (evaluation may use more)"""
    hidden: int = 20
    """units of the first (ordinary) LSTM layer shared by the coordinates"""
    filters: int = 32
    """channels of the Conv-4 learner on image sources (the paper's 32; MAML's is 64; each weight costs an LSTM row)"""
    second_order: bool = False
    """differentiate the meta-loss through the support gradients and losses too (the paper does not)"""
    grad_clip: float = 0.25
    """clip the meta-gradient's norm to this (0: no clipping)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.inner_steps, "inner_steps", minimum=1)
        check_int(self.hidden, "hidden", minimum=1)
        check_int(self.filters, "filters", minimum=1)
        check_number(self.grad_clip, "grad_clip", low=0)


# ----------------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the meta-learner cell, whose cell state is the learner's weights

class MetaLSTMCell(nn.Module):
    """``θ_t = f_t ⊙ θ_{t−1} − i_t ⊙ ∇_t`` with input and forget gates computed per coordinate from ``[x_t, θ_{t−1},
    previous gate]`` by weights shared across coordinates."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.input_weight = nn.Parameter(torch.empty(inputs + 2).uniform_(-0.01, 0.01))  # W_I
        self.forget_weight = nn.Parameter(torch.empty(inputs + 2).uniform_(-0.01, 0.01))  # W_F
        self.input_bias = nn.Parameter(torch.empty(1).uniform_(-5.0, -4.0))  # b_I
        self.forget_bias = nn.Parameter(torch.empty(1).uniform_(4.0, 6.0))  # b_F

    def forward(self, x: torch.Tensor, gradient: torch.Tensor, theta: torch.Tensor, input_gate: torch.Tensor,
                forget_gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: ``[..., inputs]``; the rest ``[...]`` (one entry per coordinate). Returns ``(θ_t, i_t, f_t)``."""
        k = x.shape[-1]
        w_i, w_f = self.input_weight, self.forget_weight
        i = torch.sigmoid(x @ w_i[:k] + theta * w_i[k] + input_gate * w_i[k + 1] + self.input_bias)
        f = torch.sigmoid(x @ w_f[:k] + theta * w_f[k] + forget_gate * w_f[k + 1] + self.forget_bias)
        return f * theta - i * gradient, i, f


class MetaLearnerLSTM(MAML):
    """The source's standard classifier, updated on each task's support set by a coordinate-wise LSTM whose cell
    state is the classifier's weights; the initial weights and the LSTM are meta-learned."""

    name = "meta-lstm"

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> MetaLearnerLSTM:
        return cls(learner_backbone(source, outputs, config.filters), source.kind, config)

    def __init__(self, model: nn.Module, kind: str, config: MetaLSTMConfig | None = None) -> None:
        super().__init__(model, kind, config or MetaLSTMConfig())
        self.names = list(parameters_of(model))
        self.first_layer = nn.LSTMCell(4, self.config.hidden)  # input: preprocessed (∇, L) of a coordinate
        self.cell = MetaLSTMCell(self.config.hidden)

    def meta_parameters(self) -> list[nn.Parameter]:
        """The meta-learner's own parameters (both layers), not the learner's initialisation."""
        return [*self.first_layer.parameters(), *self.cell.parameters()]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> Params:
        steps = self.config.inner_steps if steps is None else steps
        second_order = self.config.second_order and torch.is_grad_enabled()
        track = torch.is_grad_enabled()
        init = parameters_of(self.model)
        tasks = support_x.shape[0]
        loss = self._vectorized_loss if self._vectorized else self._task_loss
        with torch.enable_grad():
            theta = flatten_params(init, self.names).unsqueeze(0).expand(tasks, -1)  # c_0 = θ_0 for every task
            if not theta.requires_grad:
                theta = theta.detach().requires_grad_(True)
            rows = theta.numel()
            state = (theta.new_zeros(rows, self.config.hidden), theta.new_zeros(rows, self.config.hidden))
            input_gate = forget_gate = theta.new_zeros(theta.shape)
            for _ in range(steps):
                fast = unflatten_params(theta, init, self.names)
                losses = batched_task_loss(loss, fast, set(self.names), (support_x, support_y), self._vectorized)
                (gradient,) = torch.autograd.grad(losses.sum(), theta, create_graph=second_order)
                if not second_order:  # the paper: ∇_t and L_t are inputs, not differentiated
                    gradient, losses = gradient.detach(), losses.detach()
                features = torch.cat([preprocess_gradient(gradient),
                                      preprocess_gradient(losses)[:, None, :].expand(-1, theta.shape[1], -1)], dim=-1)
                state = lstm_step(self.first_layer, features.reshape(rows, 4), state)
                x = state[0].view(tasks, -1, self.config.hidden)
                theta, input_gate, forget_gate = self.cell(x, gradient, theta, input_gate, forget_gate)
                if not track:  # evaluation: no graph across steps
                    theta = theta.detach().requires_grad_(True)
                    state = (state[0].detach(), state[1].detach())
                    input_gate, forget_gate = input_gate.detach(), forget_gate.detach()
        return unflatten_params(theta, init, self.names)

    def clip_gradients(self) -> float | None:
        """The meta-gradient's norm, clipped at ``grad_clip`` (0: no clipping)."""
        if self.config.grad_clip > 0:
            return float(nn.utils.clip_grad_norm_(self.parameters(), self.config.grad_clip))
        return None
