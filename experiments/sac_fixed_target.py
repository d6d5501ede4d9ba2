"""How many SAC updates does the cheetah need to learn to run? Stable-Baselines3's SAC on one HalfCheetahVel task.

A reference for the in-context agents' locomotion budgets (issue 18, item 4): before an agent can track a target
velocity it must learn to run at all, and that part needs no memory. This trains Stable-Baselines3's ``SAC`` with its
defaults (batch 256, one update per env step after ``learning_starts``, lr 3e-4, γ 0.99, learned α; the library's
standard use) on ``metarl/HalfCheetahVel-v0`` with the target fixed (``--velocity``, default 2.0), 200-step
episodes, and every ``--eval-every`` env steps runs ``--eval-episodes`` deterministic episodes (fixed reset seeds)
recording the return and the torso's mean forward velocity.

    .venv/bin/python experiments/sac_fixed_target.py --steps 40000 \\
        --out experiments/records/velocity_tracking/sb3_sac_fixed_target.json

Prints and writes one JSON object (``curve``: env steps, gradient updates, return, mean speed). Figures:
experiments/RESULTS.md, the AMAGO locomotion section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def evaluate(model: Any, env: Any, episodes: int) -> tuple[float, float]:
    """Mean return and mean forward velocity of ``episodes`` deterministic episodes (reset seeds 100, 101, ...)."""
    returns, speeds = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=100 + episode)
        done, total, velocity = False, 0.0, []
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            velocity.append(float(info["x_velocity"]))
            done = terminated or truncated
        returns.append(total)
        speeds.append(float(np.mean(velocity)))
    return float(np.mean(returns)), float(np.mean(speeds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--velocity", type=float, default=2.0, help="the fixed target v* (within U[0, 3])")
    parser.add_argument("--steps", type=int, default=40_000, help="env steps of training")
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.eval_episodes < 1 or not 0.0 <= args.velocity <= 3.0:
        parser.error("--steps, --eval-every, --eval-episodes must be >= 1 and --velocity in [0, 3]")

    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC

    import metarl.envs  # noqa: F401  (registers the metarl/* environments)
    from metarl.envs.locomotion import VelocityTask
    from metarl.runs import atomic_write_json, head_commit

    torch.set_num_threads(1)
    env = gym.make("metarl/HalfCheetahVel-v0", max_episode_steps=200)
    env.unwrapped.set_task(VelocityTask(args.velocity))
    model = SAC("MlpPolicy", env, seed=args.seed, device="cpu", verbose=0)
    start, curve, done = time.perf_counter(), [], 0
    while done < args.steps:
        chunk = min(args.eval_every, args.steps - done)
        model.learn(chunk, reset_num_timesteps=False)
        done += chunk
        mean_return, speed = evaluate(model, env, args.eval_episodes)
        curve.append({"env_steps": done, "updates": int(model._n_updates), "return": round(mean_return, 2),
                      "mean_speed": round(speed, 3)})
        print(curve[-1], file=sys.stderr, flush=True)
    result = {"experiment": "sac_fixed_target", "env": "metarl/HalfCheetahVel-v0", "velocity": args.velocity,
              "episode_steps": 200, "seed": args.seed, "eval_episodes": args.eval_episodes, "curve": curve,
              "command": " ".join([".venv/bin/python", *sys.argv]), "commit": head_commit(),
              "wall_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
