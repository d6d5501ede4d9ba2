"""RESULTS table: the reference policies on RL²'s bandit and tabular-MDP grids (Duan et al. 2016, tables 1 and 2).

    .venv/bin/python experiments/bandit_mdp_references.py                  # both whole grids, one thread
    .venv/bin/python experiments/bandit_mdp_references.py --part bandits --pulls 10 100 --arms 5 --json out.json

Grids: Bernoulli bandits with n in {10, 100, 500} pulls x k in {5, 10, 50} arms; tabular MDPs (10 states, 5 actions,
horizon 10) with n in {10, 25, 50, 75, 100} episodes per trial. The policies are those of envs/references.py.

Held-out tasks, as RL² is scored: for each of ``--seeds`` seeds, ``--tasks`` test-split tasks; bandits drawn exactly
as experiments/rl2_bandits.py draws RL²'s (``derive_seed(seed, "rl2-bandits", "test-tasks")``, k arms), MDPs with
``derive_seed(seed, "rl2-mdps", "test-tasks")`` (an RL² MDP script should draw its test tasks the same way). Each
reference plays ``--runs`` (bandits) or ``--mdp-runs`` (MDPs) simulated trials per task; reported: the mean
per-trial return ± the half-width of the 95% Student-t interval over all (seed, task) per-task means.

Parameters: ε of ε-greedy, c of UCB1 ("UCB1 tuned c"; "UCB1" is the textbook c = 1), OPSRL's number of samples,
UCRL2's confidence scale and BEB's β are tuned per cell on ``--tune-tasks`` *train*-split tasks (seed 0, ``--runs``
trials each): the value of the best mean return on the grids below wins. The MDP policies do not depend on n, so each
is simulated once for the largest n and the smaller n are read off the same trials (the first n episodes); the
Gittins index depends on n and is recomputed per n. Prints a JSON object (with ``--per-task`` also every per-task
return, seed-major, for comparisons paired with RL² on the same tasks), then the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from time import perf_counter
from typing import Any

import numpy as np

from metarl.core.seeding import derive_seed
from metarl.envs.discrete import BernoulliBanditEnv, TabularMDPEnv
from metarl.envs.references import bandit_reference_returns, mdp_reference_returns
from metarl.evaluation import mean_confidence_interval

BANDIT_PULLS, BANDIT_ARMS, MDP_EPISODES = (10, 100, 500), (5, 10, 50), (10, 25, 50, 75, 100)
# (column name, reference, fixed parameters, tuned parameter and its grid or None)
BANDIT_COLUMNS: list[tuple[str, str, dict[str, Any], tuple[str, tuple[float, ...]] | None]] = [
    ("oracle", "oracle", {}, None),
    ("gittins", "gittins", {}, None),
    ("thompson", "thompson", {}, None),
    ("ucb1", "ucb1", {"c": 1.0}, None),
    ("ucb1_tuned", "ucb1", {}, ("c", (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))),
    ("epsilon_greedy", "epsilon_greedy", {}, ("epsilon", (0.001, 0.003, 0.01, 0.03, 0.1))),
    ("greedy", "greedy", {}, None),
    ("random", "random", {}, None),
]
MDP_COLUMNS: list[tuple[str, str, dict[str, Any], tuple[str, tuple[float, ...]] | None]] = [
    ("oracle", "oracle", {}, None),
    ("psrl", "psrl", {}, None),
    ("opsrl", "opsrl", {}, ("samples", (2, 5, 10))),
    ("ucrl2", "ucrl2", {}, ("scale", (0.01, 0.03, 0.1, 0.3, 1.0))),
    ("beb", "beb", {}, ("beta", (0.1, 0.3, 1.0, 3.0, 10.0))),
    ("epsilon_greedy", "epsilon_greedy", {}, ("epsilon", (0.003, 0.01, 0.03, 0.1))),
    ("greedy", "greedy", {}, None),
    ("random", "random", {}, None),
]
# Duan et al. 2016 as quoted in issue 18 (table 1: bandits, table 2: MDPs): (part, n, k or None, column) -> value
PUBLISHED: dict[tuple[str, int, int | None, str], float] = {
    ("bandits", 100, 10, "gittins"): 82.8, ("bandits", 100, 10, "rl2"): 83.5,
    ("bandits", 500, 50, "gittins"): 463.7, ("bandits", 500, 50, "ucb1_tuned"): 457.6,
    ("bandits", 500, 50, "rl2"): 438.9,
    ("mdps", 100, None, "psrl"): 1939.5, ("mdps", 100, None, "opsrl"): 1973.9, ("mdps", 100, None, "rl2"): 1913.7,
}


def bandit_tasks(arms: int, split: str, seed: int, count: int) -> np.ndarray:
    """``[count, arms]`` means; for the test split the same tasks experiments/rl2_bandits.py scores RL² on."""
    tasks = BernoulliBanditEnv(k=arms).sample_tasks(count, split=split, seed=seed)
    return np.array([task.means for task in tasks])


def mdp_tasks(split: str, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    env = TabularMDPEnv()
    transitions, rewards = zip(*[env.parameters(task) for task in env.sample_tasks(count, split=split, seed=seed)])
    return np.array(transitions), np.array(rewards)


def bandit_cell(pulls: int, arms: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every bandit reference on one (n, k) cell: per-column summary, tuned parameter, seconds."""
    train = bandit_tasks(arms, "train", 0, args.tune_tasks)
    tests = [bandit_tasks(arms, "test", derive_seed(seed, "rl2-bandits", "test-tasks"), args.tasks)
             for seed in range(args.seeds)]
    row: dict[str, Any] = {"pulls": pulls, "arms": arms}
    for column, name, fixed, tuned in BANDIT_COLUMNS:
        start = perf_counter()
        params, tuning = dict(fixed), None
        if tuned is not None:
            key, grid = tuned
            rng_seed = derive_seed(0, "references", "tune", pulls, arms, column)
            scores = [float(bandit_reference_returns(name, train, pulls, np.random.default_rng(rng_seed),
                                                     runs=args.runs, **{key: value}).sum(1).mean()) for value in grid]
            params[key] = grid[int(np.argmax(scores))]
            tuning = dict(zip(map(str, grid), scores))
        totals = np.concatenate([bandit_reference_returns(name, means, pulls, np.random.default_rng(
            derive_seed(seed, "references", "bandits", pulls, arms, column)), runs=args.runs, **params).sum(1)
            for seed, means in enumerate(tests)])
        row[column] = {**mean_confidence_interval(totals), "params": params, "tuning_train_means": tuning,
                       "seconds": perf_counter() - start}
        if args.per_task:
            row[column]["per_task"] = totals.tolist()
        published = PUBLISHED.get(("bandits", pulls, arms, column))
        if published is not None:
            row[column]["published"] = published
    return row


def mdp_grid(episodes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Every MDP reference at every n: tuned per n on train tasks, simulated once for the largest n (prefixes)."""
    longest = max(episodes)
    train = mdp_tasks("train", 0, args.tune_tasks)
    tests = [mdp_tasks("test", derive_seed(seed, "rl2-mdps", "test-tasks"), args.tasks) for seed in range(args.seeds)]
    table: dict[str, Any] = {str(n): {"episodes": n} for n in episodes}
    for column, name, fixed, tuned in MDP_COLUMNS:
        start = perf_counter()
        chosen: dict[int, dict[str, Any]] = {n: dict(fixed) for n in episodes}
        tuning: dict[int, dict[str, float]] | None = None
        if tuned is not None:
            key, grid = tuned
            curves = [mdp_reference_returns(name, *train, longest, np.random.default_rng(
                derive_seed(0, "references", "tune", "mdps", column)), runs=args.mdp_runs, **{key: value}).cumsum(1)
                for value in grid]
            tuning = {}
            for n in episodes:
                scores = [float(curve[:, n - 1].mean()) for curve in curves]
                chosen[n][key] = grid[int(np.argmax(scores))]
                tuning[n] = dict(zip(map(str, grid), scores))
        cumulative: dict[str, np.ndarray] = {}  # per distinct parameter set: [all test tasks, longest] cumulative
        for params in chosen.values():
            label = json.dumps(params, sort_keys=True)
            if label not in cumulative:
                cumulative[label] = np.concatenate([mdp_reference_returns(name, *tasks, longest, np.random.default_rng(
                    derive_seed(seed, "references", "mdps", column)), runs=args.mdp_runs, **params).cumsum(1)
                    for seed, tasks in enumerate(tests)])
        seconds = perf_counter() - start
        for n in episodes:
            totals = cumulative[json.dumps(chosen[n], sort_keys=True)][:, n - 1]
            table[str(n)][column] = {**mean_confidence_interval(totals), "params": chosen[n],
                                     "tuning_train_means": None if tuning is None else tuning[n], "seconds": seconds}
            if args.per_task:
                table[str(n)][column]["per_task"] = totals.tolist()
            published = PUBLISHED.get(("mdps", n, None, column))
            if published is not None:
                table[str(n)][column]["published"] = published
    return table


def cell_text(entry: dict[str, Any], tuned: tuple[str, tuple[float, ...]] | None) -> str:
    text = f"{entry['mean']:.1f} ± {entry['ci95']:.1f}"
    if tuned is not None:
        symbol = {"c": "c", "epsilon": "ε", "samples": "K", "scale": "scale", "beta": "β"}[tuned[0]]
        text += f" ({symbol}={entry['params'][tuned[0]]:g})"
    if "published" in entry:
        text += f" [paper {entry['published']}]"
    return text


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if "bandits" in result:
        lines += ["| k | n | " + " | ".join(column for column, *_ in BANDIT_COLUMNS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in BANDIT_COLUMNS) + " |"]
        for row in result["bandits"].values():
            lines.append(f"| {row['arms']} | {row['pulls']} | " + " | ".join(
                cell_text(row[column], tuned) for column, _, _, tuned in BANDIT_COLUMNS) + " |")
        lines.append("")
    if "mdps" in result:
        lines += ["| n | " + " | ".join(column for column, *_ in MDP_COLUMNS) + " |",
                  "| --- | " + " | ".join("---" for _ in MDP_COLUMNS) + " |"]
        for row in result["mdps"].values():
            lines.append(f"| {row['episodes']} | " + " | ".join(
                cell_text(row[column], tuned) for column, _, _, tuned in MDP_COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("bandits", "mdps", "both"), default="both")
    parser.add_argument("--pulls", type=int, nargs="+", default=list(BANDIT_PULLS), help="bandit trial lengths n")
    parser.add_argument("--arms", type=int, nargs="+", default=list(BANDIT_ARMS), help="bandit arm counts k")
    parser.add_argument("--episodes", type=int, nargs="+", default=list(MDP_EPISODES), help="MDP trial lengths n")
    parser.add_argument("--seeds", type=int, default=3, help="test task sets (as RL²'s training seeds)")
    parser.add_argument("--tasks", type=int, default=200, help="test-split tasks per seed")
    parser.add_argument("--runs", type=int, default=20, help="simulated trials per bandit task")
    parser.add_argument("--mdp-runs", type=int, default=2, help="simulated trials per MDP task")
    parser.add_argument("--tune-tasks", type=int, default=100, help="train-split tasks to tune parameters on")
    parser.add_argument("--per-task", action="store_true",
                        help="keep every (seed, task) return in the JSON (seed-major, for paired comparisons)")
    parser.add_argument("--json", default=None, help="also write the JSON to this path")
    args = parser.parse_args(argv)
    if min(args.seeds, args.runs, args.mdp_runs, *args.pulls, *args.episodes) < 1 or min(args.arms) < 2 \
            or args.tasks < 2 or args.tune_tasks < 1:
        parser.error("--seeds, --runs, --mdp-runs, --tune-tasks, --pulls and --episodes must be >= 1, --arms >= 2 "
                     "and --tasks >= 2")
    start = perf_counter()
    result: dict[str, Any] = {"benchmark": "bandit_mdp_references", "split": "test",
                              "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
                              "settings": {key: value for key, value in vars(args).items() if key != "json"},
                              "machine": {"platform": platform.platform(), "numpy": np.__version__}}
    if args.part in ("bandits", "both"):
        result["bandits"] = {f"{arms}x{pulls}": bandit_cell(pulls, arms, args)
                             for pulls in args.pulls for arms in args.arms}
    if args.part in ("mdps", "both"):
        result["mdps"] = mdp_grid(sorted(args.episodes), args)
    result["wall_seconds"] = perf_counter() - start
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
