"""`make demo`: the main job on the embedded defaults, in a few minutes on 2 cores.

1. Few-shot regression: MAML meta-trained on the MAML paper's sinusoid tasks, then adapted to held-out tasks
   (test split) with 0, 1 and 10 gradient steps from 5, 10 and 20 shots; prints the table and where the run is.
2. Meta-RL: MAML-TRPO meta-trained on 2D navigation and evaluated on held-out goals (test split) and goals
   outside the training square (ood), before and after one and two policy-gradient adaptation steps.

Run it with ``python -m metarl.demo [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def fewshot_demo(out: Path, iterations: int) -> Path:
    from metarl.training import make_run_config, train

    config = make_run_config("maml", source="sinusoid", shots=10, iterations=iterations, threads=1,
                             eval_shots=(5, 10, 20), eval_steps=(0, 1, 10), eval_tasks=200,
                             run_dir=str(out / f"maml-sinusoid-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir = train(config)
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


def meta_rl_demo(out: Path, iterations: int) -> Path:
    """MAML-TRPO on 2D navigation (goals held out by construction), short episodes so it fits in minutes."""
    from metarl.training import make_run_config, train

    run = make_run_config("maml-trpo", env="metarl/Navigation2D-v0", iterations=iterations, eval_tasks=40,
                          eval_episodes=3, eval_splits=("test", "ood"), checkpoint_every=10, meta_batch_size=10,
                          episodes_per_task=10, max_episode_steps=20,
                          run_dir=str(out / f"maml-trpo-navigation-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir = train(run)
    result = json.loads((run_dir / "evaluation.json").read_text())
    print(f"\nMAML-TRPO on 2D navigation (20-step episodes), {iterations} meta-iterations x 10 tasks x 10 episodes; "
          f"{result['num_tasks']} held-out goals per split, return per adaptation episode, mean ± 95% CI:")
    print(f"{'split':>6} | {'before adaptation':>20} | {'after 1 step':>18} | {'after 2 steps':>18}")
    for split, data in result["splits"].items():
        cells = [f"{e['return']:>9.2f} ± {e['ci95']:<6.2f}" for e in data["episodes"]]
        print(f"{split:>6} | " + " | ".join(cells))
    from metarl.video import record_adaptation_video

    gif = record_adaptation_video(run_dir)  # 2D navigation is drawn with Pillow: no OpenGL needed
    print(f"run directory: {run_dir}\n  plot: {run_dir / 'adaptation.png'}\n  video: {gif}\n  "
          f"tensorboard --logdir {run_dir / 'tb'}")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the demo runs go")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    args = parser.parse_args()
    from metarl.cli import configure_process

    configure_process()  # what the metarl command turns on for a training process (huge pages, freed memory kept)
    fewshot_demo(args.out, iterations=200 if args.quick else 3000)
    meta_rl_demo(args.out, iterations=3 if args.quick else 30)


if __name__ == "__main__":
    main()
