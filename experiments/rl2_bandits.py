"""RESULTS table: RL² on Bernoulli bandits against Thompson sampling, UCB1 and random arms (Duan et al. 2016, table 1).

    .venv/bin/python experiments/rl2_bandits.py                     # the whole table (808 s on a busy 2-core machine)
    .venv/bin/python experiments/rl2_bandits.py --settings 5x10 --seeds 3 --json results.json

For each setting (k arms, n pulls per trial; means ~ U[0, 1] per arm), each of ``--seeds`` training seeds trains
one RL² agent on train-split bandits for a fixed number of iterations (the env-step budget is printed), then plays
one trial of n pulls on each of ``--tasks`` test-split bandits (a task set per seed, sampled actions, fresh hidden
state). The baselines play the very same test tasks: Thompson sampling (Beta(1, 1) priors), UCB1 and uniformly
random arms, each averaged over ``--baseline-runs`` simulated trials per task (envs/discrete.py).

Reported: mean per-trial return (total reward of the n pulls) ± the half-width of the 95% Student-t interval over
all (seed, task) pairs; for RL² also the spread over seeds (mean ± 95% CI of the per-seed means). The budgets are
chosen for a 2-core machine: 100-pull trials get fewer iterations (each iteration is 10x longer), so they are further
from converged than the 10-pull ones. Prints a JSON object, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from time import perf_counter
from typing import Any

import numpy as np
import torch

from metarl.agents.rl2 import RL2, RL2Config
from metarl.core.seeding import derive_seed
from metarl.envs.discrete import random_policy_return, thompson_sampling_return, ucb1_return
from metarl.evaluation import mean_confidence_interval

ENV_ID = "metarl/BernoulliBandit-v0"

# (arms, pulls) -> (config fields, iterations). 10 pulls: GAE λ 0.3 learns fastest; 100 pulls: λ 0.3 collapsed onto
# one arm in tuning runs, λ 0.95 kept improving, and 8 PPO epochs per batch beat 4 at equal wall time. γ = 1
# throughout: the objective is the undiscounted trial return.
TEN_PULLS = dict(meta_batch_size=64, hidden_size=128, learning_rate=3e-3, gamma=1.0, gae_lambda=0.3)
HUNDRED_PULLS = dict(meta_batch_size=32, num_minibatches=2, update_epochs=8, hidden_size=128, learning_rate=3e-3,
                     gamma=1.0, gae_lambda=0.95)
SETTINGS: dict[str, tuple[int, int, dict[str, Any], int]] = {
    "5x10": (5, 10, TEN_PULLS, 120),
    "10x10": (10, 10, TEN_PULLS, 120),
    "5x100": (5, 100, HUNDRED_PULLS, 50),
    "10x100": (10, 100, HUNDRED_PULLS, 50),
}


def run_seed(setting: str, seed: int, num_tasks: int, baseline_runs: int, iterations: int | None) -> dict[str, Any]:
    """Train one RL² agent, then score it and the baselines on one test task set; per-task returns."""
    arms, pulls, fields, default_iterations = SETTINGS[setting]
    iterations = default_iterations if iterations is None else iterations
    config = RL2Config(seed=seed, env_kwargs={"k": arms}, episodes_per_trial=pulls, **fields)
    agent = RL2(ENV_ID, config)
    start = perf_counter()
    env_steps = 0
    for iteration in range(iterations):
        env_steps += int(agent.train_iteration(iteration)["env_steps"])
    train_seconds = perf_counter() - start
    tasks = agent.task_env.sample_tasks(num_tasks, split="test", seed=derive_seed(seed, "rl2-bandits", "test-tasks"))
    rl2 = agent.meta_test(tasks, pulls, seed=derive_seed(seed, "rl2-bandits", "meta-test")).sum(axis=1)
    agent.close()
    rng = np.random.default_rng(derive_seed(seed, "rl2-bandits", "baselines"))
    baselines = {
        name: [float(fn(task.means, pulls, rng, runs=baseline_runs)) for task in tasks]
        for name, fn in (("thompson", thompson_sampling_return), ("ucb1", ucb1_return),
                         ("random", random_policy_return))
    }
    return {"setting": setting, "seed": seed, "iterations": iterations, "env_steps": env_steps,
            "train_seconds": train_seconds, "rl2": rl2.tolist(), **baselines}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: each method's mean ± 95% CI over (seed, task) pairs; RL²'s per-seed spread and budget."""
    table: dict[str, Any] = {}
    for setting in dict.fromkeys(run["setting"] for run in runs):
        mine = [run for run in runs if run["setting"] == setting]
        arms, pulls, fields, _ = SETTINGS[setting]
        row: dict[str, Any] = {"arms": arms, "pulls": pulls, "seeds": len(mine), "tasks_per_seed": len(mine[0]["rl2"]),
                               "iterations": mine[0]["iterations"], "env_steps_per_seed": mine[0]["env_steps"],
                               "train_seconds_per_seed": float(np.mean([r["train_seconds"] for r in mine])),
                               "config": fields}
        for method in ("rl2", "thompson", "ucb1", "random"):
            row[method] = mean_confidence_interval(np.concatenate([run[method] for run in mine]))
        row["rl2_over_seeds"] = mean_confidence_interval([float(np.mean(run["rl2"])) for run in mine])
        table[setting] = row
    return table


def markdown(table: dict[str, Any]) -> str:
    lines = ["| arms | pulls | RL² | Thompson | UCB1 | random | RL² over seeds | env steps / seed | iterations |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.values():
        cells = [f"{row[m]['mean']:.2f} ± {row[m]['ci95']:.2f}" for m in ("rl2", "thompson", "ucb1", "random",
                                                                          "rl2_over_seeds")]
        lines.append(f"| {row['arms']} | {row['pulls']} | " + " | ".join(cells)
                     + f" | {row['env_steps_per_seed']:,} | {row['iterations']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="arms x pulls settings to run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per setting (>= 3 for the table)")
    parser.add_argument("--tasks", type=int, default=200, help="test-split bandits per seed")
    parser.add_argument("--baseline-runs", type=int, default=200, help="simulated trials per task for each baseline")
    parser.add_argument("--iterations", type=int, default=None, help="override every setting's iterations")
    parser.add_argument("--workers", type=int, default=1, help="processes running seeds in parallel")
    parser.add_argument("--json", default=None, help="also write the JSON to this path")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.tasks < 2 or args.baseline_runs < 1 or args.workers < 1:
        parser.error("--seeds, --workers and --baseline-runs must be >= 1 and --tasks >= 2")
    jobs = [(setting, seed, args.tasks, args.baseline_runs, args.iterations)
            for setting in args.settings for seed in range(args.seeds)]
    start = perf_counter()
    if args.workers == 1:
        runs = [run_seed(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_seed, *zip(*jobs)))
    table = summarise(runs)
    result = {"benchmark": "rl2_bandits", "env": ENV_ID, "split": "test", "wall_seconds": perf_counter() - start,
              "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), "workers": args.workers,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "table": table}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    print()
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
