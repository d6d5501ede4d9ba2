"""Meta Networks: fast weights generated from the support set's loss gradients, stored in a memory read by attention.

Munkhdalai & Yu, "Meta Networks", ICML 2017.

Spec as implemented (f: the source's Conv-4 trunk, shared by the two networks below; fast weights of a layer are
combined with its slow weights by *layer augmentation*: ``aug(z; W, W*) = ReLU(W z) + ReLU(W* z)`` for hidden
layers, ``W z + W* z`` for the output layer, biases included, so zero fast weights give the slow network exactly):

* representation function u (keys): ``u(x; Q, Q*) = aug(f(x); Q, Q*)``, ``key_dim`` wide;
* base learner b: ``b(x; W, W*) = aug(aug(f(x); W_1, W*_1); W_2, W*_2)`` with ``hidden`` units and ``ways`` outputs.

Adaptation on a support set {(x'_i, y'_i)}, i = 1..n, for all tasks of a meta-batch at once:

1. task-level fast weights (``task_fast_weights``): per-example embedding-loss gradients
   ∇_i = ∇_Q CE(h(u(x'_i; Q, 0)), y'_i) (h: a linear ``ways``-way head on the keys), mapped coordinate-wise by the
   LSTM d (``meta_hidden`` units) run over the n examples in support order: Q* = d(∇_1, ..., ∇_n) (its last output);
2. example-level fast weights: per-example base-learner gradients ∇_i = ∇_W CE(b(x'_i; W, 0), y'_i) mapped
   coordinate-wise by the MLP m (2 → ``meta_hidden`` → ``meta_hidden`` → 1, ReLU): W*_i = m(∇_i), written to the
   memory M with keys r'_i = u(x'_i; Q, Q*);
3. a query x reads the memory by attention: r = u(x; Q, Q*), a_i = softmax_i cos(r, r'_i), W* = Σ_i a_i W*_i, and
   the prediction is b(x; W, W*).

Gradients enter d and m after the preprocessing of Andrychowicz et al. 2016 (p = 10): g ↦ (log|g| / p, sign g) if
|g| ≥ e^−p, else (−1, e^p g), as the paper does. Meta-training minimises the query cross-entropy of step 3 with
Adam; the gradients of steps 1 and 2 are inputs, not differentiated through (first order).

What differs from the paper, and why: one Conv-4 trunk is shared by u and b (the paper uses two CNNs), and
fast weights are generated only for the layers after it (one layer of u, the two of b) — the per-example gradients of
whole CNNs, stored per support example, are beyond a CPU budget. The embedding loss of step 1 is a cross-entropy on
a ``ways``-way head (the paper also describes a contrastive loss over sampled pairs for u, which is undefined for
one-shot tasks, whose support sets hold no positive pair; the paper's text was not at hand to check which variant
its Omniglot figures use). The head h only shapes the gradients d reads; because those gradients are inputs, h
keeps its initial weights (a fixed random code of the labels). The memory read is sharpened by a learned inverse
temperature (``attention_scale``, initially 10): a plain softmax of cosines in [−1, 1] is nearly uniform over a
support set, and with one example per class the uniform mix of the stored fast weights carries no class
information (measured: the loss stayed at ln 3 on the toy task of the tests). With ``outer_lr`` 1e-3 that toy
task sat at ln 3 for 300 iterations; 1e-2 learns it in ~100 (m has to learn a steep map of the gradient's sign).

Figures: experiments/RESULTS.md (the Omniglot one-shot-runs table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from metarl.core.config import check_int, check_positive
from metarl.core.learner import FewShotLearner, FewShotLearnerConfig

from .protonet import embed_tasks

GRADIENT_P = 10.0


@dataclass
class MetaNetConfig(FewShotLearnerConfig):
    """Settings of Meta Networks (the trunk is the source's standard Conv-4 embedding)."""

    hidden: int = 64
    """units of the base learner's hidden layer (slow + fast weights)"""
    key_dim: int = 64
    """width of the representation function's keys (slow + task-level fast weights)"""
    meta_hidden: int = 20
    """units of the meta-learners m (MLP, two hidden layers) and d (LSTM), applied per weight coordinate"""
    attention_scale: float = 10.0
    """initial inverse temperature of the cosine attention over the memory keys (learned)"""
    task_fast_weights: bool = True
    """generate task-level fast weights for the representation function (d); off: keys from slow weights only"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("hidden", "key_dim", "meta_hidden"):
            check_int(getattr(self, name), name, minimum=1)
        check_positive(self.attention_scale, "attention_scale")


def preprocess_gradients(g: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` coordinate-wise features of gradients ``g`` (Andrychowicz et al. 2016, p = 10)."""
    big = g.abs() >= math.exp(-GRADIENT_P)
    log_part = torch.where(big, g.abs().clamp_min(1e-30).log() / GRADIENT_P, torch.full_like(g, -1.0))
    sign_part = torch.where(big, g.sign(), g * math.exp(GRADIENT_P))
    return torch.stack([log_part, sign_part], dim=-1)


def augmented(z: torch.Tensor, slow: tuple[torch.Tensor, torch.Tensor], fast: tuple[torch.Tensor, torch.Tensor] | None,
              relu: bool) -> torch.Tensor:
    """Layer augmentation of ``z`` ``[..., n, in]``: slow ``(weight [out, in], bias [out])``, fast weights with the
    leading dimensions of ``z`` (``[..., n, out, in]`` and ``[..., n, out]``: one per row) or None (slow only)."""
    out = F.linear(z, *slow)
    if relu:
        out = out.relu()
    if fast is None:
        return out
    fast_out = (fast[0] @ z.unsqueeze(-1)).squeeze(-1) + fast[1]
    return out + (fast_out.relu() if relu else fast_out)


class MetaNetState(NamedTuple):
    """The adapted memory of a meta-batch: keys ``[tasks, n, key]``, example-level fast weights of b (each
    ``[tasks, n, *shape]``) and the task-level fast weights of u (``[tasks, *shape]``, or None)."""

    keys: torch.Tensor
    fast: dict[str, torch.Tensor]
    task_fast: dict[str, torch.Tensor] | None


class MetaNetwork(FewShotLearner):
    """Base learner + representation function with slow and generated fast weights (see the module docstring)."""

    name = "metanet"
    fixed_ways = True
    task_kinds = ("classification",)

    @classmethod
    def from_source(cls, source, config, *, outputs: int | None) -> MetaNetwork:
        from metarl.core.networks import standard_backbone

        if source.kind != "classification":
            raise ValueError(f"learner {cls.name!r} needs a classification task source, not {source.kind}")
        trunk, features = standard_backbone(source.input_shape, None, running_stats=True)
        return cls(trunk, features, outputs, config, input_shape=tuple(source.input_shape))

    def __init__(self, trunk: nn.Module, feature_dim: int, ways: int, config: MetaNetConfig | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__("classification")
        self.config = c = config or MetaNetConfig()
        if not isinstance(ways, int) or ways < 2:
            raise ValueError(f"Meta Networks need at least 2 ways, got {ways}")
        self.trunk, self.ways, self.input_shape = trunk, ways, input_shape
        self.base1, self.base2 = nn.Linear(feature_dim, c.hidden), nn.Linear(c.hidden, ways)
        self.key = nn.Linear(feature_dim, c.key_dim)
        self.embedding_head = nn.Linear(c.key_dim, ways)
        # inverse temperature of the memory read (learned, starting at attention_scale)
        self.log_attention_scale = nn.Parameter(torch.tensor(math.log(c.attention_scale)))
        # m: per-coordinate MLP from preprocessed gradients to example-level fast weights
        self.meta_m = nn.Sequential(nn.Linear(2, c.meta_hidden), nn.ReLU(), nn.Linear(c.meta_hidden, c.meta_hidden),
                                    nn.ReLU(), nn.Linear(c.meta_hidden, 1))
        if c.task_fast_weights:  # d: per-coordinate LSTM over the support examples, to task-level fast weights
            self.meta_d = nn.LSTMCell(2, c.meta_hidden)
            self.meta_d_out = nn.Linear(c.meta_hidden, 1)

    # ------------------------------------------------------------------------------------------------------------
    # the two networks, slow or augmented

    def base_slow_params(self) -> dict[str, torch.Tensor]:
        return {"w1": self.base1.weight, "b1": self.base1.bias, "w2": self.base2.weight, "b2": self.base2.bias}

    def base(self, z: torch.Tensor, fast: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """b on trunk features ``z`` ``[tasks, n, feat]`` with per-row fast weights (or None: slow network)."""
        p = self.base_slow_params()
        h = augmented(z, (p["w1"], p["b1"]), (fast["w1"], fast["b1"]) if fast else None, relu=True)
        return augmented(h, (p["w2"], p["b2"]), (fast["w2"], fast["b2"]) if fast else None, relu=False)

    def keys(self, z: torch.Tensor, task_fast: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """u on trunk features ``z`` ``[tasks, n, feat]``; ``task_fast`` ``[tasks, *shape]`` or None."""
        fast = None
        if task_fast is not None:
            n = z.shape[1]
            fast = (task_fast["w"].unsqueeze(1).expand(-1, n, -1, -1), task_fast["b"].unsqueeze(1).expand(-1, n, -1))
        return augmented(z, (self.key.weight, self.key.bias), fast, relu=True)

    # ------------------------------------------------------------------------------------------------------------
    # ALGO LOGIC: per-example gradients -> fast weights; memory; attention read

    def _check(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"inputs must be [tasks, n, {', '.join(map(str, self.input_shape))}], "
                             f"got {list(x.shape)}")
        if y is not None:
            if y.shape != x.shape[:2]:
                raise ValueError(f"labels must be [tasks, n] = {list(x.shape[:2])}, got {list(y.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= self.ways:
                raise ValueError(f"this learner was built for {self.ways} ways, got labels "
                                 f"{int(y.min())}..{int(y.max())}")

    def example_gradients(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """∇_W CE(b(x_i; W, 0), y_i) of every support example, ``[tasks, n, *shape]``, as constants."""
        slow = {k: v.detach() for k, v in self.base_slow_params().items()}

        def loss(params, feature, label):
            hidden = F.linear(feature, params["w1"], params["b1"]).relu()
            return F.cross_entropy(F.linear(hidden, params["w2"], params["b2"]), label)

        flat = vmap(grad(loss), in_dims=(None, 0, 0))(slow, z.detach().flatten(0, 1), y.flatten())
        return {k: g.view(*y.shape, *g.shape[1:]) for k, g in flat.items()}

    def task_gradients(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """∇_Q CE(h(u(x_i; Q, 0)), y_i) of every support example, ``[tasks, n, *shape]``, as constants."""
        params = {"w": self.key.weight.detach(), "b": self.key.bias.detach(),
                  "hw": self.embedding_head.weight.detach(), "hb": self.embedding_head.bias.detach()}

        def loss(q, feature, label):
            key = F.linear(feature, q["w"], q["b"]).relu()
            return F.cross_entropy(F.linear(key, params["hw"], params["hb"]), label)

        flat = vmap(grad(loss), in_dims=(None, 0, 0))({"w": params["w"], "b": params["b"]},
                                                       z.detach().flatten(0, 1), y.flatten())
        return {k: g.view(*y.shape, *g.shape[1:]) for k, g in flat.items()}

    def fast_from_gradients(self, gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """m: each coordinate of each example's gradient to that coordinate of its fast weight."""
        return {k: self.meta_m(preprocess_gradients(g)).squeeze(-1) for k, g in gradients.items()}

    def task_fast_from_gradients(self, gradients: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """d: a per-coordinate LSTM over the n examples' gradients; its last output is the task-level fast weight."""
        out = {}
        for k, g in gradients.items():
            tasks, n = g.shape[:2]
            features = preprocess_gradients(g).transpose(0, 1).reshape(n, -1, 2)  # [n, tasks * coordinates, 2]
            state = None
            for i in range(n):
                state = self.meta_d(features[i], state)
            out[k] = self.meta_d_out(state[0]).view(tasks, *g.shape[2:])
        return out

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, *, steps: int | None = None) -> MetaNetState:
        self._check(support_x, support_y)
        z = embed_tasks(self.trunk, support_x)  # [tasks, n, feat]
        task_fast = (self.task_fast_from_gradients(self.task_gradients(z, support_y))
                     if self.config.task_fast_weights else None)
        fast = self.fast_from_gradients(self.example_gradients(z, support_y))
        return MetaNetState(self.keys(z, task_fast), fast, task_fast)

    def read(self, state: MetaNetState, query_keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fast weights per query ``[tasks, q, *shape]``: the attention-weighted sum of the stored ones."""
        cosine = F.normalize(query_keys, dim=-1, eps=1e-8) @ F.normalize(state.keys, dim=-1, eps=1e-8).transpose(1, 2)
        attention = (self.log_attention_scale.exp() * cosine).softmax(dim=-1)  # [tasks, q, n]
        return {k: torch.einsum("tqn,tn...->tq...", attention, w) for k, w in state.fast.items()}

    def predict(self, state: MetaNetState, query_x: torch.Tensor) -> torch.Tensor:
        self._check(query_x)
        if query_x.shape[0] != state.keys.shape[0]:
            raise ValueError(f"{query_x.shape[0]} query tasks for {state.keys.shape[0]} adapted tasks")
        z = embed_tasks(self.trunk, query_x)
        return self.base(z, self.read(state, self.keys(z, state.task_fast)))
