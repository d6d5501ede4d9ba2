"""Does an in-context agent find the target velocity? Achieved against target speed on HalfCheetahVel, by episode.

A meta-test return alone cannot tell "stands still" from "runs at a speed unrelated to the target" (both score
about −300 on PEARL's U[0, 3] law). This diagnostic replays the meta-test of a finished run of a trial agent
(``rl2`` or ``amago``: one trial of ``--episodes`` episodes per held-out task from a fresh state, the run's last
checkpoint, the held-out tasks and seeds of the run's evaluation, so the same trials as its evaluation.json) and
records, per task and episode, the torso's mean forward velocity (qvel[0], the 9th entry of HalfCheetah's
observation, averaged over the episode's steps) beside the task's v*. An agent that adapts tracks v* better in later
episodes: the correlation between achieved and target speed rises and the mean gap |v̄ − v*| falls from episode 0 on.

    .venv/bin/python experiments/velocity_tracking.py RUN_DIR [RUN_DIR ...] --out experiments/out/velocity.json \\
        --figure experiments/figures/velocity_tracking.png

Prints one JSON object per run (``per_episode``: correlation, mean gap, mean speed; ``tasks``: v* and the speeds).
Figures: experiments/RESULTS.md, the AMAGO locomotion section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VELOCITY_INDEX = 8  # HalfCheetah's observation: qpos[1:] (8 entries), then qvel, whose first entry is the torso's v


def episode_speeds(batch: dict[str, Any], episodes: int) -> np.ndarray:
    """``[tasks, episodes]`` mean forward velocity per episode of collected trials (``inputs`` ``[N, T, size]``
    with the observation first, ``dones`` and ``mask`` ``[N, T]``): step t belongs to the episode whose end is the
    first done at or after t."""
    velocity = batch["inputs"][..., VELOCITY_INDEX].numpy()
    dones, mask = batch["dones"].numpy().astype(bool), batch["mask"].numpy().astype(bool)
    episode = np.cumsum(dones, axis=1) - dones  # steps before and at the first done are episode 0, ...
    speeds = np.full((len(velocity), episodes), np.nan)
    for k in range(episodes):
        rows = mask & (episode == k)
        counts = rows.sum(axis=1)
        speeds[:, k] = np.where(counts > 0, (velocity * rows).sum(axis=1) / np.maximum(counts, 1), np.nan)
    return speeds


def track(run_dir: Path, tasks: int | None, episodes: int | None) -> dict[str, Any]:
    from metarl.agents import entry
    from metarl.core.seeding import derive_seed
    from metarl.runs import load_checkpoint

    config = json.loads((run_dir / "config.json").read_text())
    if config["name"] not in ("rl2", "amago"):
        raise SystemExit(f"metarl: error: {run_dir} is a {config['name']} run; this replays trial agents (rl2, amago)")
    if "HalfCheetahVel" not in config["task"]["env"]:
        raise SystemExit(f"metarl: error: {run_dir} trained on {config['task']['env']}, not HalfCheetahVel")
    evaluation = config["evaluation"]
    tasks = tasks or evaluation["eval_tasks"]
    episodes = episodes or evaluation["eval_episodes"] or 3
    agent_type, config_type = entry(config["name"]).load()
    agent = agent_type(config["task"]["env"], config_type(**config["learner"]))
    try:
        agent.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"])
        seed = evaluation["eval_seed"]  # the tasks and the meta-test seed of metarl.evaluation's test split
        test = agent.task_env.sample_tasks(tasks, split="test", seed=derive_seed(seed, "tasks", "test"))
        batch = agent.meta_test_trials(agent.env_pool.test(len(test)), test, episodes,
                                       derive_seed(seed, "meta-test", "test"))
        speeds = episode_speeds(batch, episodes)
    finally:
        agent.close()
    target = np.array([task.velocity for task in test])
    per_episode = [{"episode": k, "correlation": round(float(np.corrcoef(speeds[:, k], target)[0, 1]), 3),
                    "mean_gap": round(float(np.abs(speeds[:, k] - target).mean()), 3),
                    "mean_speed": round(float(speeds[:, k].mean()), 3),
                    "mean_return": round(float(batch["episode_returns"][:, k].mean()), 2)} for k in range(episodes)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"run": str(run_dir), "commit": commit.stdout.strip() or None, "agent": config["name"], "tasks": tasks,
            "episodes": episodes, "eval_seed": evaluation["eval_seed"], "per_episode": per_episode,
            "target_velocity": target.round(3).tolist(), "speeds": speeds.round(3).tolist()}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metarl.evaluation import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        target, speeds = np.array(result["target_velocity"]), np.array(result["speeds"])
        for k in range(result["episodes"]):
            ax.scatter(target, speeds[:, k], s=14, label=f"episode {k} (r = {result['per_episode'][k]['correlation']})")
        line = [0, max(3.0, float(target.max()))]
        ax.plot(line, line, "k--", lw=0.8, label="v̄ = v*")
        ax.set(xlabel="target velocity v*", ylabel="achieved mean velocity v̄",
               title=f"{result['agent']}: {Path(result['run']).name}")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)  # atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of rl2 or amago on HalfCheetahVel")
    parser.add_argument("--tasks", type=int, default=None, help="held-out tasks (default: the run's eval_tasks)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per trial (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--figure", type=Path, default=None, help="scatter of achieved against target speed")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "checkpoints" / "last.pt").is_file() or not (run / "config.json").is_file():
            print(f"metarl: error: {run} is not a finished run directory (config.json, checkpoints/last.pt)",
                  file=sys.stderr)
            return 2
    if (args.tasks is not None and args.tasks < 2) or (args.episodes is not None and args.episodes < 1):
        print("metarl: error: --tasks must be >= 2 and --episodes >= 1", file=sys.stderr)
        return 2
    results = [track(run, args.tasks, args.episodes) for run in args.runs]
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k not in ("target_velocity", "speeds")}))
    if args.out:
        from metarl.runs import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, results)
    if args.figure:
        plot(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
