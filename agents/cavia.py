"""CAVIA: fast context adaptation via meta-learning, for few-shot supervised learning.

Zintgraf, Shiarlis, Kurin, Hofmann & Whiteson, "Fast Context Adaptation via Meta-Learning", ICML 2019.

Spec: the parameters are split in two. Context parameters φ, a vector of ``context_dim`` entries that the network
reads beside its input, are adapted per task; the network's weights θ are shared by all tasks and meta-learned.
For each task of a meta-batch the inner loop starts from φ = 0 and takes ``inner_steps`` SGD steps of size
``inner_lr`` on the support loss wrt φ only, φ_i ← φ_i − α ∇_φ L_support_i(θ, φ_i); θ does not move in the inner
loop. The outer loop minimises the mean query loss Σ_i L_query_i(θ, φ_i) wrt θ with Adam, differentiating through
the inner steps (second order; ``first_order`` drops the second-order terms). φ's starting value is not
meta-learned: it is zero for every task, at training and at test.

How φ conditions the network (``conditioning``; "auto": the paper's choice for the input type):

* ``concat`` (vector inputs, the paper's regression): the MLP reads ``[x, φ]``, φ concatenated to every input
  (:func:`metarl.core.networks.concat_context`). Refused for images: appended to the embedding before the shared
  linear head φ could only shift each class's logit for the whole task (it cannot say which support image is which
  class), and appended to the pixels its per-channel shift is removed by the first batch norm.
* ``film`` (images, the paper's classification): the feature maps of Conv-4 block ``film_block`` (the third by
  default, as in the paper) are modulated after their batch norm, before ReLU and pooling, h ↦ (1 + γ) ⊙ h + β per
  channel with (γ, β) a linear map of φ (FiLM, Perez et al. 2018: :class:`metarl.core.networks.FiLM`; a zero φ is
  the plain layer, so every task starts from the unmodulated network; the paper's γ = Wφ + b is the same up to
  that parametrisation). For vector inputs the first hidden layer is modulated the same way.

Settings, from the authors' released configuration (the paper's section 5): sinusoid, an MLP 40-40 ReLU with 5
context parameters at the input, α = 1 (CAVIA's inner step moves only φ, so it takes a much larger step than MAML's
0.01), one inner step, 25 tasks per meta-batch, Adam 1e-3. Image classification (Mini-ImageNet in the paper), 100
context parameters FiLM-ing the third of four conv layers, α = 1, two inner steps at training and at test
(``--inner-steps 2``), 16 tasks per meta-batch. ``context_dim`` None takes 5 for vector inputs and 100 for images.

Mechanism: CAVIA is MAML (``agents/maml.py``) whose inner loop adapts the parameter ``context`` only
(:meth:`CAVIA.adapt_keys`), the ANIL mechanism with another subset: the context is a parameter of the model, zero
and frozen (``requires_grad=False``, so the outer optimiser never moves it), which the core inner loop
(:func:`metarl.core.adaptation.adapt`) expands to one fresh copy per task. All tasks of a meta-batch in one batched
computation: batched matrix products for the concatenating MLP, ``vmap`` otherwise. Like MAML, a classifier has a
fixed ``ways``-class output layer (``fixed_ways``). The meta-RL counterpart is ``cavia-trpo`` (MAML-TRPO adapting
a policy's context only, ``agents/maml_trpo.py``).

figures: experiments/RESULTS.md, section "CAVIA".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metarl.core.adaptation import Params
from metarl.core.config import check_choice, check_int
from metarl.core.networks import MLP, Conv4, FiLM, concat_context

from .maml import MAML, MAMLConfig

CONDITIONINGS = ("auto", "concat", "film")
DEFAULT_CONTEXT_DIMS = {"vector": 5, "image": 100}
"""``context_dim`` None: the paper's number of context parameters per input type (sinusoid; Mini-ImageNet)."""


@dataclass
class CAVIAConfig(MAMLConfig):
    """Settings of CAVIA (defaults: the authors' sinusoid settings; see the module docstring for images)."""

    inner_lr: float = 1.0
    """step size α of the inner SGD steps on the context"""
    context_dim: int | None = None
    """context parameters φ adapted per task; None: 5 for vector inputs, 100 for images (the paper's)"""
    conditioning: str = "auto"
    """how φ conditions the network: "concat" (appended to the input; vector inputs only), "film" (scales and shifts
    of a layer's features), "auto" (concat for vectors, film for images, as the paper)"""
    film_block: int = 3
    """with film on images: the Conv-4 block (1-4) whose feature maps φ modulates (the paper: the third)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.context_dim, "context_dim", minimum=1, optional=True)
        check_choice(self.conditioning, "conditioning", CONDITIONINGS)
        check_int(self.film_block, "film_block", minimum=1, maximum=4)


class ContextMLP(nn.Module):
    """An :class:`~metarl.core.networks.MLP` conditioned on a context ``φ`` (the parameter ``context``, zero and
    frozen): ``concat`` reads ``[x, φ]``; ``film`` modulates the first hidden layer's pre-activations by φ."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, context_dim: int,
                 conditioning: str) -> None:
        super().__init__()
        self.net = MLP(in_features + (context_dim if conditioning == "concat" else 0), hidden, out_features)
        self.film = FiLM(context_dim, hidden[0]) if conditioning == "film" else None
        self.context = nn.Parameter(torch.zeros(context_dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.film is None:
            return self.net(concat_context(x, self.context))
        first, *rest = self.net
        h = self.film(first(x), self.context)
        for layer in rest:
            h = layer(h)
        return h

    def batched(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``concat`` for every task at once: ``x`` ``[tasks, n, in]``, ``params["context"]`` ``[tasks, dim]``."""
        net = {name.removeprefix("net."): value for name, value in params.items() if name.startswith("net.")}
        return self.net.batched(net, concat_context(x, params["context"]))


class FiLMConv4(nn.Module):
    """The Conv-4 with a linear head whose block ``film_block`` (1-4) has its feature maps modulated by a context
    ``φ`` (the parameter ``context``, zero and frozen) after their batch norm, before ReLU and pooling."""

    def __init__(self, input_shape: Sequence[int], out_features: int, context_dim: int, film_block: int = 3,
                 hidden: int = 64) -> None:
        super().__init__()
        channels, size = int(input_shape[0]), int(input_shape[1])
        self.conv = Conv4(in_channels=channels, hidden=hidden, out_features=None, image_size=size)
        self.film = FiLM(context_dim, hidden)
        self.film_block = film_block - 1
        self.head = nn.Linear(self.conv.embedding_dim, out_features)
        self.context = nn.Parameter(torch.zeros(context_dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for index, block in enumerate(self.conv.features):  # four conv blocks, then Flatten
            if index == self.film_block:
                conv, norm, *rest = block
                h = self.film(norm(conv(h)), self.context)
                for layer in rest:  # ReLU, max-pool
                    h = layer(h)
            else:
                h = block(h)
        return self.head(h)


class CAVIA(MAML):
    """MAML whose inner loop adapts only a context vector that conditions the network (starting at zero)."""

    name = "cavia"

    @classmethod
    def from_source(cls, source: Any, config: CAVIAConfig, *, outputs: int | None) -> CAVIA:
        shape = tuple(source.input_shape)
        if len(shape) not in (1, 3):
            raise ValueError(f"cavia has no network for inputs of shape {shape} (vectors or images)")
        kind = "vector" if len(shape) == 1 else "image"
        context_dim = config.context_dim or DEFAULT_CONTEXT_DIMS[kind]
        conditioning = config.conditioning
        if conditioning == "auto":
            conditioning = "concat" if kind == "vector" else "film"
        if kind == "vector":  # the standard sinusoid backbone's hidden layers (MAML's 40-40)
            model: nn.Module = ContextMLP(shape[0], [40, 40], outputs, context_dim, conditioning)
        elif conditioning == "concat":
            raise ValueError("cavia conditions images by FiLM only (--conditioning film or auto): a context "
                             "concatenated to the embedding would only shift the logits of the whole task")
        else:
            model = FiLMConv4(shape, outputs, context_dim, config.film_block)
        return cls(model, source.kind, config)

    def __init__(self, model: nn.Module, kind: str, config: CAVIAConfig | None = None) -> None:
        super().__init__(model, kind, config or CAVIAConfig())
        # the concatenating MLP evaluates all tasks with batched matrix products; FiLM and images go through vmap
        self._vectorized = isinstance(model, ContextMLP) and model.film is None

    # ALGO LOGIC: only the context adapts; it starts at zero for every task (a frozen zero parameter of the model)
    def adapt_keys(self) -> list[str]:
        return ["context"]
