"""Where a MAML-TRPO run loses return on held-out tasks: per task, and sampled actions against the policy's mean.

    .venv/bin/python experiments/maml_trpo_task_spread.py experiments/out/maml_trpo/cheetah_dir_mb10_seed0

For the run's last checkpoint, the held-out tasks of ``metarl evaluate`` (``--split``, ``--tasks``, tasks and
meta-test seeds derived from the run's evaluation seed exactly as ``metarl.evaluation.evaluate_meta_rl`` does, so
the sampled returns equal ``evaluation.json``'s when ``--tasks`` and ``--stages`` match) go through the agent's
own meta-test adaptation
(``MAMLTRPO.adaptation_stages``: ``adapt_episodes`` rollouts per task and stage, one policy-gradient step between
stages). For each stage this reports the mean return of those sampled rollouts (what every table reports) and of
``--mean-episodes`` rollouts per task with the same fast weights acting with their mean action (the log std set to
the policy's floor), per task and over tasks. A wide spread over tasks says the inner step is unreliable (some
tasks adapt the wrong way); a large gap between sampled and mean-action returns says the remaining exploration noise
costs return. With ``--pitch-index`` (HalfCheetah: 1, the root's pitch in the observation) it also says how often the
robot ended up on its back. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.core.sampling import collect_episodes
from metarl.core.seeding import derive_seed
from metarl.evaluation import mean_confidence_interval
from metarl.training import load_run, load_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--stages", type=int, default=2, help="adaptation stages (stage k = after k steps)")
    parser.add_argument("--mean-episodes", type=int, default=5)
    parser.add_argument("--pitch-index", type=int, default=None,
                        help="observation entry holding the root's pitch angle (HalfCheetah: 1); adds, per task, "
                             "the fraction of sampled rollouts that ever pitched past 90 degrees (on its back)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    run = load_run(args.run_dir)
    if run.name != "maml-trpo":
        parser.error(f"{args.run_dir} is a {run.name} run; this diagnostic reads MAML-TRPO fast weights")
    agent = load_session(args.run_dir).agent
    env = gym.make(run.task.env, **agent.config.env_kwargs).unwrapped
    eval_seed = run.evaluation.eval_seed
    tasks = env.sample_tasks(args.tasks, split=args.split, seed=derive_seed(eval_seed, "tasks", args.split))
    seed = derive_seed(eval_seed, "meta-test", args.split)
    env.close()
    mean_envs = agent._make_envs(len(tasks) * min(args.mean_episodes, agent.envs_per_task))
    floor = float(agent.policy.min_log_std)
    report: dict = {"run_dir": str(args.run_dir), "env": run.task.env, "split": args.split,
                    "tasks": [str(t) for t in tasks],
                    "stages": []}
    for stage, (fast, episodes) in enumerate(agent.adaptation_stages(tasks, args.stages, seed=seed)):
        mean_weights = dict(fast, log_std=torch.full_like(fast["log_std"], floor))
        mean_rollouts = collect_episodes(
            mean_envs, agent.policy, mean_weights, tasks, args.mean_episodes,
            seed=derive_seed(seed, "mean_action", stage), generator=torch.Generator().manual_seed(0),
        )
        sampled = episodes.returns.mean(1).cpu().numpy()
        mean_action = mean_rollouts.returns.mean(1).cpu().numpy()
        flipped = {}
        if args.pitch_index is not None:
            pitch = episodes.observations[..., args.pitch_index].abs() * episodes.mask
            flipped = {"flipped_fraction_per_task": np.round(
                (pitch.amax(dim=-1) > np.pi / 2).float().mean(1).cpu().numpy(), 2).tolist()}
        report["stages"].append({
            "stage": stage,
            "policy_std_mean": round(float(fast["log_std"].detach().exp().mean()), 3),
            "sampled_return": {k: round(v, 2) for k, v in mean_confidence_interval(sampled).items()},
            "mean_action_return": {k: round(v, 2) for k, v in mean_confidence_interval(mean_action).items()},
            "sampled_per_task": np.round(sampled, 1).tolist(),
            "mean_action_per_task": np.round(mean_action, 1).tolist(),
            **flipped,
        })
    mean_envs.close()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
