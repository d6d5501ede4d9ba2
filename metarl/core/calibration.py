"""Scores of predictive distributions: negative log-likelihood, central-interval coverage and width, expected
calibration error; shared by the meta-test protocol (:func:`metarl.evaluation.evaluate_fewshot`) and the learners.

A learner's predictive distribution (``FewShotLearner.predictive``) is a :class:`torch.distributions.Distribution`
whose batch shape is ``[tasks, queries]`` (classification: a ``Categorical`` over the classes) or ``[tasks, queries,
out_dim]`` (regression: a ``Normal``, or a ``MixtureSameFamily`` of Normals for a Bayesian model average over
posterior samples or particles).

* **NLL**: ``−log p(y | x, support)`` averaged over a task's queries (and output dimensions).
* **Coverage** of the central ``level`` interval: ``y`` lies in it exactly when its predictive CDF value
  ``F(y)`` lies in ``[(1 − level)/2, (1 + level)/2]``, so no quantile is needed; a calibrated learner covers about
  ``level`` of held-out targets. **Width**: ``F⁻¹((1 + level)/2) − F⁻¹((1 − level)/2)``, by ``icdf`` where the
  distribution has one, else by bisection on the CDF (mixtures).
* **Expected calibration error** (Guo et al., ICML 2017; 15 equal-width bins of the top-class confidence):
  ``Σ_b (n_b / N) |accuracy_b − confidence_b|`` over all queries; :func:`reliability_bins` gives the bins of a
  reliability diagram.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributions import Distribution

ECE_BINS = 15


def task_nll(dist: Distribution, targets: torch.Tensor) -> torch.Tensor:
    """``[tasks]``: the mean negative log-likelihood of each task's query targets."""
    return -dist.log_prob(targets).flatten(1).mean(dim=1)


def central_interval_coverage(dist: Distribution, targets: torch.Tensor, level: float = 0.95) -> torch.Tensor:
    """``[tasks]``: the fraction of each task's targets inside the central ``level`` predictive interval."""
    tail = (1.0 - level) / 2.0
    u = dist.cdf(targets)
    return ((u >= tail) & (u <= 1.0 - tail)).to(targets.dtype).flatten(1).mean(dim=1)


def quantile(dist: Distribution, q: float, *, iterations: int = 60) -> torch.Tensor:
    """The ``q``-quantile of a univariate predictive distribution, elementwise over its batch shape: ``icdf``
    where implemented, else bisection on the CDF between bounds that bracket it."""
    try:
        return dist.icdf(torch.full(dist.batch_shape, q, dtype=dist.mean.dtype, device=dist.mean.device))
    except NotImplementedError:
        pass
    mean, std = dist.mean, dist.stddev
    if isinstance(dist, torch.distributions.MixtureSameFamily):  # the components' extremes bracket every quantile
        components = dist.component_distribution
        low = (components.mean - 12 * components.stddev).min(dim=-1).values
        high = (components.mean + 12 * components.stddev).max(dim=-1).values
    else:
        low, high = mean - 50 * std, mean + 50 * std
    for _ in range(iterations):
        mid = (low + high) / 2
        below = dist.cdf(mid) < q
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return (low + high) / 2


def central_interval_width(dist: Distribution, level: float = 0.95) -> torch.Tensor:
    """``[tasks]``: the mean width of the central ``level`` predictive interval over each task's queries."""
    tail = (1.0 - level) / 2.0
    return (quantile(dist, 1.0 - tail) - quantile(dist, tail)).flatten(1).mean(dim=1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Equal-width bins of the top-class confidence over (0, 1]: per bin the number of predictions, their mean
    confidence and their accuracy (``None`` where a bin is empty); the data of a reliability diagram."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in size: {confidence.size} vs {correct.size}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] per bin
    counts, mean_conf, accuracy = [], [], []
    for b in range(bins):
        member = index == b
        n = int(member.sum())
        counts.append(n)
        mean_conf.append(float(confidence[member].mean()) if n else None)
        accuracy.append(float(correct[member].mean()) if n else None)
    return {"edges": edges.tolist(), "count": counts, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """``Σ_b (n_b / N) |accuracy_b − confidence_b|`` over equal-width confidence bins."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(table["count"])
    if total == 0:
        raise ValueError("no predictions to calibrate")
    return float(sum(n / total * abs(a - c) for n, a, c in zip(table["count"], table["accuracy"],
                                                                 table["confidence"]) if n))


def classification_calibration(dist: torch.distributions.Categorical, targets: torch.Tensor) -> dict[str, Any]:
    """Per-query top-class confidence and correctness (``[tasks, queries]``) and per-task NLL (``[tasks]``)."""
    probs = dist.probs
    confidence, predicted = probs.max(dim=-1)
    return {"nll": task_nll(dist, targets), "confidence": confidence, "correct": (predicted == targets).float()}


def normalised_sigmoid_categorical(log_odds: torch.Tensor) -> torch.distributions.Categorical:
    """Class probabilities of learners that score each class independently with a sigmoid (Relation Networks'
    relation scores, Siamese networks' P(same)): the scores normalised over the classes."""
    scores = torch.sigmoid(log_odds)
    return torch.distributions.Categorical(probs=scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-12),
                                           validate_args=False)
