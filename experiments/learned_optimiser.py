"""Learned optimiser (Andrychowicz et al., NeurIPS 2016) against tuned SGD, NAG, RMSprop and Adam.

Two problem families, each with training and held-out problems:

* ``quadratic``: f(θ) = ‖Wθ − y‖², θ ∈ R^10, W and y ~ N(0, 1) per problem, θ_0 ~ N(0, 1) (the paper's section 3.1);
* ``mlp``: an MLP with one hidden layer of 20 sigmoid units (the paper's MNIST network) on a 10-class Omniglot problem:
  10 characters (× rotations, the project's classes) with all 20 drawings each, downsampled to ``--image-size``²
  pixels, full-batch cross-entropy; training problems draw characters from the train split, held-out problems from the
  test split (split fractions 0.7/0.1/0.2 of the minimal background, by character), and every problem draws a fresh
  initialisation (PyTorch's default uniform ±1/√fan_in). ``mlp-wide``: the same with 40 hidden units (evaluation only:
  the optimiser trained on 20 units); ``mlp-relu``: 20 ReLU units (evaluation only, ``--mlp-settings``; the paper
  found that its optimiser did not carry over to ReLU networks). The baselines of ``mlp`` and ``mlp-wide`` are
  tuned on the 20-unit sigmoid training problems, those of ``mlp-relu`` on ReLU training problems.

The optimiser is meta-trained on training problems (horizon T steps, truncated unrolls of 20, Adam); every baseline's
learning rate is the best of a grid by mean final loss at T on ``--tune-problems`` training problems. Held-out
problems are scored at T and 2T (the optimiser was never unrolled that far). Prints one JSON object (also written to
``--out``/learned_optimiser.json) and writes loss-vs-step figures to experiments/figures/learned_optimiser_*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from metarl.agents.l2o import LearnedOptimiser, meta_train_step
from metarl.evaluation import mean_confidence_interval

LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
Problem = tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]  # (per-problem losses of θ [n, d], θ_0)


# ----------------------------------------------------------------------------------------------------------------------
# problem families

def quadratics(n: int, seed: int, dim: int = 10) -> Problem:
    g = torch.Generator().manual_seed(seed)
    w, y = torch.randn(n, dim, dim, generator=g), torch.randn(n, dim, generator=g)
    return (lambda t: ((torch.einsum("nij,nj->ni", w, t) - y) ** 2).sum(-1)), torch.randn(n, dim, generator=g)


class OmniglotMLPs:
    """Full-batch training losses of one-hidden-layer sigmoid MLPs on 10-class Omniglot problems."""

    def __init__(self, data: str | None, image_size: int, ways: int = 10) -> None:
        from metarl.envs.fewshot.omniglot import OmniglotFewShot

        self.source = OmniglotFewShot(root=data, ways=ways, shots=20, query_shots=0, image_size=image_size)
        self.inputs, self.ways = image_size * image_size, ways
        self.activation = torch.sigmoid

    def sizes(self, hidden: int) -> list[tuple[int, int]]:
        return [(hidden, self.inputs), (self.ways, hidden)]

    def problems(self, n: int, seed: int, split: str, hidden: int, activation=torch.sigmoid) -> Problem:
        batch = self.source.sample(n, split=split, seed=seed)
        x, y = batch.support_x.flatten(2), batch.support_y  # [n, 200, pixels], [n, 200]
        g = torch.Generator().manual_seed(seed + 7_777_777)
        pieces = []
        for out_features, in_features in self.sizes(hidden):  # nn.Linear's default initialisation
            bound = 1 / math.sqrt(in_features)
            pieces.append((torch.rand(n, out_features * in_features + out_features, generator=g) * 2 - 1) * bound)
        theta0 = torch.cat(pieces, dim=1)
        shapes = self.sizes(hidden)

        def losses(theta: torch.Tensor) -> torch.Tensor:
            h, start = x, 0
            for k, (out_features, in_features) in enumerate(shapes):
                weight = theta[:, start:start + out_features * in_features].view(n, out_features, in_features)
                start += out_features * in_features
                bias = theta[:, start:start + out_features]
                start += out_features
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
                if k < len(shapes) - 1:
                    h = activation(h)
            return torch.nn.functional.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view(n, -1).mean(1)

        return losses, theta0


# ----------------------------------------------------------------------------------------------------------------------
# hand-written baselines on a batch of problems (θ: [problems, d]; each problem is optimised on its own)

def run_baseline(name: str, lr: float, problem: Problem, steps: int) -> np.ndarray:
    """Loss of every problem at steps 0..steps: ``[steps + 1, problems]`` (inf once a problem diverges)."""
    loss_fn, theta = problem
    theta = theta.clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    beta1, beta2, eps, momentum, decay = 0.9, 0.999, 1e-8, 0.9, 0.99
    history = []
    for t in range(steps + 1):
        with torch.no_grad():
            history.append(loss_fn(theta).numpy().astype(np.float64))
        if t == steps:
            break
        point = (theta + momentum * m if name == "nag" else theta).detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss_fn(point).sum(), point)  # NAG: at the look-ahead point
        with torch.no_grad():
            if name == "sgd":
                theta = theta - lr * gradient
            elif name == "nag":
                m = momentum * m - lr * gradient
                theta = theta + m
            elif name == "rmsprop":
                v = decay * v + (1 - decay) * gradient ** 2
                theta = theta - lr * gradient / (v.sqrt() + eps)
            elif name == "adam":
                m = beta1 * m + (1 - beta1) * gradient
                v = beta2 * v + (1 - beta2) * gradient ** 2
                theta = theta - lr * (m / (1 - beta1 ** (t + 1))) / ((v / (1 - beta2 ** (t + 1))).sqrt() + eps)
            else:
                raise ValueError(name)
    out = np.stack(history)
    out[~np.isfinite(out)] = np.inf
    return out


def run_learned(optimiser: LearnedOptimiser, problem: Problem, steps: int) -> np.ndarray:
    loss_fn, theta = problem
    per_step = []

    def recording(t: torch.Tensor) -> torch.Tensor:
        losses = loss_fn(t)
        per_step.append(losses.detach().numpy().astype(np.float64))
        return losses

    with torch.no_grad():
        optimiser.unroll(recording, theta, steps)
    out = np.stack(per_step)
    out[~np.isfinite(out)] = np.inf
    return out


def tune(name: str, problem: Problem, steps: int) -> tuple[float, dict[str, float]]:
    scores = {}
    for lr in LR_GRID:
        final = run_baseline(name, lr, problem, steps)[-1]
        scores[f"{lr:g}"] = float(np.mean(final)) if np.all(np.isfinite(final)) else math.inf
    best = min(scores, key=scores.get)
    return float(best), scores


def summary(final: np.ndarray) -> dict[str, float]:
    if not np.all(np.isfinite(final)):
        return {"mean": math.inf, "ci95": math.nan, "diverged": int(np.sum(~np.isfinite(final))), "n": len(final)}
    return mean_confidence_interval(final)


# ----------------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["quadratic", "mlp"], choices=["quadratic", "mlp"])
    parser.add_argument("--data", default=None, help="Omniglot folder (default $METARL_DATA)")
    parser.add_argument("--horizon", type=int, default=100, help="T: steps per meta-training problem")
    parser.add_argument("--truncation", type=int, default=20, help="steps per truncated unroll")
    parser.add_argument("--quadratic-iterations", type=int, default=300, help="meta-training problems batches")
    parser.add_argument("--quadratic-batch", type=int, default=64, help="quadratics per meta-training batch")
    parser.add_argument("--mlp-iterations", type=int, default=40)
    parser.add_argument("--mlp-batch", type=int, default=4)
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam learning rate of the optimiser")
    parser.add_argument("--image-size", type=int, default=10)
    parser.add_argument("--mlp-settings", nargs="+", default=["mlp", "mlp-wide"],
                        choices=["mlp", "mlp-wide", "mlp-relu"], help="held-out settings of the mlp family")
    parser.add_argument("--tune-problems", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=100, help="held-out problems per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", nargs="+", type=Path, default=None, metavar="JSON",
                        help="no runs: print the markdown table of these results files (later files override settings)")
    parser.add_argument("--load", action="store_true",
                        help="no meta-training: load OUT/optimiser_FAMILY.pt from an earlier run and evaluate it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/out/learned_optimiser"))
    parser.add_argument("--figures", type=Path, default=Path("experiments/figures"))
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "lr_grid": list(LR_GRID), "settings": {}}
    T = args.horizon
    for family in args.families:
        started = time.time()
        torch.manual_seed(args.seed)
        optimiser = LearnedOptimiser()
        meta_optimizer = torch.optim.Adam(optimiser.parameters(), lr=args.meta_lr)
        if family == "quadratic":
            def train(i: int) -> Problem:
                return quadratics(args.quadratic_batch, args.seed * 1_000_003 + i)
            iterations = args.quadratic_iterations
            settings = {"quadratic": quadratics(args.held_out, 20_000_000 + args.seed)}
            tuning = {"quadratic": quadratics(args.tune_problems, 10_000_000 + args.seed)}
            tuned_on = {"quadratic": "quadratic"}
        else:
            mlps = OmniglotMLPs(args.data, args.image_size)
            def train(i: int, mlps: OmniglotMLPs = mlps) -> Problem:
                return mlps.problems(args.mlp_batch, args.seed * 1_000_003 + i, "train", 20)
            iterations = args.mlp_iterations
            shapes = {"mlp": (20, torch.sigmoid), "mlp-wide": (40, torch.sigmoid), "mlp-relu": (20, torch.relu)}
            settings = {name: mlps.problems(args.held_out, 20_000_000 + args.seed, "test", *shapes[name])
                        for name in args.mlp_settings}
            tuned_on = {name: "mlp-relu" if name == "mlp-relu" else "mlp" for name in settings}
            tuning = {name: mlps.problems(args.tune_problems, 10_000_000 + args.seed, "train", *shapes[name])
                      for name in set(tuned_on.values())}
        untrained = {name: run_learned(optimiser, problem, 2 * T) for name, problem in settings.items()}
        meta_curve = []
        if args.load:
            optimiser.load_state_dict(torch.load(args.out / f"optimiser_{family}.pt", weights_only=True))
            iterations = 0
        for iteration in range(iterations):  # ALGO LOGIC: meta-train on fresh training problems
            meta_curve.append(float(np.mean(meta_train_step(optimiser, meta_optimizer, *train(iteration), T,
                                                            args.truncation))))
        train_seconds = time.time() - started
        tuned_for = {key: {name: tune(name, problems, T) for name in ("sgd", "nag", "rmsprop", "adam")}
                     for key, problems in tuning.items()}
        for setting, problem in settings.items():
            tuned = tuned_for[tuned_on[setting]]
            curves = {"l2o": run_learned(optimiser, problem, 2 * T), "l2o-untrained": untrained[setting]}
            for name, (lr, _) in tuned.items():
                curves[name] = run_baseline(name, lr, problem, 2 * T)
            table = {name: {"T": summary(c[T]), "2T": summary(c[2 * T])} for name, c in curves.items()}
            # paired over the same held-out problems: L2O's final loss minus each baseline's
            paired = {name: {h: summary(curves["l2o"][k] - c[k]) for h, k in (("T", T), ("2T", 2 * T))}
                      for name, c in curves.items() if name != "l2o"}
            result["settings"][setting] = {
                "family": family, "baselines_tuned_on": tuned_on[setting], "meta_iterations": iterations,
                "train_seconds": round(train_seconds, 1),
                "tuned_lr": {name: lr for name, (lr, _) in tuned.items()},
                "tuning_scores": {name: scores for name, (_, scores) in tuned.items()},
                "final_loss": table,
                "l2o_minus_baseline": paired,
                "final_per_problem": {name: {"T": c[T].tolist(), "2T": c[2 * T].tolist()}
                                      for name, c in curves.items()},
                "mean_curves": {name: [float(v) for v in np.mean(c, axis=1)] for name, c in curves.items()},
                "meta_loss_per_iteration": meta_curve,
            }
            plot(setting, curves, T, args.figures / f"learned_optimiser_{setting.replace('-', '_')}.png")
            print(json.dumps({"setting": setting, "final_loss": table, "l2o_minus_baseline": paired,
                              "tuned_lr": result["settings"][setting]["tuned_lr"]}), flush=True)
        if not args.load:
            torch.save(optimiser.state_dict(), args.out / f"optimiser_{family}.pt")
    name = f"learned_optimiser_reevaluated_{'_'.join(args.families)}.json" if args.load else "learned_optimiser.json"
    (args.out / name).write_text(json.dumps(result, indent=1))


def report(paths: list[Path]) -> str:
    """Markdown: final training loss on held-out problems (mean ± 95% interval) at T and 2T per optimiser."""
    settings: dict = {}
    for path in paths:
        settings.update(json.loads(path.read_text())["settings"])
    lines = ["| setting | optimiser | learning rate (tuned) | loss at T | loss at 2T |",
             "| --- | --- | --- | --- | --- |"]
    for setting, data in settings.items():
        for name, cells in data["final_loss"].items():
            lr = data["tuned_lr"].get(name, "")
            shown = [f"{c['mean']:.3g} ± {c['ci95']:.2g}" if math.isfinite(c["mean"]) else f"diverged ({c['diverged']})"
                     for c in (cells["T"], cells["2T"])]
            lines.append(f"| {setting} | {name} | {lr} | {shown[0]} | {shown[1]} |")
    paired = [(s, n, d) for s, data in settings.items() for n, d in data.get("l2o_minus_baseline", {}).items()]
    if paired:
        lines += ["", "| setting | L2O minus | at T (paired, 95%) | at 2T |", "| --- | --- | --- | --- |"]
        lines += [f"| {s} | {n} | {d['T']['mean']:.3g} ± {d['T']['ci95']:.2g} | {d['2T']['mean']:.3g} ± "
                  f"{d['2T']['ci95']:.2g} |" for s, n, d in paired]
    return "\n".join(lines)


def plot(setting: str, curves: dict[str, np.ndarray], horizon: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot(np.mean(c, axis=1), label=name, linestyle="--" if name == "l2o-untrained" else "-")
    ax.axvline(horizon, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over held-out problems)")
    ax.set_title(f"{setting}: trained for T = {horizon} steps")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
