"""Bayesian MAML: meta-learned initial particles adapted by Stein variational gradient descent (SVGD).

Yoon, Kim, Dia, Kim, Bengio & Ahn, "Bayesian Model-Agnostic Meta-Learning", NeurIPS 2018; SVGD: Liu & Wang,
"Stein Variational Gradient Descent", NeurIPS 2016 (:mod:`metarl.core.svgd`).

Spec. The meta-parameters are ``particles`` = M initial particles Θ_0 = (θ_0^1 … θ_0^M), each a whole set of the
network's weights (initialised independently, as M networks would be). For a task τ with support set D_τ, the inner
loop moves every particle by ``inner_steps`` SVGD steps on the task's posterior
p(θ | D_τ) ∝ p(D_τ | θ) p(θ):

    θ^m ← θ^m + ε φ(θ^m),   φ(θ^m) = (1/M) Σ_j [k(θ^j, θ^m) ∇ log p(θ^j | D_τ) + ∇_{θ^j} k(θ^j, θ^m)]

with the RBF kernel on the flattened weights (median bandwidth, or a fixed ``bandwidth``), all tasks × particles of
a meta-batch in one batched computation. The result Θ_τ^n(D_τ) is the task's posterior approximation.

* Likelihood: classification ``Π softmax(f_θ(x))_y`` (cross-entropy summed over the support examples);
  regression ``Π N(y; f_θ(x), σ²)``, σ the observation noise (``noise_std``; learned with ``learn_noise``).
* Prior: N(0, ``prior_std``² I) on every weight, or, ``prior_std=None`` (default), no explicit term: then the
  meta-learned initial particles and the few steps from them are the prior (as the early-stopped gradient descent
  of MAML is an implicit prior, Grant et al., ICLR 2018).
* Step size: ε = ``inner_lr`` · M / w, where w is the weight of the mean support loss L̄ in the log-likelihood
  (log p(D | θ) = −w L̄ + const: w = N for N support labels, w = N / (2σ²) for N regression targets) and M undoes
  the 1/M of φ, in which a particle's own score has weight 1/M. So with one particle and no prior an SVGD step is
  exactly MAML's step θ − ``inner_lr`` ∇ L̄ on the mean support loss, MAML's step sizes carry over, and the step
  grows neither with the support size nor shrinks with the particles (ε sets the speed of SVGD, not its fixed
  point, the posterior).
* Prediction: the Bayesian model average over the particles, p(y | x, D_τ) = (1/M) Σ_m p(y | x, θ_τ^m):
  classification the mean of the particles' class probabilities (a ``Categorical``); regression an equal-weight
  ``MixtureSameFamily`` of N(f_{θ^m}(x), σ²).

Outer loss (``outer_loss``):

* ``chaser`` (default; the paper's BMAML, its meta-update with the chaser loss): the particles after
  n = ``inner_steps`` SVGD steps on the support set (the chaser) follow the particles after s = ``leader_steps``
  more steps, from the chaser, on support ∪ query (the leader, a stop-gradient target):
  L = mean_τ Σ_m ‖θ_τ^{n,m} − stopgrad(θ_τ^{n+s,m})‖². The default, because it is the method the paper calls BMAML
  and its answer to the meta-level overfitting of the ensemble loss: the target is a posterior closer to the one
  all of the task's data give, not the fit of a few query points.
  With ``learn_noise`` σ is then fitted by the query NLL of the model average with the chaser particles held fixed
  (an empirical-Bayes estimate; the inner steps see σ as a constant, else the chaser distance would favour any σ
  that slows the particles down).
* ``ensemble`` (the paper's "Bayesian fast adaptation", BFA, the meta-loss it sets out from): the query negative
  log-likelihood of the model average, −mean log (1/M) Σ_m p(y | x, θ_τ^{n,m}), differentiated through everything
  (σ included).

Second order through the inner steps (the median bandwidth included) unless ``first_order``, which detaches the
scores ∇ log p. With one particle the kernel is 1 and its gradient 0: BMAML is then MAML on the log-posterior
(tested against ``agents/maml.py``). Defaults: MAML's sinusoid settings (``inner_lr`` 0.01, one step, 25 tasks),
M = 5 particles, one leader step. Figures: experiments/RESULTS.md, section "Bayesian few-shot learners".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal
from torch.func import functional_call

from metarl.core.adaptation import Params, batched_forward, flatten_params, parameters_of, unflatten_params
from metarl.core.batch import EpisodeBatch
from metarl.core.calibration import task_nll
from metarl.core.config import check_choice, check_int, check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig, single_task_loss, task_losses, task_scores
from metarl.core.networks import MLP, standard_backbone
from metarl.core.svgd import svgd_adapt

OUTER_LOSSES = ("chaser", "ensemble")


@dataclass
class BMAMLConfig(FewShotLearnerConfig):
    """Settings of Bayesian MAML (defaults: MAML's sinusoid settings, 5 particles, the chaser loss)."""

    particles: int = 5
    """M: particles (sets of network weights) per task; 1 is MAML on the log-posterior"""
    inner_lr: float = 0.01
    """SVGD step size, per unit of the mean support loss (with one particle: MAML's inner step size)"""
    inner_steps: int = 1
    """SVGD steps on the support set during meta-training (evaluation may use more)"""
    outer_loss: str = "chaser"
    """chaser (the paper's BMAML: follow the particles adapted on support ∪ query) or ensemble (query NLL of the
    model average)"""
    leader_steps: int = 1
    """s: the leader's extra SVGD steps on support ∪ query (chaser loss)"""
    bandwidth: float | None = None
    """RBF kernel bandwidth h in exp(-|x - y|^2 / h); None: the median heuristic med^2 / log(M + 1) at every step"""
    noise_std: float = 0.5
    """regression: observation noise σ of the likelihood and the predictive (the initial value if learned)"""
    learn_noise: bool = True
    """regression: meta-learn σ by the query NLL of the model average"""
    prior_std: float | None = None
    """std of a N(0, std^2) prior on every weight; None: no explicit prior (the initial particles are the prior)"""
    first_order: bool = False
    """detach the scores of the inner SVGD steps (no second-order terms)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.particles, "particles", minimum=1)
        check_positive(self.inner_lr, "inner_lr")
        check_int(self.inner_steps, "inner_steps", minimum=1)
        check_choice(self.outer_loss, "outer_loss", OUTER_LOSSES)
        check_int(self.leader_steps, "leader_steps", minimum=1)
        check_positive(self.bandwidth, "bandwidth", optional=True)
        check_positive(self.noise_std, "noise_std")
        check_positive(self.prior_std, "prior_std", optional=True)


def squared_norm(params: Params, batch_dims: int) -> torch.Tensor:
    """``Σ ‖p‖²`` over the weights, per row of the ``batch_dims`` leading dimensions."""
    return sum(p.pow(2).flatten(batch_dims).sum(-1) for p in params.values())


class BMAML(FewShotLearner):
    """M meta-learned initial particles; SVGD on the support posterior; predictions average the particles."""

    name = "bmaml"
    uses_gradient_steps = True
    fixed_ways = True
    probabilistic = True

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> BMAML:
        networks = [standard_backbone(source.input_shape, outputs, running_stats=False)[0]
                    for _ in range(config.particles)]
        return cls(networks, source.kind, config)

    def __init__(self, networks: Sequence[nn.Module], kind: str, config: BMAMLConfig | None = None) -> None:
        super().__init__(kind)
        self.config = config or BMAMLConfig()
        if len(networks) != self.config.particles:
            raise ValueError(f"{len(networks)} networks given for {self.config.particles} particles")
        if any(True for _ in networks[0].buffers()):
            raise ValueError("BMAML's particles are weights only: use a network without buffers (batch norm "
                             "without running statistics)")
        self.names = [name for name, _ in networks[0].named_parameters()]
        # Θ_0: one row of flattened weights per particle (the meta-parameters)
        self.initial_particles = nn.Parameter(
            torch.stack([flatten_params(parameters_of(net), self.names).detach() for net in networks]))
        # the architecture runs with the particles' weights only (functional_call): its own weights go to the meta
        # device (shapes, no storage) and it is not a submodule, so checkpoints hold Θ_0 alone
        object.__setattr__(self, "architecture", networks[0].to("meta"))
        self.shapes = dict(self.architecture.named_parameters())
        self._vectorized = isinstance(self.architecture, MLP)  # batched matmuls instead of vmap (same numbers)
        if kind == "regression":
            log_noise = torch.tensor(math.log(self.config.noise_std))
            if self.config.learn_noise:
                self.log_noise_std = nn.Parameter(log_noise)
            else:
                self.register_buffer("log_noise_std", log_noise)

    def noise_std(self) -> torch.Tensor:
        return self.log_noise_std.exp()

    # ------------------------------------------------------------------------------------------------------------------
    # ALGO LOGIC: the inner loop, SVGD on every task's log-posterior for all tasks × particles at once

    def _svgd(self, particles: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, *,
              batched: bool = False, first_order: bool | None = None) -> torch.Tensor:
        targets = y[0].numel()  # per task: labels, or regression targets (examples × outputs)
        if self.kind == "regression":
            sigma = self.noise_std()
            if self.config.outer_loss == "chaser":
                sigma = sigma.detach()  # fitted by the predictive NLL only (see the module docstring)
            weight = targets / (2 * sigma ** 2)  # log p(D | θ) = −weight · MSE + const
        else:
            weight = float(targets)  # log p(D | θ) = −weight · mean cross-entropy
        precision = 0.0 if self.config.prior_std is None else self.config.prior_std ** -2

        def energy(params: Params, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            xt, yt = data  # −log p(θ | D) + const, of one particle on one task (or of all rows when vectorized)
            if self._vectorized:
                loss, batch_dims = task_losses(self.architecture.batched(params, xt), yt, self.kind), 1
            else:
                loss, batch_dims = single_task_loss(functional_call(self.architecture, params, (xt,)), yt,
                                                    self.kind), 0
            if precision:
                return weight * loss + 0.5 * precision * squared_norm(params, batch_dims)
            return weight * loss

        if first_order is None:  # without an outer gradient to compute (evaluation) second order only costs time
            first_order = self.config.first_order or not torch.is_grad_enabled()
        return svgd_adapt(energy, particles, self.shapes, self.names, (x, y), steps=steps,
                          step_size=self.config.inner_lr * particles.shape[-2] / weight, first_order=first_order,
                          vectorized=self._vectorized, bandwidth=self.config.bandwidth, batched_particles=batched)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> torch.Tensor:
        """The task's particles after SVGD on its support set: ``[tasks, M, D]`` flattened weights."""
        steps = self.config.inner_steps if steps is None else steps
        return self._svgd(self.initial_particles, support_x, support_y, steps)

    # ------------------------------------------------------------------------------------------------------------------
    # Predictions: every particle's outputs, and their Bayesian model average

    def particle_outputs(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[tasks, M, n, out]``: each particle's network outputs on its task's inputs ``x`` (``[tasks, n, ...]``)."""
        tasks, particles, dim = state.shape
        fast = unflatten_params(state.reshape(tasks * particles, dim), self.shapes, self.names)
        inputs = x.repeat_interleave(particles, dim=0)
        if self._vectorized:
            outputs = self.architecture.batched(fast, inputs)
        else:
            outputs = batched_forward(self.architecture, fast, inputs)
        return outputs.view(tasks, particles, *outputs.shape[1:])

    def model_average(self, outputs: torch.Tensor) -> Distribution:
        """The Bayesian model average of the particles' outputs ``[tasks, M, n, out]``: the mean of their class
        probabilities, or the equal-weight mixture of N(output, σ²)."""
        if self.kind == "classification":
            return Categorical(probs=outputs.softmax(dim=-1).mean(dim=1), validate_args=False)
        means = outputs.permute(0, 2, 3, 1)  # [tasks, queries, out, M]: the particles are the mixture components
        components = Normal(means, self.noise_std().expand_as(means), validate_args=False)
        return MixtureSameFamily(Categorical(logits=torch.zeros_like(means), validate_args=False), components,
                                 validate_args=False)

    def predictive(self, state: torch.Tensor, query_x: torch.Tensor) -> Distribution:
        return self.model_average(self.particle_outputs(state, query_x))

    def predict(self, state: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """The model average's mean (regression) or log class probabilities (classification)."""
        outputs = self.particle_outputs(state, query_x)
        if self.kind == "classification":
            return torch.logsumexp(outputs.log_softmax(dim=-1), dim=1) - math.log(outputs.shape[1])
        return outputs.mean(dim=1)

    # ------------------------------------------------------------------------------------------------------------------
    # ALGO LOGIC: the outer loss

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        chaser = self.adapt(batch.support_x, batch.support_y)  # Θ^n(support), differentiable in Θ_0
        if self.config.outer_loss == "ensemble":
            average = self.predictive(chaser, batch.query_x)
            loss = nll = task_nll(average, batch.query_y).mean()
        else:
            x = torch.cat([batch.support_x, batch.query_x], dim=1)
            y = torch.cat([batch.support_y, batch.query_y], dim=1)
            leader = self._svgd(chaser.detach(), x, y, self.config.leader_steps, batched=True, first_order=True)
            loss = (chaser - leader.detach()).pow(2).sum(dim=(1, 2)).mean()
            average = self.predictive(chaser.detach(), batch.query_x)
            nll = task_nll(average, batch.query_y).mean()
            if self.kind == "regression" and self.config.learn_noise:
                loss = loss + nll  # σ's only gradient: the particles are detached in this term
        metrics = {"loss": float(loss.detach()), "query_nll": float(nll.detach())}
        with torch.no_grad():
            if self.kind == "classification":
                metrics["accuracy"] = float(task_scores(average.probs, batch.query_y, self.kind).mean())
            else:
                metrics["query_mse"] = float(task_scores(average.mean, batch.query_y, self.kind).mean())
                metrics["noise_std"] = float(self.noise_std())
        return loss, metrics
