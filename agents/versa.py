"""VERSA: an amortised Gaussian posterior over a task's output layer, predicting by the Bayesian model average.

Gordon, Bronskill, Bauer, Nowozin & Turner, "Meta-Learning Probabilistic Inference for Prediction", ICLR 2019
(ML-PIP and VERSA); in the family of Garnelo et al., "Neural Processes", ICML 2018 workshop (a permutation-invariant
encoder of the context set, mean pooling, a Gaussian over what is task-specific).

Spec. A shared feature map φ_θ (the source's backbone: an MLP 1-64-64 for vectors, the Conv-4 for images; or, with
``feature_map="identity"``, the input itself) gives every input the features φ̃(x) = [φ_θ(x), 1]. The task-specific
parameters ψ are the weights of a linear output layer on φ̃: one weight row ψ_o ∈ R^{d+1} per output dimension
(regression) or per class (classification), so the output is f_o(x) = ψ_o · φ̃(x). An amortisation network maps the
support set to a Gaussian q(ψ | D), permutation-invariantly:

* regression: every support pair is encoded, e_i = g([φ_θ(x_i), y_i]) (an MLP), the encodings are mean-pooled,
  r = mean_i e_i, and a head (an MLP) maps r to the mean and scale of every ψ_o;
* classification (VERSA's context-independent approximation): e_i = g(φ_θ(x_i)) is mean-pooled per class,
  r_k = mean_{i: y_i = k} e_i, and the head maps r_k to the Gaussian of class k's weights ψ_k alone, so any number
  of ways works at training and test time. With ``prototype_mean`` (the default) the head's mean is a residual on
  [c_k, −‖c_k‖²/2], c_k = mean_{i: y_i = k} φ_θ(x_i): at a zero residual the logits are Prototypical Networks'
  (Snell et al. 2017, section 2.4: ProtoNet as a linear classifier), so training starts from a classifier that works
  (without it a random head's weights are not aligned with their class, and training starts at chance).

With ``context_size`` (the default) the head reads [r, log n], n the number of points pooled: the mean alone does
not say how many points it summarises, while an exact posterior narrows with n (its sufficient statistics are sums),
so without it the posterior after one point is as narrow as after five (the papers pool by the mean alone).

``covariance="diagonal"`` (VERSA's mean-field) gives each weight its own standard deviation; ``"full"`` gives each
row ψ_o a full covariance through a Cholesky factor (the exact posterior of a linear-Gaussian model is correlated:
the conjugate check in the tests uses it). Observation model: regression y_o ~ N(f_o(x), σ_o²) with σ learned
(homoscedastic, one per output) or fixed by ``noise_std``; classification softmax over the classes' f_k(x).

Training (ML-PIP, end to end, all tasks of a meta-batch in one batched computation): maximise the predictive
log-likelihood of every query target under L = ``train_samples`` reparameterised draws ψ_l ~ q(ψ | D),
log (1/L) Σ_l p(y | x, ψ_l) (a logsumexp), averaged over queries and tasks; no KL term and no prior (the predictive
itself is what is learned). The log of a mean of L draws is biased low, and more so for a wider q, so a small L
shrinks the posterior; ``objective="exact"`` (regression; ``"auto"``, the default, picks it there) uses the closed
form of the L → ∞ limit instead, log N(y; μ·φ̃, φ̃ᵀΣφ̃ + σ²), as f is linear in ψ. ``min_train_shots``
(regression) trains, as neural processes do, on context sets of random size: each training task keeps its first n
support points, n uniform in [min_train_shots, shots], so a model trained on K shots has also seen what 1 or 2
points say.

Prediction: the model average over S = ``eval_samples`` draws, a mixture of S Normals per query and output
(regression) or the mean of the S softmax vectors (classification). Draws come from generators seeded by the
config's seed and a checksum of the support set (same data, same draws; never torch's global generator), so
training, resume and evaluation are reproducible.

figures: experiments/RESULTS.md, sections "Sinusoid: Bayesian learners" and "Omniglot: accuracy, NLL and ECE".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal

from metarl.core.batch import EpisodeBatch
from metarl.core.config import ConfigError, check_choice, check_int, check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig
from metarl.core.networks import MLP
from metarl.core.seeding import derive_seed

from .protonet import class_means, embed_tasks

MIN_SCALE = 1e-4
"""floor of every posterior standard deviation (and Cholesky diagonal) and of the learned observation noise"""


@dataclass
class VersaConfig(FewShotLearnerConfig):
    """Settings of VERSA (defaults: mean-field posterior, learned features and noise, the paper's L = 10)."""

    hidden: int = 128
    """width of the amortisation network (the per-example encoder and the posterior head)"""
    train_samples: int = 10
    """posterior draws L per task in the training objective log (1/L) Σ_l p(y | x, ψ_l)"""
    eval_samples: int = 100
    """posterior draws S in the predictive model average (evaluation and plots)"""
    covariance: str = "diagonal"
    """posterior covariance of each output row's weights: diagonal (VERSA's mean-field) or full (Cholesky)"""
    feature_map: str = "learned"
    """features under the linear output layer: learned (the source's backbone) or identity (vector inputs only: a
    Bayesian linear model on x itself)"""
    noise_std: float | None = None
    """regression observation noise σ, fixed; None: learned (one per output dimension)"""
    objective: str = "auto"
    """training objective: sampled (VERSA's log-mean over L draws), exact (regression only: the predictive
    log-likelihood in closed form, log N(y; μ·φ̃, φ̃ᵀΣφ̃ + σ²), the L → ∞ limit, without its downward bias) or auto
    (exact for regression, sampled for classification)"""
    context_size: bool = True
    """the head also reads log n, the number of support points pooled (per class for classification), which their
    mean alone loses; False: the mean alone (VERSA and neural processes as published)"""
    prototype_mean: bool = True
    """classification: the head gives the weights' mean as a residual on ProtoNet's linear classifier of the class,
    [c_k, −‖c_k‖²/2] with c_k the mean support feature, so training starts from a working classifier; False: the
    head alone (VERSA as published)"""
    min_train_shots: int | None = None
    """regression: train on random context sizes, each task keeping its first n support points with n uniform in
    [min_train_shots, shots]; None: always all"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.hidden, "hidden", minimum=1)
        check_int(self.train_samples, "train_samples", minimum=1)
        check_int(self.eval_samples, "eval_samples", minimum=1)
        check_choice(self.covariance, "covariance", ["diagonal", "full"])
        check_choice(self.feature_map, "feature_map", ["learned", "identity"])
        check_choice(self.objective, "objective", ["auto", "sampled", "exact"])
        check_positive(self.noise_std, "noise_std", optional=True)
        check_int(self.min_train_shots, "min_train_shots", minimum=1, optional=True)


class Posterior(NamedTuple):
    """q(ψ | D) of every task: ``mean`` ``[tasks, rows, d + 1]``; ``scale`` the standard deviations (same shape,
    diagonal) or Cholesky factors ``[tasks, rows, d + 1, d + 1]`` (full); ``seed`` of the draws (from the data)."""

    mean: torch.Tensor
    scale: torch.Tensor
    seed: int


def data_checksum(*tensors: torch.Tensor) -> int:
    """An integer that depends on the values of ``tensors`` (rounded): seeds draws that follow the data."""
    total = 0
    for i, t in enumerate(tensors):
        total += (i + 1) * int(torch.round(t.detach().double().sum() * 1e4))
    return total % 2**61


class Versa(FewShotLearner):
    """Adapt = one pass of the amortisation network (q(ψ | D)); predict = the model average over draws of ψ."""

    name = "versa"
    probabilistic = True

    @classmethod
    def from_source(cls, source: Any, config: VersaConfig, *, outputs: int | None) -> Versa:
        from metarl.core.networks import standard_backbone

        shape = tuple(source.input_shape)
        if config.feature_map == "identity":
            if len(shape) != 1:
                raise ConfigError(f"feature_map identity needs vector inputs, the source gives {shape}")
            features, feature_dim = nn.Identity(), shape[0]
        else:
            features, feature_dim = standard_backbone(shape, None, running_stats=True)
        return cls(features, feature_dim, source.kind, outputs if source.kind == "regression" else 1, config)

    def __init__(self, features: nn.Module, feature_dim: int, kind: str, output_dim: int = 1,
                 config: VersaConfig | None = None) -> None:
        super().__init__(kind)
        self.config = config or VersaConfig()
        if kind == "classification" and self.config.min_train_shots is not None:
            raise ConfigError("min_train_shots applies to regression sources only (classification keeps its shots)")
        if kind == "classification" and self.config.objective == "exact":
            raise ConfigError("objective exact needs a regression source (a softmax has no closed-form predictive): "
                              "use sampled")
        hidden = self.config.hidden
        self.features = features
        self.output_dim = output_dim  # regression: outputs per query; classification: 1 (a row per class)
        self.rows = output_dim if kind == "regression" else 1
        self.width = feature_dim + 1  # d features and a bias: the size of one row ψ_o
        self.full = self.config.covariance == "full"
        self.exact = self.config.objective == "exact" or (self.config.objective == "auto" and kind == "regression")
        scale_size = self.width * (self.width + 1) // 2 if self.full else self.width
        encoder_in = feature_dim + (output_dim if kind == "regression" else 0)
        self.encoder = MLP(encoder_in, [hidden], hidden)
        self.head = MLP(hidden + int(self.config.context_size), [hidden], self.rows * (self.width + scale_size))
        if kind == "regression":
            if self.config.noise_std is None:  # softplus(raw) = 1 at the start
                self.raw_noise = nn.Parameter(torch.full((output_dim,), math.log(math.e - 1)))
            else:
                self.register_buffer("fixed_noise", torch.full((output_dim,), float(self.config.noise_std)))

    # ------------------------------------------------------------------------------------------------------------
    # the amortisation network: support set -> q(ψ | D)

    def featurise(self, x: torch.Tensor) -> torch.Tensor:
        """``[tasks, n, d + 1]``: the features φ̃(x) = [φ_θ(x), 1] of every input."""
        phi = embed_tasks(self.features, x)
        return torch.cat([phi, torch.ones_like(phi[..., :1])], dim=-1)

    def posterior(self, support_x: torch.Tensor, support_y: torch.Tensor,
                  mask: torch.Tensor | None = None) -> Posterior:
        """q(ψ | D) from the support set; ``mask`` ``[tasks, n]`` (regression) keeps only some support points."""
        phi = embed_tasks(self.features, support_x)
        if self.kind == "regression":
            encoded = self.encoder(torch.cat([phi, support_y], dim=-1))  # [tasks, n, hidden]
            weights = torch.ones(encoded.shape[:2], dtype=encoded.dtype, device=encoded.device) if mask is None \
                else mask.to(encoded.dtype)
            counts = weights.sum(1).view(-1, 1, 1)  # [tasks, 1, 1]
            pooled = (weights.unsqueeze(-1) * encoded).sum(1, keepdim=True) / counts
        else:  # VERSA's context-independent approximation: each class's weights from its own pooled encodings
            ways = int(support_y.max()) + 1
            pooled = class_means(self.encoder(phi), support_y, ways)  # [tasks, ways, hidden]
            counts = F.one_hot(support_y, ways).sum(1).unsqueeze(-1).to(pooled.dtype)  # [tasks, ways, 1]
        if self.config.context_size:
            pooled = torch.cat([pooled, counts.clamp_min(1).log()], dim=-1)
        out = self.head(pooled)  # [tasks, groups, rows * (width + scale)]
        tasks, groups = out.shape[:2]
        out = out.view(tasks, groups * self.rows, -1)
        mean, raw = out[..., :self.width], out[..., self.width:]
        if self.kind == "classification" and self.config.prototype_mean:  # logits φ·c_k − ‖c_k‖²/2 at zero residual
            prototypes = class_means(phi, support_y, ways)
            mean = mean + torch.cat([prototypes, -0.5 * prototypes.pow(2).sum(-1, keepdim=True)], dim=-1)
        if self.full:
            rows, cols = torch.tril_indices(self.width, self.width, device=out.device)
            scale = out.new_zeros(tasks, groups * self.rows, self.width, self.width)
            scale[..., rows, cols] = raw
            diagonal = F.softplus(scale.diagonal(dim1=-2, dim2=-1)) + MIN_SCALE
            scale = scale.tril(-1) + torch.diag_embed(diagonal)
        else:
            scale = F.softplus(raw) + MIN_SCALE
        return Posterior(mean, scale, derive_seed(self.config.seed, "posterior", data_checksum(support_x, support_y)))

    def sample_parameters(self, posterior: Posterior, samples: int) -> torch.Tensor:
        """``[samples, tasks, rows, d + 1]`` reparameterised draws ψ = μ + L ε (diagonal: μ + σ ⊙ ε)."""
        generator = torch.Generator(device=posterior.mean.device).manual_seed(posterior.seed)
        noise = torch.randn((samples, *posterior.mean.shape), generator=generator, device=posterior.mean.device,
                            dtype=posterior.mean.dtype)
        if self.full:
            return posterior.mean + (posterior.scale @ noise.unsqueeze(-1)).squeeze(-1)
        return posterior.mean + posterior.scale * noise

    def sampled_outputs(self, posterior: Posterior, query_x: torch.Tensor, samples: int) -> torch.Tensor:
        """``[samples, tasks, queries, rows]``: f(x) = ψ_l · φ̃(x) for every draw, query and output row (class)."""
        return torch.einsum("ltkp,tqp->ltqk", self.sample_parameters(posterior, samples), self.featurise(query_x))

    def output_moments(self, posterior: Posterior, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of f(x) = ψ · φ̃(x) under q, ``[tasks, queries, rows]`` each: μ·φ̃ and φ̃ᵀΣφ̃ (the
        regression predictive is N(μ·φ̃, φ̃ᵀΣφ̃ + σ²) in closed form, since f is linear in ψ)."""
        phi = self.featurise(query_x)
        mean = torch.einsum("tkp,tqp->tqk", posterior.mean, phi)
        if self.full:  # φ̃ᵀ L Lᵀ φ̃ = ‖Lᵀ φ̃‖²
            return mean, torch.einsum("tkpr,tqp->tqkr", posterior.scale, phi).pow(2).sum(-1)
        return mean, torch.einsum("tkp,tqp->tqk", posterior.scale.pow(2), phi.pow(2))

    @property
    def noise(self) -> torch.Tensor:
        """The regression observation noise σ, ``[output_dim]``."""
        if self.config.noise_std is not None:
            return self.fixed_noise
        return F.softplus(self.raw_noise) + MIN_SCALE

    # ------------------------------------------------------------------------------------------------------------
    # the few-shot contract

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> Posterior:
        return self.posterior(support_x, support_y)

    def predictive(self, state: Posterior, query_x: torch.Tensor, samples: int | None = None) -> Distribution:
        """The model average over ``samples`` (default ``eval_samples``) draws: a mixture of Normals, batch
        ``[tasks, queries, output_dim]`` (regression), or the mean class probabilities, ``[tasks, queries]``."""
        outputs = self.sampled_outputs(state, query_x, samples or self.config.eval_samples)
        if self.kind == "classification":
            return Categorical(probs=outputs.softmax(dim=-1).mean(dim=0), validate_args=False)
        components = Normal(outputs.permute(1, 2, 3, 0), self.noise.view(-1, 1), validate_args=False)
        weights = Categorical(logits=outputs.new_zeros(components.batch_shape), validate_args=False)
        return MixtureSameFamily(weights, components, validate_args=False)

    def predict(self, state: Posterior, query_x: torch.Tensor) -> torch.Tensor:
        """Regression: the predictive mean; classification: the log of the averaged class probabilities."""
        dist = self.predictive(state, query_x)
        return dist.mean if self.kind == "regression" else dist.probs.clamp_min(1e-12).log()

    def log_predictive(self, outputs: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """``[tasks, queries]``: log (1/L) Σ_l p(y | x, ψ_l) of every query (over all its outputs jointly), from the
        ``[L, tasks, queries, rows]`` outputs of L draws."""
        samples = outputs.shape[0]
        if self.kind == "regression":
            log_p = Normal(outputs, self.noise, validate_args=False).log_prob(query_y).sum(-1)
        else:
            log_p = outputs.log_softmax(-1).gather(-1, query_y.expand(samples, *query_y.shape).unsqueeze(-1))[..., 0]
        return torch.logsumexp(log_p, dim=0) - math.log(samples)

    def training_mask(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor | None:
        """NP-style random context sizes (``min_train_shots``): ``[tasks, n]``, each task its first n points."""
        low = self.config.min_train_shots
        if low is None or self.kind != "regression":
            return None
        tasks, shots = support_y.shape[:2]
        if low > shots:
            raise ValueError(f"min_train_shots={low} exceeds the {shots} support points of training tasks")
        seed = derive_seed(self.config.seed, "context-size", data_checksum(support_x, support_y))
        sizes = torch.randint(low, shots + 1, (tasks, 1), generator=torch.Generator().manual_seed(seed))
        return torch.arange(shots).unsqueeze(0).lt(sizes).to(support_y.device)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, dict[str, float]]:
        # ALGO LOGIC: q(ψ | support) in one pass, L draws, the query's predictive log-likelihood (ML-PIP)
        posterior = self.posterior(batch.support_x, batch.support_y, self.training_mask(batch.support_x,
                                                                                           batch.support_y))
        if self.exact:
            mean, variance = self.output_moments(posterior, batch.query_x)
            std = (variance + self.noise.pow(2)).sqrt()
            loss = -Normal(mean, std, validate_args=False).log_prob(batch.query_y).sum(-1).mean()
        else:
            outputs = self.sampled_outputs(posterior, batch.query_x, self.config.train_samples)
            loss = -self.log_predictive(outputs, batch.query_y).mean()
        scale = posterior.scale.diagonal(dim1=-2, dim2=-1) if self.full else posterior.scale
        metrics = {"loss": float(loss.detach()), "posterior_std": float(scale.detach().mean())}
        if self.kind == "regression":
            metrics["noise_std"] = float(self.noise.detach().mean())
        else:
            probs = outputs.detach().softmax(-1).mean(0)
            metrics["accuracy"] = float((probs.argmax(-1) == batch.query_y).float().mean())
        return loss, metrics
