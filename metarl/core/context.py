"""PEARL's probabilistic context (Rakelly et al. 2019, section 4.1): a Gaussian factor per context transition and
their product, the posterior over the latent task variable z; shared by every agent that infers a context.

Posterior sampling (:func:`posterior_sampling`, the paper's meta-test, section 4.3): per task, episode 0 acts with
z ~ prior N(0, I); after each episode the posterior q(z|c) is inferred from every transition of the task so far
(:func:`context_transitions`: (s, a, r) or (s, a, r, s')) and episode k acts with a fresh z ~ q(z|c). Given fixed
conditioning vectors instead (an oracle's task descriptors), every episode acts with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .agent_env import stream_generator
from .networks import MLP
from .outcomes import EpisodeSuccess, record_episodes, record_meta_test_column, step_successes
from .seeding import derive_seed


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


def kl_between_gaussians(mean: torch.Tensor, var: torch.Tensor, other_mean: torch.Tensor,
                         other_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(other_mean, other_var)) of diagonal Gaussians, summed over the last axis:
    ½ Σ [log(σ'²/σ²) + (σ² + (μ − μ')²)/σ'² − 1]."""
    return 0.5 * ((other_var / var).log() + (var + (mean - other_mean) ** 2) / other_var - 1.0).sum(-1)


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

    def sample(self, context: torch.Tensor, noise: torch.Tensor,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised sample z = μ + σ · ``noise`` of the posterior of ``context``, and its ``(mean, var)``."""
        mean, var = self.posterior(context, mask)
        return mean + var.sqrt() * noise, mean, var


def context_transitions(data: dict[str, torch.Tensor], use_next_obs: bool = False) -> torch.Tensor:
    """Context transitions (s, a, r[, s']) ``[..., dim]`` from replay-style fields ``[..., dim]``."""
    parts = [data["observations"], data["actions"], data["rewards"].unsqueeze(-1)]
    if use_next_obs:
        parts.append(data["next_observations"])
    return torch.cat(parts, dim=-1)


@torch.no_grad()
def posterior_sampling(envs: Any, tasks: list[Any], num_episodes: int, seed: int,
                       actor: Any, encoder: ContextEncoder | None,
                       context_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], latent_dim: int,
                       descriptors: torch.Tensor | None = None, device: torch.device | str = "cpu",
                       deterministic: bool = False) -> np.ndarray:
    """Run the meta-test episodes on ``envs`` (one sub-env per task; see the module docstring) and return their
    ``[len(tasks), num_episodes]`` returns. The SAC ``actor`` acts on ``[obs, z]`` (``actor.sample(inputs,
    generator, deterministic)``: the squashed mean when ``deterministic``), ``context_of(step)`` gives a step's
    context transitions; ``descriptors`` ``[tasks, dim]``: z for every episode (no inference)."""
    n = len(tasks)
    generator = stream_generator(seed, "meta_test", "latents", device=device)
    seeds = np.random.default_rng(derive_seed(seed, "meta_test", "resets"))
    returns = np.zeros((n, num_episodes))
    context, context_mask = [], []
    for episode in range(num_episodes):
        if descriptors is not None:
            z = descriptors
        else:
            noise = torch.randn(n, latent_dim, generator=generator, device=device)
            if episode == 0:
                z = noise
            else:
                z = encoder.sample(torch.cat(context, 1), noise, torch.cat(context_mask, 1))[0]
        envs.set_tasks(list(tasks))
        obs, _ = envs.reset(seed=[int(s) for s in seeds.integers(0, 2**31 - 1, size=n)])
        active = np.ones(n, dtype=np.bool_)
        success = EpisodeSuccess(n)
        while active.any():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
            action = actor.sample(torch.cat([obs_t, z], -1), generator, deterministic)[0]
            next_obs, reward, term, trunc, infos = envs.step(action.cpu().numpy())
            returns[:, episode] += reward * active
            success.update(*step_successes(infos, n), active)
            step = {"observations": obs_t, "actions": action,
                    "rewards": torch.as_tensor(reward, dtype=torch.float32, device=device),
                    "next_observations": torch.as_tensor(next_obs, dtype=torch.float32, device=device)}
            context.append(context_of(step)[:, None])
            context_mask.append(torch.as_tensor(active, dtype=torch.float32, device=device)[:, None])
            active &= ~(term | trunc)
            obs = next_obs
        record_episodes(success.values())
        record_meta_test_column(episode, success.values())
    return returns
