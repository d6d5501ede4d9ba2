"""A black-box few-shot learner: a sequence model reads the labelled support set and then labels the queries.

In the family of Santoro et al. 2016 (memory-augmented networks), Mishra et al. 2018 (SNAIL) and Garnelo et al.
2018 (neural processes): no gradient steps at adaptation, the whole "learning" is a forward pass.

Spec: each support example becomes a token ``W_x e(x) + W_y y`` (``e`` the input encoder — identity-MLP for
vectors, Conv-4 for images; ``y`` one-hot for classification, the value for regression); each query becomes
``W_x e(x) + u`` with a learned "label unknown" vector ``u``. A Transformer encoder runs over support and query
tokens with an attention mask that lets support tokens see the support set only and each query see the support set
and itself (queries never see each other, so predictions do not depend on what else is queried). No positional
encoding: the learner is invariant to the order of the support set. Trained by the query loss, like every learner
here.

Read-out. Regression: a linear layer on each query token. Classification (``readout="labels"``, the default): the
final query token h_q attends over the final support tokens h_j and reads their labels,
``p(k | q) = Σ_j softmax_j((W_q h_q)·(W_k h_j) / √d) [y_j = k]``, and the logits are ``log p`` (floored at 1e-6).
``readout="linear"`` is the earlier free linear layer on the query token, which does not learn Omniglot (training
loss at ln 5 / ln 20): at initialisation neither the attention (which support token to look at) nor the read-out
(what a label direction in the token means) carries label information, and each one's gradient needs the other
already aligned, so training starts on a symmetric saddle (outputs uniform over the labels for every input); the
label read-out maps a label to its class by construction, so the attention gets a useful gradient from the first
step. ``norm_first`` switches the layers to pre-LN (off by default: it did not help on its own). The measurements
behind this are in experiments/RESULTS.md ("The black-box learner on Omniglot: diagnosis").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.config import ConfigError, check_choice, check_int
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig

from .protonet import embed_tasks


@dataclass
class BlackBoxConfig(FewShotLearnerConfig):
    """Settings of the black-box learner's Transformer."""

    d_model: int = 128
    """width of the tokens"""
    layers: int = 3
    """Transformer encoder layers"""
    heads: int = 4
    """attention heads (must divide d_model)"""
    readout: str = "labels"
    """classification read-out: labels (attention of each query over the support tokens, reading their labels) or
    linear (a free linear layer on the query token: stays at chance on Omniglot; regression always uses it)"""
    norm_first: bool = False
    """pre-LN Transformer layers (layer norm before attention and feed-forward) instead of post-LN"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "layers", "heads"):
            check_int(getattr(self, name), name, minimum=1)
        check_choice(self.readout, "readout", ["labels", "linear"])
        if self.d_model % self.heads:
            raise ConfigError(f"heads ({self.heads}) must divide d_model ({self.d_model})")


class BlackBoxLearner(FewShotLearner):
    """Transformer over (x, y) support tokens and (x, ?) query tokens."""

    name = "blackbox"
    fixed_ways = True

    @classmethod
    def from_source(cls, source, config, *, outputs: int | None) -> BlackBoxLearner:
        from metarl.core.networks import standard_backbone

        encoder, feature_dim = standard_backbone(source.input_shape, None, running_stats=True)
        return cls(encoder, feature_dim, source.kind, outputs, config)

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        kind: str,
        output_dim: int,
        config: BlackBoxConfig | None = None,
    ) -> None:
        super().__init__(kind)
        self.config = config or BlackBoxConfig()
        d_model, layers, heads = self.config.d_model, self.config.layers, self.config.heads
        self.encoder = encoder
        self.output_dim = output_dim
        self.x_projection = nn.Linear(feature_dim, d_model)
        self.y_projection = nn.Linear(output_dim, d_model)
        self.unknown_label = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=self.config.norm_first)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.label_readout = kind == "classification" and self.config.readout == "labels"
        if self.label_readout:  # query-to-support attention whose values are the support labels themselves
            self.readout_query = nn.Linear(d_model, d_model)
            self.readout_key = nn.Linear(d_model, d_model)
        else:
            self.readout = nn.Linear(d_model, output_dim)

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "classification":
            if int(y.max()) >= self.output_dim:
                raise ValueError(f"this learner was built for {self.output_dim} ways, got label {int(y.max())}")
            return F.one_hot(y, self.output_dim).float()
        return y

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *,
              steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self._labels(support_y)
        return self.x_projection(embed_tasks(self.encoder, support_x)) + self.y_projection(labels), labels

    def predict(self, state: tuple[torch.Tensor, torch.Tensor], query_x: torch.Tensor) -> torch.Tensor:
        state, labels = state
        queries = self.x_projection(embed_tasks(self.encoder, query_x)) + self.unknown_label
        n_support, n_query = state.shape[1], queries.shape[1]
        total = n_support + n_query
        index = torch.arange(total, device=state.device)
        blocked = (index.unsqueeze(0) >= n_support) & (index.unsqueeze(0) != index.unsqueeze(1))  # True = masked
        hidden = self.transformer(torch.cat([state, queries], dim=1), mask=blocked)
        if not self.label_readout:
            return self.readout(hidden[:, n_support:])
        # log of the attention-weighted support labels: the label of the best-matching support token wins
        scores = self.readout_query(hidden[:, n_support:]) @ self.readout_key(hidden[:, :n_support]).transpose(1, 2)
        attention = (scores / self.readout_query.out_features ** 0.5).softmax(dim=-1)  # [tasks, queries, support]
        return (attention @ labels).clamp_min(1e-6).log()
