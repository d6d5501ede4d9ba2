"""Prototypical Networks: classify a query by its distance to the mean embedding of each class.

Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.

Spec: an embedding f_φ (Conv-4, 64-d for 28x28 Omniglot); the prototype of class k is the mean embedding of its
support examples, c_k = mean_{(x, y=k)} f_φ(x); a query's class distribution is softmax_k(−‖f_φ(x) − c_k‖²)
(squared Euclidean distance). Trained end to end by episodic cross-entropy on the query set with Adam (the paper
trains Omniglot with 60-way episodes and tests at 5/20 ways; the ways of training episodes are the task source's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.learner import FewShotLearner, FewShotLearnerConfig


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[tasks, ways, dim]`` mean embedding per class from ``[tasks, n, dim]`` embeddings and ``[tasks, n]`` labels."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)  # [tasks, n, ways]
    sums = one_hot.transpose(1, 2) @ embeddings  # [tasks, ways, dim]
    return sums / one_hot.sum(dim=1).clamp_min(1.0).unsqueeze(-1)


def embed_tasks(embedding: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Embed ``[tasks, n, *shape]`` inputs in one forward pass: ``[tasks, n, dim]``."""
    tasks, n = x.shape[:2]
    return embedding(x.reshape(tasks * n, *x.shape[2:])).reshape(tasks, n, -1)


@dataclass
class ProtoNetConfig(FewShotLearnerConfig):
    """Settings of Prototypical Networks: the outer loop's only (the embedding is the source's standard backbone;
    the ways of training episodes, 60 in the paper for Omniglot, are the task source's ``train_ways``)."""


class PrototypicalNetwork(FewShotLearner):
    """Adapt = compute class prototypes of the support set; predict = negative squared distances as logits."""

    name = "protonet"
    task_kinds = ("classification",)

    def __init__(self, embedding: nn.Module, kind: str = "classification",
                 config: ProtoNetConfig | None = None) -> None:
        if kind != "classification":
            raise ValueError("Prototypical Networks need a classification task source (e.g. omniglot)")
        super().__init__(kind)
        self.config = config or ProtoNetConfig()
        self.embedding = embedding

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> torch.Tensor:
        ways = int(support_y.max()) + 1
        return class_means(embed_tasks(self.embedding, support_x), support_y, ways)

    def predict(self, state: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        queries = embed_tasks(self.embedding, query_x)  # [tasks, q, dim]
        return -torch.cdist(queries, state).pow(2)
