"""The ``metarl`` command: a thin layer over :mod:`metarl.training`, generated from the config dataclasses (tyro).

    metarl train NAME [--preset FILE] [--set KEY=VALUE ...] [--FIELD VALUE ...]   meta-train, then evaluate
    metarl evaluate RUN_DIR [--eval-tasks N ...] [--threads N] [--video]        evaluate a run again
    metarl resume RUN_DIR [--iterations N]                                      continue a killed run
    metarl aggregate RUN_DIR RUN_DIR ... [--out DIR]                            meta-RL: mean ± 95% CI over seeds
    metarl sweep NAME --out DIR [--seeds S ...] [--grid KEY=V1,V2 ...] [...]    seeds x values as Ray tasks (extra ray)
    metarl list                                                                 learners, agents, sources, envs

``metarl train NAME --help`` lists every field of the run, of NAME's config, of its task source or env and of its
evaluation, with defaults (a preset's values when ``--preset`` is given) and docstrings. Values come from the
defaults, then the preset (YAML), then ``--set key=value`` (YAML values; ``a.b=v`` sets one key of a mapping such
as ``env_kwargs``), then ``--field value`` flags.

Bad input prints one line ``metarl: error: ...`` and exits with status 2; nothing half-written is left behind.

Process settings (the only place metarl changes process-wide state, and only when run as this command; each has an
opt-out): :func:`configure_process` asks PyTorch's CPU allocator for transparent huge pages
(``THP_MEM_ALLOC_ENABLE=1`` unless set; ``THP_MEM_ALLOC_ENABLE=0`` opts out) and keeps freed memory in the heap
(:mod:`metarl.core.host_memory`; ``METARL_KEEP_FREED_MEMORY=0`` opts out). Thread counts are the run's ``threads``
field (applied for the duration of a run by :func:`metarl.core.device.torch_threads`). docs/performance.md says why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any

COMMANDS = ("train", "evaluate", "resume", "aggregate", "sweep", "list")


class CommandError(ValueError):
    """Bad command-line input (printed as one line, exit status 2)."""


def configure_process(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """What the ``metarl`` command turns on for a training process (see the module docstring); returns what it did.
    Not called on import: a program that imports metarl keeps its own settings."""
    from metarl.core.host_memory import keep_freed_memory

    environ = os.environ if environ is None else environ
    environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read by torch at its first allocation of 2 MB or more
    return {"huge_pages": environ["THP_MEM_ALLOC_ENABLE"], "keep_freed_memory": keep_freed_memory()}


# ----------------------------------------------------------------------------------------------------------------------
# From dataclasses to a command line


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string literal right after each field)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


_SCALARS = (int, float, str, bool, Path)


def _cli_type(annotation: Any) -> bool:
    """Whether a field's type has a command-line form (scalars, X | None, tuple[X, ...], list[X])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _cli_type(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        return all(a is Ellipsis or a in _SCALARS for a in typing.get_args(annotation))
    return annotation in _SCALARS


def _section_class(title: str, cls: type, values: dict[str, Any], skip: set[str],
                   resolved: tuple[str, ...] = ()) -> tuple[type, dict[str, Any]]:
    """A dataclass for tyro holding ``cls``'s command-line fields (minus ``skip``) with ``values`` as defaults;
    ``resolved`` fields are ``X | None`` in ``cls`` but always set by now (shown as ``X``)."""
    import tyro

    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    fields, defaults = [], {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or not _cli_type(hints[f.name]):
            continue
        value, annotation = values[f.name], hints[f.name]
        if f.name in resolved and value is not None:
            annotation = type(value)
        fields.append((f.name, Annotated[annotation, tyro.conf.arg(help=docs.get(f.name, ""))],
                       dataclasses.field(default=value if not isinstance(value, list) else None)))
        defaults[f.name] = value
    made = dataclasses.make_dataclass(title, fields)
    return made, defaults


def _parse_with_tyro(cls: type, default: Any, args: list[str], prog: str, description: str,
                     flag_pairs: bool = True) -> Any:
    """``tyro.cli`` with its errors turned into one :class:`CommandError` line (help still goes to stdout)."""
    import tyro

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, default=default, args=args, prog=prog, description=description,
                            config=(tyro.conf.OmitArgPrefixes,)
                            + (() if flag_pairs else (tyro.conf.FlagCreatePairsOff,)))
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        lines = [line.strip(" │╭╮╰╯─-") for line in captured.getvalue().splitlines()]
        lines = [line for line in lines if line.strip()]
        message = (lines[1] if len(lines) > 1 else (lines[0] if lines else "bad arguments")).strip()
        raise CommandError(f"{_explain_unrecognized(message, cls)} (see `{prog} --help`)") from None


def _explain_unrecognized(message: str, cls: type) -> str:
    """Name the closest valid flag, or the source an option belongs to, for tyro's "Unrecognized options"."""
    if not message.startswith("Unrecognized options:"):
        return message
    import difflib

    from metarl.envs.fewshot.sources import SOURCE_CONFIGS

    flag = message.split(":", 1)[1].split(",")[0].strip()
    valid = []
    for section in dataclasses.fields(cls):
        inner = typing.get_args(section.type)[0] if typing.get_origin(section.type) is Annotated else section.type
        if dataclasses.is_dataclass(inner):
            valid += ["--" + f.name.replace("_", "-") for f in dataclasses.fields(inner)]
    for source, config in SOURCE_CONFIGS.items():
        if flag not in valid and flag in ["--" + f.name.replace("_", "-") for f in dataclasses.fields(config)]:
            return f"{flag} applies to the {source} source only (--source {source})"
    close = difflib.get_close_matches(flag, valid, n=1, cutoff=0.6)
    return f"unrecognized option {flag}" + (f" (did you mean {close[0]}?)" if close else "")


def _take_option(argv: list[str], flag: str, repeatable: bool = False) -> tuple[list[str], list[str]]:
    """Remove ``flag VALUE`` / ``flag=VALUE`` from ``argv``; returns (the values, the rest)."""
    values, rest, index = [], [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == flag:
            if index + 1 >= len(argv):
                raise CommandError(f"{flag} expects a value")
            values.append(argv[index + 1])
            index += 2
            continue
        if arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1:])
        else:
            rest.append(arg)
        index += 1
    if len(values) > 1 and not repeatable:
        raise CommandError(f"{flag} given {len(values)} times")
    return values, rest


def _peek_option(argv: list[str], flag: str) -> str | None:
    values, _ = _take_option(list(argv), flag, repeatable=True)
    return values[-1] if values else None


# ----------------------------------------------------------------------------------------------------------------------
# Commands


def _cmd_train(argv: list[str]) -> int:
    from metarl.agents import names
    from metarl.training import make_run_config, train

    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print("usage: metarl train NAME [--preset FILE] [--set KEY=VALUE ...] [--FIELD VALUE ...]\n\n"
                  f"few-shot learners: {', '.join(names('fewshot'))}\nmeta-RL agents: {', '.join(names('meta-rl'))}"
                  "\n\n`metarl train NAME --help` lists NAME's fields.")
            return 0
        raise CommandError("train needs a learner or agent name (see `metarl list`)")
    name, rest = argv[0], argv[1:]
    flat, preset = train_values(name, rest)
    run = make_run_config(name, flat, preset=preset)
    run_dir = train(run)
    print_result(run_dir)
    return 0


def train_values(name: str, rest: list[str], prog: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The flat field values and the preset of ``metarl train NAME REST...`` (what ``make_run_config`` takes), parsed
    as the train command parses them; ``prog`` names the command in ``--help`` and errors (``metarl sweep``)."""
    from metarl.agents import entry
    from metarl.core.config import parse_overrides
    from metarl.training import RUN_FIELDS, make_run_config, section_types

    found = entry(name)
    overrides, rest = _take_option(rest, "--set", repeatable=True)
    preset = _peek_option(rest, "--preset")
    values = parse_overrides(overrides)
    source = _peek_option(rest, "--source") or values.get("source")
    if source is None and preset is not None:
        from metarl.core.config import load_yaml_mapping

        source = load_yaml_mapping(preset).get("source")
    if source is not None:
        values["source"] = source
    # the defaults shown and used: the learner's, then the preset's, then --set
    base = make_run_config(name, values, preset=preset)
    record = base.to_dict()
    sections = section_types(name, base.task.source if found.domain == "fewshot" else None)
    learner_title = "learner" if found.domain == "fewshot" else "agent"
    titles = {"learner": learner_title, "task": "task source" if found.domain == "fewshot" else "task env",
              "evaluation": "evaluation"}
    parts, defaults = [], {}
    run_cls, run_defaults = _section_class("run", type(base), {k: record[k] for k in RUN_FIELDS},
                                             {"name", "learner", "task", "evaluation"},
                                             resolved=("iterations", "checkpoint_every", "log_every"))
    parts.append(("run", run_cls))
    defaults["run"] = run_cls(**run_defaults)
    for section, cls in sections.items():
        current = {f.name: getattr(getattr(base, section), f.name) for f in dataclasses.fields(cls)}
        made, section_defaults = _section_class(titles[section].replace(" ", "_"), cls, current, skip=set(RUN_FIELDS))
        parts.append((section, made))
        defaults[section] = made(**section_defaults)
    command_type = dataclasses.make_dataclass(
        "train", [(section, Annotated[cls, _group(titles.get(section, "run"))],
                   dataclasses.field(default_factory=lambda d=defaults[section]: d)) for section, cls in parts])
    prog = prog or f"metarl train {name}"
    parsed = _parse_with_tyro(command_type, command_type(**defaults), rest, prog,
                              f"Meta-train {name} ({found.summary}), then evaluate it on held-out tasks. Options "
                              "not given keep the defaults shown (a preset's where --preset is given); fields "
                              "without a flag (mappings such as env_kwargs) take --set key=value.")
    flat = {**values}
    for section, _ in parts:
        flat.update(dataclasses.asdict(getattr(parsed, section)))
    flat.pop("preset", None)
    return flat, preset


def _group(title: str) -> Any:
    import tyro

    return tyro.conf.arg(name=title.replace(" ", "-"))


def _cmd_evaluate(argv: list[str]) -> int:
    from metarl.training import evaluate, evaluation_fields, load_run

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: metarl evaluate RUN_DIR [--threads N] [--video] [evaluation fields]\n\n"
              "Evaluate RUN_DIR's last checkpoint on held-out tasks again (evaluation.json, adaptation.png).\n"
              "`metarl evaluate RUN_DIR --help` lists the evaluation fields of that run, with its values as defaults.")
        return 0 if argv else 2
    if argv[0].startswith("-"):
        raise CommandError("evaluate takes the run directory first: metarl evaluate RUN_DIR [options]")
    run_dir, rest = Path(argv[0]), argv[1:]
    if not (run_dir / "config.json").is_file():
        raise CommandError(f"{run_dir} is not a metarl run directory (no config.json)")
    run = load_run(run_dir)
    fields = evaluation_fields(run)
    current = {name: getattr(run.evaluation, name, None) if hasattr(run.evaluation, name) else getattr(run.task, name)
               for name in fields}

    @dataclasses.dataclass
    class Extra:
        threads: int | None = None
        """torch intra-op threads for the evaluation; None: the run's threads"""
        video: bool = False
        """meta-RL: also render a held-out task's episodes before and after adaptation (adaptation.gif)"""

    made_eval, eval_defaults = _section_class("evaluation", type(run.evaluation), current,
                                              skip=set(fields) - {f.name for f in dataclasses.fields(run.evaluation)})
    extra_task = [n for n in fields if n not in eval_defaults]
    made_task, task_defaults = _section_class("source_evaluation", type(run.task), _task_values(run),
                                              skip={f.name for f in dataclasses.fields(run.task)} - set(extra_task))
    command_type = dataclasses.make_dataclass("evaluate", [
        ("run", Annotated[Extra, _group("run")], dataclasses.field(default_factory=Extra)),
        ("evaluation", Annotated[made_eval, _group("evaluation")],
         dataclasses.field(default_factory=lambda: made_eval(**eval_defaults))),
        ("source", Annotated[made_task, _group("source evaluation")],
         dataclasses.field(default_factory=lambda: made_task(**task_defaults))),
    ])
    prog = "metarl evaluate RUN_DIR"
    parsed = _parse_with_tyro(command_type, command_type(), rest, prog,
                              f"Evaluate {run_dir} ({run.name}) on held-out tasks again; defaults: the run's.")
    given = {**dataclasses.asdict(parsed.evaluation), **dataclasses.asdict(parsed.source)}
    overrides = {k: v for k, v in given.items() if v != current.get(k)}
    if parsed.run.video:
        if run.domain != "meta-rl":
            raise CommandError("--video is for meta-RL runs")
        from metarl.runs import RunError
        from metarl.video import choose_gl_backend

        try:  # MuJoCo reads MUJOCO_GL once, at import: choose it before anything imports mujoco
            choose_gl_backend()
        except RunError:
            pass  # said again by record_adaptation_video if the env needs OpenGL (2D navigation does not)
    evaluate(run_dir, threads=parsed.run.threads, **overrides)
    if parsed.run.video:
        from metarl.video import record_adaptation_video

        print(f"video: {record_adaptation_video(run_dir)}")
    print_result(run_dir)
    return 0


def _task_values(run: Any) -> dict[str, Any]:
    return {f.name: getattr(run.task, f.name) for f in dataclasses.fields(run.task)}


def _cmd_resume(argv: list[str]) -> int:
    from metarl.training import resume

    @dataclasses.dataclass
    class Resume:
        run_dir: Annotated[Path, __import__("tyro").conf.Positional]
        """the run directory to continue"""
        iterations: int | None = None
        """train on to this many iterations in all (extends a finished run; recorded in config.json); the same
        result as a run started with it"""
        no_progress: bool = False
        """hide the progress bar"""

    parsed = _parse_with_tyro(Resume, None, argv, "metarl resume",
                              "Continue RUN_DIR from its last checkpoint: the same result as an uninterrupted run "
                              "(CPU).", flag_pairs=False)
    resume(parsed.run_dir, iterations=parsed.iterations, progress=False if parsed.no_progress else None)
    print_result(parsed.run_dir)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"metarl: error: {message} (see `{self.prog} --help`)\n")


def _cmd_aggregate(argv: list[str]) -> int:
    from metarl.evaluation import combine_meta_rl_seeds, plot_meta_rl, save_json

    parser = _Parser(prog="metarl aggregate", description=(
        "Mean ± 95%% Student-t interval over seeds of the held-out return per adaptation episode, from the "
        "evaluations of several meta-RL runs (one per seed) of the same agent, env and held-out tasks."))
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--file", default="evaluation.json",
                        help="the evaluation file in each run directory (default: evaluation.json)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="also write DIR/evaluation_seeds.json and DIR/adaptation_seeds.png")
    args = parser.parse_args(argv)
    results = []
    for run_dir in args.run_dirs:
        path = Path(run_dir) / args.file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such evaluation (run `metarl evaluate {run_dir}` first)")
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
    combined = combine_meta_rl_seeds(results)
    combined["runs"] = [str(Path(d) / args.file) for d in args.run_dirs]
    print(f"held-out return of {combined['agent']} on {combined['env']}: {combined['num_seeds']} seeds x "
          f"{combined['num_tasks']} tasks per split (mean of the seed means ± 95% CI over seeds; pooled: the "
          f"interval over every task and seed; episode 0 = before adaptation):")
    for split, data in combined["splits"].items():
        for e in data["episodes"]:
            seeds = ", ".join(f"{x:.1f}" for x in e["per_seed"])
            print(f"  {split:>5} ep{e['episode']}: {e['return']:.2f} ± {e['ci95']:.2f}  (pooled ± "
                  f"{e['pooled_ci95']:.2f}; seeds: {seeds})")
            if e.get("success") is not None:
                print(f"  {'':>5}   success {e['success']:.3f} ± {e['success_ci95']:.3f}  (pooled ± "
                      f"{e['success_pooled_ci95']:.3f}; seeds: {', '.join(f'{x:.3f}' for x in e['success_per_seed'])})")
        success = (data.get("benchmark") or {}).get("success")
        if success:
            print(f"  {split:>5} benchmark protocol success: before adaptation {success['pre_adaptation']['mean']:.3f}"
                  f" ± {success['pre_adaptation']['ci95']:.3f}, after {success['post_adaptation']['mean']:.3f} ± "
                  f"{success['post_adaptation']['ci95']:.3f} (over seeds)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        save_json(args.out / "evaluation_seeds.json", combined)
        plot_meta_rl(combined, args.out / "adaptation_seeds.png",
                     title=f"{combined['agent']} on {combined['env']}, {combined['num_seeds']} seeds")
        print(f"wrote {args.out / 'evaluation_seeds.json'} and {args.out / 'adaptation_seeds.png'}")
    return 0


def _cmd_sweep(argv: list[str]) -> int:
    from metarl.sweep import sweep_command

    return sweep_command(argv)


def _cmd_list(argv: list[str]) -> int:
    from metarl.agents import REGISTRY
    from metarl.envs import ENVIRONMENTS
    from metarl.envs.fewshot.sources import SOURCE_CONFIGS

    _Parser(prog="metarl list", description="List learners, agents, task sources and environments.").parse_args(argv)
    for domain, title in (("fewshot", "few-shot learners (--source)"), ("meta-rl", "meta-RL agents (--env)")):
        print(f"{title}:")
        for name, found in REGISTRY.items():
            if found.domain == domain:
                print(f"  {name:<10} {found.summary}")
    print("task sources: " + ", ".join(SOURCE_CONFIGS))
    print("environments: " + ", ".join(env_id for env_id, *_ in ENVIRONMENTS))
    return 0


def print_result(run_dir: Path) -> None:
    """The held-out results a run directory holds, as a short table."""
    from metarl.training import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.domain == "fewshot":
        for path in sorted(run_dir.glob("*.json")):
            if path.name not in ("config.json", "evaluation.json"):
                line = run.task.describe(path.name, json.loads(path.read_text()))
                if line:
                    print(line)
    path = run_dir / "evaluation.json"
    if not path.exists():
        print(f"run directory: {run_dir}")
        return
    result = json.loads(path.read_text())
    if result.get("protocol") == "meta-rl":
        print(f"held-out return of {result['agent']} on {result['env']} ({result['num_tasks']} tasks per split, "
              f"mean ± 95% CI; episode 0 = before adaptation):")
        for split, data in result["splits"].items():
            cells = "  ".join(f"ep{e['episode']}: {e['return']:.2f} ± {e['ci95']:.2f}" for e in data["episodes"])
            print(f"  {split:>5}: {cells}")
            if any(e.get("success") is not None for e in data["episodes"]):
                cells = "  ".join(f"ep{e['episode']}: {e['success']:.2f} ± {e['success_ci95'] or 0:.2f}"
                                  for e in data["episodes"] if e.get("success") is not None)
                print(f"  {'':>5}  success: {cells}")
            success = (data.get("benchmark") or {}).get("success")
            if success and success.get("post_adaptation"):
                protocol = result.get("benchmark_protocol", {})
                print(f"  {protocol.get('name', 'benchmark')} protocol ({protocol.get('benchmark', '')}, reward "
                      f"{protocol.get('reward_function_version', '?')}): success before adaptation "
                      f"{success['pre_adaptation']['mean']:.3f} ± {success['pre_adaptation']['ci95']:.3f}, after "
                      f"{success['post_adaptation']['mean']:.3f} ± {success['post_adaptation']['ci95']:.3f} "
                      f"({success['post_adaptation']['tasks']} test tasks)")
    else:
        metric = result["metric"]
        print(f"held-out {metric} ({result['split']} split, {result['num_tasks']} tasks, mean ± 95% CI):")
        for row in result["results"]:
            if row[metric] is None:
                print(f"  shots={row['shots']:>3} steps={row['steps']:>3}  diverged on {row['diverged_tasks']} tasks")
                continue
            print(f"  shots={row['shots']:>3} steps={row['steps']:>3}  {metric}={row[metric]:.4f} ± "
                  f"{row['ci95']:.4f}")
    print(f"run directory: {run_dir}  (evaluation.json, adaptation.png, metrics.csv, tb/, checkpoints/)")


USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    from metarl.core.config import ConfigError
    from metarl.runs import RunError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print("usage: metarl COMMAND ...\n\nMeta-learning for PyTorch: train, evaluate and resume runs.\n\n"
                  f"{USAGE}\n\nEvery command has --help.")
            return 0 if argv else 2
        command, rest = argv[0], argv[1:]
        if command not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(command, COMMANDS, n=1)
            raise CommandError(f"unknown command {command!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                               f"commands: {', '.join(COMMANDS)}")
        if command in ("train", "resume", "evaluate") and not any(a in ("-h", "--help") for a in rest):
            configure_process()
        handlers = {"train": _cmd_train, "evaluate": _cmd_evaluate, "resume": _cmd_resume,
                    "aggregate": _cmd_aggregate, "sweep": _cmd_sweep, "list": _cmd_list}
        return handlers[command](rest)
    except KeyboardInterrupt:
        print("metarl: interrupted (a run with a checkpoint continues with `metarl resume RUN_DIR`)", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    except (ValueError, ConfigError, RunError, FileNotFoundError, OSError, MemoryError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"metarl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
