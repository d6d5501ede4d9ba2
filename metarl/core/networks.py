"""Backbones used across learners: an MLP (regression, policies), the Conv-4 of the few-shot literature, a FiLM
layer, either backbone with FiLM layers at its hidden layers, and input concatenation of a context vector
(context-conditioned learners and policies).

Both run under fast weights (``functional_call``) and ``vmap``. Normalisation never keeps running statistics
(``track_running_stats=False``): under ``vmap`` there is no place to store them per task (the functorch MAML
example's caveat), and the few-shot literature's MAML uses batch statistics at test time too (transductive).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .adaptation import Params


class MLP(nn.Sequential):
    """``in -> hidden... -> out`` with an activation between layers; layers are named ``0``, ``2``, ``4`` ...

    :meth:`batched` evaluates the network for many tasks at once with batched matrix products when the fast
    weights carry a leading task dimension: the same numbers as ``vmap(functional_call)`` at a fraction of the cost.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, activation: type = nn.ReLU):
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.linear_names = [str(i) for i, m in enumerate(self) if isinstance(m, nn.Linear)]

    def batched(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[tasks, n, in]``; each ``params`` entry ``[tasks, *shape]`` (adapted) or ``[*shape]`` (shared)."""
        h = x
        for i, name in enumerate(self.linear_names):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            if weight.dim() == 2:
                h = torch.matmul(h, weight.t()) + bias
            else:
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if i < len(self.linear_names) - 1:
                h = self[int(name) + 1](h)  # the activation module that follows this linear layer
        return h


def conv_block(in_channels: int, out_channels: int, pool: bool = True, running_stats: bool = False) -> nn.Sequential:
    """3x3 conv -> batch norm -> ReLU -> 2x2 max-pool (batch statistics only, unless ``running_stats``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=running_stats),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The four-block convolutional embedding of Vinyals et al. 2016 / Snell et al. 2017 / Finn et al. 2017.

    Each block halves the side (floor), so ``image_size`` × ``image_size`` inputs give a
    ``hidden * (image_size // 16)**2``-dimensional embedding (28×28: 64 channels × 1 × 1; 56×56: 64 × 3 × 3). With
    ``out_features`` set, a linear head maps the embedding to class logits (MAML's classifier; the head is named
    ``head`` for ANIL).
    ``running_stats=True`` keeps batch-norm running statistics (metric learners, which never run under ``vmap``:
    at evaluation a prediction then does not depend on which other images share the batch).
    """

    def __init__(
        self, in_channels: int = 1, hidden: int = 64, out_features: int | None = None, running_stats: bool = False,
        image_size: int = 28,
    ):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"Conv4 needs inputs of at least 16x16, got {image_size}")
        self.features = nn.Sequential(
            conv_block(in_channels, hidden, running_stats=running_stats),
            conv_block(hidden, hidden, running_stats=running_stats),
            conv_block(hidden, hidden, running_stats=running_stats),
            conv_block(hidden, hidden, running_stats=running_stats),
            nn.Flatten(),
        )
        self.embedding_dim = hidden * (image_size // 16) ** 2
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return self.head(z) if self.head is not None else z


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer",
    AAAI 2018) of ``channels`` features by a context vector: ``h ↦ (1 + γ(c)) ⊙ h + β(c)`` with ``(γ, β)`` a linear
    map of the context without bias, so a zero context leaves ``h`` unchanged (CAVIA's context starts at zero; a
    set-conditioned learner's modulation starts near the identity).

    ``h``: ``[batch, channels, ...]`` (feature maps or vectors); ``context``: ``[batch, context_dim]``, one per
    example (repeat a task's context over its examples), or ``[context_dim]`` shared by the whole batch.
    """

    def __init__(self, context_dim: int, channels: int) -> None:
        super().__init__()
        if context_dim < 1 or channels < 1:
            raise ValueError(f"FiLM needs context_dim >= 1 and channels >= 1, got {context_dim}, {channels}")
        self.channels = channels
        self.generator = nn.Linear(context_dim, 2 * channels, bias=False)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.generator(context).chunk(2, dim=-1)
        if context.dim() == 1:
            gamma, beta = gamma.expand(h.shape[0], -1), beta.expand(h.shape[0], -1)
        shape = (h.shape[0], self.channels) + (1,) * (h.dim() - 2)
        return (1 + gamma.reshape(shape)) * h + beta.reshape(shape)


class FiLMConditioned(nn.Module):
    """A backbone (an :class:`MLP` or the :class:`Conv4`) with a :class:`FiLM` layer at each hidden layer, all read
    from one context: after each batch norm of the Conv-4 (before its ReLU), after each hidden linear layer of an MLP
    (before its activation). With a zero context, or zeroed FiLM generators, ``forward`` is the backbone itself.

    ``forward(x, context)``: ``x`` ``[batch, ...]``; ``context`` ``[batch, context_dim]`` (one per example: repeat a
    task's context over its examples) or ``[context_dim]``. The FiLM layers are ``films[i]`` in forward order.
    """

    def __init__(self, backbone: nn.Module, context_dim: int) -> None:
        super().__init__()
        if not isinstance(backbone, (MLP, Conv4)):
            raise ValueError(f"FiLMConditioned takes an MLP or a Conv4, got {type(backbone).__name__}")
        self.backbone = backbone
        # both backbones apply their leaf modules in registration order
        leaves = [m for m in backbone.modules() if not list(m.children())]
        if isinstance(backbone, Conv4):
            sites = [i for i, m in enumerate(leaves) if isinstance(m, nn.BatchNorm2d)]
            widths = [leaves[i].num_features for i in sites]
        else:
            sites = [i for i, m in enumerate(leaves) if isinstance(m, nn.Linear)][:-1]
            widths = [leaves[i].out_features for i in sites]
        self._leaves, self._sites = leaves, dict(zip(sites, range(len(sites))))
        self.films = nn.ModuleList(FiLM(context_dim, width) for width in widths)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self._leaves):
            h = layer(h)
            if i in self._sites:
                h = self.films[self._sites[i]](h, context)
        return h


def concat_context(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``[x, context]`` along the last axis: the context repeated over every example (CAVIA's input conditioning).

    ``context`` is ``[context_dim]``, shared by all of ``x`` (``[..., features]``: one task, e.g. under ``vmap``,
    or the shared initialisation), or ``[tasks, context_dim]``, one per task, with ``x`` ``[tasks, ..., features]``
    (batched fast weights). A zero context is the plain input padded with zeros.
    """
    if context.dim() == 1:
        repeated = context.expand(*x.shape[:-1], context.shape[-1])
    elif context.dim() == 2 and x.dim() >= 2 and context.shape[0] == x.shape[0]:
        view = context.reshape(context.shape[0], *([1] * (x.dim() - 2)), context.shape[-1])
        repeated = view.expand(*x.shape[:-1], context.shape[-1])
    else:
        raise ValueError(f"a context of shape {tuple(context.shape)} does not fit inputs of shape {tuple(x.shape)}")
    return torch.cat([x, repeated], dim=-1)


def head_parameter_names(module: nn.Module, head: str = "head") -> list[str]:
    """Names of the output layer's parameters (ANIL and MAML-TRPO's ``adapt_head_only`` adapt only these): a
    policy's ``head_keys``, an :class:`MLP`'s last linear layer, else the parameters under ``head``."""
    if hasattr(module, "head_keys"):
        return list(module.head_keys)
    if isinstance(module, MLP):
        last = module.linear_names[-1]
        return [f"{last}.weight", f"{last}.bias"]
    names = [n for n, _ in module.named_parameters() if n == head or n.startswith(head + ".")]
    if not names:
        raise ValueError(f"the model has no parameters under {head!r}")
    return names


def standard_backbone(input_shape, out_features: int | None, running_stats: bool) -> tuple[nn.Module, int]:
    """The standard backbone of a task source's inputs and its output width: for vectors an MLP 40-40 with
    ``out_features`` outputs (MAML's sinusoid net) or, with ``out_features=None``, a 64-64 encoder (metric and
    black-box learners); for images the Conv-4 (with a linear head when ``out_features`` is set)."""
    shape = tuple(input_shape)
    if len(shape) == 1:
        if out_features is None:
            return MLP(shape[0], [64], 64), 64
        return MLP(shape[0], [40, 40], out_features), out_features
    if len(shape) == 3:
        net = Conv4(in_channels=shape[0], out_features=out_features, running_stats=running_stats,
                    image_size=shape[1])
        return net, out_features or net.embedding_dim
    raise ValueError(f"no standard backbone for inputs of shape {shape}")
