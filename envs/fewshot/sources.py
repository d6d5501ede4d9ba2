"""The few-shot task sources a run can name (``--source``), each with its config dataclass.

A source config holds everything about where a run's tasks come from: the episode shape (ways, shots, query
shots, and those of training episodes), the data and the source's own options and protocols (Omniglot's
distortions and the original one-shot runs). The generic run loop (:mod:`metarl.training`) knows only the methods
below; what a data set adds lives here, with the data set.

- ``build()``: the task source (``sample(n, *, split, seed, shots, ...) -> EpisodeBatch``);
- ``train_options()``: keyword arguments of the training episodes' ``sample`` call;
- ``for_evaluation(source)``: the source that held-out tasks come from (Omniglot: never distorted);
- ``check_learner(name, learner)``: refuse, before training, a learner that cannot be evaluated on this source;
- ``extra_evaluations(learner, *, steps, device, seed)``: protocols of the data set beyond the generic held-out
  evaluation, as ``{file name: JSON-ready result}`` (Omniglot: the one-shot runs), and ``describe(result)``, a
  line for the terminal.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from metarl.core.config import ConfigError, check_choice, check_int, check_number


@dataclass
class SinusoidConfig:
    """Sinusoid regression tasks of the MAML paper (:class:`metarl.envs.fewshot.Sinusoid`)."""

    source: str = "sinusoid"
    """task source: sinusoid or omniglot"""
    shots: int = 10
    """support points per task"""
    query_shots: int = 10
    """query points per task"""
    train_shots: int | None = None
    """support points of training tasks; None: shots"""

    EVALUATION_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_choice(self.source, "source", ["sinusoid"])
        check_int(self.shots, "shots", minimum=1)
        check_int(self.query_shots, "query_shots", minimum=1)
        check_int(self.train_shots, "train_shots", minimum=1, optional=True)

    def build(self) -> Any:
        from .sinusoid import Sinusoid

        return Sinusoid(shots=self.shots, query_shots=self.query_shots)

    def train_options(self) -> dict[str, Any]:
        return {"shots": self.train_shots or self.shots}

    def for_evaluation(self, source: Any) -> Any:
        return source

    def check_learner(self, name: str, learner: Any) -> None:
        pass  # every learner that make_learner builds for a regression source can be evaluated on it

    def has_extra_evaluations(self) -> bool:
        return False

    def extra_evaluations(self, learner: Any, *, steps: int | None, device: Any, seed: int) -> dict[str, Any]:
        return {}

    def describe(self, name: str, result: dict[str, Any]) -> str:
        return ""


@dataclass
class OmniglotConfig:
    """Omniglot N-way K-shot classification (Lake et al. 2015; :class:`metarl.envs.fewshot.omniglot.OmniglotFewShot`),
    and the original 20-way one-shot runs as an extra evaluation."""

    source: str = "omniglot"
    """task source: sinusoid or omniglot"""
    data_root: str | None = None
    """folder with the Omniglot zips; None: $METARL_DATA"""
    ways: int = 5
    """classes per task at evaluation"""
    shots: int = 10
    """support examples per class"""
    query_shots: int = 10
    """query examples per class"""
    train_ways: int | None = None
    """classes per training episode (Prototypical Networks: 60); None: ways"""
    train_shots: int | None = None
    """support examples per class in training episodes; None: shots"""
    augment: bool = False
    """random affine distortion of every training image (evaluation images are never distorted)"""
    split_fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
    """train/val/test shares of the characters (1 0 0: train on all, evaluate on the one-shot runs)"""
    within_alphabet: float = 0.0
    """share of tasks whose classes all come from one alphabet (the one-shot runs are within-alphabet)"""
    image_size: int = 28
    """side of the resized images (training, evaluation and one-shot runs alike)"""
    one_shot_runs: str | None = None
    """a zip or folder of the original one-shot runs to score the learner on after training"""
    one_shot_augment: int = 0
    """one-shot runs: test-time augmentation, distorted copies of each support and query drawing"""

    EVALUATION_FIELDS: ClassVar[tuple[str, ...]] = ("one_shot_runs", "one_shot_augment")
    """fields that ``metarl evaluate RUN_DIR`` also takes (they change what is evaluated, not what was trained)"""

    def __post_init__(self) -> None:
        check_choice(self.source, "source", ["omniglot"])
        for name in ("ways", "shots", "query_shots"):
            check_int(getattr(self, name), name, minimum=1)
        for name in ("train_ways", "train_shots"):
            check_int(getattr(self, name), name, minimum=1, optional=True)
        check_int(self.one_shot_augment, "one_shot_augment", minimum=0)
        if self.one_shot_augment and not self.one_shot_runs:
            raise ConfigError("one_shot_augment needs the one-shot runs to score (--one-shot-runs PATH)")
        check_number(self.within_alphabet, "within_alphabet", low=0, high=1)
        check_int(self.image_size, "image_size", minimum=16, maximum=105)
        self.split_fractions = tuple(float(f) for f in self.split_fractions)

    def build(self) -> Any:
        from .omniglot import OmniglotFewShot

        return OmniglotFewShot(root=self.data_root, ways=self.ways, shots=self.shots, query_shots=self.query_shots,
                               augment=self.augment, split_fractions=self.split_fractions,
                               within_alphabet=self.within_alphabet, image_size=self.image_size)

    def train_options(self) -> dict[str, Any]:
        return {"shots": self.train_shots or self.shots, "ways": self.train_ways or self.ways}

    def for_evaluation(self, source: Any) -> Any:
        if not getattr(source, "augment", False):
            return source
        source = copy.copy(source)  # held-out images are never distorted
        source.augment = False
        return source

    def _fixed_ways(self, learner: Any) -> bool:
        return bool(getattr(learner, "fixed_ways", False))

    def check_learner(self, name: str, learner: Any) -> None:
        if self._fixed_ways(learner) and self.train_ways not in (None, self.ways):
            raise ConfigError(f"{name} has a {self.ways}-way output layer: train_ways must equal ways")
        if self.one_shot_runs and self._fixed_ways(learner) and self.ways != 20:
            raise ConfigError(f"{name} has a {self.ways}-way output layer; the one-shot runs are 20-way "
                              "(--ways 20)")

    def has_extra_evaluations(self) -> bool:
        return bool(self.one_shot_runs)

    def extra_evaluations(self, learner: Any, *, steps: int | None, device: Any, seed: int) -> dict[str, Any]:
        if not self.one_shot_runs:
            return {}
        from .omniglot_runs import OneShotRuns, evaluate_one_shot_runs

        runs = OneShotRuns(self.one_shot_runs, image_size=self.image_size)
        result = evaluate_one_shot_runs(learner, runs.as_episode_batch(), steps=steps, device=device,
                                        augment_copies=self.one_shot_augment, seed=seed)
        return {one_shot_result_name(self.one_shot_augment): result}

    def describe(self, name: str, r: dict[str, Any]) -> str:
        if not name.startswith("one_shot_runs"):
            return ""
        tta = f", test-time augmentation x{r['augment_copies']}" if r.get("augment_copies") else ""
        return (f"Omniglot one-shot runs{tta}: {r['errors']}/{r['queries']} wrong = {100 * r['error_rate']:.1f}% "
                f"error (95% CI {100 * r['ci95_low']:.1f}-{100 * r['ci95_high']:.1f}%) on {r['runs']} runs")


def one_shot_result_name(augment_copies: int = 0) -> str:
    """File of a run's one-shot-runs result: ``one_shot_runs.json``, or ``one_shot_runs_augment16.json`` with
    test-time augmentation (so both results live side by side)."""
    return "one_shot_runs.json" if not augment_copies else f"one_shot_runs_augment{augment_copies}.json"


SOURCE_CONFIGS: dict[str, type] = {"sinusoid": SinusoidConfig, "omniglot": OmniglotConfig}
"""Task sources by name, each with its config dataclass."""


def source_config_type(name: str) -> type:
    """The config dataclass of source ``name`` (one-line ValueError for an unknown name)."""
    if name not in SOURCE_CONFIGS:
        import difflib

        close = difflib.get_close_matches(str(name), list(SOURCE_CONFIGS), n=1, cutoff=0.5)
        raise ConfigError(f"unknown task source {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"choose one of: {', '.join(SOURCE_CONFIGS)}")
    return SOURCE_CONFIGS[name]


def source_fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(source_config_type(name))}
