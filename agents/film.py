"""A FiLM set-conditioned learner: a set encoder reads the support set once and FiLM-modulates every hidden layer of
the backbone for the task; no gradient steps at test time.

Requeima, Gordon, Bronskill, Nowozin & Turner, "Fast and Flexible Multi-Task Classification Using Conditional
Neural Adaptive Processes" (CNAPs), NeurIPS 2019, in a simple form that trains on a CPU. FiLM layers: Perez et al.,
"FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018.

Spec. The task representation is a permutation-invariant function of the support set (Deep Sets, Zaheer et al.
2017): ``z = ρ(mean_i φ(s_i))``, with ``φ`` a per-example encoder and ``ρ`` an MLP ``[encoder_width] ->
context_dim``. Classification (CNAPs' task encoder): ``s_i = x_i``, the support images only, pooled over the whole
support set (not per class), ``φ`` a Conv-4 of ``encoder_width`` channels; regression: ``s_i = (x_i, y_i)``, ``φ``
an MLP ``[encoder_width, encoder_width]``. The backbone is the source's standard one (Conv-4 of 64 channels; MLP
40-40) with a FiLM layer at each hidden layer (:class:`metarl.core.networks.FiLMConditioned`: after each block's
batch norm, before its ReLU; after each hidden linear layer of the MLP, before its activation):
``h ↦ (1 + γ_l) ⊙ h + β_l`` with ``(γ_l, β_l) = G_l z`` — one bias-free linear generator per layer, so a zero
representation (or zeroed generators) leaves the plain backbone, and the modulation starts near the identity.
CNAPs' generators are small MLPs of ``z``; here the nonlinearity sits in ``ρ`` before one shared ``z`` (the one FiLM
mechanism of the core), and there is no autoregressive (layer-by-layer) variant and no L2 penalty on ``(γ, β)``.

Heads. Classification, ``head="distance"`` (the default, the simple form): the ProtoNet head on the adapted features
``f_z``: ``logits_k(x) = −‖f_z(x) − μ_k‖²`` with ``μ_k`` the mean adapted feature of class k's support images. It
has no parameters, is the linear head ``w_k = 2μ_k, b_k = −‖μ_k‖²`` (up to a per-query constant), and trains fast,
which is why it is the default on a CPU budget. ``head="linear"``: CNAPs' adapted linear classifier, ``(w_k, b_k) =
ψ(μ_k)`` with ``ψ`` an MLP ``[dim] -> dim + 1`` (the paper's classifier adaptation network), ``logits_k(x) =
w_k·f_z(x) + b_k``. Regression: with ``gaussian`` (the default) the MLP outputs a mean and a standard deviation
``σ = 0.01 + softplus(·)`` per output, :meth:`FiLMLearner.predictive` is that Normal (batch shape ``[tasks, queries,
out_dim]``) and training minimises its negative log-likelihood; without, a point predictor trained by MSE.

Training: episodic and end to end (set encoder, generators, backbone, head) by the query loss with Adam, like
Prototypical Networks; the whole meta-batch in one pass (the set encoder runs on ``[tasks, n, ...]``, each task's
``z`` is repeated over its own examples). Batch norm keeps running statistics (as the metric learners here), so
in evaluation a prediction does not depend on which other tasks share the batch.

figures: experiments/RESULTS.md, sections "Few-shot regression: sinusoid" and the Omniglot tables (FiLM rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from metarl.core.calibration import task_nll
from metarl.core.config import check_choice, check_fields, check_int
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig
from metarl.core.networks import MLP, Conv4, FiLMConditioned, standard_backbone

from .protonet import class_means, embed_tasks

MIN_STD = 0.01
"""floor of the predictive standard deviation (regression with ``gaussian``): the sinusoid targets are noiseless"""


@dataclass
class FiLMConfig(FewShotLearnerConfig):
    """Settings of the FiLM set-conditioned learner (the backbone is the source's standard one)."""

    encoder_width: int = 64
    """width of the set encoder: channels of its Conv-4 (images) or hidden units of its MLP (vectors), and of ρ"""
    context_dim: int = 64
    """size of the task representation z that the FiLM generators read"""
    head: str = "distance"
    """classification head on the adapted features: distance (ProtoNet's −squared distance to the class means) or
    linear (CNAPs' linear classifier generated from each class mean)"""
    gaussian: bool = True
    """regression: predict a Normal (mean and standard deviation, trained by NLL; NLL and 95%-interval coverage are
    reported) instead of a point (trained by MSE)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, ("encoder_width", "context_dim"), check_int, minimum=1)
        check_choice(self.head, "head", ["distance", "linear"])


class FiLMLearner(FewShotLearner):
    """Adapt = encode the support set into ``z`` (and, for classification, the class means of the support features
    under ``z``); predict = the FiLM-conditioned backbone on the queries, then the head."""

    name = "film"

    @classmethod
    def from_source(cls, source, config: FiLMConfig, *, outputs: int | None) -> FiLMLearner:
        if source.kind == "regression":
            width = outputs * (2 if config.gaussian else 1)
            backbone, _ = standard_backbone(source.input_shape, width, running_stats=False)
        else:
            backbone, _ = standard_backbone(source.input_shape, None, running_stats=True)
        return cls(backbone, source.kind, tuple(source.input_shape), outputs, config)

    def __init__(self, backbone: nn.Module, kind: str, input_shape: tuple[int, ...], output_dim: int,
                 config: FiLMConfig | None = None) -> None:
        super().__init__(kind)
        self.config = config = config or FiLMConfig()
        self.output_dim = output_dim
        self.probabilistic = kind == "regression" and config.gaussian
        width = config.encoder_width
        # ALGO LOGIC: the set encoder φ (per example) and ρ (after mean pooling)
        if len(input_shape) == 3:
            self.encoder = Conv4(in_channels=input_shape[0], hidden=width, running_stats=True,
                                 image_size=input_shape[1])
            encoded = self.encoder.embedding_dim
        elif len(input_shape) == 1:
            if kind != "regression":
                raise ValueError("film classifies images (a classification source of vectors has no set encoder)")
            self.encoder = MLP(input_shape[0] + output_dim, [width, width], width)
            encoded = width
        else:
            raise ValueError(f"film needs vector or image inputs, got shape {input_shape}")
        self.rho = MLP(encoded, [width], config.context_dim)
        self.network = FiLMConditioned(backbone, config.context_dim)
        self.linear_head = kind == "classification" and config.head == "linear"
        if self.linear_head:  # CNAPs' classifier adaptation network: a class mean -> (w_k, b_k)
            dim = backbone.embedding_dim
            self.classifier = MLP(dim, [dim], dim + 1)

    def task_representation(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """``z``: ``[tasks, context_dim]``, ρ of the mean per-example encoding of each task's support set."""
        if self.kind == "regression":
            encoded = self.encoder(torch.cat([support_x, support_y], dim=-1))  # [tasks, n, width]
        else:
            encoded = embed_tasks(self.encoder, support_x)
        return self.rho(encoded.mean(dim=1))

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The backbone on ``[tasks, n, ...]`` inputs under each task's FiLM parameters (from ``z``: ``[tasks, d]``)."""
        tasks, n = x.shape[:2]
        out = self.network(x.flatten(0, 1), z.repeat_interleave(n, dim=0))
        return out.view(tasks, n, -1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None):
        z = self.task_representation(support_x, support_y)
        if self.kind == "regression":
            return z
        ways = int(support_y.max()) + 1
        means = class_means(self.features(support_x, z), support_y, ways)  # [tasks, ways, dim]
        if not self.linear_head:
            return z, means
        generated = self.classifier(means)
        return z, generated[..., :-1], generated[..., -1]

    def _outputs(self, z: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Regression: the predictive mean and (with ``gaussian``) standard deviation, ``[tasks, queries, out]``."""
        out = self.features(query_x, z)
        if not self.probabilistic:
            return out, None
        mean, raw = out.split(self.output_dim, dim=-1)
        return mean, MIN_STD + F.softplus(raw)

    def predict(self, state, query_x: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return self._outputs(state, query_x)[0]
        queries = self.features(query_x, state[0])  # [tasks, q, dim]
        if self.linear_head:
            _, weights, biases = state
            return queries @ weights.transpose(1, 2) + biases.unsqueeze(1)
        return -torch.cdist(queries, state[1]).pow(2)

    def predictive(self, state, query_x: torch.Tensor):
        if self.kind == "classification" or not self.probabilistic:
            return super().predictive(state, query_x)
        mean, std = self._outputs(state, query_x)
        return Normal(mean, std, validate_args=False)

    def meta_loss(self, batch):
        if not self.probabilistic:
            return super().meta_loss(batch)
        dist = self.predictive(self.adapt(batch.support_x, batch.support_y), batch.query_x)
        loss = task_nll(dist, batch.query_y).mean()
        mse = float(((dist.mean.detach() - batch.query_y) ** 2).mean())
        return loss, {"loss": float(loss.detach()), "mse": mse}
