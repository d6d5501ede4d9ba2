"""RESULTS table: every gradient and black-box learner on the MAML paper's sinusoid protocol at 5, 10 and 20 shots.

For each learner and each K in --shots, a model is meta-trained with K-shot support sets (as in the MAML paper,
one model per K), then evaluated on held-out tasks (test split of the checkerboard, 200 tasks, evaluation seed
12345, the same tasks for every learner) after 0, 1 and 10 inner gradient steps (probabilistic learners, e.g.
``--learners bmaml``: also the NLL, 95%-interval coverage and width of their predictive, under "calibration" in the
JSON lines). Prints JSON lines as it goes and a markdown table at the end. Budgets: --iterations meta-iterations
of 25 tasks (black-box: --blackbox-iterations).

    .venv/bin/python experiments/fewshot_sinusoid.py --out experiments/out/sinusoid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metarl.training import make_run_config, train

LEARNERS = ("maml", "fomaml", "meta-sgd", "anil", "reptile", "blackbox")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS))
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--blackbox-iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/out/sinusoid"))
    args = parser.parse_args()
    rows = []
    for learner in args.learners:
        for shots in args.shots:
            iterations = args.blackbox_iterations if learner == "blackbox" else args.iterations
            config = make_run_config(learner, shots=shots, iterations=iterations, seed=args.seed, threads=1,
                                     eval_shots=(shots,), eval_steps=(0, 1, 10), eval_tasks=200, progress=False,
                                     run_dir=str(args.out / f"{learner}-k{shots}-{time.strftime('%H%M%S')}"))
            start = time.perf_counter()
            result = json.loads((train(config) / "evaluation.json").read_text())
            row = {"learner": learner, "shots": shots, "iterations": iterations, "seed": args.seed,
                   "train_seconds": round(time.perf_counter() - start, 1),
                   "mse": {r["steps"]: (r["mse"], r["ci95"]) for r in result["results"]}}
            if any("coverage95" in r for r in result["results"]):  # probabilistic learners: the predictive's scores
                row["calibration"] = {r["steps"]: {k: r.get(k) for k in ("nll", "coverage95", "interval_width95")}
                                      for r in result["results"]}
            print(json.dumps(row), flush=True)
            rows.append(row)

    def cell(row: dict, steps: int) -> str:
        value = row["mse"].get(steps) or row["mse"].get(0)
        if value is None or value[0] is None:
            return "diverged"
        return f"{value[0]:.3f} ± {value[1]:.3f}"

    print("\n| learner | shots | iterations | before | after 1 step | after 10 steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row["learner"] == "blackbox":
            print(f"| {row['learner']} | {row['shots']} | {row['iterations']} | – | {cell(row, 0)} (one forward "
                  f"pass) | – |")
        else:
            print(f"| {row['learner']} | {row['shots']} | {row['iterations']} | {cell(row, 0)} | {cell(row, 1)} | "
                  f"{cell(row, 10)} |")


if __name__ == "__main__":
    main()
