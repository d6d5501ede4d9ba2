"""One run loop for every learner and agent: run config, run directory, metrics, checkpoints, resume, evaluation.

The Python API::

    from metarl.training import make_run_config, train
    run = make_run_config("maml", iterations=2000, inner_lr=0.01)                      # few-shot, sinusoid
    run = make_run_config("protonet", source="omniglot", ways=20, shots=1, train_ways=60)
    run = make_run_config("maml-trpo", env="metarl/Navigation2D-v0", iterations=50,
                          preset="experiments/presets/maml_trpo_navigation.yaml", meta_batch_size=20)
    run_dir = train(run)            # meta-train, then evaluate on held-out tasks
    resume(run_dir)                 # after a kill: the same result as an uninterrupted run (CPU)
    evaluate(run_dir, eval_tasks=200)

A :class:`RunConfig` holds the run's own settings and three dataclasses: ``learner`` (the learner's or agent's config,
``agents/<name>.py``), ``task`` (where tasks come from: a few-shot source config of
:mod:`metarl.envs.fewshot.sources`, or :class:`EnvTasks` for meta-RL) and ``evaluation`` (:class:`FewShotEvaluation`
or :class:`MetaRLEvaluation`). Few-shot and meta-RL differ only in a *session* (:class:`FewShotSession`,
:class:`MetaRLSession`): what one iteration does, what is checkpointed, and the evaluation protocol
(:mod:`metarl.evaluation`). Everything else is written once here.

Before the first iteration every setting is checked: the learner and source or env are built, one training episode
and one episode of every evaluation cell are drawn, and requests too large for memory are refused with the size they
would need. Only then is the run directory created; if anything fails before its first checkpoint, it is removed.

Determinism: iteration ``i`` draws its randomness from ``(seed, i)`` or from RNG state the session checkpoints; the
metrics of a partly logged window are checkpointed too, so a resumed run writes the same ``metrics.csv`` as an
uninterrupted one (apart from the timing columns) and the same evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metarl.core.batch import EpisodeBatch
from metarl.core.config import (
    ConfigError,
    check_choice,
    check_int,
    config_from_dict,
    load_yaml_mapping,
    merge_values,
)
from metarl.core.device import torch_threads
from metarl.core.outcomes import record_success
from metarl.core.seeding import derive_seed
from metarl.runs import (
    MetricsLogger,
    RunError,
    RunLock,
    atomic_write_json,
    create_run_dir,
    load_checkpoint,
    read_config,
    remove_if_failed,
    remove_stale_temporaries,
    save_checkpoint,
)

CONFIG_VERSION = 2
"""Layout of config.json (2: ``learner``/``task``/``evaluation`` sections)."""


# ----------------------------------------------------------------------------------------------------------------------
# Configs


@dataclass
class EnvTasks:
    """Meta-RL tasks: a Gymnasium task environment."""

    env: str = "metarl/Navigation2D-v0"
    """a Gymnasium id whose env implements sample_tasks/set_task/get_task (also module:EnvId-v0)"""

    def __post_init__(self) -> None:
        if not isinstance(self.env, str) or not self.env:
            raise ConfigError(f"env must be a Gymnasium id, got {self.env!r}")


@dataclass
class FewShotEvaluation:
    """The held-out evaluation of a few-shot learner (:func:`metarl.evaluation.evaluate_fewshot`)."""

    eval_tasks: int = 100
    """held-out tasks per evaluation cell (0: none, e.g. when only a source's own protocol is wanted)"""
    eval_shots: tuple[int, ...] = ()
    """shots to evaluate; empty: the source's shots"""
    eval_steps: tuple[int, ...] = (0, 1, 10)
    """inner-loop steps to evaluate (learners that adapt by gradient steps)"""
    eval_split: str = "test"
    """split of the held-out tasks"""
    eval_seed: int = 12345
    """seed of the held-out tasks (the same tasks for every learner)"""

    def __post_init__(self) -> None:
        check_int(self.eval_tasks, "eval_tasks", minimum=0)
        self.eval_shots, self.eval_steps = tuple(self.eval_shots), tuple(self.eval_steps)
        for k in self.eval_shots:
            check_int(k, "eval_shots", minimum=1)
        for s in self.eval_steps:
            check_int(s, "eval_steps", minimum=0)
        if not isinstance(self.eval_split, str):
            raise ConfigError(f"eval_split must be a split name, got {self.eval_split!r}")
        check_int(self.eval_seed, "eval_seed")


@dataclass
class MetaRLEvaluation:
    """The held-out evaluation of a meta-RL agent (:func:`metarl.evaluation.evaluate_meta_rl`)."""

    eval_tasks: int = 20
    """held-out tasks per split"""
    eval_episodes: int | None = None
    """adaptation episodes per task (column 0 = before adaptation); None: the agent's trial length
    (episodes_per_trial) where it has one, else 3"""
    eval_splits: tuple[str, ...] = ("test", "ood")
    """splits to evaluate; ood is skipped where the env has none, any other split the env lacks is refused"""
    eval_seed: int = 12345
    """seed of the held-out tasks (the same for every agent)"""
    protocol: str = "auto"
    """auto: the env's own benchmark protocol where it has one (Meta-World's: metarl.envs.metaworld), else generic;
    generic: eval_tasks held-out tasks per split, eval_episodes each; benchmark: the env's own (an error without)"""
    protocol_rounds: int | None = None
    """evaluation rounds of the env's own protocol (Meta-World: rounds of 20 test tasks, 10 by default); None: the
    protocol's own number"""

    def __post_init__(self) -> None:
        check_choice(self.protocol, "protocol", ("auto", "generic", "benchmark"))
        check_int(self.protocol_rounds, "protocol_rounds", minimum=1, optional=True)
        check_int(self.eval_tasks, "eval_tasks", minimum=1)
        check_int(self.eval_episodes, "eval_episodes", minimum=1, optional=True)
        self.eval_splits = tuple(self.eval_splits)
        if not self.eval_splits or not all(isinstance(s, str) for s in self.eval_splits):
            raise ConfigError(f"eval_splits must be one or more split names, got {self.eval_splits!r}")
        check_int(self.eval_seed, "eval_seed")


RUN_DEFAULTS = {"fewshot": {"iterations": 2000, "checkpoint_every": 500, "log_every": 50},
                "meta-rl": {"iterations": 100, "checkpoint_every": 10, "log_every": 1}}


@dataclass
class RunConfig:
    """A run: the learner or agent ``name`` with its config, where its tasks come from, how it is evaluated, and
    the run's own settings."""

    name: str = "maml"
    """learner or agent (metarl list)"""
    learner: Any = None
    """the learner's or agent's config dataclass (default: its defaults)"""
    task: Any = None
    """few-shot: a source config (metarl.envs.fewshot.sources); meta-RL: EnvTasks"""
    evaluation: Any = None
    """FewShotEvaluation or MetaRLEvaluation (default: its defaults)"""
    iterations: int | None = None
    """meta-iterations (outer steps); None: 2000 few-shot, 100 meta-RL"""
    checkpoint_every: int | None = None
    """iterations between checkpoints (and at the end); None: 500 few-shot, 10 meta-RL"""
    log_every: int | None = None
    """iterations per metrics row (their mean); None: 50 few-shot, 1 meta-RL"""
    threads: int | None = None
    """torch intra-op threads for this run's training and evaluation; None: torch's default"""
    run_dir: str | None = None
    """where to write the run; None: runs/<name>-<source or env>-<time>"""
    progress: bool = True
    """show a progress bar (--no-progress hides it)"""
    preset: str | None = None
    """a YAML file of field values (experiments/presets/...) under the command line's; recorded in config.json"""
    init_from: str | None = None
    """warm start: a run directory of the same learner or agent whose last weights start this run (e.g. fine-tune
    with a larger meta-batch); the iteration count, seeds and env steps of this run start from zero"""

    def __post_init__(self) -> None:
        from metarl.agents import entry

        self.domain = entry(self.name).domain
        learner_type = entry(self.name).config_type
        if self.learner is None:
            self.learner = learner_type()
        if not isinstance(self.learner, learner_type):
            raise ConfigError(f"{self.name} takes a {learner_type.__name__}, got {type(self.learner).__name__}")
        if self.domain == "fewshot":
            from metarl.envs.fewshot.sources import SOURCE_CONFIGS, SinusoidConfig

            self.task = SinusoidConfig() if self.task is None else self.task
            self.evaluation = FewShotEvaluation() if self.evaluation is None else self.evaluation
            if type(self.task) not in SOURCE_CONFIGS.values() or not isinstance(self.evaluation, FewShotEvaluation):
                raise ConfigError(f"{self.name} is a few-shot learner: task must be a source config and evaluation "
                                  "a FewShotEvaluation")
        else:
            self.task = EnvTasks() if self.task is None else self.task
            self.evaluation = MetaRLEvaluation() if self.evaluation is None else self.evaluation
            if not isinstance(self.task, EnvTasks) or not isinstance(self.evaluation, MetaRLEvaluation):
                raise ConfigError(f"{self.name} is a meta-RL agent: task must be EnvTasks and evaluation a "
                                  "MetaRLEvaluation")
        for key, value in RUN_DEFAULTS[self.domain].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        check_int(self.iterations, "iterations", minimum=0)
        check_int(self.checkpoint_every, "checkpoint_every", minimum=1)
        check_int(self.log_every, "log_every", minimum=1)
        check_int(self.threads, "threads", minimum=1, optional=True)
        if not isinstance(self.progress, bool):
            raise ConfigError(f"progress must be true or false, got {self.progress!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``config.json`` (read back by :func:`load_run`)."""
        from metarl.runs import config_to_dict

        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record = {k: (config_to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in record.items()}
        return {"config_version": CONFIG_VERSION, "domain": self.domain, **record}


def section_types(name: str, source: str | None = None) -> dict[str, type]:
    """The dataclass of each section of ``name``'s run config: ``learner``, ``task`` and ``evaluation``."""
    from metarl.agents import entry

    found = entry(name)
    if found.domain == "fewshot":
        from metarl.envs.fewshot.sources import source_config_type

        return {"learner": found.config_type, "task": source_config_type(source or "sinusoid"),
                "evaluation": FewShotEvaluation}
    return {"learner": found.config_type, "task": EnvTasks, "evaluation": MetaRLEvaluation}


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("name", "learner", "task",
                                                                                    "evaluation"))


def make_run_config(name: str, values: Mapping[str, Any] | None = None, *, preset: str | Path | None = None,
                    **fields: Any) -> RunConfig:
    """A validated :class:`RunConfig` from flat field values: ``preset`` (a YAML mapping), then ``values``, then
    ``fields``. Every key is a field of the run or of one of its sections (the names are unique across them); an
    unknown key is refused with the closest valid one. A field the learner shares with the run (``progress``)
    takes the run's value."""
    flat: dict[str, Any] = {}
    if preset is not None:
        flat = merge_values(flat, load_yaml_mapping(preset))
        flat["preset"] = str(preset)
    flat = merge_values(flat, dict(values or {}))
    flat = merge_values(flat, fields)
    types = section_types(name, flat.get("source"))
    sections: dict[str, dict[str, Any]] = {section: {} for section in types}
    run_values: dict[str, Any] = {}
    owners = {**{f.name: section for section, t in types.items() for f in dataclasses.fields(t) if f.init},
              **{key: "run" for key in RUN_FIELDS}}
    for key, value in flat.items():
        if key not in owners:
            import difflib

            from metarl.core.config import check_renamed_fields

            check_renamed_fields(types["learner"], {key: value}, f"preset {preset}" if preset is not None else None)

            close = difflib.get_close_matches(key, list(owners), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f" in preset {preset}" if preset is not None and key in load_yaml_mapping(preset) else ""
            raise ConfigError(f"unknown {name} config field {key!r}{where}{hint}; see `metarl train {name} --help`")
        (run_values if owners[key] == "run" else sections[owners[key]]).__setitem__(key, value)
    learner_fields = {f.name for f in dataclasses.fields(types["learner"])}
    for key in learner_fields & set(RUN_FIELDS):  # shared names: the run's value is handed to the learner
        if key in run_values:
            sections["learner"][key] = run_values[key]
    built = {section: config_from_dict(t, sections[section]) for section, t in types.items()}
    return RunConfig(name=name, **built, **run_values)


def load_run(run_dir: str | Path) -> RunConfig:
    """The run config a run directory was made with (validated again); one-line :class:`RunError` otherwise."""
    run_dir = Path(run_dir)
    record = read_config(run_dir)
    if not isinstance(record, dict) or record.get("config_version") != CONFIG_VERSION:
        raise RunError(f"{run_dir}/config.json is invalid: not a metarl run config of this version (config_version "
                       f"{CONFIG_VERSION}; a run made by an older metarl is read by the commit that made it)")
    try:
        name = record["name"]
        types = section_types(name, (record.get("task") or {}).get("source"))
        sections = {section: config_from_dict(t, record.get(section) or {}, where=f"{run_dir}/config.json "
                                                                              f"({section})")
                    for section, t in types.items()}
        run_values = {key: record[key] for key in RUN_FIELDS if key in record}
        return RunConfig(name=name, **sections, **run_values)
    except (KeyError, ValueError, TypeError) as err:
        raise RunError(f"{run_dir}/config.json is invalid: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None


# ----------------------------------------------------------------------------------------------------------------------
# Sessions: what one iteration does, what is checkpointed, how it is evaluated


def check_fits(nbytes: float, what: str) -> None:
    """Refuse a request whose data alone would not fit in the memory available now, with the size it needs."""
    from metarl.core.agent_env import available_memory

    available = available_memory()
    if available is not None and nbytes > available:
        raise ConfigError(f"{what} needs about {nbytes / 2**30:.3g} GiB, more than the {available / 2**30:.3g} GiB "
                          "of memory available: ask for less")


class FewShotSession:
    """A few-shot learner on a task source: each iteration is one outer step on a fresh meta-batch."""

    kind = "fewshot"

    def __init__(self, run: RunConfig) -> None:
        from metarl.agents import make_learner
        from metarl.core.device import resolve_device

        self.run = run
        self.device = resolve_device(run.learner.device)
        self.source = run.task.build()  # bad options and missing data fail here, before any directory exists
        self.learner = make_learner(run.name, self.source, run.learner)
        run.task.check_learner(run.name, self.learner)
        self._check_requests()
        self.learner.to(self.device)
        self.optimizer = self.learner.configure_optimizer(run.learner.outer_lr)

    def _check_requests(self) -> None:
        """Draw one training task and one task of each evaluation cell: impossible shapes, splits and sizes are
        refused now, not after training."""
        run, evaluation = self.run, self.run.evaluation
        if not evaluation.eval_tasks and not run.task.has_extra_evaluations():
            raise ConfigError("eval_tasks must be >= 1 (0 only with a source's own evaluation, e.g. one_shot_runs)")
        try:
            one = self.source.sample(1, split="train", seed=0, **run.task.train_options())
        except ValueError as err:
            raise ConfigError(f"training episodes: {err}") from None
        check_fits(one.nbytes() * run.learner.meta_batch_size, f"meta_batch_size={run.learner.meta_batch_size}")
        self._dry_run(one)
        if evaluation.eval_tasks:
            eval_source = run.task.for_evaluation(self.source)
            for shots in self.eval_shots:
                try:
                    cell = eval_source.sample(1, split=evaluation.eval_split, seed=0, shots=shots)
                except ValueError as err:
                    raise ConfigError(f"evaluation (eval_shots={shots}, eval_split={evaluation.eval_split!r}): "
                                      f"{err}") from None
                check_fits(cell.nbytes() * evaluation.eval_tasks, f"eval_tasks={evaluation.eval_tasks}")

    def _dry_run(self, batch: EpisodeBatch) -> None:
        """The learner's training loss on one drawn task, so that episodes the learner cannot train on (a Siamese
        network on 1-way episodes, shapes a model cannot take) are refused before any run directory exists. No
        update is made: weights, buffers (batch-norm statistics) and the torch random state are put back."""
        import copy

        import torch

        saved = copy.deepcopy(self.learner.state_dict())
        try:
            with torch.random.fork_rng(devices=[]):
                self.learner.meta_loss(batch)
        except (ValueError, RuntimeError, IndexError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{self.run.name} cannot train on these episodes: {message}") from None
        finally:
            self.learner.load_state_dict(saved)

    @property
    def eval_shots(self) -> tuple[int, ...]:
        return self.run.evaluation.eval_shots or (self.run.task.shots,)

    def train_iteration(self, iteration: int) -> dict[str, float]:
        # ALGO LOGIC: one outer step on a fresh meta-batch of training tasks, drawn from (seed, iteration)
        batch = self.source.sample(self.run.learner.meta_batch_size, split="train",
                                   seed=derive_seed(self.run.learner.seed, "train", iteration),
                                   **self.run.task.train_options())
        metrics = self.learner.outer_step(batch.to(self.device), self.optimizer)
        return {f"train/{key}": value for key, value in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.learner.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def load_weights(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["model"])

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        from metarl.evaluation import evaluate_fewshot, plot_adaptation, plot_reliability, save_json

        run, evaluation = self.run, self.run.evaluation
        source = run.task.for_evaluation(self.source)
        results: dict[str, Any] = {}
        if evaluation.eval_tasks:
            result = evaluate_fewshot(self.learner, source, shots=self.eval_shots, steps=evaluation.eval_steps,
                                      num_tasks=evaluation.eval_tasks, split=evaluation.eval_split,
                                      seed=evaluation.eval_seed, device=self.device)
            result["config"] = run.to_dict()
            save_json(run_dir / "evaluation.json", result)
            plot_adaptation(result, run_dir / "adaptation.png", title=f"{run.name} on {run.task.source}")
            plot_reliability(result, run_dir / "reliability.png", title=f"{run.name} on {run.task.source}")
            results["evaluation.json"] = result
        steps = max(evaluation.eval_steps) if self.learner.uses_gradient_steps and evaluation.eval_steps else None
        for file_name, result in run.task.extra_evaluations(self.learner, steps=steps, device=self.device,
                                                            seed=evaluation.eval_seed).items():
            result["config"] = run.to_dict()
            save_json(run_dir / file_name, result)
            results[file_name] = result
        return results

    def close(self) -> None:
        pass


def probe_task_env(env_id: str, config: Any = None) -> tuple[str, ...]:
    """Make ``env_id`` once (with the agent config's ``env_kwargs``/``max_episode_steps`` where it has them) and check
    it is a task environment; returns the splits it offers. One-line ValueErrors (:mod:`metarl.core.agent_env`)."""
    import metarl.envs  # noqa: F401 - registers metarl/* ids
    from metarl.core.agent_env import check_task_env, make_env
    from metarl.envs.base import SPLITS

    env = make_env(env_id, getattr(config, "env_kwargs", None), getattr(config, "max_episode_steps", None))
    try:
        check_task_env(env, env_id)
        return tuple(getattr(env.unwrapped, "splits", SPLITS))
    finally:
        env.close()


class MetaRLSession:
    """A meta-RL agent on a task environment: each iteration is the agent's ``train_iteration``."""

    kind = "meta-rl"

    def __init__(self, run: RunConfig) -> None:
        from metarl.agents import entry

        self.run = run
        agent_type, _ = entry(run.name).load()
        self.agent = agent_type(run.task.env, run.learner)  # bad env or hyperparameters fail here, before any dir
        try:
            task_env = getattr(self.agent, "task_env", None)  # the agent's own probe: the env is not made twice
            if task_env is not None:
                from metarl.envs.base import SPLITS

                offered = tuple(getattr(task_env, "splits", SPLITS))
            else:
                offered = probe_task_env(run.task.env, run.learner)
            for split in run.evaluation.eval_splits:
                if split not in offered and split != "ood":
                    check_choice(split, f"eval_splits of {run.task.env}", offered)
            check_meta_test = getattr(self.agent, "check_meta_test", None)  # e.g. a context the trial must fit
            if check_meta_test is not None:
                check_meta_test(self.eval_episodes)
            own = getattr(getattr(task_env, "unwrapped", task_env), "benchmark_protocol", None)
            if run.evaluation.protocol == "benchmark" and task_env is not None and not callable(own):
                raise ConfigError(f"protocol benchmark: {run.task.env} has no benchmark protocol of its own (use "
                                  "protocol generic or auto)")
        except BaseException:
            self.agent.close()
            raise

    @property
    def eval_episodes(self) -> int:
        """Episodes per meta-test trial: ``eval_episodes``, else the agent's trial length, else 3."""
        return self.run.evaluation.eval_episodes or int(getattr(self.agent.config, "episodes_per_trial", 3))

    def train_iteration(self, iteration: int) -> dict[str, float]:
        return self.agent.train_iteration(iteration)

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state)

    def load_weights(self, state: dict[str, Any]) -> None:
        load_weights = getattr(self.agent, "load_weights", None)
        if load_weights is None:
            raise RunError(f"--init-from is not supported by {self.run.name} (it has no load_weights)")
        load_weights(state)

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        from metarl.evaluation import evaluate_meta_rl, plot_meta_rl, save_json

        run = self.run
        episodes = self.eval_episodes
        result = evaluate_meta_rl(self.agent, run.task.env, splits=run.evaluation.eval_splits,
                                  num_tasks=run.evaluation.eval_tasks, num_episodes=episodes,
                                  seed=run.evaluation.eval_seed, protocol=run.evaluation.protocol,
                                  protocol_rounds=run.evaluation.protocol_rounds)
        result["config"] = run.to_dict()
        save_json(run_dir / "evaluation.json", result)
        plot_meta_rl(result, run_dir / "adaptation.png", title=f"{run.name} on {run.task.env}")
        return {"evaluation.json": result}

    def close(self) -> None:
        self.agent.close()


def build_session(run: RunConfig) -> FewShotSession | MetaRLSession:
    """The session of a run config: everything built and checked, nothing written."""
    return FewShotSession(run) if run.domain == "fewshot" else MetaRLSession(run)


# ----------------------------------------------------------------------------------------------------------------------
# The run loop


def _task_label(run: RunConfig) -> str:
    return run.task.source if run.domain == "fewshot" else run.task.env.split("/")[-1].split(":")[-1]


def _default_run_dir(run: RunConfig) -> str:
    return f"{run.name}-{_task_label(run)}"


def _check_checkpoint(state: dict[str, Any], run: RunConfig, run_dir: Path, what: str = "checkpoint") -> None:
    if state.get("kind") != run.domain or state.get("name") != run.name:
        raise RunError(f"{what} in {run_dir} is not a {run.name} run (it holds {state.get('kind')} "
                       f"{state.get('name')})")


def train(run: RunConfig, *, resume_dir: str | Path | None = None) -> Path:
    """Meta-train (or resume ``resume_dir``) and evaluate on held-out tasks; returns the run directory."""
    with torch_threads(run.threads):
        session = build_session(run)  # every setting checked before any directory exists
        try:
            if resume_dir is None:
                return _train_new(run, session)
            return _train_resumed(run, session, Path(resume_dir))
        finally:
            session.close()


def _train_new(run: RunConfig, session: Any) -> Path:
    provenance = None
    if run.init_from:
        provenance = _warm_start(session, run)
    record = run.to_dict()
    if provenance:
        record["init_from_checkpoint"] = provenance
    run_dir = create_run_dir(Path(run.run_dir) if run.run_dir else None, _default_run_dir(run), record)
    try:
        with RunLock(run_dir):
            _loop(run, session, run_dir, {})
            session.evaluate(run_dir)
    except BaseException:
        remove_if_failed(run_dir, created=True)
        raise
    return run_dir


def _train_resumed(run: RunConfig, session: Any, run_dir: Path) -> Path:
    with RunLock(run_dir):
        remove_stale_temporaries(run_dir)
        state: dict[str, Any] = {}
        checkpoint_path = run_dir / "checkpoints" / "last.pt"
        if checkpoint_path.exists():
            state = load_checkpoint(checkpoint_path)
            _check_checkpoint(state, run, run_dir)
            try:
                session.load_state_dict(state["state"])
            except (RuntimeError, KeyError, ValueError, TypeError) as err:
                raise RunError(f"checkpoint does not match the config: {str(err).splitlines()[0][:200]}") from None
        _loop(run, session, run_dir, state)
        session.evaluate(run_dir)
    return run_dir


def _warm_start(session: Any, run: RunConfig) -> dict[str, Any]:
    path = Path(run.init_from) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise RunError(f"--init-from {run.init_from}: no checkpoint there (checkpoints/last.pt)")
    state = load_checkpoint(path)
    _check_checkpoint(state, run, Path(run.init_from), "--init-from checkpoint")
    try:
        session.load_weights(state["state"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise RunError(f"--init-from {run.init_from}: weights do not fit this config: "
                       f"{str(err).splitlines()[0][:200]}") from None
    return {"run_dir": str(run.init_from), "iteration": int(state.get("iteration", 0)),
            "env_steps": int(state.get("env_steps", 0))}


def _mean_row(window: list[dict[str, Any]]) -> dict[str, float]:
    keys: list[str] = []
    for entry_ in window:
        keys += [k for k in entry_["metrics"] if k not in keys]
    return {k: sum(float(e["metrics"].get(k, 0.0)) for e in window) / len(window) for k in keys}


def _loop(run: RunConfig, session: Any, run_dir: Path, state: dict[str, Any]) -> None:
    """Iterations ``state["iteration"]`` (0 for a new run) to ``run.iterations``: log, checkpoint."""
    from tqdm.auto import tqdm

    start = int(state.get("iteration", 0))
    env_steps = int(state.get("env_steps", 0))
    window: list[dict[str, Any]] = list(state.get("log_window", []))  # iterations not in a regular row yet
    logger = MetricsLogger(run_dir, resume_from_step=start, keep_row_at_start=start % run.log_every == 0)
    if start == 0:
        logger.log_text("config", "\n".join(f"{k}: {v}" for k, v in run.to_dict().items()))
    checkpoint_path = run_dir / "checkpoints" / "last.pt"

    def checkpoint(iteration: int) -> None:
        save_checkpoint(checkpoint_path, {"kind": run.domain, "name": run.name, "iteration": iteration,
                                          "env_steps": env_steps, "log_window": window, "state": session.state_dict()})

    bar = tqdm(total=run.iterations, initial=start, desc=f"{run.name} on {_task_label(run)}",
               disable=not run.progress, dynamic_ncols=True)
    try:
        for iteration in range(start, run.iterations):
            tick = time.perf_counter()
            with record_success() as success:  # info["success"] of the episodes the iteration finished, if any
                metrics = dict(session.train_iteration(iteration))
            if success.success_rate is not None:
                metrics.setdefault("charts/success_rate", success.success_rate)
            seconds = time.perf_counter() - tick
            steps = int(metrics.pop("env_steps", 0))
            env_steps += steps
            window.append({"metrics": {k: float(v) for k, v in metrics.items()}, "seconds": seconds, "steps": steps})
            done = iteration + 1
            regular = done % run.log_every == 0
            if regular or done == run.iterations:
                row = _mean_row(window)
                elapsed = max(sum(e["seconds"] for e in window), 1e-9)
                row["charts/iterations_per_s"] = len(window) / elapsed
                if env_steps:
                    row["charts/env_steps"] = env_steps
                    row["charts/env_steps_per_s"] = sum(e["steps"] for e in window) / elapsed
                logger.log(done, row)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in row.items()
                                 if "return" in k or k.endswith(("loss", "accuracy", "env_steps_per_s"))})
                if regular:
                    window = []  # a final, irregular row keeps its window: a longer run resumed from here re-logs it
            if done % run.checkpoint_every == 0 or done == run.iterations:
                checkpoint(done)
            bar.update(1)
    finally:
        bar.close()
        logger.close()
    if not checkpoint_path.exists():
        checkpoint(run.iterations)


# ----------------------------------------------------------------------------------------------------------------------
# Entry points on a run directory


def resume(run_dir: str | Path, *, iterations: int | None = None, progress: bool | None = None) -> Path:
    """Continue ``run_dir`` from its last checkpoint (or from the start if it was killed before its first one);
    ``iterations`` trains a run on to that many iterations in all (the same result as a run started with it).
    Nothing is written unless every check passes."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    done = 0
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _check_checkpoint(state, run, run_dir)
        done = int(state.get("iteration", 0))
    if iterations is not None:
        check_int(iterations, "--iterations", minimum=0)
        if iterations < done:
            raise RunError(f"--iterations {iterations} is below the {done} iterations {run_dir} has already done")
        run = dataclasses.replace(run, iterations=iterations)
    if progress is not None:
        run = dataclasses.replace(run, progress=progress)
    with torch_threads(run.threads):
        session = build_session(run)
        try:
            if iterations is not None:  # recorded only once everything else has been checked
                with RunLock(run_dir):
                    record = read_config(run_dir)
                    record["iterations"] = iterations
                    atomic_write_json(run_dir / "config.json", record)
            return _train_resumed(run, session, run_dir)
        finally:
            session.close()


def evaluate(run_dir: str | Path, *, threads: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate ``run_dir``'s last checkpoint on held-out tasks again; ``overrides`` are evaluation fields (and a
    source's evaluation fields, e.g. Omniglot's ``one_shot_runs``). Writes evaluation.json (and the source's own
    result files) and the plot; returns them by file name."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    run = _with_evaluation_overrides(run, overrides)
    if threads is not None:
        check_int(threads, "threads", minimum=1)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    if not checkpoint_path.exists():
        raise RunError(f"{run_dir} has no checkpoint to evaluate (checkpoints/last.pt): `metarl resume {run_dir}`")
    state = load_checkpoint(checkpoint_path)
    _check_checkpoint(state, run, run_dir)
    with torch_threads(threads or run.threads):
        session = build_session(run)
        try:
            try:
                session.load_state_dict(state["state"])
            except (RuntimeError, KeyError, ValueError, TypeError) as err:
                raise RunError(f"checkpoint does not match {run_dir}/config.json: "
                               f"{str(err).splitlines()[0][:200]}") from None
            with RunLock(run_dir):
                return session.evaluate(run_dir)
        finally:
            session.close()


def load_session(run_dir: str | Path) -> FewShotSession | MetaRLSession:
    """The session of a run directory with the weights (and optimiser state) of its last checkpoint; close it
    when done (a meta-RL session holds environments). ``load_session(d).learner`` / ``.agent`` is the model."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    _check_checkpoint(state, run, run_dir)
    session = build_session(run)
    try:
        session.load_state_dict(state["state"])
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        session.close()
        raise RunError(f"checkpoint does not match {run_dir}/config.json: {str(err).splitlines()[0][:200]}") from None
    return session


def evaluation_fields(run: RunConfig) -> dict[str, dataclasses.Field]:
    """The fields ``evaluate`` takes for this run: its evaluation section and its task's evaluation fields."""
    fields = {f.name: f for f in dataclasses.fields(run.evaluation)}
    for name in getattr(type(run.task), "EVALUATION_FIELDS", ()):
        fields[name] = next(f for f in dataclasses.fields(run.task) if f.name == name)
    return fields


def _with_evaluation_overrides(run: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    allowed = evaluation_fields(run)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown evaluation field(s) {unknown} for {run.name}; valid: {', '.join(allowed)}")
    if not overrides:
        return run
    evaluation_values = {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(
        run.evaluation)}}
    task_values = {k: v for k, v in overrides.items() if k not in evaluation_values}
    evaluation = config_from_dict(type(run.evaluation), {**_plain(run.evaluation), **evaluation_values})
    task = config_from_dict(type(run.task), {**_plain(run.task), **task_values})
    if task_values and not evaluation_values and hasattr(evaluation, "eval_tasks"):
        # only a source's own protocol was asked for (e.g. --one-shot-runs): the held-out cells are not redone
        evaluation = dataclasses.replace(evaluation, eval_tasks=0) if run.domain == "fewshot" else evaluation
    return dataclasses.replace(run, evaluation=evaluation, task=task)


def _plain(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


__all__ = ["RunConfig", "EnvTasks", "FewShotEvaluation", "MetaRLEvaluation", "make_run_config", "train", "resume",
           "evaluate", "load_run", "load_session", "build_session", "FewShotSession", "MetaRLSession"]
