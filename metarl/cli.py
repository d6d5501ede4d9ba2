"""The ``metarl`` command: a thin layer over the Python API.

    metarl train LEARNER [--source sinusoid|omniglot] [options]     meta-train, then evaluate on held-out tasks
    metarl evaluate RUN_DIR [--tasks N] [--one-shot-runs PATH]      evaluate a run again (or on the one-shot runs)
    metarl resume RUN_DIR                                           continue a killed run from its last checkpoint
    metarl aggregate RUN_DIR RUN_DIR ... [--out DIR]                meta-RL: mean ± 95% CI over seeds' evaluations
    metarl list                                                     learners, task sources and environments

Options of ``train`` are the fields of the config dataclass, documented by their docstrings (``--help``).
Bad input prints one line ``metarl: error: ...`` and exits with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from metarl.core.host_memory import keep_freed_memory


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"metarl: error: {message} (see `{self.prog} --help`)\n")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant):
                docs[node.target.id] = str(following.value.value)
    return docs


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(scalar type, is_tuple) of a field annotation such as ``int | None`` or ``tuple[int, ...]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of ``cls``, typed, with its default and docstring as help."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        scalar, is_tuple = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        if scalar is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_tuple:
            parser.add_argument(flag, dest=f.name, type=scalar, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=scalar, default=None, help=help_text)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    values.update(fixed)
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    from metarl.agents import LEARNERS
    from metarl.training import FewShotConfig

    parser = _Parser(prog="metarl", description="Meta-learning for PyTorch: train, evaluate and resume runs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from metarl.agents import RL_AGENTS

    train = commands.add_parser(
        "train", help="meta-train a learner or agent, then evaluate it on held-out tasks",
        description="Meta-train LEARNER on a task source (or a meta-RL AGENT on --env) and evaluate it on held-out "
                    "tasks. Meta-RL agents take other options: see `metarl train maml-trpo --help`.")
    train.add_argument("learner", help=f"few-shot learner ({', '.join(LEARNERS)}) or meta-RL agent "
                                       f"({', '.join(RL_AGENTS)})")
    add_dataclass_arguments(train, FewShotConfig, skip=("learner",))

    evaluate = commands.add_parser("evaluate", help="evaluate a run on held-out tasks",
                                   description="Evaluate RUN_DIR's last checkpoint on held-out tasks.")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--tasks", type=int, default=None, help="held-out tasks per cell (default: the run's)")
    evaluate.add_argument("--video", action="store_true",
                          help="meta-RL: render a held-out task's rollouts before and after adaptation to a GIF")
    evaluate.add_argument("--one-shot-runs", type=Path, default=None,
                          help="a zip or folder of Omniglot one-shot runs (runNN/...): report the error rate on them")
    evaluate.add_argument("--one-shot-augment", type=int, default=None, metavar="K",
                          help="one-shot runs: test-time augmentation with K distorted copies of each drawing")

    resume = commands.add_parser("resume", help="continue a run from its last checkpoint",
                                 description="Continue RUN_DIR from its last checkpoint (same result as no kill).")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    resume.add_argument("--iterations", type=int, default=None, metavar="N",
                        help="train on to N iterations in all (extends a finished run; recorded in config.json); "
                             "same result as a run started with N")

    aggregate = commands.add_parser(
        "aggregate", help="meta-RL: combine several runs' (seeds') held-out evaluations",
        description="Mean ± 95% Student-t interval over seeds of the held-out return per adaptation episode, from "
                    "the evaluations of several meta-RL runs (one per seed) of the same agent, env and held-out "
                    "tasks.")
    aggregate.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    aggregate.add_argument("--file", default="evaluation.json",
                           help="the evaluation file in each run directory (default: evaluation.json)")
    aggregate.add_argument("--out", type=Path, default=None, metavar="DIR",
                           help="also write DIR/evaluation_seeds.json and DIR/adaptation_seeds.png")
    commands.add_parser("list", help="list learners, task sources and environments")
    return parser


def build_rl_train_parser() -> argparse.ArgumentParser:
    from metarl.agents import RL_AGENTS
    from metarl.training_rl import RLRunConfig

    parser = _Parser(prog="metarl train", description="Meta-train a meta-RL AGENT on a task distribution (--env), "
                     "then evaluate it on held-out tasks (test, and ood where the env has it).")
    parser.add_argument("agent", choices=list(RL_AGENTS), help="meta-RL agent")
    add_dataclass_arguments(parser, RLRunConfig, skip=("agent", "overrides"))
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="an agent config field on top of the preset (repeatable), e.g. --set inner_lr=0.05")
    return parser


def _cmd_train_rl(argv: list[str]) -> int:
    from metarl.training_rl import RLRunConfig, parse_overrides, train_meta_rl

    args = build_rl_train_parser().parse_args(argv)
    overrides = parse_overrides(args.overrides)
    args.overrides = None
    config = config_from_args(RLRunConfig, args, agent=args.agent, overrides=overrides)
    run_dir = train_meta_rl(config)
    _print_rl_result(run_dir)
    return 0


def _print_rl_result(run_dir: Path) -> None:
    result = json.loads((Path(run_dir) / "evaluation.json").read_text())
    print(f"held-out return of {result['agent']} on {result['env']} ({result['num_tasks']} tasks per split, "
          f"mean ± 95% CI; episode 0 = before adaptation):")
    for split, data in result["splits"].items():
        cells = "  ".join(f"ep{e['episode']}: {e['return']:.2f} ± {e['ci95']:.2f}" for e in data["episodes"])
        print(f"  {split:>5}: {cells}")
    print(f"run directory: {run_dir}  (evaluation.json, adaptation.png, metrics.csv, tb/, checkpoints/)")


def _cmd_train(args: argparse.Namespace) -> int:
    from metarl.training import FewShotConfig, train_fewshot

    config = config_from_args(FewShotConfig, args, learner=args.learner)
    run_dir = train_fewshot(config)
    _print_result(run_dir)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from metarl.runs import RunError
    from metarl.training import evaluate_run

    if args.tasks is not None and args.tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {args.tasks}")
    if args.one_shot_augment is not None and args.one_shot_runs is None:
        raise ValueError("--one-shot-augment needs --one-shot-runs")
    if args.one_shot_runs is not None:
        return _evaluate_one_shot(args.run_dir, args.one_shot_runs, args.one_shot_augment)
    if not (Path(args.run_dir) / "config.json").is_file():
        raise RunError(f"{args.run_dir} is not a metarl run directory (no config.json)")
    if args.video:  # MuJoCo reads MUJOCO_GL once, at import: choose it before anything imports mujoco
        from metarl.video import choose_gl_backend

        try:
            choose_gl_backend()
        except RunError:
            pass  # said again by record_adaptation_video if the env needs OpenGL (2D navigation does not)
    from metarl.training_rl import evaluate_rl_run, is_rl_run

    if is_rl_run(args.run_dir):
        evaluate_rl_run(args.run_dir, eval_tasks=args.tasks)
        if args.video:
            from metarl.video import record_adaptation_video

            print(f"video: {record_adaptation_video(args.run_dir)}")
        _print_rl_result(args.run_dir)
        return 0
    if args.video:
        raise RunError("--video is for meta-RL runs")
    evaluate_run(args.run_dir, eval_tasks=args.tasks)
    _print_result(args.run_dir)
    return 0


def _evaluate_one_shot(run_dir: Path, runs_path: Path, augment_copies: int | None = None) -> int:
    from metarl.runs import RunError
    from metarl.training import evaluate_run, load_config

    config = load_config(run_dir)
    if config.source != "omniglot":
        raise RunError(f"{run_dir} was trained on {config.source}, not omniglot")
    if augment_copies is not None:
        config = dataclasses.replace(config, one_shot_augment=augment_copies)
    evaluate_run(run_dir, config=dataclasses.replace(config, one_shot_runs=str(runs_path), eval_tasks=0))
    _print_result(run_dir)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from metarl.runs import RunError
    from metarl.training import load_config, train_fewshot

    if not (Path(args.run_dir) / "checkpoints" / "last.pt").is_file():
        raise RunError(f"{args.run_dir} has no checkpoint to resume from (checkpoints/last.pt)")
    from metarl.training_rl import is_rl_run, load_rl_config, train_meta_rl

    if args.iterations is not None:
        _extend_run(Path(args.run_dir), args.iterations)
    if is_rl_run(args.run_dir):
        run = load_rl_config(args.run_dir)
        if args.no_progress:
            run.progress = False
        train_meta_rl(run, resume_dir=Path(args.run_dir))
        _print_rl_result(args.run_dir)
        return 0
    config = load_config(args.run_dir)
    if args.no_progress:
        config.progress = False
    train_fewshot(config, resume_dir=Path(args.run_dir))
    _print_result(args.run_dir)
    return 0


def _extend_run(run_dir: Path, iterations: int) -> None:
    """Set a run's total iterations to ``iterations`` (>= its checkpoint's) in its config.json, atomically."""
    from metarl.runs import RunError, atomic_write_json, load_checkpoint, read_config

    done = int(load_checkpoint(run_dir / "checkpoints" / "last.pt").get("iteration", 0))
    if iterations < done:
        raise RunError(f"--iterations {iterations} is below the {done} iterations {run_dir} has already done")
    record = read_config(run_dir)
    record["iterations"] = iterations
    atomic_write_json(run_dir / "config.json", record)


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from metarl.evaluation import combine_meta_rl_seeds, plot_meta_rl, save_json

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
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        save_json(args.out / "evaluation_seeds.json", combined)
        plot_meta_rl(combined, args.out / "adaptation_seeds.png",
                     title=f"{combined['agent']} on {combined['env']}, {combined['num_seeds']} seeds")
        print(f"wrote {args.out / 'evaluation_seeds.json'} and {args.out / 'adaptation_seeds.png'}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from metarl.agents import LEARNERS, RL_AGENTS
    from metarl.envs import ENVIRONMENTS
    from metarl.envs.fewshot import SOURCES

    print("learners:     " + ", ".join(LEARNERS))
    print("agents:       " + ", ".join(RL_AGENTS))
    print("task sources: " + ", ".join(SOURCES))
    print("environments: " + ", ".join(env_id for env_id, *_ in ENVIRONMENTS))
    return 0


def _print_result(run_dir: Path) -> None:
    for one_shot_path in sorted(Path(run_dir).glob("one_shot_runs*.json")):
        r = json.loads(one_shot_path.read_text())
        tta = f", test-time augmentation x{r['augment_copies']}" if r.get("augment_copies") else ""
        print(f"Omniglot one-shot runs{tta}: {r['errors']}/{r['queries']} wrong = {100 * r['error_rate']:.1f}% "
              f"error (95% CI {100 * r['ci95_low']:.1f}-{100 * r['ci95_high']:.1f}%) on {r['runs']} runs")
    if not (Path(run_dir) / "evaluation.json").exists():
        print(f"run directory: {run_dir}")
        return
    result = json.loads((Path(run_dir) / "evaluation.json").read_text())
    metric = result["metric"]
    print(f"held-out {metric} ({result['split']} split, {result['num_tasks']} tasks, mean ± 95% CI):")
    for row in result["results"]:
        if row[metric] is None:
            print(f"  shots={row['shots']:>3} steps={row['steps']:>3}  diverged on {row['diverged_tasks']} tasks")
            continue
        print(f"  shots={row['shots']:>3} steps={row['steps']:>3}  {metric}={row[metric]:.4f} ± {row['ci95']:.4f}")
    print(f"run directory: {run_dir}  (evaluation.json, adaptation.png, metrics.csv, tb/, checkpoints/)")


def main(argv: list[str] | None = None) -> int:
    from metarl.agents import RL_AGENTS
    from metarl.runs import RunError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "resume", "evaluate"):
        keep_freed_memory()  # a training process keeps the memory it frees (metarl/core/host_memory.py)
    try:
        if len(argv) >= 2 and argv[0] == "train" and argv[1] in RL_AGENTS:
            return _cmd_train_rl(argv[1:])
        args = build_parser().parse_args(argv)
        handlers = {"train": _cmd_train, "evaluate": _cmd_evaluate, "resume": _cmd_resume, "list": _cmd_list,
                    "aggregate": _cmd_aggregate}
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("metarl: interrupted (a run with a checkpoint continues with `metarl resume RUN_DIR`)", file=sys.stderr)
        return 130
    except (ValueError, RunError, FileNotFoundError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"metarl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
