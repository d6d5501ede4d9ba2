"""A recurrent policy for in-context meta-RL (RL², Duan et al. 2016): a GRU over the per-step inputs, a linear policy
head (categorical logits or a diagonal Gaussian's mean with a learned state-independent log-std) and a linear value
head on the hidden state.

:class:`TrialPolicy` is the interface every sequence policy over a trial shares (this GRU, the causal Transformer of
:mod:`metarl.core.sequence`): ``initial_state(batch, device)`` (the state a trial starts from),
``forward(inputs [B, T, in], state=None) -> (head [B, T, A], value [B, T], state, features [B, T, F])`` (``state``
None: a whole trial from its start, as the PPO minibatch loss recomputes it; otherwise ``T`` more steps after the
ones ``state`` has seen, as collection acts) and ``log_prob_entropy(head, actions)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class TrialPolicy(nn.Module):
    """The linear policy and value heads on a sequence model's features, and the action log-probabilities."""

    discrete: bool
    log_std: nn.Parameter | None

    def _init_heads(self, features: int, action_size: int, discrete: bool, init_log_std: float) -> None:
        self.discrete = discrete
        self.policy_head = nn.Linear(features, action_size)
        self.value_head = nn.Linear(features, 1)
        nn.init.orthogonal_(self.policy_head.weight, gain=0.01)  # start close to uniform / zero-mean actions
        nn.init.zeros_(self.policy_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)
        self.log_std = None if discrete else nn.Parameter(torch.full((action_size,), float(init_log_std)))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> Any:
        raise NotImplementedError

    def log_prob_entropy(self, head: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``actions`` and entropy: categorical over logits, or diagonal Gaussian (closed form)."""
        if self.discrete:
            log_p = torch.log_softmax(head, dim=-1)
            return log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
        log_std = self.log_std.expand_as(head)
        z = (actions - head) / log_std.exp()
        log_prob = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)
        return log_prob.sum(-1), (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class RecurrentPolicy(TrialPolicy):
    """GRU over the RL² inputs, then a linear policy head and a linear value head on the hidden state."""

    def __init__(self, input_size: int, hidden_size: int, action_size: int, discrete: bool, init_log_std: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self._init_heads(hidden_size, action_size, discrete, init_log_std)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The zero hidden state ``[1, batch, H]`` every trial starts from."""
        return torch.zeros(1, batch, self.hidden_size, device=device)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor | None = None):
        """``inputs [B, T, in]``, ``hidden [1, B, H]`` (None: zeros) -> head ``[B, T, A]``, value ``[B, T]``, hidden."""
        features, hidden = self.gru(inputs, hidden)
        return self.policy_head(features), self.value_head(features).squeeze(-1), hidden, features
