"""Stochastic MLP policies usable with fast weights: Gaussian (Box actions) and categorical (Discrete actions).

A policy maps observations to the parameters of an action distribution, a tuple of tensors (``(mean, log_std)`` or
``(logits,)``), and offers the distribution's maths on such tuples: :meth:`~Policy.log_prob`, :meth:`~Policy.kl`,
:meth:`~Policy.entropy`, :meth:`~Policy.sample`, :meth:`~Policy.mode`.

Fast weights. :meth:`Policy.distribution` ``(params, obs)`` is a pure function of a parameter dict, and the
module's ``forward(obs)`` is that function on the module's own parameters, so all three ways of running a policy
under other weights give the same numbers (tested):

* ``torch.func.functional_call(policy, params, (obs,))`` with ``params`` shaped like the module's, ``vmap``-able
  over tasks (``adapt(..., vectorized=False)``);
* ``policy.distribution(params, obs)`` with *batched* fast weights (adapted entries shaped ``[tasks, *shape]``,
  shared entries as in the module) and ``obs`` ``[tasks, n, obs_dim]``: every layer is one batched matrix product
  over tasks, no ``vmap`` (``adapt(..., vectorized=True)``, what the agents use);
* plain shared weights with ``obs`` of any leading shape ``[..., obs_dim]``.

Architectures follow rllab / garage as used by MAML-RL (Finn et al. 2017): ``GaussianMLPPolicy`` is an MLP for the
mean (64x64 tanh by default) and a state-independent log standard deviation (a free parameter vector, initial std 1,
floored at ``min_std``); ``CategoricalMLPPolicy`` an MLP for the logits.

Context (CAVIA, Zintgraf et al., ICML 2019). With ``context_dim > 0`` the MLP reads ``[obs, φ]``: a context vector
φ (the parameter ``context``) is concatenated to every observation (:func:`metarl.core.networks.concat_context`).
Its value in the module is zero and never learned (``requires_grad=False``): an inner loop that adapts
``["context"]`` starts every task from φ = 0, and the policy with the zero context is the plain MLP on the
observation padded with zeros. Batched fast weights carry a context ``[tasks, context_dim]`` like any adapted
parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .adaptation import Params
from .networks import concat_context

Distribution = tuple[torch.Tensor, ...]


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h @ weight.T + bias`` for shared (``[out, in]``) or per-task (``[tasks, out, in]``, ``h`` ``[tasks, n, in]``)
    weights."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(h, weight, bias)
    return torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))


class Policy(nn.Module):
    """An MLP ``obs -> hidden... -> out`` (``tanh`` between layers); subclasses turn the output into a distribution.

    The layers are named ``body.0``, ``body.2``, ... (weights ``body.<i>.weight``); :attr:`head_keys` names the
    last layer's parameters (the "head" that ANIL-style variants adapt alone). With ``context_dim > 0`` the first
    layer reads ``[obs, context]`` (see the module docstring).
    """

    discrete: bool = False

    def __init__(self, obs_dim: int, out_dim: int, hidden_sizes: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.Tanh, context_dim: int = 0) -> None:
        super().__init__()
        if obs_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"layer sizes must be positive: obs {obs_dim}, hidden {list(hidden_sizes)}, out {out_dim}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        sizes = [obs_dim + context_dim, *hidden_sizes, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.body = nn.Sequential(*layers)
        self._linear_names = [f"body.{i}" for i, m in enumerate(self.body) if isinstance(m, nn.Linear)]
        self.obs_dim = obs_dim
        self.context_dim = context_dim
        if context_dim:  # φ: zero in the module, never learned; adapted per task from zero (CAVIA)
            self.context = nn.Parameter(torch.zeros(context_dim), requires_grad=False)

    @property
    def head_keys(self) -> list[str]:
        """Names of the output layer's parameters."""
        last = self._linear_names[-1]
        return [f"{last}.weight", f"{last}.bias"]

    def _body(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        h = concat_context(obs, params["context"]) if self.context_dim else obs
        for i, name in enumerate(self._linear_names):
            h = _linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
            if i < len(self._linear_names) - 1:
                h = self.body[int(name.split(".")[1]) + 1](h)
        return h

    def distribution(self, params: Params, obs: torch.Tensor) -> Distribution:
        """The action distribution's parameters at ``obs`` under the weights ``params`` (see the module docstring)."""
        raise NotImplementedError

    def forward(self, obs: torch.Tensor) -> Distribution:
        return self.distribution(dict(self.named_parameters()), obs)

    # --- the distribution's maths (subclasses) -------------------------------------------------------------
    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, old: Distribution, new: Distribution) -> torch.Tensor:
        """KL(old || new) per state."""
        raise NotImplementedError

    def fisher_product(self, dist: Distribution, tangent: Distribution) -> Distribution:
        """``M t``: the Hessian of ``KL(dist || ·)`` at ``dist`` in the coordinates of :meth:`distribution`'s
        outputs, applied to a tangent of those outputs (per state). With ``J`` the Jacobian of the outputs wrt the
        weights, ``Jᵀ M J`` is the policy's Fisher information (see :func:`metarl.core.trpo.gauss_newton_fvp`)."""
        raise NotImplementedError

    def entropy(self, dist: Distribution) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, dist: Distribution, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def mode(self, dist: Distribution) -> torch.Tensor:
        raise NotImplementedError

    def env_action(self, actions: torch.Tensor) -> torch.Tensor:
        """The environment's action for a policy action (identity unless the policy acts in normalised units)."""
        return actions


class GaussianMLPPolicy(Policy):
    """Diagonal Gaussian policy: ``mean = MLP(obs)``, state-independent ``log_std`` (a parameter, init
    ``log(init_std)``).

    ``distribution`` returns ``(mean [..., A], log_std [..., A])`` with ``log_std`` broadcast to ``mean``'s shape and
    floored at ``log(min_std)``. Samples are not squashed or clipped (the environment clips, as in rllab).

    With ``action_bounds = (low, high)`` the policy acts in normalised units: :meth:`env_action` maps ``[-1, 1]`` to
    ``[low, high]`` per dimension (rllab's ``normalize(env)``, used by MAML-RL's experiments), so ``init_std = 1``
    means a standard deviation of half the action range whatever the env's units are. Log-probabilities, KLs and
    stored actions stay in the policy's units.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.Tanh, init_std: float = 1.0, min_std: float = 1e-6,
                 action_bounds: tuple[Sequence[float], Sequence[float]] | None = None, context_dim: int = 0) -> None:
        super().__init__(obs_dim, action_dim, hidden_sizes, activation, context_dim)
        if not (init_std > 0 and min_std > 0):
            raise ValueError(f"init_std and min_std must be > 0, got {init_std} and {min_std}")
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)
        self.action_dim = action_dim
        low = high = None
        if action_bounds is not None:
            low, high = (torch.as_tensor(b, dtype=torch.float32).reshape(action_dim) for b in action_bounds)
            if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
                raise ValueError(f"action_bounds must be finite with high > low, got {action_bounds}")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)

    def env_action(self, actions: torch.Tensor) -> torch.Tensor:
        if self.action_low is None:
            return actions
        return self.action_low + (actions + 1) * 0.5 * (self.action_high - self.action_low)

    def distribution(self, params: Params, obs: torch.Tensor) -> Distribution:
        mean = self._body(params, obs)
        log_std = params["log_std"]
        if log_std.dim() == 2:  # per-task [tasks, A] with mean [tasks, n, A]
            log_std = log_std.unsqueeze(-2)
        return mean, torch.clamp(log_std, min=self.min_log_std).expand_as(mean)

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = dist
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]

    def kl(self, old: Distribution, new: Distribution) -> torch.Tensor:
        (mean_o, log_std_o), (mean_n, log_std_n) = old, new
        var_ratio = torch.exp(2 * (log_std_o - log_std_n))
        shift = (mean_o - mean_n).pow(2) * torch.exp(-2 * log_std_n)
        return (log_std_n - log_std_o + 0.5 * (var_ratio + shift - 1)).sum(-1)

    def fisher_product(self, dist: Distribution, tangent: Distribution) -> Distribution:
        _, log_std = dist  # KL Hessian: 1/σ² for the mean, 2 for the log std, no cross terms
        return tangent[0] * torch.exp(-2 * log_std), 2 * tangent[1]

    def entropy(self, dist: Distribution) -> torch.Tensor:
        _, log_std = dist
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def sample(self, dist: Distribution, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = dist
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise

    def mode(self, dist: Distribution) -> torch.Tensor:
        return dist[0]


class CategoricalMLPPolicy(Policy):
    """Categorical policy over ``n_actions``: ``logits = MLP(obs)``; ``distribution`` returns normalised
    ``(log_probs [..., n_actions],)``; actions are ``int64`` indices."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.Tanh, context_dim: int = 0) -> None:
        super().__init__(obs_dim, n_actions, hidden_sizes, activation, context_dim)
        self.n_actions = n_actions

    def distribution(self, params: Params, obs: torch.Tensor) -> Distribution:
        return (torch.log_softmax(self._body(params, obs), dim=-1),)

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        return dist[0].gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def kl(self, old: Distribution, new: Distribution) -> torch.Tensor:
        return (old[0].exp() * (old[0] - new[0])).sum(-1)

    def fisher_product(self, dist: Distribution, tangent: Distribution) -> Distribution:
        # in normalised log-probability coordinates the Fisher metric is diag(p): KL ≈ ½ Σ_a p_a (δ log p_a)²
        return (dist[0].exp() * tangent[0],)

    def entropy(self, dist: Distribution) -> torch.Tensor:
        return -(dist[0].exp() * dist[0]).sum(-1)

    def sample(self, dist: Distribution, generator: torch.Generator | None = None) -> torch.Tensor:
        log_probs = dist[0]
        flat = log_probs.reshape(-1, log_probs.shape[-1]).exp()
        return torch.multinomial(flat, 1, generator=generator).reshape(log_probs.shape[:-1])

    def mode(self, dist: Distribution) -> torch.Tensor:
        return dist[0].argmax(-1)


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""The hidden activations a config can name for :func:`make_policy`'s MLP (``activation``)."""


def make_policy(observation_space, action_space, hidden_sizes: Sequence[int] = (64, 64), init_std: float = 1.0,
                activation: type[nn.Module] = nn.Tanh, normalize_actions: bool = False, context_dim: int = 0) -> Policy:
    """The policy for a pair of Gymnasium spaces: Gaussian for a 1-D ``Box`` of actions, categorical for
    ``Discrete``; observations must be a 1-D ``Box``. Anything else is a one-line ``ValueError``.

    ``normalize_actions``: a Gaussian policy acts in ``[-1, 1]`` scaled to the ``Box`` bounds (when they are finite).
    ``context_dim``: a (zero) context vector appended to the observation (CAVIA; see the module docstring).
    """
    from gymnasium import spaces

    if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1):
        raise ValueError(f"MLP policies need a 1-D Box observation space, got {observation_space}")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        bounds = None
        if normalize_actions and np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high)):
            bounds = (action_space.low, action_space.high)
        return GaussianMLPPolicy(obs_dim, int(action_space.shape[0]), hidden_sizes, activation, init_std,
                                 action_bounds=bounds, context_dim=context_dim)
    if isinstance(action_space, spaces.Discrete):
        if int(action_space.start) != 0:
            raise ValueError(f"Discrete action spaces must start at 0, got start={action_space.start}")
        return CategoricalMLPPolicy(obs_dim, int(action_space.n), hidden_sizes, activation, context_dim)
    raise ValueError(f"unsupported action space {action_space}: use a 1-D Box (Gaussian policy) or Discrete")
