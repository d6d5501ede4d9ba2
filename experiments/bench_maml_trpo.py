"""Benchmark one MAML-TRPO meta-iteration: where the time goes, and env-steps/s against the raw vector env.

    .venv/bin/python experiments/bench_maml_trpo.py --env metarl/HalfCheetahVel-v0 \\
        --preset experiments/presets/maml_trpo_cheetah_vel.yaml --iterations 3

Measures, in one process (timings on a shared machine are noisy: compare the ratios of one run):

* ``raw_env_steps_per_s``: the agent's own kind of ``TaskVectorEnv`` (same env, kwargs, number of sub-envs and time
  limit) stepped with uniformly random actions, no policy: the ceiling for sampling. Measured before and after the
  iterations, the mean is reported.
* per meta-iteration: wall time; ``env_seconds`` (inside ``envs.reset``/``envs.step``); ``policy_inference_seconds``
  (computing and sampling actions during rollouts); ``learner_seconds`` = everything else (baselines, advantages,
  inner loop, TRPO with its conjugate gradient and line search, and the sampler's own bookkeeping), and
  ``learner_fraction`` = learner_seconds / iteration seconds (target: at most 0.25); learner_seconds split into
  the agent's learner code (``time/learner_seconds``: advantages, inner loop, TRPO) and the rest (the sampler's
  reset/stacking/padding around the env and policy calls, ``time/other_seconds``);
  ``env_steps_per_s`` of the whole iteration and its ratio to the raw throughput.

The first iteration pays one-off costs (allocator warm-up, first calls); the summary uses the later ones.
Prints one JSON object.

``--count-flops`` runs one more iteration under ``torch.utils.flop_counter.FlopCounterMode`` and reports the
learner's floating-point work (the iteration's counted FLOPs minus the policy's forward passes during rollouts,
``2 Σ in·out`` per env step), the rate it runs at (those FLOPs over the mean learner-code seconds of the timed
iterations) and the rate of one batched matrix product of the learner's own shape (``[tasks, steps, hidden]`` ×
``[tasks, hidden, hidden]``, the bulk of its work) timed in the same process: how close the learner is to what the
CPU can do.

``--compare-huge-pages R`` runs the benchmark ``2 R`` times in fresh processes, alternating
``THP_MEM_ALLOC_ENABLE=0`` and ``=1`` (PyTorch's CPU allocator with 4 KB pages or with transparent huge pages for
buffers of 2 MB or more; importing metarl turns the latter on, see ``metarl/__init__.py``), and prints each run's
summary and the per-pair ratios of learner seconds and of iteration seconds. ``--compare-heap R`` does the same with
``METARL_KEEP_FREED_MEMORY=0`` and ``=1`` (freed memory handed back to the kernel, or kept in the heap:
``metarl/core/host_memory.py``; the benchmark, like ``metarl train``, keeps it unless told not to) and also reports
each run's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import yaml

from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.cli import configure_process
from metarl.core.host_memory import ENV_SWITCH
from metarl.envs.vector import TaskVectorEnv


def raw_throughput(agent: MAMLTRPO, steps: int, seed: int = 0) -> float:
    """Env steps per second of a fresh vector env like the agent's, random actions (pre-drawn), tasks set."""
    envs = TaskVectorEnv(agent.env_id, agent.envs.num_envs, env_kwargs=agent.config.env_kwargs,
                         max_episode_steps=agent.config.max_episode_steps)
    rng = np.random.default_rng(seed)
    tasks = envs.single_task_env.sample_tasks(envs.num_envs, seed=seed)
    envs.set_tasks(tasks)
    envs.reset(seed=seed)
    space = envs.single_action_space
    if hasattr(space, "n"):
        actions = rng.integers(0, space.n, size=(steps, envs.num_envs))
    else:
        actions = rng.uniform(space.low, space.high, size=(steps, envs.num_envs, *space.shape)).astype(space.dtype)
    start = perf_counter()
    for t in range(steps):
        envs.step(actions[t])
    seconds = perf_counter() - start
    envs.close()
    return steps * envs.num_envs / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0")
    parser.add_argument("--preset", type=Path, default=Path("experiments/presets/maml_trpo_cheetah_vel.yaml"))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--raw-steps", type=int, default=200, help="vector-env steps for the raw throughput")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=YAML",
                        help="override config fields, e.g. fisher_subsample=0.2 meta_batch_size=20")
    parser.add_argument("--count-flops", action="store_true",
                        help="count the learner's FLOPs in one more iteration and compare its rate with a bmm's")
    parser.add_argument("--compare-huge-pages", type=int, default=0, metavar="R",
                        help="R pairs of runs in fresh processes, THP_MEM_ALLOC_ENABLE=0 then =1 (see above)")
    parser.add_argument("--compare-heap", type=int, default=0, metavar="R",
                        help="R pairs of runs in fresh processes, METARL_KEEP_FREED_MEMORY=0 then =1 (see above)")
    args = parser.parse_args(argv)
    for flag, variable in (("--compare-huge-pages", "THP_MEM_ALLOC_ENABLE"), ("--compare-heap", ENV_SWITCH)):
        pairs = getattr(args, flag[2:].replace("-", "_"))
        if pairs:
            return compare_setting(pairs, list(sys.argv[1:] if argv is None else argv), flag, variable)
    keeps_freed_memory = configure_process()["keep_freed_memory"]  # what `metarl train` runs with
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = yaml.safe_load(args.preset.read_text()) if args.preset else {}
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = yaml.safe_load(value)
    config = MAMLTRPOConfig(**fields)

    start = perf_counter()
    agent = MAMLTRPO(args.env, config)
    build_seconds = perf_counter() - start
    raw_before = raw_throughput(agent, args.raw_steps)
    iterations = []
    for i in range(args.iterations):
        m = agent.train_iteration(i)
        seconds = m["time/iteration_seconds"]
        learner = seconds - m["time/env_seconds"] - m["time/policy_inference_seconds"]
        iterations.append({
            "iteration": i,
            "seconds": round(seconds, 3),
            "env_seconds": round(m["time/env_seconds"], 3),
            "policy_inference_seconds": round(m["time/policy_inference_seconds"], 3),
            "learner_seconds": round(learner, 3),
            "learner_fraction": round(learner / seconds, 3),
            "of_which_learner_code_seconds": round(m["time/learner_seconds"], 3),
            "of_which_sampler_bookkeeping_seconds": round(m["time/other_seconds"], 3),
            "env_steps": int(m["env_steps"]),
            "env_steps_per_s": round(m["env_steps"] / seconds, 1),
            "backtracks": int(m["charts/backtracks"]),
            "accepted": bool(m["charts/update_accepted"]),
            "post_adaptation_return": round(m["charts/post_adaptation_return"], 3),
        })
    flops = learner_flops(agent, args.iterations, iterations) if args.count_flops else None
    raw_after = raw_throughput(agent, args.raw_steps, seed=1)
    agent.close()
    raw = (raw_before + raw_after) / 2
    steady = iterations[1:] or iterations
    summary = {
        "iteration_seconds": float(np.mean([it["seconds"] for it in steady])),
        "learner_fraction": float(np.mean([it["learner_fraction"] for it in steady])),
        "env_steps_per_s": float(np.mean([it["env_steps_per_s"] for it in steady])),
    }
    summary["fraction_of_raw_throughput"] = summary["env_steps_per_s"] / raw
    result = {
        "env": args.env,
        "preset": str(args.preset),
        "config": {k: v for k, v in vars(config).items()},
        "num_envs": agent.envs.num_envs,
        "torch_threads": torch.get_num_threads(),
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor()},
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "keeps_freed_memory": keeps_freed_memory,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "agent_build_seconds": round(build_seconds, 2),
        "raw_env_steps_per_s": {"before": round(raw_before, 1), "after": round(raw_after, 1), "mean": round(raw, 1)},
        "iterations": iterations,
        "summary (iterations after the first)": {k: round(v, 3) for k, v in summary.items()},
    }
    if flops:
        result["learner_flops"] = flops
    print(json.dumps(result, indent=2))
    return result


def learner_flops(agent: MAMLTRPO, iteration: int, timed: list[dict]) -> dict:
    """FLOPs of one more iteration's learner (see the module docstring) and its rate against a bmm's."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        metrics = agent.train_iteration(iteration)
    layers = [m for m in agent.policy.modules() if isinstance(m, torch.nn.Linear)]
    inference = 2 * sum(m.in_features * m.out_features for m in layers) * metrics["env_steps"]
    flops = counter.get_total_flops() - inference
    steady = timed[1:] or timed
    seconds = float(np.mean([it["of_which_learner_code_seconds"] for it in steady]))
    cfg = agent.config
    tasks, steps = cfg.meta_batch_size, cfg.episodes_per_task * (cfg.max_episode_steps or 200)
    hidden = max(cfg.hidden_sizes)
    a, b = torch.randn(tasks, steps, hidden), torch.randn(tasks, hidden, hidden)
    out = torch.bmm(a, b)
    rates = []
    for _ in range(5):
        start = perf_counter()
        torch.bmm(a, b, out=out)
        rates.append(2 * tasks * steps * hidden * hidden / (perf_counter() - start))
    bmm_rate = float(np.median(rates))
    return {
        "learner_flops_per_iteration": int(flops),
        "learner_gflop_per_iteration": round(flops / 1e9, 1),
        "rollout_inference_gflop": round(inference / 1e9, 1),
        "learner_code_seconds": round(seconds, 3),
        "learner_gflop_per_s": float(f"{flops / seconds / 1e9:.4g}"),  # significant digits: tiny configs run slowly
        "bmm_gflop_per_s": float(f"{bmm_rate / 1e9:.4g}"),
        "learner_rate_over_bmm_rate": round(flops / seconds / bmm_rate, 3),
    }


def compare_setting(pairs: int, argv: list[str], flag: str, variable: str) -> dict:
    """The benchmark ``argv`` (without ``flag R``) in fresh processes with ``variable=0`` then ``=1``, ``pairs``
    times; prints one JSON with each run's summary and the per-pair ratios (=1 over =0)."""
    argv = [a for i, a in enumerate(argv)
            if not (a == flag or a.startswith(flag + "=") or (i > 0 and argv[i - 1] == flag))]
    runs = []
    for pair in range(pairs):
        for setting in ("0", "1"):
            done = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True,
                                  env=dict(os.environ, **{variable: setting}))
            result = json.loads(done.stdout)
            steady = result["iterations"][1:] or result["iterations"]
            runs.append({
                "pair": pair,
                variable: setting,
                "learner_seconds": round(float(np.mean([it["learner_seconds"] for it in steady])), 3),
                "max_rss_mb": result["max_rss_mb"],
                **result["summary (iterations after the first)"],
            })
    ratios = [{key: round(runs[2 * p + 1][key] / runs[2 * p][key], 3)
               for key in ("learner_seconds", "iteration_seconds", "max_rss_mb")}
              for p in range(pairs)]
    result = {"runs": runs, f"{variable}=1 over =0": ratios}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
