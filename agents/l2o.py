"""A learned optimiser (L2O): a coordinate-wise LSTM that maps gradients to parameter updates.

Andrychowicz, Denil, Gómez, Hoffman, Pfau, Schaul, Shillingford & de Freitas, "Learning to learn by gradient descent
by gradient descent", NeurIPS 2016.

Spec (:class:`LearnedOptimiser`, usable by itself on any differentiable function of a parameter vector):

* the optimiser m (parameters φ) is a two-layer LSTM with ``hidden`` (paper: 20) units applied to every coordinate of
  θ separately with the same weights (the coordinates are the rows of one batch, so the optimiser has as many
  parameters for a 10-d quadratic as for a network of 100,000 weights) followed by a linear output:
  ``[g_t, h_{t+1}] = m(∇_t, h_t, φ)``, ``θ_{t+1} = θ_t + output_scale · g_t`` (paper: output scale 0.1);
* its input is the coordinate's gradient ∇_t = ∇_θ f(θ_t), raw or (``preprocess=True``, paper appendix A) the pair
  ``(log|∇|/p, sign ∇)`` if ``|∇| ≥ e^{−p}`` else ``(−1, e^p ∇)`` with p = 10 (:func:`preprocess_gradient`);
* meta-loss ``L(φ) = Σ_{t=1..T} w_t f(θ_t)`` over an unrolled optimisation (w_t = 1, the paper's choice, unless given),
  minimised with Adam by truncated backpropagation through time: :func:`meta_train_step` unrolls ``truncation``
  steps (paper: 20), takes one Adam step on φ, and continues from the detached θ and LSTM state;
* second derivatives: the paper drops the gradients along ∇_t (``∂∇_t/∂φ = 0``, its figure 2's dashed edges), which
  is the default here (the gradient is detached before it enters the LSTM; θ_t still depends on φ through the
  updates); ``second_order=True`` keeps them (then the unrolled objective is exactly Σ_t w_t f(θ_t(φ)), which the
  tests check against finite differences).

Not in this file: the paper's global-averaging cell and NTM-BFGS variants, and the CIFAR/neural-art experiments.

The few-shot learner (:class:`L2OLearner`, registry name ``l2o``): the optimisee is the source's standard classifier
(MAML's model: Conv-4 with a ``ways`` head for images, the MLP 40-40 for vectors). ``adapt`` runs the learned
optimiser for ``steps`` (default ``inner_steps``) on each task's support loss, all tasks of a meta-batch at once
(θ has a task dimension and every coordinate of every task is one row of the LSTM's batch); ``predict`` applies the
resulting weights to the query set. The outer loop minimises the query loss after adaptation (the default meta
loss: with T ≤ 20 steps no truncation is needed). The initialisation θ_0 is by default a fixed draw (the backbone's
initialisation under the run's seed, kept as it is: ``learn_init=False``), so that what is meta-learned is the
optimiser only, as in the paper; ``learn_init=True`` meta-learns θ_0 too (then the learner is the meta-learner LSTM's
setting with the L2O update rule, see ``agents/meta_lstm.py``). The experiments (``experiments/learned_optimiser.py``)
use :class:`LearnedOptimiser` directly; their figures are in experiments/RESULTS.md, section "Learned optimiser".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metarl.core.adaptation import Params, batched_task_loss, flatten_params, parameters_of, unflatten_params
from metarl.core.config import check_int, check_positive
from metarl.core.learner import FewShotLearnerConfig
from metarl.core.networks import Conv4, standard_backbone

from .maml import MAML

PREPROCESS_P = 10.0


def preprocess_gradient(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """Andrychowicz et al.'s log-magnitude/sign preprocessing: ``[..., 2]`` from ``[...]``."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, torch.log(x.abs().clamp_min(1e-38)) / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


def lstm_step(cell: nn.LSTMCell, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
    """One step of ``cell`` (the same numbers as ``cell(x, state)``; written out, it is about twice as fast on a CPU
    for the hundreds of thousands of rows that coordinate-wise LSTMs see)."""
    h, c = state
    gates = torch.addmm(torch.addmm(cell.bias_ih + cell.bias_hh, x, cell.weight_ih.t()), h, cell.weight_hh.t())
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def learner_backbone(source: Any, outputs: int | None, filters: int) -> nn.Module:
    """The classifier that the coordinate-wise learners update: MAML's standard backbone for ``source``, with a
    Conv-4 of ``filters`` channels on images (every weight is a row of the LSTM's batch, so the width is the cost)."""
    if len(source.input_shape) == 3:
        channels, size, _ = source.input_shape
        return Conv4(channels, hidden=filters, out_features=outputs, running_stats=False, image_size=size)
    return standard_backbone(source.input_shape, outputs, running_stats=False)[0]


# ----------------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the coordinate-wise LSTM optimiser

LSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class LearnedOptimiser(nn.Module):
    """m(∇, h; φ): a two-layer LSTM shared by all coordinates, and a linear map to the update of each coordinate."""

    def __init__(self, hidden: int = 20, preprocess: bool = True, output_scale: float = 0.1) -> None:
        super().__init__()
        self.hidden, self.preprocess, self.output_scale = hidden, preprocess, output_scale
        self.layer1 = nn.LSTMCell(2 if preprocess else 1, hidden)
        self.layer2 = nn.LSTMCell(hidden, hidden)
        self.output = nn.Linear(hidden, 1)

    def initial_state(self, coordinates: torch.Tensor) -> LSTMState:
        """Zero LSTM state for a parameter tensor ``coordinates`` (any shape: every element is a row)."""
        zeros = coordinates.new_zeros(coordinates.numel(), self.hidden)
        return (zeros, zeros, zeros, zeros)

    def step(self, gradient: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """The update ``output_scale · g_t`` (shaped like ``gradient``) and the next state."""
        x = preprocess_gradient(gradient.reshape(-1)) if self.preprocess else gradient.reshape(-1, 1)
        h1, c1 = lstm_step(self.layer1, x, (state[0], state[1]))
        h2, c2 = lstm_step(self.layer2, h1, (state[2], state[3]))
        update = self.output_scale * self.output(h2).view_as(gradient)
        return update, (h1, c1, h2, c2)

    def unroll(
        self,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        theta: torch.Tensor,
        steps: int,
        state: LSTMState | None = None,
        *,
        weights: Sequence[float] | None = None,
        second_order: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, LSTMState, list[float]]:
        """Optimise ``loss_fn`` from ``theta`` for ``steps`` steps.

        ``loss_fn(theta)`` returns a scalar or per-problem losses (summed: independent problems in a batch). Returns
        ``(meta_loss, theta_T, state_T, losses)`` with ``meta_loss = Σ_{t=1..steps} w_t loss_fn(θ_t)`` (differentiable
        in φ when grad mode is on; else every step is detached) and ``losses`` the summed loss at θ_0..θ_T.
        """
        weights = [1.0] * steps if weights is None else list(weights)
        if len(weights) != steps:
            raise ValueError(f"{len(weights)} weights for {steps} steps")
        track = torch.is_grad_enabled()
        with torch.enable_grad():
            if not theta.requires_grad:
                theta = theta.detach().requires_grad_(True)
            state = self.initial_state(theta) if state is None else state
            loss = loss_fn(theta).sum()
            losses = [float(loss.detach())]
            meta_loss = theta.new_zeros(())
            for t in range(steps):
                # the loss stays in the meta-loss: keep its graph
                (gradient,) = torch.autograd.grad(loss, theta, create_graph=second_order and track, retain_graph=track)
                if not second_order:
                    gradient = gradient.detach()  # the paper's dropped edges: ∂∇_t/∂φ = 0
                update, state = self.step(gradient, state)
                theta = theta + update
                if not track:  # no meta-gradient wanted: keep no graph across steps
                    theta = theta.detach().requires_grad_(True)
                    state = tuple(s.detach() for s in state)
                loss = loss_fn(theta).sum()
                losses.append(float(loss.detach()))
                meta_loss = meta_loss + weights[t] * loss
        if not track:
            meta_loss, theta = meta_loss.detach(), theta.detach()
        return meta_loss, theta, state, losses


def meta_train_step(
    optimiser: LearnedOptimiser,
    meta_optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    horizon: int,
    truncation: int = 20,
    *,
    second_order: bool = False,
) -> list[float]:
    """Train ``optimiser`` on one (batch of) problem(s): ``horizon`` steps from ``theta`` in truncated unrolls of
    ``truncation`` steps, one ``meta_optimizer`` step per unroll (the paper: 100 steps, unrolls of 20). Returns the
    meta-loss of every unroll (divided by its length). Unrolls whose loss is not finite are skipped."""
    state, meta_losses = None, []
    for start in range(0, horizon, truncation):
        steps = min(truncation, horizon - start)
        meta_loss, theta, state, _ = optimiser.unroll(loss_fn, theta, steps, state, second_order=second_order)
        meta_optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(meta_loss):
            meta_loss.backward()
            meta_optimizer.step()
        meta_losses.append(float(meta_loss.detach()) / steps)
        theta, state = theta.detach(), tuple(s.detach() for s in state)
    return meta_losses


# ----------------------------------------------------------------------------------------------------------------------
# The few-shot learner built on it

@dataclass
class L2OConfig(FewShotLearnerConfig):
    """Settings of the learned-optimiser few-shot learner (the LSTM's sizes follow the paper)."""

    inner_steps: int = 5
    """steps of the learned optimiser on the support set during meta-training (evaluation may use more)"""
    hidden: int = 20
    """units of each of the two LSTM layers"""
    filters: int = 32
    """channels of the Conv-4 optimisee on image sources (MAML's is 64; each weight costs an LSTM row)"""
    output_scale: float = 0.1
    """the factor on the LSTM's output: θ_{t+1} = θ_t + output_scale · g_t"""
    preprocess: bool = True
    """feed the gradient as (log-magnitude, sign) pairs (the paper's appendix A) rather than raw"""
    second_order: bool = False
    """keep the second derivatives through the support gradients (the paper drops them)"""
    learn_init: bool = False
    """meta-learn the initial weights θ_0 too (default: a fixed draw, so only the optimiser is learned)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.inner_steps, "inner_steps", minimum=1)
        check_int(self.hidden, "hidden", minimum=1)
        check_int(self.filters, "filters", minimum=1)
        check_positive(self.output_scale, "output_scale")


class L2OLearner(MAML):
    """The source's standard classifier trained on each task's support set by a :class:`LearnedOptimiser`."""

    name = "l2o"

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> L2OLearner:
        return cls(learner_backbone(source, outputs, config.filters), source.kind, config)

    def __init__(self, model: nn.Module, kind: str, config: L2OConfig | None = None) -> None:
        super().__init__(model, kind, config or L2OConfig())
        self.optimiser = LearnedOptimiser(self.config.hidden, self.config.preprocess, self.config.output_scale)
        if not self.config.learn_init:
            self.model.requires_grad_(False)  # θ_0 is the fixed draw of the backbone's initialisation
        self.names = list(parameters_of(model))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> Params:
        steps = self.config.inner_steps if steps is None else steps
        init = parameters_of(self.model)
        tasks = support_x.shape[0]
        theta0 = flatten_params(init, self.names).unsqueeze(0).expand(tasks, -1)
        loss = self._vectorized_loss if self._vectorized else self._task_loss

        def support_loss(theta: torch.Tensor) -> torch.Tensor:
            fast = unflatten_params(theta, init, self.names)
            return batched_task_loss(loss, fast, set(self.names), (support_x, support_y), self._vectorized)

        _, theta, _, _ = self.optimiser.unroll(support_loss, theta0, steps, second_order=self.config.second_order)
        return unflatten_params(theta, init, self.names)
