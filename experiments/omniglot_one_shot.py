"""RESULTS table: the original Omniglot one-shot task (20-way, 1-shot, within-alphabet runs) with the minimal
background — every classification learner trained on the two images_background_small zips only (all their
characters: split fractions 1/0/0), then scored on the shared one-shot runs (error rate over all queries, 95%
Wilson interval). Calibration baselines of the data set itself (pixel nearest neighbour, modified Hausdorff
distance) are computed on the same runs.

    .venv/bin/python experiments/omniglot_one_shot.py --data ../shared/data/omniglot --learners protonet matching

Budgets per learner are in PLANS (iterations × episode shape); --scale multiplies the iterations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metarl.envs.fewshot.omniglot import (
    OneShotRuns,
    modified_hausdorff_error,
    pixel_nearest_neighbour_error,
)
from metarl.training import FewShotConfig, train_fewshot

# Training episodes: metric learners as Snell et al. (60-way, 5 queries per class); the MAML family and the
# black-box learner need a 20-way output layer, so they train on 20-way 1-shot episodes (Finn et al. 2017: inner
# lr 0.1, 5 steps in training, 10 at test; meta-batch 16, here smaller for CPU budgets).
PLANS: dict[str, dict] = {
    "protonet": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "matching": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "maml": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                 eval_steps=(10,)),
    "fomaml": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                   eval_steps=(10,)),
    "anil": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                 eval_steps=(10,)),
    "meta-sgd": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=1,
                     eval_steps=(1,)),
    "reptile": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.05, inner_steps=5,
                    eval_steps=(10,)),
    "blackbox": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=3000, outer_lr=3e-4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--runs", type=Path, default=None,
                        help="one-shot runs zip (default: DATA/one_shot_runs_01-05.zip)")
    parser.add_argument("--learners", nargs="*", default=list(PLANS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every plan's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training run")
    parser.add_argument("--baselines", action="store_true", help="also compute the pixel-NN and MHD baselines")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/omniglot"))
    args = parser.parse_args()
    runs_path = args.runs or args.data / "one_shot_runs_01-05.zip"
    rows = []
    if args.baselines:
        runs = OneShotRuns(runs_path)
        for name, fn in (("pixel nearest neighbour", pixel_nearest_neighbour_error),
                         ("modified Hausdorff distance", modified_hausdorff_error)):
            rows.append({"learner": name, "error_rate": float(fn(runs)), "iterations": 0})
            print(json.dumps(rows[-1]), flush=True)
    for learner in args.learners:
        plan = dict(PLANS[learner])
        plan["iterations"] = max(1, int(plan["iterations"] * args.scale))
        config = FewShotConfig(learner=learner, source="omniglot", data_root=str(args.data), shots=1,
                               augment=not args.no_augment, split_fractions=(1.0, 0.0, 0.0), eval_tasks=0,
                               one_shot_runs=str(runs_path), seed=args.seed, threads=args.threads, progress=False,
                               log_every=50,
                               checkpoint_every=250, run_dir=str(args.out / f"{learner}-{time.strftime('%H%M%S')}"),
                               **plan)
        start = time.perf_counter()
        run_dir = train_fewshot(config)
        result = json.loads((run_dir / "one_shot_runs.json").read_text())
        row = {"learner": learner, "error_rate": result["error_rate"], "errors": result["errors"],
               "queries": result["queries"], "ci95": [result["ci95_low"], result["ci95_high"]],
               "iterations": plan["iterations"], "train_minutes": round((time.perf_counter() - start) / 60, 1),
               "run_dir": str(run_dir), "plan": {k: v for k, v in plan.items()}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| learner | training | error on the one-shot runs (95% CI) |")
    print("| --- | --- | --- |")
    for row in rows:
        ci = f" ({100 * row['ci95'][0]:.1f}–{100 * row['ci95'][1]:.1f})" if "ci95" in row else ""
        budget = (f"{row['iterations']} its, {row['plan']['train_ways'] if 'train_ways' in row['plan'] else 20}-way, "
                  f"{row['train_minutes']} min") if row["iterations"] else "none"
        print(f"| {row['learner']} | {budget} | {100 * row['error_rate']:.1f}%{ci} |")


if __name__ == "__main__":
    main()
