"""`make demo`: the main job on the embedded defaults, in a few minutes on 2 cores.

1. Few-shot regression: MAML meta-trained on the MAML paper's sinusoid tasks, then adapted to held-out tasks
   (test split) with 0, 1 and 10 gradient steps from 5, 10 and 20 shots; prints the table and where the run is.
2. Meta-RL (when the agents are installed): a small agent meta-trained on a task distribution and evaluated on
   held-out tasks before and after adaptation.

Run it with ``python -m metarl.demo [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def fewshot_demo(out: Path, iterations: int) -> Path:
    from metarl.training import FewShotConfig, train_fewshot

    config = FewShotConfig(learner="maml", source="sinusoid", shots=10, iterations=iterations, threads=1,
                           eval_shots=(5, 10, 20), eval_steps=(0, 1, 10), eval_tasks=200,
                           run_dir=str(out / f"maml-sinusoid-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir = train_fewshot(config)
    result = json.loads((run_dir / "evaluation.json").read_text())
    print(f"\nMAML on sinusoid, {iterations} meta-iterations x 25 tasks; held-out test tasks "
          f"({result['num_tasks']} per cell), query MSE, mean ± 95% CI:")
    print(f"{'shots':>6} | {'before (0 steps)':>18} | {'after 1 step':>18} | {'after 10 steps':>18}")
    for shots in (5, 10, 20):
        cells = {r["steps"]: r for r in result["results"] if r["shots"] == shots}
        print(f"{shots:>6} | " + " | ".join(f"{cells[s]['mse']:>9.3f} ± {cells[s]['ci95']:<6.3f}" for s in (0, 1, 10)))
    print(f"run directory: {run_dir}\n  plot: {run_dir / 'adaptation.png'}\n  "
          f"tensorboard --logdir {run_dir / 'tb'}")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the demo runs go")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    args = parser.parse_args()
    fewshot_demo(args.out, iterations=200 if args.quick else 3000)


if __name__ == "__main__":
    main()
