"""Returns and advantages shared by every RL agent.

Shapes: the time axis is last. ``rewards``/``values``/``mask`` are ``[..., T]``; ``mask`` is 1 for real steps and 0
for padding after an episode ended (episodes of one batch may have different lengths). ``last_value`` ``[...]``
bootstraps the step after ``T`` (0 for a terminal state, the default).
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, gamma: float, mask: torch.Tensor | None = None,
                       last_value: torch.Tensor | None = None) -> torch.Tensor:
    """G_t = r_t + γ G_{t+1}, with G_T = ``last_value`` (default 0); padded steps give 0."""
    if mask is not None:
        rewards = rewards * mask
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0]) if last_value is None else last_value.to(rewards.dtype)
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running * (1.0 if mask is None else mask[..., t])
        out[..., t] = running
    return out


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float,
                           mask: torch.Tensor | None = None, last_value: torch.Tensor | None = None) -> torch.Tensor:
    """GAE(γ, λ) (Schulman et al. 2016): A_t = Σ_k (γλ)^k δ_{t+k}, δ_t = r_t + γ V(s_{t+1}) − V(s_t).

    ``values[..., t]`` is V(s_t); V after the last real step of an episode is 0 (or ``last_value`` after step T).
    Padded steps (``mask`` 0) get advantage 0 and do not leak into earlier steps.
    """
    if mask is None:
        mask = torch.ones_like(rewards)
    steps = rewards.shape[-1]
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:] * mask[..., 1:]
    if last_value is not None:
        next_values[..., -1] = last_value
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(steps - 1, -1, -1):
        continues = mask[..., t + 1] if t + 1 < steps else torch.ones_like(running)
        running = deltas[..., t] + gamma * lam * running * continues
        advantages[..., t] = running * mask[..., t]
    return advantages


def normalize_per_task(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``values`` ``[tasks, ...]`` to mean 0, std 1 within each task over the real steps (``mask`` 1);
    padded entries become 0. rllab's ``center_adv`` for MAML-RL, done per task of a meta-batch at once."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = (values * mask).sum(dim=dims, keepdim=True) / count
    var = ((values - mean) ** 2 * mask).sum(dim=dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask
