"""Memory benchmark (issue 18, item 5): success by corridor length H on the passive T-Maze, GRU-RL², Transformer-RL²
and the off-policy AMAGO-style agent (Ni, Ma, Eysenbach & Bacon, NeurIPS 2023; ``metarl/PassiveTMaze-v0``,
envs/memory.py).

    .venv/bin/python experiments/tmaze_memory.py                                  # H 10 30 100, 2 seeds, all models
    .venv/bin/python experiments/tmaze_memory.py --lengths 300 1000 --seeds 1      # the long corridors
    .venv/bin/python experiments/tmaze_memory.py --models amago --lengths 10 30    # one model

Each cell (H, model, seed) is one run of the ``metarl`` command, in ``--root`` (default ``runs/tmaze_memory``)::

    metarl train rl2 --env metarl/PassiveTMaze-v0 --preset experiments/presets/rl2_tmaze.yaml \
        --set env_kwargs.corridor_length=H --sequence-model MODEL --seed SEED --iterations N \
        --eval-tasks 200 --eval-splits test --threads 1 --run-dir ROOT/MODEL-H<H>-seed<SEED>

(model ``gru``: one episode per trial, γ = 1, entropy 0.1, Adam 1e-3, advantages standardised per minibatch, 32
trials per iteration; model ``transformer`` with ``experiments/presets/rl2_tmaze_transformer.yaml`` instead: RL²'s
default size, its context the trial's H + 1 steps, entropy 0.3, Adam 3e-4, advantages over their running std), or
for ``amago`` ``metarl train amago``
with ``experiments/presets/amago_tmaze.yaml`` (discrete SAC on a 2-layer causal Transformer, 16 trials per
iteration, 20 gradient steps each, a fixed α 0.5, critics at γ 0 and 0.9 beside the acting 0.99) with ``--set
reward_scale=H`` and the same other options. The
sweep is resumable: a run directory with its ``evaluation.json`` is reused as it is, one with a checkpoint only is
continued with ``metarl resume`` (the same result as an uninterrupted run), anything else is trained from scratch.

Success of an episode: the agent stands on the cued side at the last step (``reward_goal`` 1; its return is then
> 0, and <= 0 otherwise). Reported per cell: the success rate over the ``--eval-tasks`` held-out episodes of every
seed pooled, with its 95% Wilson interval, per seed, and also with the mode of the policy (``greedy``: the
learnt memory without the sampling noise of ``H`` moves; sampled actions are the standard and the training
policy). Chance (a policy that walks the corridor and guesses): 0.5. Prints JSON and a markdown table, writes the
JSON to ``--out`` and the figure to ``--figure``. Each cell's summary is also kept in ``--records``
(``experiments/records/tmaze_memory/MODEL-H<H>.json``, committed, with the commit that summarised it), so that a
table can be completed over sessions on machines that lack the earlier run directories: a cell without finished
runs under ``--root`` is taken from its record.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.evaluation import save_figure
from metarl.runs import atomic_write_json, head_commit

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
ENV_ID = "metarl/PassiveTMaze-v0"
PRESET = ROOT / "presets" / "rl2_tmaze.yaml"
PRESETS = {"gru": PRESET, "transformer": ROOT / "presets" / "rl2_tmaze_transformer.yaml",
           "amago": ROOT / "presets" / "amago_tmaze.yaml"}
MODELS = tuple(PRESETS)
LABELS = {"gru": "GRU-RL²", "transformer": "Transformer-RL²", "amago": "AMAGO-style (off-policy)"}


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion (no zero width at 0 or 1 successes)."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def train_command(run_dir: Path, length: int, model: str, seed: int, iterations: int, eval_tasks: int) -> list[str]:
    # the AMAGO-style agent's critic sees the rewards times H (its preset: the penalty of a step behind is then -1)
    agent = ["amago", "--set", f"reward_scale={length}"] if model == "amago" else ["rl2", "--sequence-model", model]
    return [str(REPO / ".venv" / "bin" / "metarl"), "train", agent[0], "--env", ENV_ID, "--preset",
            str(PRESETS[model]), "--set", f"env_kwargs.corridor_length={length}", *agent[1:], "--seed", str(seed),
            "--iterations", str(iterations), "--eval-tasks", str(eval_tasks), "--eval-splits", "test",
            "--threads", "1", "--no-progress", "--run-dir", str(run_dir)]


def run_cell(run_dir: Path, length: int, model: str, seed: int, iterations: int, eval_tasks: int) -> str:
    """Make sure ``run_dir`` holds a finished run: reuse, resume or train. Returns what was done."""
    if (run_dir / "evaluation.json").is_file():
        return "reused"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        command = [str(REPO / ".venv" / "bin" / "metarl"), "resume", str(run_dir), "--no-progress"]
        what = "resumed"
    else:
        command = train_command(run_dir, length, model, seed, iterations, eval_tasks)
        what = "trained"
    print("+", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return what


def greedy_successes(run_dir: Path, tasks: int) -> np.ndarray:
    """Success of each of ``tasks`` held-out episodes with the mode of the policy (the run's last checkpoint)."""
    from metarl.agents import entry
    from metarl.runs import load_checkpoint

    config = json.loads((run_dir / "config.json").read_text())
    learner = dict(config["learner"], deterministic_test=True)
    agent_type, config_type = entry(config["name"]).load()
    agent = agent_type(config["task"]["env"], config_type(**learner))
    try:
        agent.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"])
        test = agent.task_env.sample_tasks(tasks, split="test", seed=config["evaluation"]["eval_seed"])
        returns = agent.meta_test(test, 1, seed=config["evaluation"]["eval_seed"])
    finally:
        agent.close()
    return returns[:, 0] > 0


def cell_summary(run_dirs: list[Path], tasks: int) -> dict[str, Any]:
    per_seed, greedy_per_seed, seconds, curves = [], [], [], []
    for run_dir in run_dirs:
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        returns = np.asarray(evaluation["splits"]["test"]["per_task_returns"])[:, 0]
        per_seed.append(returns > 0)
        greedy_per_seed.append(greedy_successes(run_dir, len(returns)))
        metrics = (run_dir / "metrics.csv").read_text().splitlines()
        header = metrics[0].split(",")
        returns_by_iteration = [float(line.split(",")[header.index("charts/trial_return")]) for line in metrics[1:]]
        best = int(np.argmax(returns_by_iteration))
        curves.append({"best_train_return": round(returns_by_iteration[best], 3), "best_at_iteration": best + 1,
                       "last_10_train_return": round(float(np.mean(returns_by_iteration[-10:])), 3)})
        times = [float(line.split(",")[header.index("time")]) for line in metrics[1:]]
        seconds.append((times[-1] - times[0]) * len(times) / max(len(times) - 1, 1))  # wall, from logged times
    row: dict[str, Any] = {"seeds": len(run_dirs), "episodes_per_seed": int(len(per_seed[0]))}
    for name, outcomes in (("sampled", per_seed), ("greedy", greedy_per_seed)):
        pooled = np.concatenate(outcomes)
        low, high = wilson_interval(int(pooled.sum()), len(pooled))
        row[name] = {"success": round(float(pooled.mean()), 4), "ci95": [round(low, 4), round(high, 4)],
                     "per_seed": [round(float(o.mean()), 4) for o in outcomes]}
    row["train_seconds_per_seed"] = [round(s, 1) for s in seconds]
    row["training_curve_per_seed"] = curves  # the mean trial return of the training batches (1: all succeed)
    return row


def plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for model, marker, color in zip(MODELS, ("o", "s", "^"), ("tab:blue", "tab:red", "tab:green")):
        for kind, style in (("sampled", "-"), ("greedy", ":")):
            cells = sorted((int(h), row[kind]) for h, row in table.get(model, {}).items())
            if not cells:
                continue
            xs = [h for h, _ in cells]
            ys = [c["success"] for _, c in cells]
            err = [[c["success"] - c["ci95"][0] for _, c in cells], [c["ci95"][1] - c["success"] for _, c in cells]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, linestyle=style, capsize=3, color=color,
                        markerfacecolor=color if kind == "sampled" else "white",
                        label=f"{LABELS[model]} ({kind} actions)")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance (memoryless)")
    ax.set_xscale("log")
    lengths = sorted({int(h) for rows in table.values() for h in rows})
    ax.set_xticks(lengths, [str(h) for h in lengths])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("corridor length H (steps from cue to junction)")
    ax.set_ylabel("success rate (held-out, 95% Wilson)")
    ax.set_title("Passive T-Maze: success by memory length")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def markdown(table: dict[str, dict[str, Any]], lengths: list[int]) -> str:
    lines = ["| H | model | seeds × episodes | success, sampled [95%] | per seed | success, greedy [95%] | "
             "best training return (iteration) → last 10 |", "|" + " --- |" * 7]
    for h in lengths:
        for model in MODELS:
            row = table.get(model, {}).get(str(h))
            if row is None:
                lines.append(f"| {h} | {model} | not run | | | | |")
                continue
            sampled, greedy = row["sampled"], row["greedy"]
            curve = "; ".join(f"{c['best_train_return']:.2f} ({c['best_at_iteration']}) → "
                              f"{c['last_10_train_return']:.2f}" for c in row["training_curve_per_seed"])
            lines.append(f"| {h} | {model} | {row['seeds']} × {row['episodes_per_seed']} | {sampled['success']:.2f} "
                         f"[{sampled['ci95'][0]:.2f}, {sampled['ci95'][1]:.2f}] | "
                         + ", ".join(f"{v:.2f}" for v in sampled["per_seed"])
                         + f" | {greedy['success']:.2f} [{greedy['ci95'][0]:.2f}, {greedy['ci95'][1]:.2f}] | {curve} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 30, 100], help="corridor lengths H")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per cell")
    parser.add_argument("--iterations", type=int, default=300, help="RL² iterations per run (32 trials each)")
    parser.add_argument("--eval-tasks", type=int, default=200, help="held-out episodes per run")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "tmaze_memory")
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "tmaze_memory.json")
    parser.add_argument("--records", type=Path, default=ROOT / "records" / "tmaze_memory",
                        help="one summary per cell, kept across sessions")
    parser.add_argument("--figure", type=Path, default=ROOT / "figures" / "tmaze_success.png")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.seeds < 1 or args.iterations < 1 or args.eval_tasks < 2:
        parser.error("--lengths, --seeds, --iterations must be >= 1 and --eval-tasks >= 2")
    torch.set_num_threads(1)
    start = time.perf_counter()
    done: dict[str, str] = {}
    for length in args.lengths:
        for model in args.models:
            for seed in range(args.seeds):
                run_dir = args.root / f"{model}-H{length}-seed{seed}"
                if args.summary_only:
                    continue
                done[run_dir.name] = run_cell(run_dir, length, model, seed, args.iterations, args.eval_tasks)
    table: dict[str, dict[str, Any]] = {}
    kept = [json.loads(p.read_text()) for p in sorted(args.records.glob("*-H*.json"))]
    records = {(r["model"], r["length"]): r for r in kept}
    all_lengths = sorted({int(p.name.split("-H")[1].split("-")[0]) for p in args.root.glob("*-H*-seed*")
                          if (p / "evaluation.json").is_file()} | set(args.lengths) | {h for _, h in records})
    for length in all_lengths:
        for model in MODELS:
            runs = sorted(p for p in args.root.glob(f"{model}-H{length}-seed*") if (p / "evaluation.json").is_file())
            if runs:
                row = cell_summary(runs, args.eval_tasks)
                row["iterations"] = json.loads((runs[0] / "config.json").read_text())["iterations"]
                row["commit"] = head_commit()
                atomic_write_json(args.records / f"{model}-H{length}.json", {"model": model, "length": length, **row})
                table.setdefault(model, {})[str(length)] = row
            elif (model, length) in records:  # summarised in an earlier session
                row = {k: v for k, v in records[model, length].items() if k not in ("model", "length")}
                table.setdefault(model, {})[str(length)] = row
    missing = [f"H={h} {m}" for h in all_lengths for m in MODELS if str(h) not in table.get(m, {})]
    result = {"benchmark": "tmaze_memory", "env": ENV_ID, "split": "test", "preset": str(PRESET.relative_to(REPO)),
              "command": " ".join([".venv/bin/python", *sys.argv]), "runs": done, "table": table,
              "not_run": missing, "chance": 0.5, "wall_seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_json(args.out, result)
    plot(table, args.figure)
    print()
    print(markdown(table, all_lengths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
