"""Relation Networks: a learned module scores how well a query matches each class of the support set.

Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare: Relation Network for Few-Shot Learning",
CVPR 2018.

Spec (the paper's Omniglot architecture, section 3.4 and figure 2):

- embedding module f_φ: four conv blocks (64 3x3 filters, batch norm, ReLU), 2x2 max-pool after the first two only,
  so a 28x28 drawing becomes a 64x7x7 feature map;
- class feature map: for K shots the element-wise SUM of the class's support feature maps, C_k = Σ_{y_i=k} f_φ(x_i)
  (one shot: the support feature map itself);
- relation module g_φ on each query–class pair: the channel concatenation [C_k, f_φ(x̂)] (128x7x7) → two conv blocks
  (64 filters, with max-pool: 7 → 3 → 1) → FC 8 + ReLU → FC 1 + sigmoid: the relation score
  r_k(x̂) = σ(g_φ([C_k, f_φ(x̂)])) in [0, 1];
- loss: mean squared error of the scores to the one-hot targets, Σ_k (r_k(x̂) − 1[y(x̂) = k])² averaged over all
  query–class pairs of the meta-batch (the paper sums; the mean only rescales), Adam 1e-3.

All query×class pairs of all tasks go through the relation module in one batched forward. ``predict`` returns the
pre-sigmoid relation logits g_φ(·) (monotone in the score, so argmax is the paper's decision and softmax gives the
class probabilities the one-shot runs and ensembles average). Batch norm keeps running statistics (at evaluation a
pair's score does not depend on the other pairs in the batch).

Differences from the paper: the convolutions are padded (``metarl.core.networks.conv_block``), so feature maps are
7x7 rather than the paper's 5x5 (its code pads only the last two embedding blocks); ``support_pooling="mean"``
(not in the paper) divides the sum by the shots, which equals the paper at one shot and keeps the relation
module's inputs at the scale it was trained on when test-time augmentation adds shots (the one-shot-runs plan uses
it). Image inputs only: a source of vectors is refused (the paper's module is convolutional; for vectors use
``protonet`` or ``matching``). Figures: experiments/RESULTS.md, Omniglot one-shot runs and the speed table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.batch import EpisodeBatch
from metarl.core.calibration import normalised_sigmoid_categorical
from metarl.core.config import check_choice, check_int
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig, task_scores
from metarl.core.networks import conv_block


@dataclass
class RelationConfig(FewShotLearnerConfig):
    """Settings of Relation Networks (defaults: the paper's Omniglot architecture)."""

    hidden: int = 64
    """filters of every conv block (embedding and relation module)"""
    relation_hidden: int = 8
    """width of the relation module's hidden fully connected layer"""
    support_pooling: str = "sum"
    """how a class's support feature maps combine: sum (the paper) or mean (the same at one shot)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.hidden, "hidden", minimum=1)
        check_int(self.relation_hidden, "relation_hidden", minimum=1)
        check_choice(self.support_pooling, "support_pooling", ("sum", "mean"))


def relation_embedding(in_channels: int, hidden: int) -> nn.Sequential:
    """The embedding module: four conv blocks, max-pool after the first two (28x28 → hidden x 7 x 7)."""
    return nn.Sequential(*(conv_block(in_channels if i == 0 else hidden, hidden, pool=i < 2, running_stats=True)
                           for i in range(4)))


class RelationModule(nn.Module):
    """g_φ: a query–class pair of feature maps (channel-concatenated) → one relation logit (pre-sigmoid)."""

    def __init__(self, hidden: int, relation_hidden: int, side: int) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_block(2 * hidden, hidden, running_stats=True),
                                      conv_block(hidden, hidden, running_stats=True), nn.Flatten())
        flat = hidden * ((side // 2) // 2) ** 2
        self.head = nn.Sequential(nn.Linear(flat, relation_hidden), nn.ReLU(), nn.Linear(relation_hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pairs)).squeeze(-1)


class RelationNetwork(FewShotLearner):
    """Adapt = one feature map per class; predict = the relation module on every query–class pair."""

    name = "relation"
    task_kinds = ("classification",)

    @classmethod
    def from_source(cls, source: Any, config: Any, *, outputs: int | None) -> RelationNetwork:
        if source.kind != "classification":
            raise ValueError(f"learner {cls.name!r} needs a classification task source, not {source.kind}")
        shape = tuple(source.input_shape)
        if len(shape) != 3 or min(shape[1:]) < 16:
            raise ValueError(f"learner {cls.name!r} needs images of at least 16x16 (channels, height, width); the "
                             f"source gives inputs of shape {shape} (for vectors use protonet or matching)")
        return cls(shape, config)

    def __init__(self, input_shape: tuple[int, int, int], config: RelationConfig | None = None) -> None:
        super().__init__("classification")
        self.config = config or RelationConfig()
        channels, side = input_shape[0], min(input_shape[1:])
        self.embedding = relation_embedding(channels, self.config.hidden)
        self.relation = RelationModule(self.config.hidden, self.config.relation_hidden, side // 4)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[tasks, n, *image]`` → feature maps ``[tasks, n, hidden, h, w]`` in one forward pass."""
        tasks, n = x.shape[:2]
        maps = self.embedding(x.reshape(tasks * n, *x.shape[2:]))
        return maps.reshape(tasks, n, *maps.shape[1:])

    # ALGO LOGIC: the class feature maps are the sum (or mean) of the support feature maps of each class
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> torch.Tensor:
        ways = int(support_y.max()) + 1
        maps = self.embed(support_x)  # [tasks, n, c, h, w]
        one_hot = F.one_hot(support_y, ways).to(maps.dtype)  # [tasks, n, ways]
        classes = torch.einsum("tnk,tnchw->tkchw", one_hot, maps)
        if self.config.support_pooling == "mean":
            classes = classes / one_hot.sum(dim=1).clamp_min(1.0)[:, :, None, None, None]
        return classes  # [tasks, ways, c, h, w]

    def predict(self, state: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        classes = state
        queries = self.embed(query_x)  # [tasks, q, c, h, w]
        tasks, q, ways = queries.shape[0], queries.shape[1], classes.shape[1]
        pairs = torch.cat([classes[:, None].expand(tasks, q, *classes.shape[1:]),
                           queries[:, :, None].expand(tasks, q, ways, *queries.shape[2:])], dim=3)
        return self.relation(pairs.flatten(0, 2)).view(tasks, q, ways)  # relation logits

    def predictive(self, state, query_x: torch.Tensor) -> torch.distributions.Categorical:
        """Class probabilities: the per-class sigmoid scores normalised over the classes."""
        return normalised_sigmoid_categorical(self.predict(state, query_x))

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        # ALGO LOGIC: MSE of the relation scores to one-hot targets over every query–class pair
        logits = self.predict(self.adapt(batch.support_x, batch.support_y), batch.query_x)
        targets = F.one_hot(batch.query_y, logits.shape[-1]).to(logits.dtype)
        loss = ((torch.sigmoid(logits) - targets) ** 2).mean()
        accuracy = float(task_scores(logits.detach(), batch.query_y, self.kind).mean())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy}
