"""How much does MAML-TRPO lose per step when the Fisher-vector products use only some of the meta-batch's tasks?

    .venv/bin/python experiments/fisher_subsample_quality.py --threads 1 \\
        --init-from experiments/out/maml_trpo/cheetah_vel02_mb10_fisher1_seed0 --data-iterations 3 \\
        --tasks 4 6 8 --repeats 3 > experiments/out/fisher_subsample_quality.json

``fisher_subsample`` (rllab's ``subsample_factor``; the TRPO paper computed its Fisher-vector products on 10% of the
data) only changes the step's direction and length: the gradient and the line search's surrogate and KL always use
every task. So the cost of a subsample shows in one step, measured here directly: on the same data (the same θ, the
same support and query episodes: :meth:`MAMLTRPO.train_iteration` derives them from (seed, iteration)), the TRPO step
is taken with the Fisher on all tasks and on random subsets of ``--tasks`` tasks, and for each the JSON reports the
surrogate improvement of the accepted step relative to the all-task step's, the KL, the backtracks, whether the step
was accepted, and the learner's seconds. ``--step-fractions F ...`` adds steps with the Fisher on every task but a
random fraction F of each task's support and query steps (``fisher_step_subsample``), labelled ``steps F``. θ is
the preset's initialisation or, with ``--init-from RUN_DIR``, the policy of that run's last checkpoint (a trained
policy: the curvature that matters late in training).

It does not replace a learning curve (the steps compound), but it isolates what the subsample changes. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
from metarl.cli import configure_process
from metarl.runs import load_checkpoint


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0")
    parser.add_argument("--preset", type=Path, default=Path("experiments/presets/maml_trpo_cheetah_vel.yaml"))
    parser.add_argument("--init-from", type=Path, default=None, metavar="RUN_DIR",
                        help="take θ from this MAML-TRPO run's last checkpoint (default: the preset's init)")
    parser.add_argument("--data-iterations", type=int, default=3, help="batches of data (iterations 0..N-1)")
    parser.add_argument("--tasks", type=int, nargs="+", default=[4, 6, 8], help="Fisher subset sizes to try")
    parser.add_argument("--step-fractions", type=float, nargs="*", default=[], metavar="F",
                        help="also: the Fisher on all tasks but a random fraction F of each task's support and query "
                             "steps (fisher_step_subsample)")
    parser.add_argument("--repeats", type=int, default=3, help="random subsets per size and batch of data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=YAML", help="config fields on the preset")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_process()  # what `metarl train` runs with
    fields = yaml.safe_load(args.preset.read_text()) if args.preset else {}
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = yaml.safe_load(value)
    config = MAMLTRPOConfig(**{**fields, "seed": args.seed, "fisher_subsample": 1.0})
    tasks = config.meta_batch_size
    if not all(0 < m <= tasks for m in args.tasks):
        parser.error(f"--tasks must lie in 1..{tasks} (the meta-batch)")
    if not all(0 < f <= 1 for f in args.step_fractions):
        parser.error("--step-fractions must lie in (0, 1]")

    agent = MAMLTRPO(args.env, config)
    init_iteration = 0
    if args.init_from is not None:
        state = load_checkpoint(args.init_from / "checkpoints" / "last.pt")["state"]
        agent.load_weights(state)
        init_iteration = int(state["iteration"])
    start_state = agent.state_dict()
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    try:
        for iteration in range(args.data_iterations):
            subsets = [("all", torch.arange(tasks), 1.0)]
            subsets += [(str(m), torch.randperm(tasks, generator=generator)[:m], 1.0)
                        for m in args.tasks for _ in range(args.repeats)]
            subsets += [(f"steps {f:g}", torch.arange(tasks), f)
                        for f in args.step_fractions for _ in range(args.repeats)]
            for label, index, fraction in subsets:
                agent.load_state_dict(start_state)
                agent.fisher_tasks = lambda _iteration, _num, chosen=index: chosen  # this step's Fisher tasks
                # this step's Fisher steps: a fresh random fraction of each phase's steps (all of them at 1)
                agent.fisher_steps = lambda _iteration, num, _phase, f=fraction: (
                    slice(None) if f >= 1 else
                    torch.randperm(num, generator=generator)[:max(1, round(f * num))].sort().values)
                metrics = agent.train_iteration(iteration)
                rows.append({
                    "data_iteration": iteration,
                    "fisher_tasks": label,
                    "surrogate_gain": metrics["losses/surrogate_after"] - metrics["losses/surrogate_before"],
                    "kl": metrics["losses/kl"],
                    "backtracks": int(metrics["charts/backtracks"]),
                    "accepted": bool(metrics["charts/update_accepted"]),
                    "learner_seconds": round(metrics["time/learner_seconds"], 3),
                })
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        agent.close()

    full = {r["data_iteration"]: r["surrogate_gain"] for r in rows if r["fisher_tasks"] == "all"}
    summary = {}
    for label in ["all", *map(str, args.tasks), *(f"steps {f:g}" for f in args.step_fractions)]:
        chosen = [r for r in rows if r["fisher_tasks"] == label]
        ratios = [r["surrogate_gain"] / full[r["data_iteration"]] for r in chosen]
        summary[label] = {
            "steps": len(chosen),
            "gain_over_all_task_gain": {"mean": round(float(np.mean(ratios)), 3),
                                        "min": round(float(np.min(ratios)), 3)},
            "kl_mean": round(float(np.mean([r["kl"] for r in chosen])), 5),
            "backtracks_mean": round(float(np.mean([r["backtracks"] for r in chosen])), 2),
            "accepted": sum(r["accepted"] for r in chosen),
            "learner_seconds_mean": round(float(np.mean([r["learner_seconds"] for r in chosen])), 2),
        }
    result = {"env": args.env, "preset": str(args.preset), "init_from": str(args.init_from),
              "init_iteration": init_iteration,
              "meta_batch_size": tasks, "torch_threads": torch.get_num_threads(),
              "summary": summary, "steps": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
