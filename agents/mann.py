"""Memory-augmented neural network (MANN) with least-recently-used access, and its plain-LSTM baseline.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, "Meta-Learning with Memory-Augmented Neural Networks",
ICML 2016.

Spec. An episode is a sequence of labelled items (x_1, y_1), ..., (x_T, y_T); at step t the network sees x_t and the
one-hot label y_{t−1} of the previous step (labels one step late; y_0 = 0) and outputs a softmax over the ``ways``
classes for x_t. An LSTM controller (``controller_size``, paper 200 units) reads its input
[e(x_t), y_{t−1}, r_{t−1}] (e: the input encoder, r_{t−1}: the previous step's read vectors — the controller
input of NTM-style models) and emits, per read head, a key k_t, a write vector a_t (tanh) and a gate α_t. The
memory M_t has ``memory_slots`` rows of ``memory_width`` (paper 128 × 40) and R = ``read_heads`` heads (paper 4)
use least-recently-used access (LRUA), in this order at each step (:func:`lrua_step`):

1. write weights    w^w_t = σ(α_t) w^r_{t−1} + (1 − σ(α_t)) w^lu_{t−1}                 (per head)
2. before writing, the least used slot (argmin_i w^u_{t−1}(i), the first one on ties) is set to zero;
   M_t(i) = M_{t−1}(i) + Σ_heads w^w_t(i) a_t
3. read weights     w^r_t(i) = softmax_i K(k_t, M_t(i)),  K the cosine similarity;  r_t = Σ_i w^r_t(i) M_t(i)
4. usage            w^u_t = γ w^u_{t−1} + Σ_heads (w^r_t + w^w_t)                      (γ = ``usage_decay``)
5. least used       w^lu_t(i) = 1 for the n = R slots of smallest usage w^u_t, else 0 (exactly n ones, ties
   going to the lower index: the paper's "w^u_t(i) ≤ m(w^u_t, n)" when usages are distinct)

and the output is softmax(W_o [h_t, r_t]). Initial state: M_0 = 0, w^u_0 = 0, w^r_0 = 0, w^lu_0 = the first R
slots, h_0 = c_0 = 0, r_0 = 0. ``memory_slots = 0`` is the plain-LSTM baseline on the same sequences (input
[e(x_t), y_{t−1}], output softmax(W_o h_t)). All tasks of a meta-batch advance together (batched tensors; the Python
loop runs over time steps only).

Inputs (``encoder``): ``"flatten"`` (default, the paper's: raw pixels, 20×20 there, the source's image size here,
28×28 by default) or ``"conv"`` (the source's Conv-4 embedding, batch-norm running statistics kept).

The few-shot contract. ``adapt`` presents the support set as one sequence in an order derived from the data (a
permutation per task drawn from a generator seeded with the config's seed and a checksum of the batch: the same
data give the same order, never torch's global generator; class-major order would make labels predictable from
positions) and returns the state after its last step, with the last support label as the pending y_{t−1}.
``predict`` classifies every query independently as one more step from that state (all queries of all tasks at
once). ``meta_loss`` (``loss_on="sequence"``, the paper's objective) concatenates support and query items into one
episode, shuffles it in the same data-derived way, and minimises the mean cross-entropy of the per-step predictions
over all T steps (first presentations included: there the best output is uniform over the labels not yet given);
``loss_on="query"`` minimises the query loss of adapt + predict instead. Optimiser: the suite's Adam.

Figures: experiments/RESULTS.md ("MANN on Santoro's protocol", and the Omniglot one-shot-runs table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.config import ConfigError, check_choice, check_int, check_number
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig
from metarl.core.seeding import derive_seed

from .protonet import embed_tasks


@dataclass
class MANNConfig(FewShotLearnerConfig):
    """Settings of the memory-augmented network (defaults: the paper's sizes)."""

    controller_size: int = 200
    """LSTM controller units"""
    memory_slots: int = 128
    """memory rows (0: the plain-LSTM baseline, no external memory)"""
    memory_width: int = 40
    """width of a memory row (and of keys and write vectors)"""
    read_heads: int = 4
    """read heads (also the number n of least-used slots; at most memory_slots)"""
    usage_decay: float = 0.95
    """gamma, the decay of the usage weights per step"""
    encoder: str = "flatten"
    """input encoder: flatten (raw pixels, as the paper) or conv (the source's Conv-4 embedding)"""
    loss_on: str = "sequence"
    """meta-training loss: sequence (every step of the shuffled support+query episode, the paper's) or query"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.controller_size, "controller_size", minimum=1)
        check_int(self.memory_slots, "memory_slots", minimum=0)
        check_int(self.memory_width, "memory_width", minimum=1)
        check_int(self.read_heads, "read_heads", minimum=1)
        check_number(self.usage_decay, "usage_decay", low=0, high=1)
        check_choice(self.encoder, "encoder", ["flatten", "conv"])
        check_choice(self.loss_on, "loss_on", ["sequence", "query"])
        if self.memory_slots and self.read_heads > self.memory_slots:
            raise ConfigError(f"read_heads ({self.read_heads}) must not exceed memory_slots ({self.memory_slots}): "
                              "LRUA marks read_heads least-used slots")


class MemoryState(NamedTuple):
    """Everything a MANN carries from one step to the next (leading dimension: sequences)."""

    h: torch.Tensor  # [B, controller]
    c: torch.Tensor  # [B, controller]
    label: torch.Tensor  # [B, ways]  the pending y_{t-1}
    memory: torch.Tensor  # [B, slots, width]
    usage: torch.Tensor  # [B, slots]
    read_weights: torch.Tensor  # [B, heads, slots]
    least_used: torch.Tensor  # [B, slots]
    reads: torch.Tensor  # [B, heads, width]

    def expand(self, copies: int) -> MemoryState:
        """Each sequence's state repeated ``copies`` times (sequence-major), for independent one-step predictions."""
        return MemoryState(*(t.repeat_interleave(copies, dim=0) for t in self))


def least_used_weights(usage: torch.Tensor, n: int) -> torch.Tensor:
    """w^lu: 1 at the ``n`` slots of smallest usage (ties to the lower index), 0 elsewhere; ``usage`` ``[B, slots]``."""
    order = usage.argsort(dim=-1, stable=True)[:, :n]
    return torch.zeros_like(usage).scatter_(-1, order, 1.0)


def lrua_step(memory: torch.Tensor, usage: torch.Tensor, read_weights: torch.Tensor, least_used: torch.Tensor,
              keys: torch.Tensor, writes: torch.Tensor, gate: torch.Tensor, decay: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LRUA step (the module docstring's steps 1–5) for ``B`` memories at once.

    ``memory`` ``[B, N, W]``, ``usage`` ``[B, N]`` (w^u_{t−1}), ``read_weights`` ``[B, R, N]`` (w^r_{t−1}),
    ``least_used`` ``[B, N]`` (w^lu_{t−1}), ``keys``/``writes`` ``[B, R, W]``, ``gate`` ``[B, R]`` (α_t before the
    sigmoid). Returns ``(memory, usage, read_weights, least_used, reads, write_weights)`` at t.
    """
    sigma = torch.sigmoid(gate).unsqueeze(-1)  # [B, R, 1]
    write_weights = sigma * read_weights + (1 - sigma) * least_used.unsqueeze(1)  # [B, R, N]
    zeroed = F.one_hot(usage.argmin(dim=-1), memory.shape[1]).to(memory.dtype)  # least used slot at t-1
    memory = memory * (1 - zeroed).unsqueeze(-1) + write_weights.transpose(1, 2) @ writes
    similarity = F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)
    read_weights = similarity.softmax(dim=-1)  # [B, R, N]
    reads = read_weights @ memory  # [B, R, W]
    usage = decay * usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    return memory, usage, read_weights, least_used_weights(usage, keys.shape[1]), reads, write_weights


class MANN(FewShotLearner):
    """LSTM controller + LRUA memory over the sequence of labelled items (``memory_slots=0``: plain LSTM)."""

    name = "mann"
    fixed_ways = True
    task_kinds = ("classification",)

    @classmethod
    def from_source(cls, source, config, *, outputs: int | None) -> MANN:
        from metarl.core.networks import standard_backbone

        if source.kind != "classification":
            raise ValueError(f"learner {cls.name!r} needs a classification task source, not {source.kind}")
        if config.encoder == "conv":
            encoder, features = standard_backbone(source.input_shape, None, running_stats=True)
        else:
            encoder, features = nn.Flatten(), int(torch.tensor(source.input_shape).prod())
        return cls(encoder, features, outputs, config)

    def __init__(self, encoder: nn.Module, feature_dim: int, ways: int, config: MANNConfig | None = None) -> None:
        super().__init__("classification")
        self.config = config or MANNConfig()
        if not isinstance(ways, int) or ways < 2:
            raise ValueError(f"MANN needs at least 2 ways, got {ways}")
        c = self.config
        self.encoder, self.ways = encoder, ways
        self.heads = c.read_heads if c.memory_slots else 0
        read_dim = self.heads * c.memory_width
        self.controller = nn.LSTMCell(feature_dim + ways + read_dim, c.controller_size)
        if c.memory_slots:
            # per head: key k_t, write vector a_t (both tanh), gate alpha_t
            self.interface = nn.Linear(c.controller_size, self.heads * (2 * c.memory_width + 1))
        self.output = nn.Linear(c.controller_size + read_dim, ways)

    # ------------------------------------------------------------------------------------------------------------
    # ALGO LOGIC: one step of the controller and the memory, and a whole sequence

    def initial_state(self, batch: int, device: torch.device) -> MemoryState:
        c = self.config
        slots, width = c.memory_slots, c.memory_width
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        least_used = zeros(batch, slots)
        least_used[:, :self.heads] = 1.0
        return MemoryState(zeros(batch, c.controller_size), zeros(batch, c.controller_size), zeros(batch, self.ways),
                           zeros(batch, slots, width), zeros(batch, slots), zeros(batch, self.heads, slots),
                           least_used, zeros(batch, self.heads, width))

    def step(self, state: MemoryState, features: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
        """Logits ``[B, ways]`` for inputs ``features`` ``[B, dim]`` and the state after the step (label unchanged:
        the caller sets the label that the next step sees)."""
        c = self.config
        h, cell = self.controller(torch.cat([features, state.label, state.reads.flatten(1)], dim=1),
                                  (state.h, state.c))
        memory, usage, read_weights, least_used, reads = (state.memory, state.usage, state.read_weights,
                                                          state.least_used, state.reads)
        if c.memory_slots:
            interface = self.interface(h).view(h.shape[0], self.heads, 2 * c.memory_width + 1)
            keys = torch.tanh(interface[..., :c.memory_width])
            writes = torch.tanh(interface[..., c.memory_width:2 * c.memory_width])
            memory, usage, read_weights, least_used, reads, _ = lrua_step(
                memory, usage, read_weights, least_used, keys, writes, interface[..., -1], c.usage_decay)
        logits = self.output(torch.cat([h, reads.flatten(1)], dim=1))
        return logits, MemoryState(h, cell, state.label, memory, usage, read_weights, least_used, reads)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return embed_tasks(self.encoder, x)  # [tasks, n, dim], all items of all tasks in one pass

    def run_sequence(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
        """Present ``x`` ``[B, T, ...]`` with labels ``y`` ``[B, T]`` in the given order (labels one step late):
        per-step logits ``[B, T, ways]`` and the state after the last step (its label pending)."""
        if int(y.max()) >= self.ways:
            raise ValueError(f"this learner was built for {self.ways} ways, got label {int(y.max())}")
        features, labels = self.encode(x), F.one_hot(y, self.ways).to(x.dtype)
        state = self.initial_state(x.shape[0], x.device)
        outputs = []
        for t in range(x.shape[1]):
            logits, state = self.step(state, features[:, t])
            state = state._replace(label=labels[:, t])
            outputs.append(logits)
        return torch.stack(outputs, dim=1), state

    def shuffle(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A permutation per task derived from the data (same data, same order)."""
        checksum = int(torch.round(x.detach().double().sum() * 1e4)) % 2**61 + 7 * int(y.sum())
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "mann-order", checksum))
        order = torch.rand(y.shape, generator=generator).argsort(dim=1).to(y.device)
        x = torch.take_along_dim(x, order.view(*order.shape, *([1] * (x.dim() - 2))), dim=1)
        return x, torch.take_along_dim(y, order, dim=1)

    # ------------------------------------------------------------------------------------------------------------
    # the few-shot contract

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> MemoryState:
        return self.run_sequence(*self.shuffle(support_x, support_y))[1]

    def predict(self, state: MemoryState, query_x: torch.Tensor) -> torch.Tensor:
        tasks, queries = query_x.shape[:2]
        features = self.encode(query_x).flatten(0, 1)  # [tasks * queries, dim], task-major
        logits, _ = self.step(state.expand(queries), features)
        return logits.view(tasks, queries, self.ways)

    def meta_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.config.loss_on == "query":
            return super().meta_loss(batch)
        x, y = self.shuffle(torch.cat([batch.support_x, batch.query_x], dim=1),
                            torch.cat([batch.support_y, batch.query_y], dim=1))
        logits, _ = self.run_sequence(x, y)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        accuracy = (logits.detach().argmax(dim=-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}
