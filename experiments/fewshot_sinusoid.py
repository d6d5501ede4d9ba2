"""RESULTS table: every gradient and black-box learner on the MAML paper's sinusoid protocol at 5, 10 and 20 shots.

For each learner and each K in --shots, a model is meta-trained with K-shot support sets (as in the MAML paper,
one model per K), then evaluated on held-out tasks (test split of the checkerboard, 200 tasks, evaluation seed
12345, the same tasks for every learner) after 0, 1 and 10 inner gradient steps. Prints JSON lines as it goes and a
markdown table at the end. Budgets: --iterations meta-iterations of 25 tasks (black-box: --blackbox-iterations).
Probabilistic learners (``versa``, ``bmaml``) also report the predictive NLL, the coverage of the central 95%
interval and its width, on the test split and on the ``ood`` split (amplitudes outside training), after each number
of inner steps, in a second table; VERSA trains on random context sizes 1..K (``LEARNER_FIELDS``), so that its bands
at 1 or 2 shots mean something.

    .venv/bin/python experiments/fewshot_sinusoid.py --out experiments/out/sinusoid
    .venv/bin/python experiments/fewshot_sinusoid.py --learners versa --shots 5 10 --iterations 20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metarl.agents import entry
from metarl.evaluation import evaluate_fewshot
from metarl.training import load_session, make_run_config, train

LEARNERS = ("maml", "fomaml", "meta-sgd", "anil", "cavia", "reptile", "blackbox", "versa")
LEARNER_FIELDS = {"versa": {"min_train_shots": 1}}
"""learner settings of this table beyond the defaults"""


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
            config = make_run_config(learner, LEARNER_FIELDS.get(learner, {}), shots=shots, iterations=iterations,
                                     seed=args.seed, threads=1, eval_shots=(shots,), eval_steps=(0, 1, 10),
                                     eval_tasks=200, progress=False,
                                     run_dir=str(args.out / f"{learner}-k{shots}-{time.strftime('%H%M%S')}"))
            start = time.perf_counter()
            run_dir = train(config)
            result = json.loads((run_dir / "evaluation.json").read_text())
            row = {"learner": learner, "shots": shots, "iterations": iterations, "seed": args.seed,
                   "train_seconds": round(time.perf_counter() - start, 1), "run_dir": str(run_dir),
                   "mse": {r["steps"]: (r["mse"], r["ci95"]) for r in result["results"]}}
            session = load_session(run_dir)
            if session.learner.probabilistic:  # NLL and 95% coverage/width, held-out and out of range
                # scored in memory: the run's evaluation.json stays the test split
                ood = evaluate_fewshot(session.learner, session.source, shots=(shots,), num_tasks=200, split="ood",
                                       steps=config.evaluation.eval_steps, seed=config.evaluation.eval_seed)
                row["calibration"] = {split: {r["steps"]: {key: r.get(key) for key in (
                    "mse", "nll", "nll_ci95", "coverage95", "coverage95_ci95", "interval_width95")} for r in rows_}
                    for split, rows_ in (("test", result["results"]), ("ood", ood["results"]))}
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
        if not entry(row["learner"]).load()[0].uses_gradient_steps:  # one forward pass adapts
            print(f"| {row['learner']} | {row['shots']} | {row['iterations']} | – | {cell(row, 0)} (one forward "
                  f"pass) | – |")
        else:
            print(f"| {row['learner']} | {row['shots']} | {row['iterations']} | {cell(row, 0)} | {cell(row, 1)} | "
                  f"{cell(row, 10)} |")

    calibrated = [row for row in rows if "calibration" in row]
    if calibrated:
        print("\n| learner | shots | split | steps | MSE | NLL | coverage of the central 95% interval | mean width |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in calibrated:
            for split, by_steps in row["calibration"].items():
                for steps, c in by_steps.items():
                    if c["mse"] is None or c.get("nll") is None:
                        print(f"| {row['learner']} | {row['shots']} | {split} | {steps} | diverged | | | |")
                        continue
                    print(f"| {row['learner']} | {row['shots']} | {split} | {steps} | {c['mse']:.3f} | "
                          f"{c['nll']:.3f} ± {c['nll_ci95']:.3f} | {c['coverage95']:.3f} ± "
                          f"{c['coverage95_ci95']:.3f} | {c['interval_width95']:.2f} |")


if __name__ == "__main__":
    main()
