"""Matching Networks: a query's label is an attention-weighted vote of the support labels.

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for One Shot Learning", NeurIPS 2016.

Spec: ŷ = Σ_i a(x̂, x_i) y_i with attention a = softmax over the support of the cosine similarity between the
embeddings f(x̂, S) and g(x_i, S), scaled by a learned temperature. Trained by episodic cross-entropy on the query
set. Outputs are log-probabilities (so cross-entropy on them is the negative log-likelihood of the vote).

Without full-context embeddings (``full_context=False``, the default) f = g = f', one shared Conv-4 embedding.

With full-context embeddings (``full_context=True``, the paper's appendix A), on top of f' (the Conv-4):

- g(x_i, S) = h→_i + h←_i + f'(x_i): the forward and backward hidden states of a bidirectional LSTM (hidden size =
  the embedding's) run over the support embeddings f'(x_1..x_n) in the support set's order, plus the skip f'(x_i);
- f(x̂, S) = attLSTM(f'(x̂), g(S), K), K = ``fce_steps`` processing steps from h_0 = r_0 = c_0 = 0:
  ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1}); h_k = ĥ_k + f'(x̂);
  r_k = Σ_i softmax_i(h_k · g(x_i)) g(x_i); f(x̂, S) = h_K.
  The LSTM's gates are linear in its input and its state [h_{k−1}, r_{k−1}]; that is exactly an ``nn.LSTMCell`` fed
  the input [f'(x̂), r_{k−1}] with hidden state h_{k−1} (the same function, one cell of the embedding's width).

All tasks and queries in one batch (the LSTM runs over tasks as its batch; the attention LSTM over every query of
every task); each query's f depends on the support set and on itself only. The paper reports that FCE matters
little on Omniglot (it used them on miniImageNet). Figures: experiments/RESULTS.md, Omniglot one-shot runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.config import check_int, check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig

from .protonet import embed_tasks


@dataclass
class MatchingConfig(FewShotLearnerConfig):
    """Settings of Matching Networks."""

    temperature: float = 10.0
    """initial scale of the cosine similarities before the softmax (learned in the outer loop)"""
    full_context: bool = False
    """full-context embeddings (the paper's FCE): a bidirectional LSTM over the support set, attention LSTM queries"""
    fce_steps: int = 5
    """processing steps K of the attention LSTM that embeds each query (with full_context)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.temperature, "temperature")
        check_int(self.fce_steps, "fce_steps", minimum=1)


class FullContextEmbedding(nn.Module):
    """g(S): bidirectional LSTM over the support embeddings plus the skip; f(x̂, S): the attention LSTM."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)  # input [f'(x̂), r]: the state [h, r] of the paper's LSTM

    def support(self, embedded: torch.Tensor) -> torch.Tensor:
        """``[tasks, n, dim]`` f'(x_i) → g(x_i, S) ``[tasks, n, dim]``."""
        states, _ = self.support_lstm(embedded)  # [tasks, n, 2 dim]: forward and backward hidden states
        forward, backward = states.chunk(2, dim=-1)
        return forward + backward + embedded

    def query(self, embedded: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``[tasks, q, dim]`` f'(x̂) and ``[tasks, n, dim]`` g(S) → f(x̂, S) ``[tasks, q, dim]``."""
        tasks, q, dim = embedded.shape
        flat = embedded.reshape(tasks * q, dim)
        h = torch.zeros_like(flat)
        c = torch.zeros_like(flat)
        r = torch.zeros_like(embedded)
        for _ in range(self.steps):
            h_hat, c = self.query_cell(torch.cat([flat, r.reshape(tasks * q, dim)], dim=-1), (h, c))
            h = h_hat + flat
            attention = torch.softmax(h.view(tasks, q, dim) @ support.transpose(1, 2), dim=-1)  # [tasks, q, n]
            r = attention @ support
        return h.view(tasks, q, dim)


class MatchingNetwork(FewShotLearner):
    """Adapt = embed and keep the support set; predict = cosine attention over it."""

    name = "matching"
    task_kinds = ("classification",)

    def __init__(self, embedding: nn.Module, kind: str = "classification",
                 config: MatchingConfig | None = None) -> None:
        if kind != "classification":
            raise ValueError("Matching Networks need a classification task source (e.g. omniglot)")
        super().__init__(kind)
        self.config = config or MatchingConfig()
        self.embedding = embedding
        self.log_temperature = nn.Parameter(torch.tensor(float(self.config.temperature)).log())
        self.context = None
        if self.config.full_context:
            dim = getattr(embedding, "embedding_dim", None) or embedding[-1].out_features
            self.context = FullContextEmbedding(dim, self.config.fce_steps)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None):
        ways = int(support_y.max()) + 1
        keys = embed_tasks(self.embedding, support_x)
        if self.context is not None:
            keys = self.context.support(keys)
        return F.normalize(keys, dim=-1), F.one_hot(support_y, ways).to(keys.dtype), keys

    def predict(self, state, query_x: torch.Tensor) -> torch.Tensor:
        keys, labels, support = state
        queries = embed_tasks(self.embedding, query_x)
        if self.context is not None:
            queries = self.context.query(queries, support)
        queries = F.normalize(queries, dim=-1)
        attention = torch.softmax(self.log_temperature.exp() * queries @ keys.transpose(1, 2), dim=-1)
        return (attention @ labels).clamp_min(1e-12).log()
