"""``metarl sweep``: seeds × config values as Ray tasks, each trial an ordinary run directory (issue 19).

    metarl sweep NAME --out DIR [--seeds S [S ...]] [--grid KEY=V1,V2[,...] ...] [--max-concurrent N]
                 [--retries N] [--gpus-per-trial G] [train options: --preset FILE, --set KEY=VALUE, --FIELD VALUE]

Every combination of the ``--grid`` values (the product over keys) and ``--seeds`` is one *trial*: the run that
``metarl train NAME [train options] --set KEY=VALUE ... --seed S --run-dir DIR/LABEL`` would make, with
``LABEL = NAME-KEY=VALUE-...-seedS`` (``NAME-seedS`` without a grid; characters other than letters, digits and
``._=,+-`` in a value become ``_``). Each trial is a Ray task asking for ``threads`` CPUs (``threads`` is 1 unless
given) and ``--gpus-per-trial`` GPUs; ``--max-concurrent`` caps how many run at once (default: as many as Ray places).

Before any Ray work, every trial's config goes through the train command's parsing and validation
(:func:`metarl.cli.train_values`, :func:`metarl.training.make_run_config`), and each grid point's learner or agent and
its task source or env are built once (:func:`metarl.training.build_session`), so an unknown key, a bad value, bad grid
syntax or two trials with one run directory give one line ``metarl: error: ...`` (exit status 2) and write nothing.

Faults and re-runs: a trial whose Ray worker dies or raises is submitted again (``--retries``, default 2), and the new
attempt resumes the run directory from its last checkpoint (:func:`metarl.training.resume`: the same result as an
uninterrupted run on CPU). Bad input found only inside a trial (:class:`~metarl.core.config.ConfigError`,
:class:`~metarl.runs.RunError`, e.g. the run directory locked by another process) is not retried. Running the same
command again skips the trials that finished (last checkpoint at ``iterations`` and an evaluation written) and resumes
the others; a run directory made with another config is refused.

What it leaves: DIR/LABEL/ run directories (``metarl evaluate``, ``resume`` and ``aggregate`` work on them as on any
run), DIR/sweep.json (the command, the grid, every trial's state and attempts) and, per grid point,
DIR/aggregate/NAME-KEY=VALUE.../ with ``evaluation_seeds.json`` and ``adaptation_seeds.png`` (meta-RL: what
``metarl aggregate`` writes for those seeds) or ``evaluation_seeds.json`` (few-shot: each cell's metric, mean of the
seed means ± the 95% Student-t interval over seeds).

Where it runs: Ray's own ``ray.init()`` — ``RAY_ADDRESS`` (e.g. ``RAY_ADDRESS=head-node:6379``) connects to a cluster
started with ``ray start``; otherwise a local Ray instance on this machine. On a cluster, DIR must be a filesystem
every node mounts at the same path, with metarl installed on every node. Ray is imported only by this command.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from metarl.core.config import ConfigError, merge_values, parse_overrides
from metarl.core.distributed import check_reachable, connect, import_ray
from metarl.runs import RunError, atomic_write_json

SWEEP_OPTIONS = ("--seeds", "--grid", "--out", "--max-concurrent", "--retries", "--gpus-per-trial")
"""The sweep's own options; every other option is a train option."""

GRID_REFUSED = {"seed": "give seeds with --seeds", "run_dir": "the sweep names each trial's run directory",
                "preset": "give one --preset for the whole sweep", "progress": "trials show no progress bar",
                "source": "run one sweep per source"}

PURPOSE = "metarl sweep"
"""how the Ray errors name what needs Ray"""

USAGE = ("usage: metarl sweep NAME --out DIR [--seeds S [S ...]] [--grid KEY=V1,V2[,...] ...] [--max-concurrent N]\n"
         "                    [--retries N] [--gpus-per-trial G] [train options: --preset FILE, --set KEY=VALUE, "
         "--FIELD VALUE ...]")


# ----------------------------------------------------------------------------------------------------------------------
# The plan: every trial, validated before any Ray work


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of the sweep: a grid point and a seed, with the flat field values of its run config."""

    label: str
    """the run directory's name inside the sweep's --out"""
    point: tuple[tuple[str, str], ...]
    """the grid point as (key, value text) pairs, in --grid order"""
    seed: int
    values: dict[str, Any]
    """flat field values for :func:`metarl.training.make_run_config` (the preset merged in, run_dir and seed set)"""
    record: dict[str, Any]
    """the config.json the trial writes (compared with an existing run directory's)"""
    threads: int

    @property
    def run_dir(self) -> Path:
        return Path(self.values["run_dir"])

    @property
    def point_label(self) -> str:
        return self.label.rsplit("-seed", 1)[0]


@dataclasses.dataclass
class SweepOptions:
    name: str
    out: Path
    seeds: tuple[int, ...] | None
    grid: list[tuple[str, list[tuple[str, dict[str, Any]]]]]
    """per key: (value text, the nested field values it sets) in the order given"""
    max_concurrent: int | None = None
    retries: int = 2
    gpus_per_trial: float = 0.0
    train_options: list[str] = dataclasses.field(default_factory=list)


def split_values(text: str) -> list[str]:
    """``"a,[1, 2],{x: 3}"`` -> ``["a", "[1, 2]", "{x: 3}"]``: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def parse_grid(specs: list[str]) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """``["inner_lr=0.01,0.1", "env_kwargs.goal=1,2"]`` -> per key, its values (text, nested field values); values
    are YAML as in ``--set``. One-line :class:`ConfigError` for bad syntax, repeated keys or values."""
    grid: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid expects KEY=V1,V2,..., got {spec!r}")
        head = key.split(".")[0].replace("-", "_")
        key = ".".join([head, *key.split(".")[1:]])
        if head in GRID_REFUSED:
            raise ConfigError(f"--grid {head} is not a sweep axis: {GRID_REFUSED[head]}")
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--grid {key} given twice: list all its values in one --grid {key}=V1,V2")
        values, seen = [], {}
        for value_text in split_values(text):
            if not value_text:
                raise ConfigError(f"--grid {spec!r} has an empty value")
            fields = parse_overrides([f"{key}={value_text}"])
            if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value_text):
                fields = parse_overrides([f"{key}={float(value_text)!r}"])  # YAML 1.1 reads 1e-3 as a string
            canonical = json.dumps(fields, sort_keys=True, default=str)
            if canonical in seen:
                raise ConfigError(f"--grid {key} lists the value {seen[canonical]!r} twice"
                                  + (f" (as {value_text!r})" if value_text != seen[canonical] else ""))
            seen[canonical] = value_text
            values.append((value_text, fields))
        grid.append((key, values))
    return grid


def _label_text(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text.replace(" ", ""))


def parse_sweep_args(argv: list[str]) -> SweepOptions:
    """Split ``metarl sweep`` arguments into the sweep's own options and the train options (the rest)."""
    if not argv or argv[0].startswith("-"):
        raise ConfigError("sweep needs a learner or agent name first: metarl sweep NAME --out DIR ... (see `metarl "
                          "list`)")
    name, rest = argv[0], argv[1:]
    seeds: list[int] | None = None
    grid_specs, train_options = [], []
    single: dict[str, str] = {}
    index = 0
    while index < len(rest):
        arg = rest[index]
        flag, eq, inline = arg.partition("=")
        if flag not in SWEEP_OPTIONS:
            set_pair = inline if eq else (rest[index + 1] if index + 1 < len(rest) else "")
            if flag in ("--seed", "--run-dir") or (flag == "--set" and set_pair.split("=")[0].strip().replace(
                    "-", "_") in ("seed", "run_dir")):
                raise ConfigError("give seeds with --seeds and the sweep's folder with --out (each trial's seed and "
                                  "run directory are the sweep's)")
            train_options.append(arg)
            index += 1
            continue
        if flag == "--seeds":
            texts = [inline] if eq else []
            index += 1
            while not eq and index < len(rest) and re.fullmatch(r"-?\d+(,-?\d+)*,?", rest[index]):
                texts.append(rest[index])
                index += 1
            items = [t for text in texts for t in text.split(",") if t]
            if not items or not all(re.fullmatch(r"-?\d+", t) for t in items):
                raise ConfigError(f"--seeds expects one or more integers, got {' '.join(texts) or 'nothing'}")
            seeds = (seeds or []) + [int(t) for t in items]
            continue
        if eq:
            value, index = inline, index + 1
        elif index + 1 < len(rest):
            value, index = rest[index + 1], index + 2
        else:
            raise ConfigError(f"{flag} expects a value")
        if flag == "--grid":
            grid_specs.append(value)
        elif flag in single:
            raise ConfigError(f"{flag} given twice")
        else:
            single[flag] = value
    if "--out" not in single or not single["--out"].strip():
        raise ConfigError("sweep needs --out DIR (the folder of the trials' run directories)")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    options = SweepOptions(name=name, out=Path(single["--out"]), seeds=tuple(seeds) if seeds is not None else None,
                           grid=parse_grid(grid_specs), train_options=train_options)
    if "--max-concurrent" in single:
        options.max_concurrent = _parse_number(single["--max-concurrent"], "--max-concurrent", int, 1)
    if "--retries" in single:
        options.retries = _parse_number(single["--retries"], "--retries", int, 0)
    if "--gpus-per-trial" in single:
        options.gpus_per_trial = _parse_number(single["--gpus-per-trial"], "--gpus-per-trial", float, 0)
    return options


def _parse_number(text: str, flag: str, kind: type, minimum: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value != value or value < minimum:
        raise ConfigError(f"{flag} must be {'an integer' if kind is int else 'a number'} >= {minimum}, got {text!r}")
    return value


def plan_trials(options: SweepOptions, flat: dict[str, Any], preset: str | None) -> list[Trial]:
    """Every trial's validated run config, in grid-then-seed order; one-line errors for an invalid grid point, two
    trials with one run directory, or an existing run directory of another config."""
    from metarl.core.config import load_yaml_mapping
    from metarl.training import make_run_config

    base = merge_values(load_yaml_mapping(preset), flat) if preset is not None else dict(flat)
    if preset is not None:
        base["preset"] = str(preset)
    if base.get("threads") is None:
        base["threads"] = 1
    base["progress"] = False
    seeds = options.seeds if options.seeds is not None else (int(base.get("seed", 0)),)
    keys = [key for key, _ in options.grid]
    trials: list[Trial] = []
    labels: dict[str, tuple] = {}
    for combination in itertools.product(*[values for _, values in options.grid]):
        point = tuple((key, text) for key, (text, _) in zip(keys, combination))
        values = dict(base)
        for _, fields in combination:
            values = merge_values(values, fields)
        where = ", ".join(f"{k}={t}" for k, t in point)
        for seed in seeds:
            label = "-".join([options.name, *(f"{k}={_label_text(t)}" for k, t in point), f"seed{seed}"])
            if label in labels:
                raise ConfigError(f"grid points ({', '.join(f'{k}={t}' for k, t in labels[label])}) and ({where}) "
                                  f"give the same run directory {label}: give distinct values")
            if len(label.encode()) > 255:
                raise ConfigError(f"run directory name {label[:60]}... is longer than a file name may be (255 bytes): "
                                  "sweep fewer keys or shorter values")
            labels[label] = point
            trial_values = {**values, "seed": seed, "run_dir": str(options.out / label)}
            try:
                run = make_run_config(options.name, trial_values)
            except (ConfigError, ValueError, TypeError) as err:
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError(f"grid point {where or '(no grid)'}: {message}" if point else message) from None
            trials.append(Trial(label, point, seed, trial_values, run.to_dict(), int(run.threads or 1)))
    for trial in trials:
        _check_existing(trial)
    return trials


_IGNORED_IN_COMPARISON = ("progress", "init_from_checkpoint")


def _check_existing(trial: Trial) -> None:
    """An existing run directory must be this trial's (the same config.json), or empty."""
    run_dir = trial.run_dir
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        if any(run_dir.iterdir()):
            raise RunError(f"{run_dir} exists and is not a metarl run directory (no config.json): move it away")
        return
    try:
        existing = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        raise RunError(f"{config_path} is not valid JSON: move {run_dir} away") from None
    wanted = json.loads(json.dumps(trial.record, default=str))
    differences = sorted(k for k in set(existing) | set(wanted) if k not in _IGNORED_IN_COMPARISON
                         and existing.get(k) != wanted.get(k))
    if differences:
        key = differences[0]
        detail = key
        if isinstance(existing.get(key), dict) and isinstance(wanted.get(key), dict):
            inner = sorted(k for k in set(existing[key]) | set(wanted[key])
                           if existing[key].get(k) != wanted[key].get(k))
            detail = f"{key}.{inner[0]}: {existing[key].get(inner[0])!r} there, {wanted[key].get(inner[0])!r} here" \
                if inner else key
        else:
            detail = f"{key}: {existing.get(key)!r} there, {wanted.get(key)!r} here"
        raise RunError(f"{run_dir} holds a run of another config ({detail}): use another --out or move it away")


def trial_state(trial: Trial) -> str:
    """``"new"`` (no run directory yet), ``"unfinished"`` (resume it) or ``"finished"`` (last checkpoint at
    ``iterations`` and its evaluation written)."""
    from metarl.runs import load_checkpoint

    run_dir = trial.run_dir
    if not (run_dir / "config.json").is_file():
        return "new"
    checkpoint = run_dir / "checkpoints" / "last.pt"
    evaluations = [p for p in run_dir.glob("*.json") if p.name != "config.json"]
    if not checkpoint.is_file() or not evaluations:
        return "unfinished"
    try:
        done = int(load_checkpoint(checkpoint).get("iteration", 0))
    except RunError:
        return "unfinished"  # resume says what is wrong with it
    return "finished" if done >= int(trial.record["iterations"]) else "unfinished"


def check_points(trials: list[Trial], name: str) -> None:
    """Build each grid point's session once (learner or agent, source or env, the dry run): what the train command
    checks before it creates a run directory, done here before any Ray work."""
    from metarl.core.device import torch_threads
    from metarl.training import build_session, make_run_config

    checked: set[tuple] = set()
    for trial in trials:
        if trial.point in checked:
            continue
        checked.add(trial.point)
        run = make_run_config(name, trial.values)
        try:
            with torch_threads(run.threads):
                session = build_session(run)
                session.close()
        except (ConfigError, RunError, ValueError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            where = ", ".join(f"{k}={t}" for k, t in trial.point)
            raise ConfigError(f"grid point {where}: {message}" if where else message) from None


# ----------------------------------------------------------------------------------------------------------------------
# One trial, in a Ray worker


def run_trial(name: str, values: dict[str, Any], entry: Any = None) -> dict[str, Any]:
    """Train one trial, or resume it when its run directory exists (a retry after a crash, a re-run of the sweep).
    ``entry``: the driver's registry entry of ``name``, so an agent registered in the driver's program is found in
    the worker too. Runs in a Ray worker; also callable directly."""
    from metarl.agents import REGISTRY
    from metarl.cli import configure_process
    from metarl.training import make_run_config, resume, train

    configure_process()
    if entry is not None:
        REGISTRY[name] = entry
    run_dir = Path(values["run_dir"])
    tick = time.perf_counter()
    if (run_dir / "config.json").is_file():
        resume(run_dir, progress=False)
        how = "resumed"
    else:
        train(make_run_config(name, values))
        how = "trained"
    return {"run_dir": str(run_dir), "how": how, "seconds": time.perf_counter() - tick, "pid": os.getpid()}


# ----------------------------------------------------------------------------------------------------------------------
# The driver


def _describe_failure(err: BaseException) -> tuple[str, bool]:
    """(one line, whether to retry) for what a trial's ``ray.get`` raised."""
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        cause = getattr(err, "cause", None)
        if isinstance(cause, (ConfigError, RunError, FileNotFoundError)):
            return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}", False
        text = str(cause if cause is not None else err).strip().splitlines()
        return f"raised {type(cause).__name__ if cause is not None else 'an error'}: {text[0] if text else ''}", True
    if isinstance(err, rex.TaskCancelledError):
        return "cancelled", False
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}", True  # worker or node died, out of memory


def _check_resources(ray: Any, trials: list[Trial], options: SweepOptions, started: bool, log: Any) -> None:
    """A trial asking for more CPUs or GPUs than the Ray cluster has would wait forever: refused on a local instance
    started here, a warning on a cluster (an autoscaler may add nodes)."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    need_cpus = max(t.threads for t in trials)
    problem = None
    if need_cpus > cpus:
        problem = f"a trial asks for {need_cpus} CPUs (threads) and the Ray cluster has {cpus:g}"
    elif options.gpus_per_trial > gpus:
        problem = f"--gpus-per-trial {options.gpus_per_trial:g} and the Ray cluster has {gpus:g} GPUs"
    if problem and started:
        raise ConfigError(f"{problem}: ask for less")
    if problem:
        log(f"  warning: {problem}; trials wait until the cluster has them")


def run_sweep(trials: list[Trial], options: SweepOptions, states: dict[str, str] | None = None, *,
              log: Any = print) -> dict[str, dict[str, Any]]:
    """Run the unfinished trials as Ray tasks, each retried up to ``options.retries`` times (resuming its run
    directory); returns each trial's outcome by label. ``states``: :func:`trial_state` by label, if known."""
    from metarl.agents import entry

    ray = import_ray(PURPOSE)
    found = entry(options.name)
    outcome: dict[str, dict[str, Any]] = {}
    todo: deque[tuple[Trial, int]] = deque()
    for trial in trials:
        state = states[trial.label] if states is not None else trial_state(trial)
        outcome[trial.label] = {"state": state, "attempts": 0}
        if state == "finished":
            log(f"  {trial.label}: finished already, skipped")
        else:
            todo.append((trial, 0))
    if not todo:
        return outcome
    started = not ray.is_initialized()  # shut down at the end only what this sweep started
    connect(PURPOSE, log_to_driver=True)
    try:
        _check_resources(ray, [t for t, _ in todo], options, started, log)
        remote = ray.remote(run_trial)
        running: dict[Any, tuple[Trial, int]] = {}
        finished = sum(o["state"] == "finished" for o in outcome.values())
        while todo or running:
            while todo and (options.max_concurrent is None or len(running) < options.max_concurrent):
                trial, attempt = todo.popleft()
                ref = remote.options(num_cpus=trial.threads, num_gpus=options.gpus_per_trial, max_retries=0,
                                     name=f"metarl-sweep:{trial.label}").remote(options.name, trial.values, found)
                running[ref] = (trial, attempt)
                outcome[trial.label]["attempts"] = attempt + 1
            (ref,), _ = ray.wait(list(running), num_returns=1)
            trial, attempt = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                reason, retry = _describe_failure(err)
                if retry and attempt < options.retries:
                    log(f"  {trial.label}: {reason}; resuming from its last checkpoint (retry {attempt + 1} of "
                        f"{options.retries})")
                    todo.appendleft((trial, attempt + 1))
                else:
                    outcome[trial.label].update(state="failed", error=reason)
                    log(f"  {trial.label}: failed after {attempt + 1} attempt(s): {reason}")
                continue
            finished += 1
            outcome[trial.label].update(state="finished", seconds=round(result["seconds"], 3), how=result["how"])
            log(f"  [{finished}/{len(trials)}] {trial.label}: {result['how']} in {result['seconds']:.1f} s")
    finally:
        if started:
            ray.shutdown()
    return outcome


# ----------------------------------------------------------------------------------------------------------------------
# The summary: per grid point, over seeds


def _plus_minus(mean: float, ci95: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {ci95:.{digits}f}" if ci95 is not None and ci95 == ci95 else
                                   " (one seed: no interval)")


def summarise(trials: list[Trial], out: Path, *, log: Any = print) -> dict[str, Any]:
    """Per grid point with every seed finished: the seeds combined (meta-RL: :func:`metarl.evaluation
    .combine_meta_rl_seeds`, as ``metarl aggregate``; few-shot: each cell's metric over seeds), written to
    ``out/aggregate/POINT/`` and printed; returns them by grid point."""
    from metarl.evaluation import combine_meta_rl_seeds, mean_confidence_interval, plot_meta_rl, save_json

    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.point_label, []).append(trial)
    summary: dict[str, Any] = {}
    for point_label, members in groups.items():
        paths = [t.run_dir / "evaluation.json" for t in members]
        if not all(p.is_file() for p in paths):
            continue
        results = [json.loads(p.read_text()) for p in paths]
        folder = out / "aggregate" / point_label
        if results[0].get("protocol") == "meta-rl":
            combined = combine_meta_rl_seeds(results)
            combined["runs"] = [str(p) for p in paths]
            save_json(folder / "evaluation_seeds.json", combined)
            plot_meta_rl(combined, folder / "adaptation_seeds.png",
                         title=f"{point_label}, {combined['num_seeds']} seeds")
            cells = {split: {"pre_adaptation": data["episodes"][0], "post_adaptation": data["episodes"][-1]}
                     for split, data in combined["splits"].items()}
            log(f"  {point_label} ({len(members)} seeds): " + "; ".join(
                f"{split} return {c['pre_adaptation']['return']:.2f} -> "
                f"{_plus_minus(c['post_adaptation']['return'], c['post_adaptation']['ci95'], 2)}"
                for split, c in cells.items()))
            summary[point_label] = {"protocol": "meta-rl", "seeds": [t.seed for t in members], "splits": cells,
                                    "aggregate": str(folder)}
            continue
        metric = results[0]["metric"]
        rows = []
        for index, row in enumerate(results[0]["results"]):
            per_seed = [r["results"][index][metric] for r in results]
            stats = mean_confidence_interval(per_seed) if None not in per_seed else {"mean": None, "ci95": None}
            rows.append({"shots": row["shots"], "steps": row["steps"], metric: stats["mean"], "ci95": stats["ci95"],
                         "per_seed": per_seed})
        combined = {"protocol": "fewshot", "metric": metric, "num_seeds": len(results), "results": rows,
                    "runs": [str(p) for p in paths]}
        save_json(folder / "evaluation_seeds.json", combined)
        log(f"  {point_label} ({len(members)} seeds): " + "; ".join(
            f"shots={r['shots']} steps={r['steps']} {metric} " + (_plus_minus(r[metric], r["ci95"], 4)
                                                                  if r[metric] is not None else "diverged")
            for r in rows))
        summary[point_label] = {"protocol": "fewshot", "seeds": [t.seed for t in members], "results": rows,
                                "aggregate": str(folder)}
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# The command


def sweep(argv: list[str], *, log: Any = print) -> dict[str, Any]:
    """``metarl sweep ARGV``: validate, run, summarise; returns what DIR/sweep.json holds. Raises one-line
    :class:`ConfigError`/:class:`RunError` for bad input (before any Ray work) and when trials failed."""
    from metarl.cli import train_values

    options = parse_sweep_args(argv)
    flat, preset = train_values(options.name, options.train_options, prog=f"metarl sweep {options.name}")
    import_ray(PURPOSE)
    check_reachable(os.environ.get("RAY_ADDRESS", "").strip())
    trials = plan_trials(options, flat, preset)
    if options.gpus_per_trial == 0 and any(str(t.record["learner"].get("device", "cpu")).startswith("cuda")
                                           for t in trials):
        raise ConfigError("device cuda needs --gpus-per-trial (for example 1, or 0.5 for two trials per GPU) so "
                          "that Ray gives each trial a GPU")
    states = {t.label: trial_state(t) for t in trials}
    todo = [t for t in trials if states[t.label] != "finished"]
    check_points(todo, options.name)
    record: dict[str, Any] = {"command": ["metarl", "sweep", *argv], "name": options.name,
                              "grid": {key: [text for text, _ in values] for key, values in options.grid},
                              "seeds": sorted({t.seed for t in trials}), "trials": {}}
    options.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(options.out / "sweep.json", {**record, "trials": {
        t.label: {"state": states[t.label], "seed": t.seed, "grid": dict(t.point)} for t in trials}})
    log(f"sweep of {options.name}: {len(trials)} trials ({len(todo)} to run) in {options.out}")
    outcome = run_sweep(trials, options, states, log=log)
    record["trials"] = {t.label: {**outcome[t.label], "seed": t.seed, "grid": dict(t.point)} for t in trials}
    log("summary (mean of the seed means ± 95% CI over seeds, over tasks for one meta-RL seed; meta-RL: episode 0 "
        "-> last episode):")
    record["summary"] = summarise(trials, options.out, log=log)
    atomic_write_json(options.out / "sweep.json", record)
    failed = [label for label, o in outcome.items() if o["state"] == "failed"]
    if failed:
        raise RunError(f"{len(failed)} of {len(trials)} trials failed ({', '.join(failed[:3])}"
                       f"{', ...' if len(failed) > 3 else ''}): see {options.out / 'sweep.json'}; run the same command "
                       "again to resume them")
    again = (f"; `metarl aggregate {trials[0].run_dir.parent / trials[0].point_label}-seed* --out DIR` combines a "
             "grid point's seeds again" if trials[0].record["domain"] == "meta-rl" else "")
    log(f"wrote {options.out / 'sweep.json'}{again}")
    return record


def sweep_command(argv: list[str]) -> int:
    """The ``metarl sweep`` subcommand (dispatched by :mod:`metarl.cli`)."""
    if not argv or argv[0] in ("-h", "--help"):
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", __doc__.split("\n\n", 2)[2]).replace("``", "`")
        print(f"{USAGE}\n\n{text}\n`metarl sweep NAME --help` also lists NAME's train options.")
        return 0 if argv else 2
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(f"{USAGE}\n\nsweep options:\n"
              "  --out DIR             folder of the trials' run directories DIR/NAME-KEY=VALUE...-seedS (required)\n"
              "  --seeds S [S ...]     seeds (default: the train options' seed)\n"
              "  --grid KEY=V1,V2      values of one config field (YAML, as --set; a.b=v for a mapping entry); "
              "repeat for more keys: the product is swept\n"
              "  --max-concurrent N    at most N trials at once (default: as many as Ray places; each asks for "
              "`threads` CPUs, 1 unless given)\n"
              "  --retries N           attempts after a crash, each resuming the run from its checkpoint (default 2)\n"
              "  --gpus-per-trial G    GPUs each trial asks Ray for (default 0; needed with --device cuda)\n\n"
              "train options follow (as `metarl train NAME`):\n")
        sys.stdout.flush()
        from metarl.cli import train_values

        train_values(argv[0], ["--help"], prog=f"metarl sweep {argv[0]}")
        return 0
    sweep(argv)
    return 0
