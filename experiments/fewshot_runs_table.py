"""Markdown rows of finished few-shot runs' held-out evaluations (evaluation.json): learner, shots, training budget
(iterations × tasks per meta-batch), adaptation steps, accuracy with its 95% t-interval.

    .venv/bin/python experiments/fewshot_runs_table.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dirs: list[str]) -> None:
    print("| learner | shots | training budget | steps | accuracy (95%) |")
    print("| --- | --- | --- | --- | --- |")
    for run_dir in run_dirs:
        result = json.loads((Path(run_dir) / "evaluation.json").read_text())
        config = result["config"]
        budget = f"{config['iterations']} × {config['learner']['meta_batch_size']} tasks"
        for row in result["results"]:
            print(f"| {result['learner']} | {row['shots']} | {budget} | {row['steps']} | "
                  f"{100 * row['accuracy']:.1f}% ± {100 * row['ci95']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
