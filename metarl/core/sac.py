"""Soft actor-critic maths shared by PEARL and the oracle (and any off-policy agent of the suite).

Haarnoja et al., "Soft Actor-Critic: Off-Policy Maximum Entropy Deep RL with a Stochastic Actor", ICML 2018, and
"Soft Actor-Critic Algorithms and Applications", 2018 (twin Q critics with target networks, automatic entropy
temperature). Fujimoto et al. 2018 (TD3) for the minimum of two critics.

Spec, for a batch of transitions (s, a, r, s', d) and an optional conditioning vector z (PEARL's latent context,
the oracle's task descriptor) appended to every network input:

* actor: a tanh-squashed Gaussian, u ~ N(μ(s, z), σ(s, z)²), a = c + h · tanh(u) for the action box with centre c
  and half-range h; log π(a|s, z) = log N(u; μ, σ²) − Σ log(1 − tanh(u)²) (the squashing correction, computed
  stably as 2 (log 2 − u − softplus(−2u))). log σ is clamped to [−20, 2].
* critic target (:func:`critic_target`): y = scale · r + γ (1 − d) (min_j Q'_j(s', a', z) − α log π(a'|s', z)),
  a' ~ π(·|s', z), Q' the target critics; d is *termination* only (a time-limit truncation still bootstraps).
* critic loss (:func:`critic_loss`): Σ_j mean (Q_j(s, a, z) − y)².
* actor loss (:func:`actor_loss`): mean (α log π(ã|s, z) − min_j Q_j(s, ã, z)), ã ~ π(·|s, z) reparameterised.
* temperature loss (:func:`temperature_loss`): −mean log α · (log π(ã|s, z) + H̄) with the target entropy H̄
  (default −dim(A)); its gradient step raises α when the policy's entropy is below H̄.
* target networks (:func:`soft_update_`): θ' ← (1 − τ) θ' + τ θ after every gradient step.
* on rows conditioned on z (:func:`conditioned_critic_loss`, :func:`conditioned_actor_losses`): the critic loss
  with the gradient reaching z (an encoder learns through it), the actor loss with z detached against frozen
  critics, plus optional regularisers ``mean_reg`` · mean μ² + ``std_reg`` · mean (log σ)² (PEARL's).
* optional PopArt critics (:class:`PopArt`, ``popart_beta`` of :func:`actor_critic`): values σ n + μ over running
  target statistics, the critic loss divided by σ² and the actor loss by σ, so that the gradients' scale does not
  grow with the returns' (an encoder shared by actor and critic, as AMAGO's, otherwise learns the value's scale).

Discrete actions (SAC for ``Discrete(n)``; Christodoulou, "Soft Actor-Critic for Discrete Action Settings", 2019):
the actor is a categorical π(·|s) over the n actions (:class:`CategoricalActor`), each critic outputs Q(s, ·) for
all n at once, and every expectation over actions is computed exactly instead of sampled
(:func:`discrete_sac_losses`): the target's soft value V(s') = Σ_a' π(a'|s') (min_j Q'_j(s', a') − α log π(a'|s')),
the actor loss mean Σ_a π(a|s) (α log π(a|s) − min_j Q_j(s, a)) against frozen critics, the temperature loss
−mean log α (−H(π(·|s)) + H̄) with H the exact entropy. Default target entropy H̄ (:func:`default_target_entropy`):
0.1 · log n, a nearly greedy policy (Christodoulou's 0.98 · log n keeps π close to uniform, which an in-context
agent that must exploit what it has found within a trial cannot afford).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .config import check_fields, check_number, check_positive
from .networks import MLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def squashed_gaussian_log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log π of tanh(u) for u ~ N(mean, exp(log_std)²), summed over the last (action) axis."""
    gaussian = (-0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), exact and finite for large |u|
    correction = (2 * (math.log(2) - pre_tanh - nn.functional.softplus(-2 * pre_tanh))).sum(-1)
    return gaussian - correction


class TanhGaussianActor(nn.Module):
    """The SAC policy: an MLP from ``[obs, z]`` to the mean and log-std of a Gaussian, squashed into the action box.

    Args:
        input_dim: observation size plus conditioning size; action_dim: action size.
        hidden: hidden layer sizes (ReLU); action_low/action_high: the action box (finite).
    """

    def __init__(self, input_dim: int, action_dim: int, hidden: Sequence[int],
                 action_low: np.ndarray, action_high: np.ndarray) -> None:
        super().__init__()
        self.net = MLP(input_dim, list(hidden), 2 * action_dim)
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_range", (high - low) / 2)
        self.action_dim = action_dim

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)`` of the pre-squash Gaussian, each ``[..., action_dim]``."""
        mean, log_std = self.net(inputs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, inputs: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action in the box, log π [...], mean, log_std)``, reparameterised: u = mean + std · ε with ε from
        ``noise`` if given (standard normal, shaped like the action batch), else drawn from ``generator``.

        ``deterministic``: the squashed mean (log π is then that of the mean under the Gaussian).
        """
        mean, log_std = self(inputs)
        if deterministic:
            pre_tanh = mean
        else:
            if noise is None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            pre_tanh = mean + log_std.exp() * noise
        log_prob = squashed_gaussian_log_prob(pre_tanh, mean, log_std)
        action = self.action_center + self.action_half_range * torch.tanh(pre_tanh)
        return action, log_prob, mean, log_std

    def noise(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal ε for ``rows`` actions (the ``noise`` of :meth:`sample`)."""
        return torch.randn(rows, self.action_dim, generator=generator)


class CategoricalActor(nn.Module):
    """The discrete SAC policy: an MLP from ``[obs, z]`` to the logits of a categorical over ``actions`` actions."""

    def __init__(self, input_dim: int, actions: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = MLP(input_dim, list(hidden), actions)
        self.action_dim = actions

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """log π(·|s) ``[..., actions]`` (normalised log-probabilities)."""
        return torch.log_softmax(self.net(inputs), dim=-1)

    def noise(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard Gumbel noise ``[rows, actions]`` (the ``noise`` of :meth:`sample`)."""
        uniform = torch.rand(rows, self.action_dim, generator=generator).clamp_(1e-12, 1.0 - 1e-7)
        return -torch.log(-torch.log(uniform))

    def sample(self, inputs: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action indices [...], log π(·|s) [..., actions])``: argmax of log π + Gumbel noise (a sample of π;
        ``noise`` if given, else drawn from ``generator``), the most likely action if ``deterministic``."""
        log_probs = self(inputs)
        if deterministic:
            return log_probs.argmax(-1), log_probs
        if noise is None:
            noise = self.noise(int(np.prod(log_probs.shape[:-1])), generator).reshape(log_probs.shape)
        return (log_probs + noise.to(log_probs.device)).argmax(-1), log_probs


class PopArt(nn.Module):
    """Adaptive target normalisation that preserves outputs (PopArt: van Hasselt, Guez, Hessel, Mnih & Silver,
    "Learning values across many orders of magnitude", NeurIPS 2016; AMAGO normalises its critics this way).

    A critic's last linear layers output normalised values n; its value is σ n + μ, where μ and ν are exponential
    moving averages (rate ``beta``) of the mean and the mean square of the critic targets y and
    σ = sqrt(max(ν − μ², ``min_std``²)). :meth:`update_` moves μ, σ towards a batch of targets and rescales the given
    layers so that every value they produce is unchanged (W ← W σ_old/σ_new, b ← (σ_old b + μ_old − μ_new)/σ_new).
    Losses in value units divided by σ (the squared Bellman error by σ²) then have gradients of the normalised n,
    whatever the returns' scale. Starts at μ = 0, σ = 1: the critic's values equal its raw outputs."""

    def __init__(self, beta: float, min_std: float = 1e-2) -> None:
        super().__init__()
        self.beta, self.min_std = float(beta), float(min_std)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_square", torch.ones(()))

    @property
    def std(self) -> torch.Tensor:
        return (self.mean_square - self.mean**2).clamp_min(self.min_std**2).sqrt()

    @torch.no_grad()
    def update_(self, targets: torch.Tensor, layers: Iterable[nn.Linear]) -> None:
        """Move the statistics towards ``targets`` (any shape) and rescale ``layers`` to preserve their values."""
        old_mean, old_std = self.mean.clone(), self.std
        self.mean.lerp_(targets.mean(), self.beta)
        self.mean_square.lerp_((targets**2).mean(), self.beta)
        new_std = self.std
        for layer in layers:
            layer.weight.mul_(old_std / new_std)
            layer.bias.mul_(old_std).add_(old_mean - self.mean).div_(new_std)


class TwinQ(nn.Module):
    """Two independent critics Q_1, Q_2: of ``[obs, action, z]`` (``outputs`` 1; ``forward`` returns both ``[...]``)
    or of ``[obs, z]`` with one value per discrete action (``outputs`` n; both ``[..., n]``). With ``popart_beta``
    the heads output normalised values and ``forward`` returns σ n + μ (:class:`PopArt`, :func:`normalize_values_`);
    :meth:`value_std` is the σ that divides the losses (1 without PopArt)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], outputs: int = 1,
                 popart_beta: float | None = None) -> None:
        super().__init__()
        self.q1 = MLP(input_dim, list(hidden), outputs)
        self.q2 = MLP(input_dim, list(hidden), outputs)
        self.outputs = outputs
        self.popart = None if popart_beta is None else PopArt(popart_beta)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q1, q2 = self.q1(inputs), self.q2(inputs)
        if self.outputs == 1:
            q1, q2 = q1.squeeze(-1), q2.squeeze(-1)
        if self.popart is not None:
            std, mean = self.popart.std, self.popart.mean
            q1, q2 = q1 * std + mean, q2 * std + mean
        return q1, q2

    def value_std(self) -> torch.Tensor | float:
        return 1.0 if self.popart is None else self.popart.std

    def heads(self) -> list[nn.Linear]:
        return [self.q1[-1], self.q2[-1]]


@torch.no_grad()
def normalize_values_(critic: TwinQ, target_critic: TwinQ, targets: torch.Tensor) -> torch.Tensor | float:
    """With PopArt: move the critic's statistics towards the batch of ``targets``, rescale the heads of the critic
    and of its target copy so that both keep their values, copy the statistics into the target; return σ (the
    divisor of the losses in value units). Without PopArt: nothing, 1. Call it after forming the targets and before
    the online critic's forward pass (its heads change in place)."""
    if critic.popart is None:
        return 1.0
    critic.popart.update_(targets, critic.heads() + target_critic.heads())
    target_critic.popart.load_state_dict(critic.popart.state_dict())
    return critic.popart.std


def critic_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor,
                  next_log_prob: torch.Tensor, alpha: torch.Tensor | float, discount: float,
                  reward_scale: float = 1.0) -> torch.Tensor:
    """y = scale · r + γ (1 − d) (min(Q'_1, Q'_2) − α log π(a'|s')), elementwise (no gradient flows into y)."""
    soft_value = torch.minimum(next_q1, next_q2) - alpha * next_log_prob
    return (reward_scale * rewards + discount * (1.0 - terminated) * soft_value).detach()


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_j mean (Q_j − y)² (the two critics' mean squared Bellman errors, summed)."""
    return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()


def actor_loss(log_prob: torch.Tensor, q_min: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """mean (α log π(ã|s) − min_j Q_j(s, ã)) for reparameterised actions ã."""
    return (alpha * log_prob - q_min).mean()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """−mean log α (log π + H̄): its gradient in log α is −mean(log π + H̄) (log π is treated as data)."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: θ' ← (1 − τ) θ' + τ θ for every parameter."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.lerp_(param, tau)


def conditioned_critic_loss(actor: TanhGaussianActor, critic: TwinQ, target_critic: TwinQ,
                            data: dict[str, torch.Tensor], z_rows: torch.Tensor, alpha: torch.Tensor, gamma: float,
                            reward_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic loss of Q(s, a, z) on flattened rows (``data`` fields ``[rows, ...]`` with the actor's noise for
    the next actions as ``next_noise``, ``z_rows`` one z per row; gradients reach z), and the mean Q1 (detached).
    With a PopArt critic the statistics are updated on the targets and the loss is divided by σ²."""
    z_fixed = z_rows.detach()
    with torch.no_grad():
        next_action, next_log_prob, _, _ = actor.sample(torch.cat([data["next_observations"], z_fixed], -1),
                                                        noise=data["next_noise"])
        next_q1, next_q2 = target_critic(torch.cat([data["next_observations"], next_action, z_fixed], -1))
        target = critic_target(data["rewards"], data["terminated"], next_q1, next_q2, next_log_prob, alpha, gamma,
                               reward_scale)
        std = normalize_values_(critic, target_critic, target)
    q1, q2 = critic(torch.cat([data["observations"], data["actions"], z_rows], -1))
    return critic_loss(q1, q2, target) / std**2, q1.detach().mean()


def frozen_q(critic: TwinQ, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both critics' values on ``inputs`` with the critics' parameters detached: the actor's loss reaches what
    ``inputs`` depends on (the actor's action) but never moves the critics."""
    frozen = {k: v.detach() for k, v in critic.named_parameters()}
    return torch.func.functional_call(critic, frozen, (inputs,))


def conditioned_actor_losses(actor: TanhGaussianActor, critic: TwinQ, log_alpha: torch.Tensor,
                             data: dict[str, torch.Tensor], z_rows: torch.Tensor, alpha: torch.Tensor,
                             target_entropy: float, mean_reg: float = 0.0, std_reg: float = 0.0,
                             critic_observations: torch.Tensor | None = None,
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(actor loss plus the regularisers, temperature loss, mean log π (detached)) on flattened rows (the actor's
    noise as ``noise``), z detached, against the critics as they are (frozen: no gradient reaches them). The critics
    read ``critic_observations`` where given (AMAGO: the state detached while the actor's own stays attached), else
    ``data["observations"]``, as the actor does."""
    z_fixed = z_rows.detach()
    action, log_prob, act_mean, act_log_std = actor.sample(torch.cat([data["observations"], z_fixed], -1),
                                                           noise=data["noise"])
    critic_observations = data["observations"] if critic_observations is None else critic_observations
    new_q1, new_q2 = frozen_q(critic, torch.cat([critic_observations, action, z_fixed], -1))
    pi_loss = (actor_loss(log_prob, torch.minimum(new_q1, new_q2), alpha) / critic.value_std()
               + mean_reg * (act_mean**2).mean() + std_reg * (act_log_std**2).mean())
    return pi_loss, temperature_loss(log_alpha, log_prob, target_entropy), log_prob.detach().mean()


def discrete_sac_losses(actor: CategoricalActor, critic: TwinQ, target_critic: TwinQ, data: dict[str, torch.Tensor],
                        actor_input: torch.Tensor, log_alpha: torch.Tensor, gamma: float, reward_scale: float,
                        target_entropy: float) -> dict[str, torch.Tensor]:
    """Discrete SAC's three losses on transition rows (``data``: ``observations`` and ``next_observations`` the
    critics' inputs ``[rows, F]``, ``actions`` one-hot ``[rows, n]``, ``rewards``, ``terminated``), every expectation
    over actions exact (module docstring). The critic loss's gradient reaches ``observations``; the actor reads
    ``actor_input`` and the critics, frozen, read ``observations`` detached. Returns ``critic``, ``actor``,
    ``temperature`` (losses), ``q_mean`` and ``entropy`` (detached). With a PopArt critic
    (:func:`normalize_values_`) the critic loss is divided by σ² and the actor loss by σ."""
    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        next_log_probs = actor(data["next_observations"])
        next_q1, next_q2 = target_critic(data["next_observations"])
        soft_value = (next_log_probs.exp() * (torch.minimum(next_q1, next_q2) - alpha * next_log_probs)).sum(-1)
        target = reward_scale * data["rewards"] + gamma * (1.0 - data["terminated"]) * soft_value
        std = normalize_values_(critic, target_critic, target)
    q1, q2 = critic(data["observations"])
    taken = data["actions"]
    q_loss = critic_loss((q1 * taken).sum(-1), (q2 * taken).sum(-1), target) / std**2
    log_probs = actor(actor_input)
    probs = log_probs.exp()
    new_q1, new_q2 = frozen_q(critic, data["observations"].detach())
    pi_loss = (probs * (alpha * log_probs - torch.minimum(new_q1, new_q2))).sum(-1).mean() / std
    entropy = -(probs * log_probs).sum(-1)
    alpha_loss = temperature_loss(log_alpha, -entropy, target_entropy)
    return {"critic": q_loss, "actor": pi_loss, "temperature": alpha_loss,
            "q_mean": (q1 * taken).sum(-1).detach().mean(), "entropy": entropy.detach().mean()}


def default_target_entropy(action_space: spaces.Space) -> float:
    """SAC's target entropy H̄ when none is given: −dim(A) for a ``Box``, 0.1 · log n for ``Discrete(n)``."""
    if isinstance(action_space, spaces.Discrete):
        return 0.1 * math.log(int(action_space.n))
    return -float(np.prod(action_space.shape))


def check_sac_spaces(agent: str, env_id: str, observation_space: Any, action_space: Any,
                     discrete: bool = False) -> None:
    """Refuse, with what to use instead, spaces the SAC networks cannot serve: a bounded Box of actions (the
    squashing box) or, where the agent has discrete SAC (``discrete``), a ``Discrete`` of at least 2 actions; a
    flat Box of observations (``observation_space`` None: the agent encodes observations itself)."""
    if discrete and isinstance(action_space, spaces.Discrete):
        if int(action_space.n) < 2:
            raise ValueError(f"{agent} needs at least 2 discrete actions, {env_id} has {action_space}")
    elif not isinstance(action_space, spaces.Box) or not np.all(np.isfinite(action_space.low)) \
            or not np.all(np.isfinite(action_space.high)):
        hint = "" if discrete else "; use rl2 or maml-trpo for discrete actions"
        raise ValueError(f"{agent} needs a bounded Box {'or a Discrete ' if discrete else ''}action space, "
                         f"{env_id} has {action_space}{hint}")
    if observation_space is not None and (not isinstance(observation_space, spaces.Box)
                                          or len(observation_space.shape) != 1):
        raise ValueError(f"{agent} needs a flat Box observation space, {env_id} has {observation_space}")


def adam_groups(*groups: tuple[nn.Module | Iterable[torch.Tensor] | None, float]) -> torch.optim.Adam:
    """One Adam optimiser with a parameter group per ``(module or tensors, learning rate)`` (each keeps its own
    rate; ``None`` entries are skipped): e.g. the critic step also moves an encoder, the actor step also log α,
    with fewer optimiser calls per gradient step."""
    return torch.optim.Adam([{"params": list(part.parameters() if isinstance(part, nn.Module) else part), "lr": lr}
                             for part, lr in groups if part is not None], foreach=True)


def actor_critic(input_dim: int, action_space: spaces.Box | spaces.Discrete, hidden: Sequence[int],
                 popart_beta: float | None = None) -> tuple[TanhGaussianActor | CategoricalActor, TwinQ, TwinQ]:
    """The SAC networks on inputs of ``input_dim`` (observation plus conditioning): for a flat bounded Box of actions
    the tanh-Gaussian actor and critics of ``[input, action]``, for ``Discrete(n)`` the categorical actor and critics
    with n outputs; the actor, the twin critics and their target (a copy of the critics), made in this order (the
    order of their random initialisations); ``popart_beta``: PopArt-normalised critics (:class:`TwinQ`)."""
    if isinstance(action_space, spaces.Discrete):
        n = int(action_space.n)
        actor: TanhGaussianActor | CategoricalActor = CategoricalActor(input_dim, n, hidden)
        critic, target_critic = (TwinQ(input_dim, hidden, n, popart_beta), TwinQ(input_dim, hidden, n, popart_beta))
        target_critic.load_state_dict(critic.state_dict())
        return actor, critic, target_critic
    action_dim = int(action_space.shape[0])
    actor = TanhGaussianActor(input_dim, action_dim, hidden, action_space.low, action_space.high)
    critic = TwinQ(input_dim + action_dim, hidden, popart_beta=popart_beta)
    target_critic = TwinQ(input_dim + action_dim, hidden, popart_beta=popart_beta)
    target_critic.load_state_dict(critic.state_dict())
    return actor, critic, target_critic


def check_sac_config(config: Any) -> None:
    """Check (one-line :class:`~metarl.core.config.ConfigError`) the SAC fields of an agent's config:
    ``temperature_lr``, ``reward_scale`` and ``init_temperature`` positive, ``gamma`` in [0, 1], ``tau`` in (0, 1],
    ``target_entropy`` a number or None."""
    check_fields(config, ("temperature_lr", "reward_scale", "init_temperature"), check_positive)
    check_number(config.gamma, "gamma", low=0, high=1)
    check_number(config.tau, "tau", low=0, high=1, low_open=True)
    check_number(config.target_entropy, "target_entropy", optional=True)


def conditioned_rows(batch: dict[str, torch.Tensor], z: torch.Tensor, action_dim: int,
                     generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A meta-batch ``[M, B, ...]`` (one z ``[M, dim]`` per task) as the flattened rows ``[M·B, ...]`` that
    :func:`conditioned_critic_loss` and :func:`conditioned_actor_losses` read: the fields plus the actor's noise for
    the next and the current actions (``next_noise``, ``noise``; drawn once for the whole batch, in this order),
    and z repeated for every row."""
    tasks, rows = batch["rewards"].shape
    noise = torch.randn(2, tasks, rows, action_dim, generator=generator, device=batch["rewards"].device)
    data = {k: v.flatten(0, 1) for k, v in batch.items()}
    data["next_noise"], data["noise"] = noise[0].flatten(0, 1), noise[1].flatten(0, 1)
    return data, z[:, None, :].expand(-1, rows, -1).flatten(0, 1)
