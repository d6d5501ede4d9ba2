"""Learners, supervised and RL, one readable file each; :func:`make_learner` builds a supervised one by name.

=========== ============================================ =============================================
name        learner                                       adapts by
=========== ============================================ =============================================
maml        MAML (Finn et al. 2017), second order         gradient steps on the support set
fomaml      first-order MAML                              gradient steps (no second-order terms)
meta-sgd    Meta-SGD (Li et al. 2017)                     gradient steps with learned per-weight sizes
anil        ANIL (Raghu et al. 2020)                      gradient steps on the head only
reptile     Reptile (Nichol et al. 2018)                  gradient steps; first-order outer update
protonet    Prototypical Networks (Snell et al. 2017)     class prototypes of the support embeddings
matching    Matching Networks (Vinyals et al. 2016)       cosine attention over the support set
blackbox    Transformer over the support set              one forward pass (a sequence model)
=========== ============================================ =============================================
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metarl.core.learner import FewShotLearner
from metarl.core.networks import MLP, Conv4
from metarl.core.seeding import seeded

from .anil import ANIL
from .blackbox import BlackBoxLearner
from .maml import MAML, MAMLConfig
from .matching import MatchingNetwork
from .meta_sgd import MetaSGD
from .protonet import PrototypicalNetwork
from .reptile import Reptile, ReptileConfig

GRADIENT_LEARNERS = {"maml": MAML, "fomaml": MAML, "meta-sgd": MetaSGD, "anil": ANIL, "reptile": Reptile}
METRIC_LEARNERS = {"protonet": PrototypicalNetwork, "matching": MatchingNetwork}
LEARNERS = (*GRADIENT_LEARNERS, *METRIC_LEARNERS, "blackbox")
CLASSIFICATION_ONLY = tuple(METRIC_LEARNERS)


def _backbone(source: Any, out_features: int | None, running_stats: bool) -> tuple[nn.Module, int]:
    """The standard backbone for a source: MLP 40-40 for vectors (MAML's sinusoid net), Conv-4 for images."""
    shape = tuple(source.input_shape)
    if len(shape) == 1:
        hidden = [40, 40]
        if out_features is None:  # an encoder for metric / black-box learners
            return MLP(shape[0], [64], 64), 64
        return MLP(shape[0], hidden, out_features), out_features
    if len(shape) == 3:
        net = Conv4(in_channels=shape[0], out_features=out_features, running_stats=running_stats,
                    image_size=shape[1])
        return net, out_features or net.embedding_dim
    raise ValueError(f"no standard backbone for inputs of shape {shape}")


def make_learner(
    name: str,
    source: Any,
    *,
    ways: int | None = None,
    seed: int = 0,
    inner_lr: float | None = None,
    inner_steps: int | None = None,
    first_order: bool = False,
    meta_step_size: float | None = None,
) -> FewShotLearner:
    """Build learner ``name`` with the standard backbone for ``source`` (initialised from ``seed``).

    ``ways`` is the number of classes per task for classification learners with a fixed output layer (MAML family,
    black-box); ``inner_lr``/``inner_steps``/``first_order`` configure the gradient learners (None: defaults).
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of: {', '.join(LEARNERS)}")
    kind = source.kind
    if name in CLASSIFICATION_ONLY and kind != "classification":
        raise ValueError(f"learner {name!r} needs a classification task source, not {kind}")
    outputs = (ways or getattr(source, "ways", None)) if kind == "classification" else source.output_dim
    with seeded(seed):
        if name in GRADIENT_LEARNERS:
            config_type = ReptileConfig if name == "reptile" else MAMLConfig
            options: dict[str, Any] = {"first_order": first_order or name == "fomaml"}
            if inner_lr is not None:
                options["inner_lr"] = inner_lr
            if inner_steps is not None:
                options["inner_steps"] = inner_steps
            if name == "reptile" and meta_step_size is not None:
                options["meta_step_size"] = meta_step_size
            model, _ = _backbone(source, outputs, running_stats=False)
            learner = GRADIENT_LEARNERS[name](model, kind, config_type(**options))
        elif name in METRIC_LEARNERS:
            embedding, _ = _backbone(source, None, running_stats=True)
            learner = METRIC_LEARNERS[name](embedding, kind)
        else:
            encoder, feature_dim = _backbone(source, None, running_stats=True)
            learner = BlackBoxLearner(encoder, feature_dim, kind, outputs)
    learner.name = name
    return learner


# Meta-RL agents (imported lazily: each pulls in its own dependencies). Constructor: Agent(env_id, config).
RL_AGENTS: dict[str, tuple[str, str, str]] = {
    # name: (module, agent class, config class)
    "maml-trpo": ("metarl.agents.maml_trpo", "MAMLTRPO", "MAMLTRPOConfig"),
    "rl2": ("metarl.agents.rl2", "RL2", "RL2Config"),
    "pearl": ("metarl.agents.pearl", "PEARL", "PEARLConfig"),
    "oracle": ("metarl.agents.oracle", "Oracle", "OracleConfig"),
    "multitask": ("metarl.agents.sb3_baselines", "MultiTaskBaseline", "MultiTaskConfig"),
    "scratch": ("metarl.agents.sb3_baselines", "FromScratchBaseline", "FromScratchConfig"),
}


def rl_agent_classes(name: str) -> tuple[type, type]:
    """``(agent class, config class)`` of a meta-RL agent by name; unknown names give a one-line ValueError."""
    import importlib

    if name not in RL_AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join([*RL_AGENTS, *LEARNERS])}")
    module, agent, config = RL_AGENTS[name]
    loaded = importlib.import_module(module)
    return getattr(loaded, agent), getattr(loaded, config)


__all__ = ["LEARNERS", "make_learner", "MAML", "MAMLConfig", "MetaSGD", "ANIL", "Reptile", "ReptileConfig",
           "PrototypicalNetwork", "MatchingNetwork", "BlackBoxLearner"]
