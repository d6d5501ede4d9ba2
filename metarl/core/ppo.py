"""PPO's clipped losses (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), shared by RL agents.

Every function takes an optional ``mask`` (1 for real steps, 0 for padding, as in :mod:`metarl.core.rl`) and
averages over the real steps only, so padded trials of different lengths can share one batch tensor.

* :func:`clipped_surrogate_loss`: ``L = −E[min(ρ A, clip(ρ, 1−ε, 1+ε) A)]`` with ``ρ = exp(log π − log π_old)``
  (equation 7 of the paper, negated to be minimised).
* :func:`value_loss`: ``½ E[(V − R)²]``, or with ``clip`` set the clipped form of the PPO reference code,
  ``½ E[max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²)]``.
* :func:`normalize_advantages`: ``(A − mean) / (std + 1e-8)`` over the real steps.
* :func:`approx_kl` and :func:`clip_fraction`: the diagnostics PPO implementations log (``E[(ρ − 1) − log ρ]``,
  Schulman's low-variance unbiased KL estimator, and the fraction of steps whose ratio left ``[1−ε, 1+ε]``).
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is 1 (all entries without a mask)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean and unit standard deviation over the real steps; padded steps stay 0."""
    mean = masked_mean(advantages, mask)
    var = masked_mean((advantages - mean) ** 2, mask)
    out = (advantages - mean) / (var.sqrt() + 1e-8)
    return out if mask is None else out * mask.to(out.dtype)


def clipped_surrogate_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip: float = 0.2,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO-clip policy loss ``−E[min(ρ A, clip(ρ, 1−clip, 1+clip) A)]`` (to minimise)."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -masked_mean(torch.minimum(unclipped, clipped), mask)


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``½ E[(V − R)²]``; with ``clip`` (and ``old_values``) the pessimistic clipped form of the PPO reference code."""
    squared = (values - returns) ** 2
    if clip is not None:
        if old_values is None:
            raise ValueError("a clipped value loss needs old_values")
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        squared = torch.maximum(squared, (clipped_values - returns) ** 2)
    return 0.5 * masked_mean(squared, mask)


@torch.no_grad()
def approx_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``E[(ρ − 1) − log ρ]``, an unbiased, non-negative estimate of KL(π_old ‖ π) from samples of π_old."""
    log_ratio = log_probs - old_log_probs
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


@torch.no_grad()
def clip_fraction(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, clip: float = 0.2, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of (real) steps whose probability ratio lies outside ``[1 − clip, 1 + clip]``."""
    ratio = torch.exp(log_probs - old_log_probs)
    return masked_mean(((ratio - 1.0).abs() > clip).to(ratio.dtype), mask)


class RunningMeanStd:
    """Running mean and variance of every number seen so far (parallel merge of batch moments, float64).

    Used to standardise value targets: a critic that predicts ``(R − mean) / std`` learns at the same speed whether
    returns are near 1 or near 100. Before the first :meth:`update` it is the identity (mean 0, std 1).
    """

    def __init__(self) -> None:
        self.count, self.mean, self.var = 0, 0.0, 1.0

    @property
    def std(self) -> float:
        return max(self.var, 1e-8) ** 0.5

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        if self.count == 0:
            self.count, self.mean, self.var = n, batch_mean, batch_var
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean

    def state_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.count, self.mean, self.var = int(state["count"]), float(state["mean"]), float(state["var"])
