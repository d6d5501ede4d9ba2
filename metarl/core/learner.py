"""The few-shot learner contract that every supervised learner implements and the meta-test protocol drives.

``adapt(support_x, support_y, steps=None) -> state`` and ``predict(state, query_x) -> outputs`` work on a whole
meta-batch at once: tensors are ``[tasks, examples, ...]``. ``state`` is whatever the learner adapts (fast weights
for MAML, class prototypes for Prototypical Networks, a support-set summary for the black-box learner).
``predictive(state, query_x) -> Distribution`` is the predictive distribution the meta-test protocol scores by NLL
and calibration (class probabilities for every classifier; regression only for ``probabilistic`` learners).
``outer_step(batch, optimizer)`` is one meta-training update (the outer loop); the default minimises
``meta_loss`` (the query loss after adaptation) by backpropagation; Reptile overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution

from .batch import EpisodeBatch
from .calibration import central_interval_coverage, central_interval_width, classification_calibration, task_nll
from .config import SeededConfig, check_int, check_positive

TASK_KINDS = ("regression", "classification")


def task_losses(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-task mean loss ``[tasks]``: MSE for regression, cross-entropy for classification."""
    if kind == "regression":
        return ((outputs - targets) ** 2).flatten(1).mean(dim=1)
    return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).mean(1)


def single_task_loss(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of one task (no task dimension), for inner loops written per task."""
    if kind == "regression":
        return ((outputs - targets) ** 2).mean()
    return F.cross_entropy(outputs, targets)


def task_scores(outputs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-task score ``[tasks]``: MSE for regression (lower is better), accuracy for classification."""
    if kind == "regression":
        return ((outputs - targets) ** 2).flatten(1).mean(dim=1)
    return (outputs.argmax(dim=-1) == targets).float().mean(dim=1)


@dataclass
class FewShotLearnerConfig(SeededConfig):
    """The outer-loop settings every few-shot learner's config starts with (subclass it; call
    ``super().__post_init__()``): the seed also draws the training tasks of every iteration."""

    meta_batch_size: int = 25
    """tasks per meta-iteration"""
    outer_lr: float = 1e-3
    """outer-loop (Adam) learning rate"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.meta_batch_size, "meta_batch_size", minimum=1)
        check_positive(self.outer_lr, "outer_lr")


class FewShotLearner(nn.Module):
    """Base class of the supervised learners in :mod:`metarl.agents`."""

    #: registry name, e.g. ``"maml"``
    name: str = "learner"
    #: whether ``steps`` (gradient steps at adaptation) means anything for this learner
    uses_gradient_steps: bool = False
    #: whether the learner has an output layer of a fixed number of classes (built for the source's ``ways``:
    #: training and evaluation episodes must then have that many ways)
    fixed_ways: bool = False
    #: the task kinds the learner can learn (metric learners: classification only)
    task_kinds: tuple[str, ...] = TASK_KINDS
    #: whether :meth:`predictive` gives a distribution for regression (Bayesian and other probabilistic learners);
    #: every classification learner has one (its class probabilities)
    probabilistic: bool = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
        self.kind = kind

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> FewShotLearner:
        """Build the learner with the standard backbone for ``source`` (called by :func:`metarl.agents.make_learner`
        under the config's seed). ``outputs``: the classes per task (classification) or the output width
        (regression). Default: a metric learner on the source's standard embedding (``cls(embedding, kind,
        config)``); learners with another construction override this."""
        from .networks import standard_backbone

        if source.kind not in cls.task_kinds:
            raise ValueError(f"learner {cls.name!r} needs a {' or '.join(cls.task_kinds)} task source, "
                             f"not {source.kind}")
        embedding, _ = standard_backbone(source.input_shape, None, running_stats=True)
        return cls(embedding, source.kind, config)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> Any:
        raise NotImplementedError

    def predict(self, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predictive(self, state: Any, query_x: torch.Tensor) -> Distribution:
        """The predictive distribution of every query's target, batch shape ``[tasks, queries]`` (classification)
        or ``[tasks, queries, out_dim]`` (regression). Default: classification ``Categorical(logits=predict)``;
        regression only where the learner is ``probabilistic`` (it overrides this). The meta-test protocol scores
        it by NLL and calibration (:mod:`metarl.core.calibration`)."""
        if self.kind == "classification":
            return Categorical(logits=self.predict(state, query_x), validate_args=False)
        raise NotImplementedError(f"{self.name} makes point predictions for regression (probabilistic=False)")

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the tasks after adaptation, and metrics for the log."""
        state = self.adapt(batch.support_x, batch.support_y)
        outputs = self.predict(state, batch.query_x)
        losses = task_losses(outputs, batch.query_y, self.kind)
        loss = losses.mean()
        metrics = {"loss": float(loss.detach())}
        if self.kind == "classification":
            metrics["accuracy"] = float(task_scores(outputs.detach(), batch.query_y, self.kind).mean())
        return loss, metrics

    def configure_optimizer(self, outer_lr: float) -> torch.optim.Optimizer:
        """The outer-loop optimiser (Adam, as in the papers of every learner here, unless overridden)."""
        return torch.optim.Adam(self.parameters(), lr=outer_lr)

    def outer_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One meta-training update; returns metrics. Rejects (skips) an update whose loss is not finite."""
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.meta_loss(batch)
        if not torch.isfinite(loss):
            metrics["skipped_nonfinite"] = 1.0
            return metrics
        loss.backward()
        grad_norm = self.clip_gradients()
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        optimizer.step()
        return metrics

    def clip_gradients(self) -> float | None:
        """Called between backward and the optimiser step: clip the meta-gradient and return its norm (default:
        nothing, ``None``)."""
        return None

    @torch.no_grad()
    def evaluate(self, batch: EpisodeBatch, *, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Per-task query score before (where meaningful) and after adaptation; gradients only inside ``adapt``."""
        state = self.adapt(batch.support_x, batch.support_y, steps=steps)
        if self.kind == "classification":
            dist = self.predictive(state, batch.query_x)
            return {"score": task_scores(dist.probs, batch.query_y, self.kind),
                    **classification_calibration(dist, batch.query_y)}
        if self.probabilistic:
            dist = self.predictive(state, batch.query_x)
            return {"score": task_scores(dist.mean, batch.query_y, self.kind), "nll": task_nll(dist, batch.query_y),
                    "coverage": central_interval_coverage(dist, batch.query_y),
                    "width": central_interval_width(dist)}
        outputs = self.predict(state, batch.query_x)
        return {"score": task_scores(outputs, batch.query_y, self.kind)}
