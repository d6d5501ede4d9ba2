"""Predictive bands of a probabilistic regression learner on sinusoid tasks after 1, 2 and 5 support points.

Trains a run (``metarl train LEARNER`` on sinusoid with the given settings) unless ``--run-dir`` already holds one,
then plots, for a few held-out tasks (rows) and each number of shots (columns), the true function, the support
points, the predictive mean and its central 95% interval (quantiles of the learner's ``predictive`` distribution:
a Normal or a mixture, by :func:`metarl.core.calibration.quantile`). The supports are nested (the 1-shot point is
the first of the 2, the 2 the first of the 5), so a column to the right only adds data. Works for every learner
with ``probabilistic = True`` (VERSA, BMAML, ...). ``--split ood`` draws the tasks from amplitudes outside training.
The learner sees only x ∈ [-5, 5]; the plot extends to ``--x-range`` beyond it, where the data say nothing.

    .venv/bin/python experiments/predictive_bands.py versa --run-dir experiments/out/bands/versa \\
        --iterations 20000 --set min_train_shots=1 --out experiments/figures/versa_bands.png
    .venv/bin/python experiments/predictive_bands.py versa --run-dir experiments/out/bands/versa --split ood \\
        --out experiments/figures/versa_bands_ood.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from metarl.core.calibration import quantile
from metarl.core.config import parse_overrides
from metarl.envs.base import make_rng
from metarl.evaluation import save_figure
from metarl.training import load_session, make_run_config, train

LEVEL = 0.95


def bands(learner, support_x: torch.Tensor, support_y: torch.Tensor, grid: torch.Tensor) -> dict[str, np.ndarray]:
    """Predictive mean and central 95% interval of one task's ``predictive`` on ``grid`` (``[points, 1]``)."""
    with torch.no_grad():
        state = learner.adapt(support_x[None], support_y[None])
        dist = learner.predictive(state, grid[None])
        tail = (1 - LEVEL) / 2
        return {"mean": dist.mean[0, :, 0].numpy(), "low": quantile(dist, tail)[0, :, 0].numpy(),
                "high": quantile(dist, 1 - tail)[0, :, 0].numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("learner", help="a probabilistic regression learner (e.g. versa)")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run to plot; trained here if missing")
    parser.add_argument("--iterations", type=int, default=20000, help="meta-iterations when training")
    parser.add_argument("--train-shots", type=int, default=5, help="support points of the training tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="learner settings when training")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 5])
    parser.add_argument("--tasks", type=int, default=3, help="held-out tasks (rows of the figure)")
    parser.add_argument("--split", default="test", help="split of the plotted tasks: test or ood")
    parser.add_argument("--task-seed", type=int, default=7)
    parser.add_argument("--x-range", type=float, nargs=2, default=[-7.0, 7.0])
    parser.add_argument("--out", type=Path, default=Path("experiments/figures/predictive_bands.png"))
    args = parser.parse_args()

    if not (args.run_dir / "checkpoints" / "last.pt").exists():
        config = make_run_config(args.learner, parse_overrides(args.set), source="sinusoid", shots=args.train_shots,
                                 iterations=args.iterations, seed=args.seed, threads=1, progress=False,
                                 run_dir=str(args.run_dir))
        train(config)
    session = load_session(args.run_dir)
    learner, source = session.learner, session.source
    if not learner.probabilistic or learner.kind != "regression":
        raise SystemExit(f"{learner.name} has no regression predictive distribution (probabilistic=False)")
    learner.eval()
    most = max(args.shots)
    tasks = source.sample(args.tasks, split=args.split, seed=args.task_seed, shots=most)
    # the same seed draws the same (amplitude, phase) first (the sinusoid source's task law): the true functions
    amplitude_phase = source.sample_task_parameters(args.tasks, args.split, make_rng(args.task_seed))
    grid = torch.linspace(args.x_range[0], args.x_range[1], 300).unsqueeze(-1)
    x = grid[:, 0].numpy()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(args.tasks, len(args.shots), figsize=(3.6 * len(args.shots), 2.6 * args.tasks),
                             squeeze=False, sharex=True)
    for t in range(args.tasks):
        amplitude, phase = amplitude_phase[t]
        for c, shots in enumerate(args.shots):
            ax = axes[t][c]
            band = bands(learner, tasks.support_x[t, :shots], tasks.support_y[t, :shots], grid)
            ax.fill_between(x, band["low"], band["high"], color="tab:blue", alpha=0.25, label="95% interval")
            ax.plot(x, band["mean"], color="tab:blue", label="predictive mean")
            ax.plot(x, amplitude * np.sin(x - phase), color="black", lw=1, ls="--", label="true function")
            ax.scatter(tasks.support_x[t, :shots, 0], tasks.support_y[t, :shots, 0], color="tab:red", zorder=3,
                       label="support")
            ax.axvspan(args.x_range[0], source.x_range[0], color="grey", alpha=0.08)
            ax.axvspan(source.x_range[1], args.x_range[1], color="grey", alpha=0.08)
            if t == 0:
                ax.set_title(f"{shots} shot{'s' if shots > 1 else ''}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{learner.name}: predictive bands on {args.split}-split sinusoid tasks ({args.run_dir.name})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
