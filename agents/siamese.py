"""Siamese networks: learn a verification metric (same character or not?), classify by the nearest support image.

Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image Recognition", ICML Deep Learning
Workshop 2015.

Spec: twin embeddings h = f_φ(x) with shared weights; the probability that two images show the same class is
P(same | x1, x2) = σ(Σ_j α_j |h1_j − h2_j| + b) (the paper's weighted L1 distance of the twin features), trained by
binary cross-entropy on verification pairs. Here the pairs come from each training episode: its support and query
images together; every image is the first member of one same-class pair (partner: another image of its class) and
one different-class pair (partner: an image of another class of the episode), so the pairs are exactly balanced and
never pair an image with itself. The partners are drawn from a ``torch.Generator`` seeded from the config's seed
and the batch's contents (a checksum of its bytes): the same batch gives the same pairs, and a resumed run the same
numbers (no global random state).

At test (one-shot classification, the paper's section 4.3) a query goes to the support class of highest
verification score: with one shot the nearest neighbour in the learned metric. With K shots a class's score is the
MEAN of the verification log-odds of the query against the class's support images (choice made here; the paper
evaluates one shot only). ``predict`` returns these per-class log-odds (argmax = the decision; softmax = the
class probabilities the one-shot runs and ensembles average).

Differences from the paper: the twin embedding is the standard Conv-4 of the other metric learners (64-d for 28x28
drawings, batch norm with running statistics) instead of the paper's large convolutional net with a 4096-unit
sigmoid layer on 105x105 drawings, so it trains within a CPU budget and compares with ProtoNet and Matching
Networks on the same backbone; Adam instead of the paper's SGD with per-layer learning rates and momentum
schedules; pairs from episodes instead of the paper's 30k–150k pre-drawn pairs with affine distortions (the task
source's distortions apply). Figures: experiments/RESULTS.md, Omniglot one-shot runs and the speed table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.core.batch import EpisodeBatch
from metarl.core.calibration import normalised_sigmoid_categorical
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig, task_scores
from metarl.core.seeding import derive_seed

from .protonet import embed_tasks


@dataclass
class SiameseConfig(FewShotLearnerConfig):
    """Settings of Siamese networks (the embedding is the source's standard backbone; the training pairs come
    from the source's episodes: ``train_ways``, ``shots`` and ``query_shots`` set how many)."""


def batch_checksum(*tensors: torch.Tensor) -> int:
    """A 63-bit integer from the bytes of ``tensors`` (the same batch gives the same number)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def verification_pairs(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced pairs within each task of ``labels`` ``[tasks, n]``: ``(partners [tasks, 2n], same [tasks, 2n])``
    where pair ``p`` is (image ``p mod n``, image ``partners[p]``); the first ``n`` pairs are same-class (label 1),
    the last ``n`` different-class (label 0). Every class needs two images; every task two classes."""
    tasks, n = labels.shape
    same_class = labels[:, :, None] == labels[:, None, :]  # [tasks, n, n]
    itself = torch.eye(n, dtype=torch.bool, device=labels.device)
    choices = []
    for allowed, what in ((same_class & ~itself, "another image of its class"), (~same_class, "an image of "
                                                                                               "another class")):
        if not bool(allowed.any(dim=-1).all()):
            raise ValueError(f"siamese verification pairs need, for every image of an episode, {what}")
        weights = allowed.flatten(0, 1).to(torch.float32).cpu()
        choices.append(torch.multinomial(weights, 1, generator=generator).view(tasks, n).to(labels.device))
    partners = torch.cat(choices, dim=1)
    same = torch.cat([torch.ones(tasks, n), torch.zeros(tasks, n)], dim=1).to(labels.device)
    return partners, same


class SiameseNetwork(FewShotLearner):
    """Adapt = embed and keep the support set; predict = mean verification log-odds per class."""

    name = "siamese"
    task_kinds = ("classification",)

    @classmethod
    def from_source(cls, source, config, *, outputs: int | None) -> SiameseNetwork:
        if source.kind == "classification" and getattr(source, "ways", 2) < 2:
            raise ValueError(f"siamese learns from different-class pairs: episodes need ways >= 2, got {source.ways}")
        return super().from_source(source, config, outputs=outputs)

    def __init__(self, embedding: nn.Module, kind: str = "classification",
                 config: SiameseConfig | None = None) -> None:
        if kind != "classification":
            raise ValueError("Siamese networks need a classification task source (e.g. omniglot)")
        super().__init__(kind)
        self.config = config or SiameseConfig()
        self.embedding = embedding
        dim = getattr(embedding, "embedding_dim", None) or embedding[-1].out_features
        self.verification = nn.Linear(dim, 1)  # α (weights) and b (bias) of the weighted L1 distance

    def verification_logits(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """log-odds of P(same) for embeddings broadcast against each other: Σ_j α_j |h1_j − h2_j| + b."""
        return self.verification((first - second).abs()).squeeze(-1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None):
        ways = int(support_y.max()) + 1
        return embed_tasks(self.embedding, support_x), F.one_hot(support_y, ways).to(torch.float32)

    def predict(self, state, query_x: torch.Tensor) -> torch.Tensor:
        return self._class_log_odds(state, embed_tasks(self.embedding, query_x))

    def _class_log_odds(self, state, queries: torch.Tensor) -> torch.Tensor:
        keys, labels = state  # [tasks, s, dim], [tasks, s, ways]
        logits = self.verification_logits(queries[:, :, None], keys[:, None])  # [tasks, q, s]
        labels = labels.to(logits.dtype)
        return (logits @ labels) / labels.sum(dim=1, keepdim=True).clamp_min(1.0)  # mean over the class's shots

    def predictive(self, state, query_x: torch.Tensor) -> torch.distributions.Categorical:
        """Class probabilities: the per-class sigmoid scores normalised over the classes."""
        return normalised_sigmoid_categorical(self.predict(state, query_x))

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        # ALGO LOGIC: balanced verification pairs from the episode's images, binary cross-entropy on P(same)
        images = torch.cat([batch.support_x, batch.query_x], dim=1)
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        embeddings = embed_tasks(self.embedding, images)  # [tasks, n, dim], one forward for all twins
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "pairs",
                                                              batch_checksum(images, labels)))
        partners, same = verification_pairs(labels, generator)
        n = labels.shape[1]
        first = embeddings.repeat(1, 2, 1)
        second = torch.gather(embeddings, 1, partners[..., None].expand(-1, -1, embeddings.shape[-1]))
        loss = F.binary_cross_entropy_with_logits(self.verification_logits(first, second), same)
        with torch.no_grad():  # the episode's classification accuracy, from the same embeddings
            s = batch.support_y.shape[1]
            state = (embeddings[:, :s], F.one_hot(batch.support_y, int(batch.support_y.max()) + 1).float())
            accuracy = float(task_scores(self._class_log_odds(state, embeddings[:, s:n]), batch.query_y,
                                         self.kind).mean())
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy}
