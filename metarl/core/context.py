"""PEARL's probabilistic context (Rakelly et al. 2019, section 4.1): a Gaussian factor per context transition and
their product, the posterior over the latent task variable z; shared by every agent that infers a context."""

from __future__ import annotations

import torch
from torch import nn

from .networks import MLP


def product_of_gaussians(mean: torch.Tensor, var: torch.Tensor,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision-weighted product of Gaussian factors ``[..., n, d]`` over ``n`` (``mask`` ``[..., n]`` keeps
    factors): σ² = 1 / Σ σ_n⁻², μ = σ² Σ μ_n σ_n⁻². Where no factor is kept the result is the prior N(0, 1)."""
    precision = 1.0 / var
    if mask is not None:
        precision = precision * mask.unsqueeze(-1)
    total = precision.sum(-2)
    empty = total == 0
    post_var = torch.where(empty, torch.ones_like(total), 1.0 / total.masked_fill(empty, 1.0))
    post_mean = torch.where(empty, torch.zeros_like(total), post_var * (mean * precision).sum(-2))
    return post_mean, post_var


def kl_to_unit_gaussian(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) summed over the last axis."""
    return 0.5 * (var + mean**2 - 1.0 - var.log()).sum(-1)


class ContextEncoder(nn.Module):
    """Ψ: one Gaussian factor per context transition; :meth:`posterior` multiplies them (order-invariant)."""

    def __init__(self, context_dim: int, hidden: list[int], latent_dim: int) -> None:
        super().__init__()
        self.net = MLP(context_dim, hidden, 2 * latent_dim)

    def factors(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(context).chunk(2, dim=-1)
        return mean, nn.functional.softplus(raw).clamp(min=1e-7)

    def posterior(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``context`` ``[tasks, n, context_dim]`` -> posterior ``(mean, var)``, each ``[tasks, latent_dim]``."""
        return product_of_gaussians(*self.factors(context), mask)
