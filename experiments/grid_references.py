"""Score any finished ``metarl train`` run on a bandit or tabular-MDP cell of RL²'s grid against the reference
policies, paired task by task on the very test tasks its evaluation played (issue 18, items 2 and 4).

    .venv/bin/metarl train amago --env metarl/TabularMDP-v0 --set episodes_per_trial=10 ... --run-dir RUN \\
        --eval-tasks 200 --eval-splits test
    .venv/bin/python experiments/grid_references.py RUN [RUN ...] --json experiments/out/grid_references.json

A run's ``evaluation.json`` holds per-task returns on ``num_tasks`` test-split tasks drawn by metarl's generic
protocol (:func:`metarl.evaluation.generic_protocol_tasks`); this script draws the same tasks from the run's
``config.json`` (env id, ``env_kwargs``, ``episodes_per_trial`` = the cell's n) and plays the untuned references of
experiments/rl2_grid.py on them (:func:`experiments.rl2_grid.score_references`: bandits oracle, Gittins, Thompson,
UCB1 c = 1, greedy, random, 20 simulated trials per task; MDPs oracle, PSRL, BEB β = 1, greedy, random, 2 per task).
Reported per run: the agent's trial return, each reference's, and agent − Gittins (bandits) / agent − PSRL (MDPs)
paired per task, mean ± 95% t half-width over the tasks; a JSON object on stdout (and in ``--json``), then a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.rl2_grid import BANDIT_ENV, MDP_ENV, fmt, interval, score_references  # noqa: E402

PARTS = {BANDIT_ENV: "bandits", MDP_ENV: "mdps"}


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, evaluation)`` of a finished run on a grid cell; ``ValueError`` for a run that is unfinished, not on
    a bandit or tabular MDP, or has no generic-protocol test-split evaluation."""
    run_dir = Path(run_dir)
    config_path, evaluation_path = run_dir / "config.json", run_dir / "evaluation.json"
    if not (config_path.is_file() and evaluation_path.is_file()):
        raise ValueError(f"{run_dir} has no config.json and evaluation.json: not a finished run")
    config, evaluation = json.loads(config_path.read_text()), json.loads(evaluation_path.read_text())
    if config.get("task", {}).get("env") not in PARTS:
        raise ValueError(f"{run_dir} trained on {config.get('task', {}).get('env')}, not on {' or '.join(PARTS)}")
    if evaluation.get("protocol") != "meta-rl" or "benchmark_protocol" in evaluation \
            or "test" not in evaluation.get("splits", {}):
        raise ValueError(f"{run_dir} has no generic-protocol test-split evaluation")
    return config, evaluation


def score_run(run_dir: str | Path, runs: int = 20) -> dict[str, Any]:
    """The paired comparison of one run (module docstring; ``ValueError`` as :func:`load_run`)."""
    import gymnasium as gym

    import metarl.envs  # noqa: F401  (registers metarl/...)
    from metarl.evaluation import generic_protocol_tasks

    config, evaluation = load_run(run_dir)
    env_id, learner = config["task"]["env"], config["learner"]
    part, n = PARTS[env_id], int(learner["episodes_per_trial"])
    agent = np.asarray(evaluation["splits"]["test"]["per_task_returns"], dtype=float)
    if agent.ndim != 2 or agent.shape[1] != n:
        raise ValueError(f"{run_dir}: per-task returns of shape {agent.shape}, expected [tasks, {n}]")
    env = gym.make(env_id, **learner.get("env_kwargs", {}))
    try:
        tasks = generic_protocol_tasks(env, len(agent), "test", int(evaluation["seed"]))
        references = score_references(part, env.unwrapped, tasks, n, runs, int(learner["seed"]))
    finally:
        env.close()
    totals = {name: np.asarray(values, dtype=float).reshape(len(agent), -1).sum(1)
              for name, values in references.items()}
    target = "gittins" if part == "bandits" else "psrl"
    row = {"run": str(run_dir), "agent": config["name"], "env": env_id, "env_kwargs": learner.get("env_kwargs", {}),
           "n": n, "tasks": len(agent), "seed": learner["seed"], "iterations": config["iterations"],
           "agent_return": interval(agent.sum(1)), f"agent_minus_{target}": interval(agent.sum(1) - totals[target]),
           "per_episode": agent.mean(0).tolist()}
    row.update({name: interval(values) for name, values in totals.items()})
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | n | agent | agent − Gittins / PSRL (paired) | references |", "|" + " --- |" * 5]
    for row in rows:
        target = "gittins" if "agent_minus_gittins" in row else "psrl"
        names = [k for k in ("oracle", "gittins", "thompson", "ucb1", "psrl", "beb", "greedy", "random") if k in row]
        refs = "; ".join(f"{name} {fmt(row[name])}" for name in names)
        lines.append(f"| {row['run']} | {row['n']} | {fmt(row['agent_return'])} | "
                     f"{fmt(row[f'agent_minus_{target}'])} | {refs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories (config.json and evaluation.json)")
    parser.add_argument("--runs-per-task", type=int, default=20, help="simulated trials per task of each reference")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.runs_per_task < 1:
        parser.error("--runs-per-task must be >= 1")
    try:
        rows = [score_run(run, args.runs_per_task) for run in args.runs]
    except ValueError as err:
        parser.error(str(err))
    summary = {"benchmark": "grid_references", "split": "test", "rows": rows}
    print(json.dumps(summary, indent=2))
    if args.json:
        from metarl.runs import atomic_write_json

        atomic_write_json(args.json, summary)
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
