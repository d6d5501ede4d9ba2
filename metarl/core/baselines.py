"""The linear feature baseline of Duan et al. 2016 ("Benchmarking Deep RL for Continuous Control", rllab's
``LinearFeatureBaseline``), the value baseline of MAML-RL (Finn et al. 2017): fitted per task, all tasks in one
batched solve.

Spec. For an episode with observations ``o_t`` (clipped to ``[-10, 10]``) and ``l = t / 100``, the features are
``φ(o_t, t) = [o_t, o_t², l, l², l³, 1]`` (``2 d + 4`` numbers for ``d``-dimensional observations). For each task,
the coefficients solve the ridge regression of the discounted returns ``G_t`` on the features over every real step
of that task's episodes: ``(Xᵀ X + c I) w = Xᵀ G`` with ``c = reg_coeff`` (1e-5). Where a task's system has no
finite solution, ``c`` is raised tenfold (up to 5 times, as rllab). The solve runs in float64 on ``[tasks, D, D]``.
"""

from __future__ import annotations

import torch

OBS_CLIP = 10.0


def linear_baseline_features(observations: torch.Tensor) -> torch.Tensor:
    """``[..., T, d]`` observations of episodes -> ``[..., T, 2 d + 4]`` features (time from the step index)."""
    obs = observations.clamp(-OBS_CLIP, OBS_CLIP)
    steps = observations.shape[-2]
    t = (torch.arange(steps, dtype=obs.dtype, device=obs.device) / 100.0).unsqueeze(-1)
    t = t.expand(*obs.shape[:-1], 1)
    return torch.cat([obs, obs * obs, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(features: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                        reg_coeff: float = 1e-5, max_tries: int = 5) -> torch.Tensor:
    """Ridge coefficients per task: ``features`` ``[tasks, n, D]``, ``returns``/``mask`` ``[tasks, n]`` ->
    ``[tasks, D]`` (float64). Padded rows (``mask`` 0) do not count."""
    if features.dim() != 3 or returns.shape != features.shape[:2] or mask.shape != returns.shape:
        raise ValueError(f"expected features [tasks, n, D] and returns/mask [tasks, n], got {tuple(features.shape)}, "
                         f"{tuple(returns.shape)} and {tuple(mask.shape)}")
    x = features.double() * mask.double().unsqueeze(-1)
    gram = x.transpose(1, 2) @ x
    target = (x.transpose(1, 2) @ returns.double().unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    reg = torch.full((gram.shape[0],), float(reg_coeff), dtype=gram.dtype, device=gram.device)
    coeffs = torch.zeros_like(target)
    todo = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    for _ in range(max_tries):
        solution, info = torch.linalg.solve_ex(gram + reg[:, None, None] * eye, target)
        good = (info == 0) & torch.isfinite(solution).all(-1)
        coeffs = torch.where((todo & good).unsqueeze(-1), solution, coeffs)
        todo = todo & ~good
        if not todo.any():
            break
        reg = reg * 10
    return coeffs


def linear_baseline_values(observations: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                           reg_coeff: float = 1e-5) -> torch.Tensor:
    """Fit the baseline per task and predict on the same episodes: ``observations`` ``[tasks, E, T, d]``,
    ``returns``/``mask`` ``[tasks, E, T]`` -> values ``[tasks, E, T]`` (0 on padding), in ``returns``' dtype."""
    tasks = observations.shape[0]
    features = linear_baseline_features(observations)
    flat = features.reshape(tasks, -1, features.shape[-1])
    coeffs = fit_linear_baseline(flat, returns.reshape(tasks, -1), mask.reshape(tasks, -1), reg_coeff)
    values = (flat.double() @ coeffs.unsqueeze(-1)).squeeze(-1).reshape(returns.shape)
    return (values * mask.double()).to(returns.dtype)
