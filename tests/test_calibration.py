"""The probabilistic scores of the meta-test protocol (metarl/core/calibration.py), against hand computations and
closed forms, and their place in every learner's evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch.distributions import Categorical, MixtureSameFamily, Normal

from metarl.core.calibration import (
    central_interval_coverage,
    central_interval_width,
    classification_calibration,
    expected_calibration_error,
    normalised_sigmoid_categorical,
    quantile,
    reliability_bins,
    task_nll,
)


def test_ece_and_reliability_bins_by_hand():
    # three bins: (0, 1/3], (1/3, 2/3], (2/3, 1]
    confidence = np.array([0.2, 0.3, 0.5, 0.9, 0.9, 1.0])
    correct = np.array([0, 1, 1, 1, 0, 1])
    table = reliability_bins(confidence, correct, bins=3)
    assert table["count"] == [2, 1, 3]
    assert table["confidence"] == pytest.approx([0.25, 0.5, 2.8 / 3])
    assert table["accuracy"] == pytest.approx([0.5, 1.0, 2 / 3])
    expected = 2 / 6 * 0.25 + 1 / 6 * 0.5 + 3 / 6 * abs(2 / 3 - 2.8 / 3)
    assert expected_calibration_error(confidence, correct, bins=3) == pytest.approx(expected)
    # a bin edge belongs to the lower bin, as (lo, hi]
    assert reliability_bins(np.array([1 / 3]), np.array([1]), bins=3)["count"] == [1, 0, 0]


def test_a_calibrated_classifier_has_a_small_ece_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.2, 1.0, 20000)
    correct = rng.uniform(size=confidence.size) < confidence
    assert expected_calibration_error(confidence, correct) < 0.02
    overconfident = np.minimum(confidence + 0.2, 1.0)
    assert expected_calibration_error(overconfident, correct) > 0.15


def test_classification_calibration_reads_the_categorical():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    targets = torch.tensor([[0, 1]])
    out = classification_calibration(Categorical(logits=logits), targets)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(out["confidence"], probs.max(-1).values)
    assert out["correct"].tolist() == [[1.0, 0.0]]
    expected_nll = -(probs[0, 0, 0].log() + probs[0, 1, 1].log()) / 2
    assert torch.allclose(out["nll"], expected_nll.reshape(1))


def test_normal_nll_coverage_and_width_match_the_closed_form():
    mean, std = torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[1.0], [2.0]]])
    dist = Normal(mean, std)
    y = torch.tensor([[[0.5], [1.0 + 2.0 * 2.5]]])  # inside / outside (2.5 std) the 95% interval
    nll = 0.5 * ((y - mean) / std) ** 2 + std.log() + 0.5 * math.log(2 * math.pi)
    assert torch.allclose(task_nll(dist, y), nll.mean().reshape(1))
    assert central_interval_coverage(dist, y).tolist() == [0.5]
    width = 2 * stats.norm.ppf(0.975) * std.mean()
    assert central_interval_width(dist).item() == pytest.approx(float(width), rel=1e-5)


def test_mixture_quantile_by_bisection_matches_a_root_finder_and_coverage_matches_an_explicit_interval():
    torch.manual_seed(0)
    weights = torch.tensor([0.3, 0.7])
    means, stds = torch.tensor([-2.0, 1.5]), torch.tensor([0.5, 1.0])
    dist = MixtureSameFamily(Categorical(probs=weights.expand(1, 4, 1, 2)),
                             Normal(means.expand(1, 4, 1, 2), stds.expand(1, 4, 1, 2)))

    def cdf(v):
        return float(sum(w * stats.norm.cdf(v, m, s) for w, m, s in zip(weights, means, stds)))

    for q in (0.025, 0.5, 0.975):
        root = optimize.brentq(lambda v, q=q: cdf(v) - q, -20, 20, xtol=1e-10)
        assert quantile(dist, q)[0, 0, 0].item() == pytest.approx(root, abs=1e-4)
    low, high = quantile(dist, 0.025)[0, 0, 0].item(), quantile(dist, 0.975)[0, 0, 0].item()
    y = torch.tensor([low - 0.01, low + 0.01, high - 0.01, high + 0.01]).reshape(1, 4, 1)
    assert central_interval_coverage(dist, y).item() == pytest.approx(0.5)
    assert central_interval_width(dist).item() == pytest.approx(high - low, abs=1e-4)


def test_coverage_of_samples_from_the_predictive_is_the_level():
    torch.manual_seed(0)
    dist = Normal(torch.zeros(50, 200, 1), torch.full((50, 200, 1), 3.0))
    assert central_interval_coverage(dist, dist.sample()).mean().item() == pytest.approx(0.95, abs=0.01)


def test_normalised_sigmoid_scores_sum_to_one_and_keep_the_ranking():
    log_odds = torch.tensor([[[3.0, -1.0, 0.0]]])
    dist = normalised_sigmoid_categorical(log_odds)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(1, 1))
    assert dist.probs.argmax(-1).item() == 0
    assert torch.allclose(dist.probs, torch.sigmoid(log_odds) / torch.sigmoid(log_odds).sum())
