"""MAML on the MAML paper's sinusoid protocol: metarl vs learn2learn, meta-iterations/s and held-out MSE as JSON.

The protocol is exactly that of ../shared/bench/learn2learn/maml_sinusoid_l2l.py (amplitude U[0.1, 5], phase
U[0, π], x U[-5, 5]; MLP 1-40-40-1 ReLU initialised under torch.manual_seed(0); 25 tasks per meta-batch, 10
support + 10 query points, one second-order inner SGD step of 0.01, Adam 1e-3; 100 held-out tasks from
torch.Generator seed 12345). metarl's side runs the product's own learner (``metarl.agents.MAML``).

Usage (learn2learn built with ../shared/bench/learn2learn/setup.sh /tmp/l2l-venv):

    .venv/bin/python experiments/bench_fewshot.py --iters 300 --repeats 3 --threads 1 2

Runs alternate (metarl, learn2learn, metarl, ...) at each thread count, in one sitting, and the ratio of
meta-iterations/s is reported per pair and as the median: never compare timings from different sittings.
Without learn2learn (``--l2l-python`` missing) only metarl's figures are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from metarl.agents.maml import MAML, MAMLConfig
from metarl.core.batch import EpisodeBatch
from metarl.core.networks import MLP
from metarl.core.seeding import seeded

META_BATCH, K_SUPPORT, K_QUERY = 25, 10, 10
L2L_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "learn2learn" / "maml_sinusoid_l2l.py"


def sample_tasks(n: int, generator: torch.Generator) -> EpisodeBatch:
    """The reference script's sampler, draw for draw (so both sides see the same tasks)."""
    amp = torch.rand(n, 1, 1, generator=generator) * 4.9 + 0.1
    phase = torch.rand(n, 1, 1, generator=generator) * math.pi
    x = torch.rand(n, K_SUPPORT + K_QUERY, 1, generator=generator) * 10.0 - 5.0
    y = amp * torch.sin(x - phase)
    return EpisodeBatch(x[:, :K_SUPPORT], y[:, :K_SUPPORT], x[:, K_SUPPORT:], y[:, K_SUPPORT:])


def run_metarl(iters: int) -> dict:
    with seeded(0):
        model = MLP(1, [40, 40], 1)
    learner = MAML(model, "regression", MAMLConfig(inner_lr=0.01, inner_steps=1))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(iters):
        learner.outer_step(sample_tasks(META_BATCH, generator), optimizer)
    seconds = time.perf_counter() - start
    heldout = sample_tasks(100, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        pre = learner.evaluate(heldout, steps=0)["score"].mean().item()
        post = learner.evaluate(heldout, steps=1)["score"].mean().item()
    return {"impl": "metarl", "threads": torch.get_num_threads(), "iters": iters,
            "its_per_s": round(iters / seconds, 2), "heldout_pre_mse": round(pre, 4),
            "heldout_post_mse": round(post, 4)}


def run_l2l(python: str, iters: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([python, str(L2L_SCRIPT), "--iters", str(iters)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--l2l-python", default="/tmp/l2l-venv/bin/python")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # one measurement in a fresh process, like the reference
        torch.set_num_threads(args.child)
        print(json.dumps(run_metarl(args.iters)))
        return
    have_l2l = Path(args.l2l_python).exists() and L2L_SCRIPT.exists()
    report = {"protocol": "MAML sinusoid, 25 tasks x (10+10) points, 1 second-order step", "iters": args.iters,
              "learn2learn": have_l2l, "by_threads": {}}
    for threads in args.threads:
        pairs = []
        for _ in range(args.repeats):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run([sys.executable, __file__, "--iters", str(args.iters), "--child", str(threads)],
                                 capture_output=True, text=True, env=env, check=True)
            ours = json.loads(out.stdout.strip().splitlines()[-1])
            theirs = run_l2l(args.l2l_python, args.iters, threads) if have_l2l else None
            pairs.append({"metarl": ours, "learn2learn": theirs,
                          "ratio": round(ours["its_per_s"] / theirs["its_per_s"], 2) if theirs else None})
        entry = {"pairs": pairs}
        if have_l2l:
            entry["median_ratio"] = statistics.median(p["ratio"] for p in pairs)
        report["by_threads"][str(threads)] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
