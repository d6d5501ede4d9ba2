"""Meta-training of few-shot supervised learners: config, the outer loop, checkpoints, resume, evaluation.

The Python API::

    from metarl.training import FewShotConfig, train_fewshot
    run_dir = train_fewshot(FewShotConfig(learner="maml", source="sinusoid", iterations=2000))

Every iteration ``i`` samples its meta-batch with a seed derived from ``(seed, i)``, so a run resumed from a
checkpoint at iteration ``i`` continues with exactly the batches an uninterrupted run would have seen; together
with the saved model and optimiser state this reproduces the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarl.core.device import resolve_device
from metarl.core.seeding import derive_seed
from metarl.evaluation import evaluate_fewshot, plot_adaptation, save_json
from metarl.runs import (
    MetricsLogger,
    RunError,
    create_run_dir,
    load_checkpoint,
    read_config,
    remove_if_failed,
    save_checkpoint,
)


@dataclass
class FewShotConfig:
    """Meta-train a few-shot learner on a task source, then evaluate it on held-out tasks."""

    learner: str = "maml"
    """maml, fomaml, meta-sgd, anil, reptile, protonet, matching or blackbox"""
    source: str = "sinusoid"
    """task source: sinusoid or omniglot"""
    data_root: str | None = None
    """folder with the Omniglot zips (default: $METARL_DATA)"""
    ways: int = 5
    """classes per task at evaluation (classification)"""
    shots: int = 10
    """support examples per class (classification) or support points (regression)"""
    query_shots: int = 10
    """query examples per class / query points"""
    train_ways: int | None = None
    """classes per training episode (Prototypical Networks: 60 on Omniglot); default: ways"""
    train_shots: int | None = None
    """support shots per training episode; default: shots"""
    meta_batch_size: int = 25
    """tasks per meta-iteration"""
    iterations: int = 2000
    """meta-iterations (outer steps)"""
    outer_lr: float = 1e-3
    """outer-loop (Adam) learning rate"""
    inner_lr: float | None = None
    """inner-loop step size (gradient learners; default: the learner's)"""
    inner_steps: int | None = None
    """inner-loop steps during meta-training (default: the learner's)"""
    first_order: bool = False
    """first-order inner loop (MAML family)"""
    meta_step_size: float | None = None
    """Reptile's outer interpolation step ε (default 0.1)"""
    seed: int = 0
    """one seed for initialisation and task sampling"""
    eval_tasks: int = 100
    """held-out tasks per evaluation cell"""
    eval_shots: tuple[int, ...] = ()
    """shots to evaluate (default: shots)"""
    eval_steps: tuple[int, ...] = (0, 1, 10)
    """inner-loop steps to evaluate (gradient learners)"""
    eval_split: str = "test"
    """split of the held-out tasks"""
    eval_seed: int = 12345
    """seed of the held-out tasks (the same tasks for every learner)"""
    checkpoint_every: int = 500
    """iterations between checkpoints (and at the end)"""
    log_every: int = 50
    """iterations between metric rows"""
    device: str = "cpu"
    """cpu, cuda or auto"""
    threads: int | None = None
    """torch intra-op threads (default: torch's)"""
    run_dir: str | None = None
    """where to write the run (default: runs/<learner>-<source>-<time>)"""
    progress: bool = True
    """show a progress bar"""
    augment: bool = False
    """omniglot: random affine distortion of every training image (evaluation images are never distorted)"""
    split_fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
    """omniglot: train/val/test shares of the characters (1 0 0: train on all, evaluate on the one-shot runs)"""
    one_shot_runs: str | None = None
    """omniglot: a zip or folder of the original one-shot runs to evaluate on after training"""
    one_shot_augment: int = 0
    """omniglot one-shot runs: test-time augmentation, distorted copies of each support and query drawing"""
    within_alphabet: float = 0.0
    """omniglot: share of tasks whose classes all come from one alphabet (the one-shot runs are within-alphabet)"""
    image_size: int = 28
    """omniglot: side of the resized images (training, evaluation and one-shot runs alike)"""

    def __post_init__(self) -> None:
        from metarl.agents import LEARNERS, RL_AGENTS
        from metarl.envs.fewshot import SOURCES

        if self.learner not in LEARNERS:
            raise ValueError(f"unknown learner {self.learner!r}; choose a few-shot learner ({', '.join(LEARNERS)}) "
                             f"or a meta-RL agent ({', '.join(RL_AGENTS)})")
        if self.source not in SOURCES:
            raise ValueError(f"unknown task source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        for name in ("ways", "shots", "query_shots", "meta_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_tasks < 0 or (self.eval_tasks == 0 and not self.one_shot_runs):
            raise ValueError(f"eval_tasks must be >= 1 (0 only with one_shot_runs), got {self.eval_tasks}")
        if self.one_shot_augment < 0:
            raise ValueError(f"one_shot_augment must be >= 0, got {self.one_shot_augment}")
        if self.source != "omniglot" and (self.augment or self.one_shot_runs or self.within_alphabet
                                          or self.image_size != 28):
            raise ValueError("augment, one_shot_runs, within_alphabet and image_size apply to the omniglot source only")
        if not 0.0 <= self.within_alphabet <= 1.0:
            raise ValueError(f"within_alphabet must be a probability in [0, 1], got {self.within_alphabet}")
        if not 16 <= self.image_size <= 105:
            raise ValueError(f"image_size must be in [16, 105] (Conv-4 halves it four times), got {self.image_size}")
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("train_ways", "train_shots", "inner_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("outer_lr", "inner_lr"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and value < float("inf")):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if any(k < 1 for k in self.eval_shots) or any(s < 0 for s in self.eval_steps):
            raise ValueError("eval_shots must be >= 1 and eval_steps >= 0")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        self.eval_shots = tuple(self.eval_shots) or (self.shots,)
        self.eval_steps = tuple(self.eval_steps)
        from metarl.agents import GRADIENT_LEARNERS

        if (self.source == "omniglot" and self.learner in (*GRADIENT_LEARNERS, "blackbox")
                and self.train_ways not in (None, self.ways)):
            raise ValueError(f"{self.learner} has a {self.ways}-way output layer: train_ways must equal ways")


def build(config: FewShotConfig):
    """The task source and the learner a config describes."""
    from metarl.agents import make_learner
    from metarl.envs.fewshot import make_source

    options: dict[str, Any] = {}
    if config.source == "omniglot":
        options = {"augment": config.augment, "split_fractions": config.split_fractions,
                   "within_alphabet": config.within_alphabet, "image_size": config.image_size}
    source = make_source(config.source, root=config.data_root, ways=config.ways, shots=config.shots,
                         query_shots=config.query_shots, **options)
    learner = make_learner(config.learner, source, ways=config.ways, seed=config.seed, inner_lr=config.inner_lr,
                           inner_steps=config.inner_steps, first_order=config.first_order,
                           meta_step_size=config.meta_step_size)
    return source, learner


def _train_batch(source, config: FewShotConfig, iteration: int):
    options: dict[str, Any] = {"shots": config.train_shots or config.shots}
    if config.source == "omniglot":
        options["ways"] = config.train_ways or config.ways
    return source.sample(config.meta_batch_size, split="train", seed=derive_seed(config.seed, "train", iteration),
                         **options)


def train_fewshot(config: FewShotConfig, *, resume_dir: Path | None = None) -> Path:
    """Meta-train (or resume) and evaluate; returns the run directory."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    source, learner = build(config)  # bad options and missing data fail here, before any directory exists
    learner.to(device)
    optimizer = learner.configure_optimizer(config.outer_lr)
    start = 0
    if resume_dir is None:
        run_dir = create_run_dir(Path(config.run_dir) if config.run_dir else None,
                                 f"{config.learner}-{config.source}", config)
    else:
        run_dir = Path(resume_dir)
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state.get("kind") != "fewshot" or state.get("learner") != config.learner:
            raise RunError(f"checkpoint in {run_dir} is not a few-shot {config.learner} run")
        try:
            learner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise RunError(f"checkpoint does not match the config: {str(err).splitlines()[0][:200]}") from None
        start = int(state["iteration"])
    try:
        return _train_loop(config, run_dir, source, learner, optimizer, start, device, resumed=resume_dir is not None)
    except BaseException:
        remove_if_failed(run_dir, created=resume_dir is None)
        raise


def _train_loop(config, run_dir, source, learner, optimizer, start, device, resumed: bool) -> Path:
    logger = MetricsLogger(run_dir, resume_from_step=start if resumed else None)
    if start == 0:
        logger.log_text("config", "\n".join(f"{k}: {v}" for k, v in dataclasses.asdict(config).items()))
    checkpoint_path = run_dir / "checkpoints" / "last.pt"

    def checkpoint(iteration: int) -> None:
        save_checkpoint(checkpoint_path, {"kind": "fewshot", "learner": config.learner, "iteration": iteration,
                                          "model": learner.state_dict(), "optimizer": optimizer.state_dict()})

    from tqdm.auto import tqdm

    bar = tqdm(total=config.iterations, initial=start, desc=f"{config.learner} on {config.source}",
               disable=not config.progress, dynamic_ncols=True)
    window: list[dict[str, float]] = []
    tick = time.perf_counter()
    learner.train()
    for iteration in range(start, config.iterations):
        # ALGO LOGIC: one outer step on a fresh meta-batch of training tasks
        metrics = learner.outer_step(_train_batch(source, config, iteration).to(device), optimizer)
        window.append(metrics)
        done = iteration + 1
        if done % config.log_every == 0 or done == config.iterations:
            elapsed = time.perf_counter() - tick
            averaged = {f"train/{k}": sum(m.get(k, 0.0) for m in window) / len(window) for k in window[-1]}
            averaged["charts/iterations_per_s"] = len(window) / max(elapsed, 1e-9)
            logger.log(done, averaged)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in averaged.items()})
            window, tick = [], time.perf_counter()
        if done % config.checkpoint_every == 0 or done == config.iterations:
            checkpoint(done)
        bar.update(1)
    bar.close()
    if config.iterations == 0 or not checkpoint_path.exists():
        checkpoint(config.iterations)
    logger.close()
    evaluate_run(run_dir, learner=learner, source=source, config=config)
    return run_dir


def load_learner(run_dir: Path, config: FewShotConfig | None = None):
    """The task source and the learner of a run directory, with the weights of its last checkpoint."""
    run_dir = Path(run_dir)
    config = config or load_config(run_dir)
    source, learner = build(config)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    if state.get("kind") != "fewshot":
        raise RunError(f"{run_dir} is not a few-shot run")
    try:
        learner.load_state_dict(state["model"])
    except RuntimeError as err:
        raise RunError(f"checkpoint does not match the config: {str(err).splitlines()[0][:200]}") from None
    return source, learner


def evaluate_run(run_dir: Path, *, learner=None, source=None, config: FewShotConfig | None = None,
                 eval_tasks: int | None = None) -> dict[str, Any]:
    """Evaluate a run's final checkpoint on held-out tasks; writes evaluation.json and adaptation.png."""
    run_dir = Path(run_dir)
    if config is None:
        config = load_config(run_dir)
    if learner is None:
        source, learner = load_learner(run_dir, config)
    device = next(learner.parameters()).device
    if getattr(source, "augment", False):  # held-out images are never distorted
        source = copy.copy(source)
        source.augment = False
    result: dict[str, Any] = {}
    if eval_tasks or config.eval_tasks:
        result = evaluate_fewshot(learner, source, shots=config.eval_shots, steps=config.eval_steps,
                                  num_tasks=eval_tasks or config.eval_tasks, split=config.eval_split,
                                  seed=config.eval_seed, device=device)
        result["config"] = dataclasses.asdict(config)
        save_json(run_dir / "evaluation.json", result)
        plot_adaptation(result, run_dir / "adaptation.png", title=f"{config.learner} on {config.source}")
    if config.one_shot_runs:
        from metarl.envs.fewshot.omniglot_runs import OneShotRuns, evaluate_one_shot_runs

        if learner.name not in ("protonet", "matching") and config.ways != 20:
            raise RunError(f"{config.learner} has a {config.ways}-way output layer; the one-shot runs are 20-way")
        runs = OneShotRuns(config.one_shot_runs, image_size=config.image_size)
        steps = max(config.eval_steps) if learner.uses_gradient_steps else None
        one_shot = evaluate_one_shot_runs(learner, runs.as_episode_batch(), steps=steps, device=device,
                                          augment_copies=config.one_shot_augment, seed=config.eval_seed)
        one_shot["config"] = dataclasses.asdict(config)
        save_json(run_dir / one_shot_result_name(config.one_shot_augment), one_shot)
        result["one_shot_runs"] = one_shot
    return result


def one_shot_result_name(augment_copies: int = 0) -> str:
    """File of a run's one-shot-runs result: ``one_shot_runs.json``, or ``one_shot_runs_augment16.json`` with
    test-time augmentation (so both results live side by side)."""
    return "one_shot_runs.json" if not augment_copies else f"one_shot_runs_augment{augment_copies}.json"


def load_config(run_dir: Path) -> FewShotConfig:
    """The config a run directory was made with (validated again)."""
    raw = read_config(run_dir)
    names = {f.name for f in dataclasses.fields(FewShotConfig)}
    unknown = set(raw) - names
    if unknown:
        raise RunError(f"{run_dir}/config.json has unknown fields {sorted(unknown)}")
    for key in ("eval_shots", "eval_steps", "split_fractions"):
        if key in raw:
            raw[key] = tuple(raw[key])
    try:
        return FewShotConfig(**raw)
    except (TypeError, ValueError) as err:
        raise RunError(f"{run_dir}/config.json is invalid: {err}") from None
