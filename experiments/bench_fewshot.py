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

Every classification learner on Omniglot episodes (``--learners``, default all registered ones):

    .venv/bin/python experiments/bench_fewshot.py --learners --ways 5 --shots 1 --iters 40 --repeats 3 --threads 1

meta-trains each learner (standard backbone, default config, ``--meta-batch`` tasks of ``--ways``-way
``--shots``-shot with ``--queries`` queries per class, 28x28 drawings sampled beforehand) and reports training and
evaluation (adapt + predict, no gradients) episodes per second, each in a fresh process, learners in turn within
each repeat, and every learner's median ratio to ProtoNet's and MAML's in the same sitting.
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


def run_learner(name: str, ways: int, shots: int, queries: int, meta_batch: int, iters: int) -> dict:
    """Training and evaluation episodes/s of learner ``name`` on pre-sampled Omniglot episodes (one process)."""
    from metarl.agents import make_learner
    from metarl.envs.fewshot.omniglot import OmniglotFewShot

    source = OmniglotFewShot(ways=ways, shots=shots, query_shots=queries)
    learner = make_learner(name, source, seed=0, meta_batch_size=meta_batch)
    optimizer = learner.configure_optimizer(1e-3)
    batches = [source.sample(meta_batch, split="train", seed=i) for i in range(iters + 2)]
    for batch in batches[:2]:  # warm-up
        learner.outer_step(batch, optimizer)
    start = time.perf_counter()
    for batch in batches[2:]:
        learner.outer_step(batch, optimizer)
    train_s = time.perf_counter() - start
    learner.eval()
    start = time.perf_counter()
    for batch in batches[2:]:
        learner.evaluate(batch)
    eval_s = time.perf_counter() - start
    return {"learner": name, "threads": torch.get_num_threads(),
            "train_episodes_per_s": round(iters * meta_batch / train_s, 1),
            "eval_episodes_per_s": round(iters * meta_batch / eval_s, 1)}


def bench_learners(args: argparse.Namespace) -> dict:
    from metarl.agents import LEARNERS, entry

    names = args.learners or [n for n in LEARNERS if "classification" in entry(n).load()[0].task_kinds]
    names = list(dict.fromkeys(["protonet", "maml", *names]))  # the references first
    shape = ["--ways", str(args.ways), "--shots", str(args.shots), "--queries", str(args.queries),
             "--meta-batch", str(args.meta_batch), "--iters", str(args.iters)]
    report = {"protocol": f"Omniglot {args.ways}-way {args.shots}-shot, {args.queries} queries per class, "
                          f"meta-batch {args.meta_batch}, 28x28, default configs", "iters": args.iters,
              "threads": args.threads[0], "learners": {}}
    repeats: list[dict[str, dict]] = []
    for _ in range(args.repeats):
        measured = {}
        for name in names:
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads[0]))
            out = subprocess.run([sys.executable, __file__, "--learner-child", name, "--child", str(args.threads[0]),
                                  *shape], capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
            measured[name] = json.loads(out.stdout.strip().splitlines()[-1])
        repeats.append(measured)
    for name in names:
        rows = [r[name] for r in repeats]
        entry_ = {key: statistics.median(r[key] for r in rows) for key in ("train_episodes_per_s",
                                                                            "eval_episodes_per_s")}
        for ref in ("protonet", "maml"):
            entry_[f"train_ratio_to_{ref}"] = round(statistics.median(
                r[name]["train_episodes_per_s"] / r[ref]["train_episodes_per_s"] for r in repeats), 3)
        entry_["repeats"] = rows
        report["learners"][name] = entry_
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="*", default=None,
                        help="benchmark classification learners on Omniglot episodes (no names: all)")
    parser.add_argument("--learner-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--l2l-python", default="/tmp/l2l-venv/bin/python")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.learner_child is not None:
        torch.set_num_threads(args.child)
        print(json.dumps(run_learner(args.learner_child, args.ways, args.shots, args.queries, args.meta_batch,
                                     args.iters)))
        return
    if args.learners is not None:
        print(json.dumps(bench_learners(args), indent=1))
        return
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
