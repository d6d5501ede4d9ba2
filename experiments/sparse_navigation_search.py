"""RESULTS figure: where trial-based agents search on ``metarl/SparseNavigation2D-v0`` (VariBAD, Zintgraf et al.,
ICLR 2020, Fig. 2; PEARL's sparse point robot, Rakelly et al. 2019).

The goal lies on the upper half of the unit circle and the reward is non-zero only within ``goal_radius`` of it, so
nothing is learned about the goal until it is found. A Bayes-optimal agent sweeps the semicircle in its first
episode (where the posterior over the goal is the prior) and, once it has been rewarded, goes straight back to
the goal in the later episodes of the trial. This script trains the agents of ``--agents`` (default VariBAD; RL²
beside it as the non-Bayesian trial agent) on the env's presets, then rolls out one meta-test trial on each of
``--eval-tasks`` held-out test goals (the same goals for every agent: evaluation seed 12345, the protocol of
:func:`metarl.evaluation.evaluate_meta_rl`) and reports, per episode of the trial:

- the return (mean ± 95% t over goals) and the fraction of goals reached (reward > 0 at some step);
- a plot (``--figure``; default ``experiments/figures/sparse_navigation_search.png``): one row per agent, one panel
  per episode, the paths on ``--plot-tasks`` goals (one colour per goal, goal regions as circles).

A run directory that exists is reused (finished) or resumed (unfinished), so the script can be stopped and started:

    .venv/bin/python experiments/sparse_navigation_search.py --agents varibad --iterations 400 --threads 1
    .venv/bin/python experiments/sparse_navigation_search.py --agents varibad rl2 --iterations 400 --threads 1

Output: the JSON of the figures on stdout and in ``OUT/search.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from metarl.core.seeding import derive_seed
from metarl.evaluation import mean_confidence_interval, save_figure
from metarl.runs import atomic_write_json, load_checkpoint
from metarl.training import load_session, make_run_config, resume, train

ENV = "metarl/SparseNavigation2D-v0"
PRESETS = Path(__file__).parent / "presets"
AGENT_PRESETS = {"varibad": "varibad_sparse_navigation.yaml"}
"""Agents with a preset for this env; any other trial agent gets VariBAD's trial shape (``TRIAL``) on its defaults."""
TRIAL = dict(max_episode_steps=20, meta_batch_size=16, episodes_per_trial=3)


def run_agent(agent: str, args: argparse.Namespace) -> Path:
    """Train, resume or reuse ``OUT/AGENT-seedS``; returns the run directory."""
    run_dir = args.out / f"{agent}-seed{args.seed}"
    if (run_dir / "evaluation.json").exists():
        return run_dir
    if (run_dir / "config.json").exists():
        last = run_dir / "checkpoints" / "last.pt"
        done = load_checkpoint(last)["iteration"] if last.exists() else 0
        return resume(run_dir, iterations=max(args.iterations, done))
    preset = AGENT_PRESETS.get(agent)
    values = {} if preset else dict(TRIAL, env=ENV)
    config = make_run_config(agent, values, preset=PRESETS / preset if preset else None, iterations=args.iterations,
                             eval_tasks=args.eval_tasks, eval_episodes=3, seed=args.seed, threads=args.threads,
                             progress=args.progress, checkpoint_every=25, run_dir=str(run_dir))
    return train(config)


def search_trials(run_dir: Path, num_tasks: int, seed: int) -> dict[str, Any]:
    """One meta-test trial (3 episodes) per held-out test goal: positions per step, returns, goals."""
    import gymnasium as gym

    import metarl.envs  # noqa: F401 - registers the ids

    session = load_session(run_dir)
    try:
        agent = session.agent
        env = gym.make(ENV)
        tasks = env.unwrapped.sample_tasks(num_tasks, split="test", seed=derive_seed(seed, "tasks", "test"))
        circle_radius, goal_radius = float(env.unwrapped.circle_radius), float(env.unwrapped.goal_radius)
        env.close()
        batch = agent.meta_test_trials(agent.env_pool.test(len(tasks)), tasks, 3,
                                       derive_seed(seed, "meta-test", "test"))
        obs_size = 2
        positions = batch["inputs"][..., :obs_size].numpy()  # what each step acted on: the position before the move
        next_obs = batch["next_obs"][..., :obs_size].numpy() if "next_obs" in batch else None
        dones = batch["dones"].numpy()
        mask = batch["mask"].numpy()
        rewards = batch["rewards"].numpy()
    finally:
        session.close()
    paths: list[list[np.ndarray]] = []  # per task, per episode: [steps (+ 1), 2] positions
    reached = np.zeros((len(tasks), 3), dtype=bool)
    for i in range(len(tasks)):
        ends = np.flatnonzero(dones[i] * mask[i])
        starts = np.concatenate([[0], ends[:-1] + 1])
        per_episode = []
        for k, (a, b) in enumerate(zip(starts, ends)):
            # the positions acted on, and where the last move ended where the agent recorded it (VariBAD does)
            tail = [next_obs[i, b][None]] if next_obs is not None else []
            per_episode.append(np.vstack([positions[i, a:b + 1], *tail]))
            reached[i, k] = bool((rewards[i, a:b + 1] > 0).any())
        paths.append(per_episode)
    goals = circle_radius * np.array([[np.cos(t.angle), np.sin(t.angle)] for t in tasks])
    return {"returns": np.asarray(batch["episode_returns"]), "reached": reached, "paths": paths, "goals": goals,
            "goal_radius": goal_radius}


def plot(results: dict[str, dict[str, Any]], plot_tasks: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = list(results)
    fig, axes = plt.subplots(len(agents), 3, figsize=(10, 3.4 * len(agents)), squeeze=False)
    colours = plt.get_cmap("tab10")
    circle = np.linspace(0, np.pi, 100)
    for row, agent in enumerate(agents):
        res = results[agent]
        for k in range(3):
            ax = axes[row, k]
            ax.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1)
            for i in range(min(plot_tasks, len(res["paths"]))):
                goal = res["goals"][i]
                ax.add_patch(plt.Circle(goal, res["goal_radius"], color=colours(i), alpha=0.15))
                ax.plot(*res["paths"][i][k].T, color=colours(i), lw=1.2)
            returns = res["returns"][:, k]
            ax.set_title(f"{agent}, episode {k + 1}: return {returns.mean():.1f}, "
                         f"reached {res['reached'][:, k].mean():.0%}", fontsize=9)
            ax.set_xlim(-1.3, 1.3)
            ax.set_ylim(-0.4, 1.3)
            ax.set_aspect("equal")
    fig.suptitle(f"{ENV}: one meta-test trial per held-out goal (first {plot_tasks} goals drawn)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=["varibad"])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--plot-tasks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/sparse_navigation"))
    parser.add_argument("--figure", type=Path,
                        default=Path(__file__).parent / "figures" / "sparse_navigation_search.png")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.eval_tasks < 2 or args.plot_tasks < 1:
        parser.error("--iterations and --plot-tasks must be >= 1 and --eval-tasks >= 2")
    results, summary = {}, {}
    for agent in args.agents:
        run_dir = run_agent(agent, args)
        res = results[agent] = search_trials(run_dir, args.eval_tasks, args.eval_seed)
        config = json.loads((run_dir / "config.json").read_text())
        summary[agent] = {
            "run_dir": str(run_dir), "iterations": config.get("iterations"), "seed": args.seed,
            "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed,
            "episodes": [{"episode": k + 1, **{f"return_{key}": val for key, val in
                                               mean_confidence_interval(res["returns"][:, k]).items()},
                          "reached": float(res["reached"][:, k].mean())} for k in range(3)],
        }
    plot(results, args.plot_tasks, args.figure)
    summary["figure"] = str(args.figure)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "search.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
