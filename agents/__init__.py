"""Learners and agents, supervised and RL, one readable file each, and the registry that names them.

Few-shot supervised learners (``domain="fewshot"``; :func:`make_learner` builds one for a task source):

=========== ============================================ =============================================
name        learner                                       adapts by
=========== ============================================ =============================================
maml        MAML (Finn et al. 2017), second order         gradient steps on the support set
fomaml      first-order MAML                              gradient steps (no second-order terms)
meta-sgd    Meta-SGD (Li et al. 2017)                     gradient steps with learned per-weight sizes
anil        ANIL (Raghu et al. 2020)                      gradient steps on the head only
cavia       CAVIA (Zintgraf et al. 2019)                  gradient steps on a context vector only (concat/FiLM)
reptile     Reptile (Nichol et al. 2018)                  gradient steps; first-order outer update
protonet    Prototypical Networks (Snell et al. 2017)     class prototypes of the support embeddings
matching    Matching Networks (Vinyals et al. 2016)       cosine attention over the support set (+ FCE)
relation    Relation Networks (Sung et al. 2018)          a learned relation module scores query–class pairs
siamese     Siamese networks (Koch et al. 2015)           a learned verification metric, nearest support class
blackbox    Transformer over the support set              one forward pass (a sequence model)
mann        MANN (Santoro et al. 2016), LRUA memory       a sequence pass writing an external memory
metanet     Meta Networks (Munkhdalai & Yu 2017)          fast weights generated from loss gradients
meta-lstm   meta-learner LSTM (Ravi & Larochelle 2017)    updates from a coordinate-wise LSTM (gated steps)
l2o         learned optimiser (Andrychowicz et al. 2016)  steps of a coordinate-wise LSTM optimiser
film        CNAPs-style FiLM (Requeima et al. 2019)       FiLM layers generated from the support set
versa       VERSA (Gordon et al. 2019), amortised Bayes   a Gaussian posterior over the output layer
bmaml       Bayesian MAML (Yoon et al. 2018)              SVGD steps of meta-learned weight particles
=========== ============================================ =============================================

Meta-RL agents (``domain="meta-rl"``; constructed as ``Agent(env_id, config)``): ``maml-trpo``, ``cavia-trpo``
(MAML-TRPO adapting only a context vector, CAVIA), ``rl2``, ``varibad``, ``pearl``, ``amago`` (off-policy
in-context, AMAGO-style), ``oracle``, ``multitask``, ``scratch``.

Every entry names its module, class and config dataclass; modules are imported when first used. A new learner or
agent is one file here plus one :func:`register` call below (or in the user's own code): ``metarl list``,
``metarl train NAME --help``, the run loop and the meta-test protocol pick it up.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from typing import Any

DOMAINS = ("fewshot", "meta-rl")


@dataclass(frozen=True)
class Entry:
    """Where a learner or agent lives: ``module.cls`` built from ``module.config`` in ``domain``."""

    name: str
    module: str
    cls: str
    config: str
    domain: str
    summary: str = ""

    def load(self) -> tuple[type, type]:
        """``(learner or agent class, config class)``."""
        loaded = importlib.import_module(self.module)
        if ":" in self.config:  # a config defined in another module: "module:Name"
            module, config = self.config.split(":")
            return getattr(loaded, self.cls), getattr(importlib.import_module(module), config)
        return getattr(loaded, self.cls), getattr(loaded, self.config)

    @property
    def config_type(self) -> type:
        return self.load()[1]


REGISTRY: dict[str, Entry] = {}


def register(name: str, module: str, cls: str, config: str, domain: str, summary: str = "") -> Entry:
    """Add (or replace) a learner or agent under ``name``."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    REGISTRY[name] = Entry(name, module, cls, config, domain, summary)
    return REGISTRY[name]


for _domain, _name, _module, _cls, _config, _summary in [
    ("fewshot", "maml", "maml", "MAML", "MAMLConfig", "second-order gradient steps on the support set"),
    ("fewshot", "fomaml", "maml", "MAML", "FOMAMLConfig", "gradient steps, second-order terms dropped"),
    ("fewshot", "meta-sgd", "meta_sgd", "MetaSGD", "metarl.agents.maml:MAMLConfig",
     "gradient steps, learned step sizes"),
    ("fewshot", "anil", "anil", "ANIL", "metarl.agents.maml:MAMLConfig", "gradient steps on the head only"),
    ("fewshot", "cavia", "cavia", "CAVIA", "CAVIAConfig",
     "gradient steps on a context vector that conditions the network (concatenated or FiLM)"),
    ("fewshot", "reptile", "reptile", "Reptile", "ReptileConfig",
     "SGD steps; outer update towards the adapted weights"),
    ("fewshot", "protonet", "protonet", "PrototypicalNetwork", "ProtoNetConfig",
     "class prototypes, squared Euclidean distances"),
    ("fewshot", "matching", "matching", "MatchingNetwork", "MatchingConfig",
     "cosine attention over the support set (--full-context: the paper's FCE)"),
    ("fewshot", "relation", "relation", "RelationNetwork", "RelationConfig",
     "a learned module scores query–class pairs of feature maps"),
    ("fewshot", "siamese", "siamese", "SiameseNetwork", "SiameseConfig",
     "a learned verification metric (same class?), nearest support class"),
    ("fewshot", "blackbox", "blackbox", "BlackBoxLearner", "BlackBoxConfig", "a Transformer reads the support set"),
    ("fewshot", "mann", "mann", "MANN", "MANNConfig", "an LSTM with an LRUA external memory reads the sequence"),
    ("fewshot", "metanet", "metanet", "MetaNetwork", "MetaNetConfig",
     "fast weights generated from support-set loss gradients"),
    ("fewshot", "meta-lstm", "meta_lstm", "MetaLearnerLSTM", "MetaLSTMConfig",
     "a coordinate-wise LSTM updates the weights (learned input and forget gates)"),
    ("fewshot", "l2o", "l2o", "L2OLearner", "L2OConfig", "a coordinate-wise LSTM optimiser on the support loss"),
    ("fewshot", "film", "film", "FiLMLearner", "FiLMConfig",
     "a set encoder of the support set generates FiLM scales and shifts for every hidden layer"),
    ("fewshot", "versa", "versa", "Versa", "VersaConfig",
     "an amortised Gaussian posterior over the output layer; the model average over its draws"),
    ("fewshot", "bmaml", "bmaml", "BMAML", "BMAMLConfig",
     "SVGD on the support posterior of meta-learned weight particles; their model average predicts"),
    ("meta-rl", "maml-trpo", "maml_trpo", "MAMLTRPO", "MAMLTRPOConfig", "policy-gradient inner step, TRPO outer loop"),
    ("meta-rl", "cavia-trpo", "maml_trpo", "MAMLTRPO", "CAVIATRPOConfig",
     "policy-gradient inner step on a context vector only (CAVIA), TRPO outer loop"),
    ("meta-rl", "rl2", "rl2", "RL2", "RL2Config", "a recurrent policy's memory across the episodes of a trial; PPO"),
    ("meta-rl", "varibad", "varibad", "VariBAD", "VariBADConfig",
     "a recurrent VAE's belief over the task (decoding rewards) conditions a PPO policy; whole trials"),
    ("meta-rl", "pearl", "pearl", "PEARL", "PEARLConfig", "a probabilistic task context conditioning SAC"),
    ("meta-rl", "amago", "amago", "AMAGO", "AMAGOConfig",
     "off-policy in-context (AMAGO-style): one Transformer over whole trials, SAC actor and critics at every step"),
    ("meta-rl", "oracle", "oracle", "Oracle", "OracleConfig", "SAC conditioned on the true task (upper bound)"),
    ("meta-rl", "multitask", "sb3_baselines", "MultiTaskBaseline", "MultiTaskConfig", "one SB3 policy for all tasks"),
    ("meta-rl", "scratch", "sb3_baselines", "FromScratchBaseline", "FromScratchConfig",
     "SB3 from scratch on each held-out task"),
]:
    register(_name, f"metarl.agents.{_module}", _cls, _config, _domain, _summary)


def names(domain: str | None = None) -> tuple[str, ...]:
    """Registered names, all or of one domain, in registration order."""
    return tuple(n for n, e in REGISTRY.items() if domain is None or e.domain == domain)


def entry(name: str) -> Entry:
    """The registry entry of ``name``; an unknown name is a one-line ValueError with the closest names."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown learner or agent {name!r}{hint}; few-shot learners: {', '.join(names('fewshot'))}; "
                         f"meta-RL agents: {', '.join(names('meta-rl'))}")
    return REGISTRY[name]


def rl_agent_classes(name: str) -> tuple[type, type]:
    """``(agent class, config class)`` of a meta-RL agent by name; unknown names give a one-line ValueError."""
    found = entry(name)
    if found.domain != "meta-rl":
        raise ValueError(f"{name} is a few-shot learner, not a meta-RL agent")
    return found.load()


def __getattr__(attribute: str) -> Any:
    # LEARNERS / RL_AGENTS are views of the registry (so a registered entry shows up everywhere)
    if attribute == "LEARNERS":
        return names("fewshot")
    if attribute == "RL_AGENTS":
        return names("meta-rl")
    raise AttributeError(f"module 'metarl.agents' has no attribute {attribute!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Few-shot learners: the standard backbone of a task source, and the learner built on it

def make_learner(name: str, source: Any, config: Any = None, *, ways: int | None = None, **fields: Any):
    """Build few-shot learner ``name`` with the standard backbone for ``source``, initialised from the config's seed.

    ``config`` is the learner's config dataclass (default: its defaults); ``fields`` set config fields on top
    (``make_learner("maml", source, seed=0, inner_steps=5)``). ``ways`` is the number of classes per task for
    learners with a fixed output layer (MAML family, black-box; default: the source's ways).
    """
    from metarl.core.seeding import seeded

    found = entry(name)
    if found.domain != "fewshot":
        raise ValueError(f"{name} is a meta-RL agent: train it on an environment (--env), not a task source")
    learner_type, config_type = found.load()
    if config is None:
        config = config_type()
    elif not isinstance(config, config_type):
        raise ValueError(f"{name} takes a {config_type.__name__}, got {type(config).__name__}")
    if fields:
        from metarl.core.config import config_from_dict

        config = config_from_dict(config_type, {**dataclasses.asdict(config), **fields})
    kind = source.kind
    outputs = (ways or getattr(source, "ways", None)) if kind == "classification" else source.output_dim
    with seeded(config.seed):  # each learner builds itself on the source's standard backbone
        learner = learner_type.from_source(source, config, outputs=outputs)
    learner.name = name
    return learner


__all__ = ["REGISTRY", "Entry", "register", "entry", "names", "make_learner", "rl_agent_classes", "DOMAINS"]
