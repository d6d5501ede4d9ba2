"""RESULTS table (issue 18, item 2): RL² on the RL² paper's whole bandit and tabular-MDP grids against the reference
policies, on the same held-out tasks, with held-out learning curves (Duan et al. 2016, tables 1 and 2).

    .venv/bin/python experiments/rl2_grid.py --cells 5x10 10x10 50x10 --workers 2     # train (or resume) cells
    .venv/bin/python experiments/rl2_grid.py --cells mdp100 --iterations 300            # a longer budget, one cell
    .venv/bin/python experiments/rl2_grid.py --table                                   # table + figure, no training
    .venv/bin/python experiments/rl2_grid.py --cells mdp10 --root runs/rl2_grid_lr \
        --set learning_rate=3e-4 --out /tmp/lr.json --figure /tmp/lr.png              # another recipe, its own root

Cells: ``KxN`` (Bernoulli bandits, K arms, N pulls per trial; K in {5, 10, 50}, N in {10, 100, 500}) and ``mdpN``
(random tabular MDPs of 10 states, 5 actions, horizon 10, N episodes per trial; N in {10, 25, 50, 75, 100}). Each
(cell, seed) trains one RL² agent (GRU, recurrent PPO on whole trials, ``agents/rl2.py``) on train-split tasks with
the settings of :data:`SETTINGS` for ``--iterations`` (default: :data:`SETTINGS`' budget), in ``--root`` (default
``runs/rl2_grid``). Every ``--eval-every`` iterations (default: a 15th of the budget) the agent plays one trial on
each of ``--curve-tasks`` test-split tasks (``derive_seed(seed, "rl2-grid", "curve-tasks")``, sampled actions, fresh
hidden state): the learning curve. The state (agent, curve, counters) is saved atomically at each of those points,
so a killed cell resumes where it stopped and gives the numbers of an uninterrupted run (RL² draws everything of
iteration ``i`` from ``derive_seed(seed, stream, i)``); a finished cell's ``result.json`` is reused as it is.
``--iterations`` above a finished cell's budget continues it. ``--set FIELD=VALUE`` puts RL2Config fields over
:data:`SETTINGS`' for every cell of the call; the fields are saved with the cell, and a cell saved with other fields
is refused, so a recipe change needs its own ``--root``.

Final score: one trial on each of ``--tasks`` test-split tasks drawn exactly as experiments/bandit_mdp_references.py
draws them (``derive_seed(seed, "rl2-bandits" | "rl2-mdps", "test-tasks")``), and on the very same tasks the
untuned references of envs/references.py (bandits: oracle, Gittins (finite horizon), Thompson, UCB1 c = 1, greedy,
random; MDPs: oracle, PSRL, BEB β = 1, greedy, random; ``--runs`` simulated trials per task; the tuned columns are
in RESULTS "Reference policies ..."). Reported: mean per-trial return ± the 95% t half-width over (seed, task), and
RL² − Gittins (bandits) / RL² − PSRL (MDPs) paired per task with its interval. For MDP cells the per-episode returns
also give every shorter n: the ``prefix`` columns score the first n episodes of each longer MDP model's trial.

Prints JSON and markdown tables; writes the JSON to ``--out`` and the learning-curve figure to ``--figure``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.core.seeding import derive_seed as derive

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
BANDIT_ENV, MDP_ENV = "metarl/BernoulliBandit-v0", "metarl/TabularMDP-v0"

# RL² settings per cell family, from the tuning recorded in RESULTS "Meta-RL: RL² on Bernoulli bandits" and
# experiments/presets/rl2_tabular_mdp.yaml: γ = 1 for bandits (the objective is the undiscounted trial return),
# λ 0.3 for 10 pulls, λ 0.95 for longer trials (λ 0.3 collapsed onto one arm at 100 pulls), values normalised.
TEN_PULLS = dict(meta_batch_size=64, hidden_size=128, learning_rate=3e-3, gamma=1.0, gae_lambda=0.3)
LONG_PULLS = dict(meta_batch_size=32, num_minibatches=2, update_epochs=8, hidden_size=128, learning_rate=3e-3,
                  gamma=1.0, gae_lambda=0.95)
MDP = dict(meta_batch_size=64, hidden_size=256, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95)
# pulls or episodes -> (config fields, default iterations): budgets that fit a 2-core session (see RESULTS)
SETTINGS: dict[str, dict[int, tuple[dict[str, Any], int]]] = {
    "bandits": {10: (TEN_PULLS, 1000), 100: (LONG_PULLS, 800), 500: (LONG_PULLS, 250)},
    "mdps": {n: (MDP, 5000 // n) for n in (10, 25, 50, 75, 100)},  # 3.2M env steps each
}
ARMS = (5, 10, 50)
BANDIT_REFERENCES = (("oracle", {}), ("gittins", {}), ("thompson", {}), ("ucb1", {"c": 1.0}), ("greedy", {}),
                     ("random", {}))
MDP_REFERENCES = (("oracle", {}), ("psrl", {}), ("beb", {"beta": 1.0}), ("greedy", {}), ("random", {}))


def parse_cell(cell: str) -> tuple[str, int, int | None]:
    """``"5x100"`` -> ("bandits", 100, 5); ``"mdp25"`` -> ("mdps", 25, None); ``ValueError`` for anything else."""
    bandit, mdp = re.fullmatch(r"(\d+)x(\d+)", cell), re.fullmatch(r"mdp(\d+)", cell)
    if bandit and int(bandit[1]) in ARMS and int(bandit[2]) in SETTINGS["bandits"]:
        return "bandits", int(bandit[2]), int(bandit[1])
    if mdp and int(mdp[1]) in SETTINGS["mdps"]:
        return "mdps", int(mdp[1]), None
    raise ValueError(f"unknown cell {cell!r}: use KxN with K in {ARMS} and N in {tuple(SETTINGS['bandits'])}, "
                     f"or mdpN with N in {tuple(SETTINGS['mdps'])}")


def cell_fields(cell: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RL2Config fields of ``cell``: :data:`SETTINGS`' with ``overrides`` (``--set``) on top."""
    part, n, _ = parse_cell(cell)
    return {**SETTINGS[part][n][0], **(overrides or {})}


def cell_config(cell: str, seed: int, overrides: dict[str, Any] | None = None):
    """The validated RL2Config of (cell, seed); ``ConfigError`` for a bad override."""
    from metarl.agents.rl2 import RL2Config
    from metarl.core.config import config_from_dict

    part, n, arms = parse_cell(cell)
    values = {"seed": seed, "env_kwargs": {"k": arms} if part == "bandits" else {}, "episodes_per_trial": n,
              "normalize_values": True, "torch_threads": 1, **cell_fields(cell, overrides)}
    return config_from_dict(RL2Config, values, where="--set")


def make_agent(cell: str, seed: int, overrides: dict[str, Any] | None = None):
    from metarl.agents.rl2 import RL2

    part = parse_cell(cell)[0]
    return RL2(BANDIT_ENV if part == "bandits" else MDP_ENV, cell_config(cell, seed, overrides))


def held_out(agent, part: str, seed: int, count: int, stream: str) -> list[Any]:
    name = "rl2-bandits" if part == "bandits" else "rl2-mdps"
    task_seed = derive(seed, name, "test-tasks") if stream == "final" else derive(seed, "rl2-grid", "curve-tasks")
    return agent.task_env.sample_tasks(count, split="test", seed=task_seed)


def run_cell(cell: str, seed: int, iterations: int | None, eval_every: int | None, curve_tasks: int, tasks: int,
             runs: int, root: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one (cell, seed) and score it; the result dict, also in ``result.json``.

    ``overrides``: RL2Config fields over :data:`SETTINGS`' (``--set``); a cell saved with other fields is refused
    (``ValueError``), so that one run directory never mixes two recipes."""
    from metarl.runs import atomic_write_json, load_checkpoint, save_checkpoint

    part, n, arms = parse_cell(cell)
    budget = SETTINGS[part][n][1] if iterations is None else iterations
    eval_every = max(1, budget // 15) if eval_every is None else eval_every
    run_dir = Path(root) / f"{cell}-seed{seed}"
    result_path, state_path = run_dir / "result.json", run_dir / "state.pt"
    fields = cell_fields(cell, overrides)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result["config"] != fields:
            raise ValueError(f"{run_dir} was trained with {result['config']}, not {fields}: use another --root")
        if result["iterations"] >= budget:
            return result
    run_dir.mkdir(parents=True, exist_ok=True)
    agent = make_agent(cell, seed, overrides)
    try:
        curve: list[dict[str, float]] = []
        done = env_steps = 0
        seconds = 0.0
        if state_path.is_file():
            saved = load_checkpoint(state_path)
            if saved.get("config", SETTINGS[part][n][0]) != fields:
                raise ValueError(f"{run_dir} was trained with {saved.get('config')}, not {fields}: use another --root")
            agent.load_state_dict(saved["state"])
            curve, done, env_steps, seconds = saved["curve"], saved["iteration"], saved["env_steps"], saved["seconds"]
        probe = held_out(agent, part, seed, curve_tasks, "curve")
        for iteration in range(done, budget):
            start = time.perf_counter()
            env_steps += int(agent.train_iteration(iteration)["env_steps"])
            seconds += time.perf_counter() - start
            if (iteration + 1) % eval_every == 0 or iteration + 1 == budget:
                returns = agent.meta_test(probe, n, seed=derive(seed, "rl2-grid", "curve", iteration)).sum(1)
                curve.append({"iteration": iteration + 1, "env_steps": env_steps, "mean": float(returns.mean()),
                              "sem": float(returns.std(ddof=1) / np.sqrt(len(returns)))})
                print(f"{cell} seed {seed}: iteration {iteration + 1}/{budget}, {env_steps:,} steps, held-out "
                      f"{returns.mean():.2f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
                save_checkpoint(state_path, {"state": agent.state_dict(), "curve": curve, "iteration": iteration + 1,
                                             "env_steps": env_steps, "seconds": seconds, "config": fields})
        final = held_out(agent, part, seed, tasks, "final")
        per_episode = agent.meta_test(final, n, seed=derive(seed, "rl2-grid", "final"))
        references = score_references(part, agent.task_env, final, n, runs, seed)
    finally:
        agent.close()
    result = {"cell": cell, "part": part, "n": n, "arms": arms, "seed": seed, "iterations": budget,
              "env_steps": env_steps, "train_seconds": seconds, "config": fields, "curve": curve,
              "rl2_per_episode": per_episode.tolist(), "references": references}
    atomic_write_json(result_path, result)
    return result


def score_references(part: str, task_env: Any, tasks: list[Any], n: int, runs: int, seed: int) -> dict[str, Any]:
    """Per-task trial returns of each untuned reference on exactly ``tasks`` (per-episode for MDPs)."""
    from metarl.envs.references import bandit_reference_returns, mdp_reference_returns

    out: dict[str, Any] = {}
    if part == "bandits":
        means = np.array([task.means for task in tasks])
        for name, params in BANDIT_REFERENCES:
            rng = np.random.default_rng(derive(seed, "rl2-grid", "references", name))
            out[name] = bandit_reference_returns(name, means, n, rng, runs=runs, **params).sum(1).tolist()
    else:
        transitions, rewards = (np.array(a) for a in zip(*[task_env.parameters(task) for task in tasks]))
        for name, params in MDP_REFERENCES:
            rng = np.random.default_rng(derive(seed, "rl2-grid", "references", name))
            out[name] = mdp_reference_returns(name, transitions, rewards, n, rng, runs=max(1, runs // 10),
                                              **params).tolist()
    return out


# --- the table and the figure -----------------------------------------------------------------------------------------
def interval(values: Any) -> dict[str, float]:
    from metarl.evaluation import mean_confidence_interval

    return mean_confidence_interval(np.asarray(values, dtype=np.float64).ravel())


def trial_totals(result: dict[str, Any], name: str, episodes: int | None = None) -> np.ndarray:
    """Per-task trial returns of RL² (``name`` "rl2") or a reference; MDPs: of the first ``episodes`` episodes."""
    values = np.asarray(result["rl2_per_episode"] if name == "rl2" else result["references"][name], np.float64)
    if result["part"] == "bandits" and name != "rl2":
        return values
    return values[:, :episodes].sum(1)


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    cells = sorted({r["cell"] for r in results}, key=lambda c: (parse_cell(c)[0], parse_cell(c)[1],
                                                               parse_cell(c)[2] or 0))
    for cell in cells:
        mine = sorted((r for r in results if r["cell"] == cell), key=lambda r: r["seed"])
        part, n, arms = parse_cell(cell)
        rl2 = np.concatenate([trial_totals(r, "rl2") for r in mine])
        names = [name for name, _ in (BANDIT_REFERENCES if part == "bandits" else MDP_REFERENCES)]
        row: dict[str, Any] = {"part": part, "n": n, "arms": arms, "seeds": len(mine), "tasks_per_seed":
                               len(mine[0]["rl2_per_episode"]), "iterations": mine[0]["iterations"],
                               "env_steps_per_seed": mine[0]["env_steps"],
                               "train_seconds_per_seed": [round(r["train_seconds"], 1) for r in mine],
                               "rl2": interval(rl2), "rl2_per_seed": [float(trial_totals(r, "rl2").mean())
                                                                      for r in mine]}
        for name in names:
            row[name] = interval(np.concatenate([trial_totals(r, name, n) for r in mine]))
        target = "gittins" if part == "bandits" else "psrl"
        row[f"rl2_minus_{target}"] = interval(rl2 - np.concatenate([trial_totals(r, target, n) for r in mine]))
        table[cell] = row
    # prefixes: every longer MDP model's first n episodes, on that model's own test tasks
    for row in table.values():
        if row["part"] != "mdps":
            continue
        row["prefix"] = {}
        for other in results:
            if other["part"] == "mdps" and other["n"] > row["n"]:
                row["prefix"].setdefault(str(other["n"]), []).append(other)
        row["prefix"] = {k: {"rl2": interval(np.concatenate([trial_totals(r, "rl2", row["n"]) for r in v])),
                             "rl2_minus_psrl": interval(np.concatenate([trial_totals(r, "rl2", row["n"]) -
                                                                        trial_totals(r, "psrl", row["n"])
                                                                        for r in v]))}
                         for k, v in sorted(row["prefix"].items(), key=lambda kv: int(kv[0]))}
    return table


def fmt(entry: dict[str, float], digits: int = 1) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['ci95']:.{digits}f}"


def markdown(table: dict[str, Any]) -> str:
    lines: list[str] = []
    bandits = [row for row in table.values() if row["part"] == "bandits"]
    mdps = [row for row in table.values() if row["part"] == "mdps"]
    if bandits:
        lines += ["| k | n | RL² | RL² − Gittins (paired) | Gittins | Thompson | UCB1 | greedy | random | oracle | "
                  "seeds | env steps / seed | iterations |", "|" + " --- |" * 13]
        for row in bandits:
            cells = [fmt(row[m]) for m in ("rl2", "rl2_minus_gittins", "gittins", "thompson", "ucb1", "greedy",
                                             "random", "oracle")]
            lines.append(f"| {row['arms']} | {row['n']} | " + " | ".join(cells) +
                         f" | {row['seeds']} | {row['env_steps_per_seed']:,} | {row['iterations']} |")
        lines.append("")
    if mdps:
        lines += ["| n | RL² | RL² − PSRL (paired) | PSRL | BEB β=1 | greedy | random | oracle | longer models' first "
                  "n episodes (n_train: RL², − PSRL) | seeds | env steps / seed | iterations |", "|" + " --- |" * 12]
        for row in mdps:
            cells = [fmt(row[m]) for m in ("rl2", "rl2_minus_psrl", "psrl", "beb", "greedy", "random", "oracle")]
            prefix = "; ".join(f"{k}: {fmt(v['rl2'])}, {fmt(v['rl2_minus_psrl'])}" for k, v in row["prefix"].items())
            lines.append(f"| {row['n']} | " + " | ".join(cells) + f" | {prefix or '—'} | {row['seeds']} | "
                         f"{row['env_steps_per_seed']:,} | {row['iterations']} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], table: dict[str, Any], path: Path) -> None:
    """One panel per cell: RL²'s held-out trial return against env steps (one line per seed, ±1 s.e.), with the
    references' levels on the final test tasks as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(table)
    columns = 3
    rows = -(-len(cells) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.1 * rows), squeeze=False)
    styles = {"gittins": ("C3", "--"), "thompson": ("C2", ":"), "greedy": ("C4", "-."), "psrl": ("C3", "--"),
              "beb": ("C2", ":"), "random": ("0.5", "-"), "oracle": ("k", "-")}
    for ax, cell in zip(axes.ravel(), cells):
        row = table[cell]
        for result in (r for r in results if r["cell"] == cell):
            steps = np.array([p["env_steps"] for p in result["curve"]])
            mean, sem = np.array([p["mean"] for p in result["curve"]]), np.array([p["sem"] for p in result["curve"]])
            ax.plot(steps, mean, color="C0", label="RL² (held out)" if result["seed"] == 0 else None)
            ax.fill_between(steps, mean - sem, mean + sem, color="C0", alpha=0.2)
        for name in (("gittins", "thompson", "greedy", "random", "oracle") if row["part"] == "bandits"
                     else ("psrl", "beb", "random", "oracle")):
            color, style = styles[name]
            ax.axhline(row[name]["mean"], color=color, linestyle=style, linewidth=1, label=name)
        title = f"bandits k={row['arms']}, n={row['n']}" if row["part"] == "bandits" else f"MDPs n={row['n']}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.set_ylabel("trial return", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.ravel()[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    all_cells = [f"{k}x{n}" for n in SETTINGS["bandits"] for k in ARMS] + [f"mdp{n}" for n in SETTINGS["mdps"]]
    parser.add_argument("--cells", nargs="+", default=all_cells, help="cells to train or resume (KxN or mdpN)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per cell (seeds 0 .. S-1)")
    parser.add_argument("--iterations", type=int, default=None, help="override every cell's budget")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="iterations between learning-curve points (default: a 15th of the cell's budget)")
    parser.add_argument("--curve-tasks", type=int, default=100, help="held-out tasks of each curve point")
    parser.add_argument("--tasks", type=int, default=200, help="held-out tasks of the final score, per seed")
    parser.add_argument("--runs", type=int, default=20, help="simulated trials per task of each reference")
    parser.add_argument("--workers", type=int, default=1, help="processes training cells in parallel")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="an RL2Config field over every cell's SETTINGS (YAML value; repeatable); "
                             "use its own --root")
    parser.add_argument("--root", default=str(REPO / "runs" / "rl2_grid"), help="where the cells' states live")
    parser.add_argument("--table", action="store_true", help="only summarise the finished cells under --root")
    parser.add_argument("--out", default=str(ROOT / "out" / "rl2_grid.json"), help="the JSON summary")
    parser.add_argument("--figure", default=str(ROOT / "figures" / "rl2_grid_curves.png"), help="the curves")
    args = parser.parse_args(argv)
    from metarl.core.config import ConfigError, parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
        for cell in args.cells:
            cell_config(cell, 0, overrides)
    except (ValueError, ConfigError) as err:
        parser.error(str(err))
    if min(args.seeds, args.eval_every or 1, args.workers, args.runs) < 1 or min(args.tasks, args.curve_tasks) < 2 \
            or (args.iterations is not None and args.iterations < 1):
        parser.error("--seeds, --eval-every, --workers, --runs and --iterations must be >= 1, --tasks and "
                     "--curve-tasks >= 2")
    start = time.perf_counter()
    if args.table:
        results = [json.loads(p.read_text()) for p in sorted(Path(args.root).glob("*/result.json"))]
        if not results:
            parser.error(f"no finished cell under {args.root}")
    else:
        jobs = [(cell, seed, args.iterations, args.eval_every, args.curve_tasks, args.tasks, args.runs, args.root,
                 overrides) for cell in args.cells for seed in range(args.seeds)]
        if args.workers == 1:
            results = [run_cell(*job) for job in jobs]
        else:
            with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
                results = list(pool.map(run_cell, *zip(*jobs)))
    table = summarise(results)
    summary = {"benchmark": "rl2_grid", "split": "test", "wall_seconds": time.perf_counter() - start,
               "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__}, "table": table}
    text = json.dumps(summary, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    plot(results, table, Path(args.figure))
    print()
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
