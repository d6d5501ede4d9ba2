"""Matching Networks: a query's label is an attention-weighted vote of the support labels.

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for One Shot Learning", NeurIPS 2016.

Spec: ŷ = Σ_i a(x̂, x_i) y_i with attention a = softmax over the support of the cosine similarity between the
embeddings f(x̂) and g(x_i) (here one shared Conv-4 embedding, f = g, scaled by a learned temperature). Trained by
episodic cross-entropy on the query set. The full-context embeddings (FCE: LSTMs over the support set) are not
included: the paper reports that they matter little on Omniglot; the black-box learner covers sequence models.
Outputs are log-probabilities (so cross-entropy on them is the negative log-likelihood of the vote).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.config import check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig

from .protonet import embed_tasks


@dataclass
class MatchingConfig(FewShotLearnerConfig):
    """Settings of Matching Networks."""

    temperature: float = 10.0
    """initial scale of the cosine similarities before the softmax (learned in the outer loop)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.temperature, "temperature")


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

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None):
        ways = int(support_y.max()) + 1
        keys = F.normalize(embed_tasks(self.embedding, support_x), dim=-1)
        return keys, F.one_hot(support_y, ways).to(keys.dtype)

    def predict(self, state, query_x: torch.Tensor) -> torch.Tensor:
        keys, labels = state
        queries = F.normalize(embed_tasks(self.embedding, query_x), dim=-1)
        attention = torch.softmax(self.log_temperature.exp() * queries @ keys.transpose(1, 2), dim=-1)
        return (attention @ labels).clamp_min(1e-12).log()
