"""RESULTS table: every meta-RL agent on the same task distributions, same env-step budgets, several seeds.

For each (env, agent, seed) in the plan this trains the agent with ``metarl.training.train`` (one run
directory per cell under ``--out``), meta-tests it on the env's held-out ``test`` tasks (the same tasks for every
agent: evaluation seed 12345) and reports the return per adaptation episode (episode 0 = before adaptation / prior
context). Aggregation: each seed's mean over its test tasks, then the mean over seeds ± the 95% Student-t
interval over seeds (over tasks when only one seed ran). Env steps are the training steps the run used.

A cell whose run directory already holds ``evaluation.json`` is read, not re-run: the table can be filled over
several sittings (``--seeds 0``, later ``--seeds 1 2``) and re-printed at no cost.

    .venv/bin/python experiments/meta_rl_table.py --envs navigation --seeds 0 1 2
    .venv/bin/python experiments/meta_rl_table.py --envs navigation --agents pearl maml-trpo --seeds 0 --scale 0.1

Outputs: the Markdown table on stdout, ``OUT/table.json`` and one adaptation-curve PNG per env (``OUT/<env>.png``,
one line per agent, error bars = the intervals above).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from metarl.evaluation import save_figure, seed_statistics
from metarl.runs import atomic_write_json
from metarl.training import make_run_config, train

PRESETS = Path(__file__).parent / "presets"

CAVIA_INNER = dict(inner_lr=1.0)
"""cavia-trpo rows on MAML-TRPO presets: CAVIA's inner step size back over the preset's (MAML's 0.1)."""

PEARL_CPU = dict(hidden_sizes=[128, 128], encoder_hidden_sizes=[128, 128], meta_batch_size=8, batch_size=128,
                 gradient_steps=2000)


def locomotion_plan(env: str, maml_preset: str, maml_overrides: dict[str, Any] | None = None,
                    varibad_preset: str | None = None, amago_preset: str | None = None) -> dict[str, Any]:
    """A MuJoCo task distribution with 200-step episodes, ~200k env steps per agent: what each agent makes of a
    budget a 2-core CPU trains in minutes, plus MAML-TRPO at 20x that budget.

    PEARL and the oracle are CPU-sized (``PEARL_CPU``): the reference networks (3 x 300) and batches (16 tasks x
    256) run 1.3 gradient steps/s here (RESULTS, bench_pearl), so both use 2 x 128 networks and 8 tasks x 128
    transitions, with the reference's 2,000 gradient steps per iteration of 5,000 env steps (with 250 they had not
    learned at 200k steps); everything else is the reference's (pearl_cheetah_vel.yaml).
    MAML-TRPO uses its preset (100 x 100 ReLU, 20 rollouts per step, inner step 0.1, KL 0.01) with 10 tasks per
    meta-batch; RL² the PPO settings of rl2_cheetah_vel.yaml. The multi-task baseline is SB3's PPO (SB3's SAC runs
    ~75 steps/s here); from-scratch is SB3's SAC on each test task. VariBAD (where ``varibad_preset`` is given) uses
    the authors' configuration for the env (16 trials x 2 episodes); the AMAGO-style agent (where ``amago_preset``
    is given) VariBAD's trials with 100 gradient steps per iteration.
    """
    maml = dict(maml_overrides or {}, meta_batch_size=10)
    plan = {
        "env": env,
        "eval_tasks": 20,
        "eval_episodes": 3,
        "budget_steps": 200_000,
        "agents": {
            # 40 tasks x 2,000 initial steps = 80k, then 5 tasks x (400 + 600) = 5,000 per iteration
            "pearl": dict(preset="pearl_cheetah_vel.yaml", iterations=24, overrides=PEARL_CPU),
            "oracle": dict(preset="pearl_cheetah_vel.yaml", iterations=24, overrides=PEARL_CPU),
            # 10 tasks x 20 episodes x 200 steps x (support + query) = 80,000 per iteration
            "maml-trpo": dict(preset=maml_preset, iterations=2, overrides=maml),
            # MAML-TRPO's preset and budget, the inner step on a context only (the preset's inner_lr is MAML's)
            "cavia-trpo": dict(preset=maml_preset, iterations=2, overrides={**maml, **CAVIA_INNER}),
            # 20 trials x 2 episodes x 200 steps = 8,000 per iteration
            "rl2": dict(preset="rl2_cheetah_vel.yaml", iterations=25),
            "multitask": dict(iterations=98, overrides=dict(algorithm="ppo", steps_per_iteration=2_048,
                                                            max_episode_steps=200)),
            "scratch": dict(iterations=0, overrides=dict(max_episode_steps=200,
                                                         algorithm_kwargs={"learning_starts": 200})),
            "maml-trpo 20x": dict(agent="maml-trpo", preset=maml_preset, iterations=50, overrides=maml),
        },
    }
    if varibad_preset is not None:
        # 16 trials x 2 episodes x 200 steps = 6,400 per iteration (fewer where episodes end early)
        plan["agents"]["varibad"] = dict(preset=varibad_preset, iterations=31)
    if amago_preset is not None:  # the same trials: 6,400 env steps per iteration at most
        plan["agents"]["amago"] = dict(preset=amago_preset, iterations=31)
    return plan


# One plan per task distribution: the env id, the evaluation (held-out test tasks, adaptation episodes) and, per
# row, the preset, iterations and overrides (``agent`` names the agent where the row's name is not one). Budgets
# are chosen so every learning agent gets about the same number of env steps (the "per iteration" comments), except
# the rows marked 20x/100x; "scratch" trains on nothing before meta-test (it learns inside meta_test, from the same
# adaptation episodes the others get).
PLANS: dict[str, dict[str, Any]] = {
    # 2D navigation with 20-step episodes (MAML's goal law; shorter episodes than its 100 to fit 2-core budgets)
    "navigation": {
        "env": "metarl/Navigation2D-v0",
        "eval_tasks": 20,
        "eval_episodes": 3,
        "budget_steps": 30_000,
        "agents": {
            # ~333 env steps per iteration
            "pearl": dict(preset="pearl_navigation.yaml", iterations=90),
            "oracle": dict(preset="pearl_navigation.yaml", iterations=90),
            # 10 tasks x 10 episodes x 20 steps x (support + query) = 4,000 per iteration
            "maml-trpo": dict(preset="maml_trpo_navigation.yaml", iterations=7,
                              overrides=dict(max_episode_steps=20, meta_batch_size=10, episodes_per_task=10,
                                             adapt_episodes=10)),
            # MAML-TRPO's row with the inner step on the policy's context only (CAVIA)
            "cavia-trpo": dict(preset="maml_trpo_navigation.yaml", iterations=7,
                               overrides=dict(max_episode_steps=20, meta_batch_size=10, episodes_per_task=10,
                                              adapt_episodes=10, **CAVIA_INNER)),
            # 32 trials x 3 episodes x 20 steps = 1,920 per iteration
            "rl2": dict(iterations=15, overrides=dict(max_episode_steps=20, meta_batch_size=32, episodes_per_trial=3)),
            # 16 trials x 3 episodes x 20 steps = 960 per iteration
            "varibad": dict(preset="varibad_navigation.yaml", iterations=31),
            # off-policy in-context (AMAGO-style): 16 trials x 3 episodes x 20 steps = 960 per iteration
            "amago": dict(preset="amago_navigation.yaml", iterations=31),
            "multitask": dict(iterations=30, overrides=dict(steps_per_iteration=1_000, max_episode_steps=20)),
            "scratch": dict(iterations=0, overrides=dict(max_episode_steps=20,
                                                         algorithm_kwargs={"learning_starts": 20})),
            # the on-policy agents again with 20x and 100x the budget: where does PEARL's claimed 20-100x sample
            # efficiency over on-policy meta-RL (Rakelly et al. 2019) hold?
            "maml-trpo 20x": dict(agent="maml-trpo", preset="maml_trpo_navigation.yaml", iterations=150,
                                  overrides=dict(max_episode_steps=20, meta_batch_size=10, episodes_per_task=10,
                                                 adapt_episodes=10)),
            "maml-trpo 100x": dict(agent="maml-trpo", preset="maml_trpo_navigation.yaml", iterations=750,
                                   overrides=dict(max_episode_steps=20, meta_batch_size=10, episodes_per_task=10,
                                                  adapt_episodes=10)),
            "rl2 20x": dict(agent="rl2", iterations=300,
                            overrides=dict(max_episode_steps=20, meta_batch_size=32, episodes_per_trial=3)),
            "varibad 20x": dict(agent="varibad", preset="varibad_navigation.yaml", iterations=620),
        },
    },
    # MuJoCo locomotion: the same ~200k-step plan on each (see locomotion_plan)
    "cheetah-vel": locomotion_plan("metarl/HalfCheetahVel-v0", "maml_trpo_cheetah_vel.yaml",
                                   maml_overrides=dict(env_kwargs={}),  # PEARL's U[0, 3], not MAML's U[0, 2]
                                   varibad_preset="varibad_cheetah_vel.yaml", amago_preset="amago_cheetah_vel.yaml"),
    "walker-params": locomotion_plan("metarl/Walker2dRandParams-v0", "maml_trpo_cheetah_vel.yaml",
                                     maml_overrides=dict(env_kwargs={}), varibad_preset="varibad_walker_params.yaml",
                                     amago_preset="amago_walker_params.yaml"),
    "ant-goal": locomotion_plan("metarl/AntGoal-v0", "maml_trpo_ant_goal.yaml"),
}


def cell_dir(out: Path, env_key: str, agent: str, seed: int, scale: float) -> Path:
    suffix = "" if scale == 1.0 else f"-scale{scale:g}"
    return out / env_key / f"{agent.replace(' ', '-')}-seed{seed}{suffix}"


def run_cell(plan: dict[str, Any], agent: str, seed: int, scale: float, run_dir: Path, threads: int) -> Path:
    """Train and evaluate one (env, agent, seed) cell unless its run directory already holds an evaluation."""
    if (run_dir / "evaluation.json").exists():
        return run_dir
    spec = plan["agents"][agent]
    iterations = spec["iterations"] if spec["iterations"] == 0 else max(1, round(spec["iterations"] * scale))
    preset = str(PRESETS / spec["preset"]) if spec.get("preset") else None
    config = make_run_config(spec.get("agent", agent), dict(spec.get("overrides", {})), preset=preset,
                             env=plan["env"], iterations=iterations, seed=seed, eval_tasks=plan["eval_tasks"],
                             eval_episodes=plan["eval_episodes"], eval_splits=("test",), threads=threads,
                             run_dir=str(run_dir), progress=False, checkpoint_every=max(1, iterations))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return train(config)


def read_cell(run_dir: Path) -> dict[str, Any]:
    """Per-task returns ``[tasks, episodes]`` on the test split and the env steps the training used."""
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    returns = np.asarray(evaluation["splits"]["test"]["per_task_returns"], dtype=np.float64)
    env_steps = 0
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with metrics.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and rows[-1].get("charts/env_steps"):
            env_steps = int(float(rows[-1]["charts/env_steps"]))
    return {"returns": returns, "env_steps": env_steps}


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± 95% CI per adaptation episode: over seeds (each seed's task mean), or over tasks for one seed."""
    stats = seed_statistics([c["returns"] for c in cells])
    return {"seeds": len(cells), "seed_list": [c.get("seed") for c in cells],
            "ci_over": "seeds" if len(cells) > 1 else "tasks",
            "env_steps": int(np.mean([c["env_steps"] for c in cells])),
            "mean": [s["return"] for s in stats], "ci95": [s["ci95"] for s in stats]}


def plot(env_key: str, rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for agent, row in rows.items():
        xs = list(range(len(row["mean"])))
        errs = [0.0 if math.isnan(c) else c for c in row["ci95"]]
        ax.errorbar(xs, row["mean"], yerr=errs, marker="o", capsize=3,
                    label=f"{agent} ({row['env_steps'] / 1000:.0f}k steps, {row['seeds']} seeds)")
    ax.set_xlabel("adaptation episode (0 = before adaptation)")
    ax.set_ylabel("return on held-out test tasks (95% CI)")
    ax.set_title(f"{PLANS[env_key]['env']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--agents", nargs="+", default=None, help="default: every agent in the env's plan")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every plan's iterations (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/meta_rl_table"))
    parser.add_argument("--no-train", action="store_true",
                        help="only read the cells already evaluated (a row summarises the seeds it has)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    table: dict[str, Any] = {}
    for env_key in args.envs:
        plan = PLANS[env_key]
        agents = args.agents or list(plan["agents"])
        unknown = [a for a in agents if a not in plan["agents"]]
        if unknown:
            parser.error(f"no plan for {unknown} on {env_key}; planned: {', '.join(plan['agents'])}")
        rows: dict[str, Any] = {}
        for agent in agents:
            cells = []
            for seed in args.seeds:
                run_dir = cell_dir(args.out, env_key, agent, seed, args.scale)
                if args.no_train and not (run_dir / "evaluation.json").exists():
                    continue
                run_dir = run_cell(plan, agent, seed, args.scale, run_dir, args.threads)
                cells.append(read_cell(run_dir) | {"seed": seed})
                print(json.dumps({"env": env_key, "agent": agent, "seed": seed, "run_dir": str(run_dir),
                                  "test_return_per_episode": cells[-1]["returns"].mean(axis=0).round(3).tolist(),
                                  "env_steps": cells[-1]["env_steps"]}), flush=True)
            if cells:
                rows[agent] = summarise(cells)
        table[env_key] = {"env": plan["env"], "seeds": args.seeds, "scale": args.scale, "agents": rows}
        args.out.mkdir(parents=True, exist_ok=True)
        plot(env_key, rows, args.out / f"{env_key}.png")
    previous = args.out / "table.json"  # other envs' rows stay
    merged = json.loads(previous.read_text()) if previous.exists() else {}
    atomic_write_json(previous, merged | table)
    for env_key, data in table.items():
        episodes = max(len(r["mean"]) for r in data["agents"].values())
        print(f"\n{data['env']} (test tasks, seeds {data['seeds']}, iterations x{data['scale']:g})\n")
        print("| agent | env steps | seeds | " + " | ".join(f"ep {k}" for k in range(episodes)) + " |")
        print("|---|---|---|" + "---|" * episodes)
        for agent, row in data["agents"].items():
            cells = " | ".join(f"{m:.2f} ± {c:.2f}" if not math.isnan(c) else f"{m:.2f}"
                               for m, c in zip(row["mean"], row["ci95"]))
            print(f"| {agent} | {row['env_steps']:,} | {row['seeds']} | {cells} |")
        print(f"\n± 95% CI over seeds (over the test tasks where a row has one seed); "
              f"plot: {args.out / (env_key + '.png')}")
    return table


if __name__ == "__main__":
    main()
