"""RESULTS (the black-box learner on Omniglot: diagnosis): does the black-box Transformer leave chance, and which
change makes it? Each variant meta-trains from seed 0 on Omniglot 1-shot episodes with 5 queries per class (4 tasks
per iteration, episode ``i`` drawn with seed ``i``, default split fractions 0.7/0.1/0.2, 28×28, no augmentation) and
prints the mean training loss of every ``--every`` iterations beside ln(ways); ``--heldout`` also scores 200
held-out 5-way 1-shot tasks of the test characters at the end (seed 7).

    .venv/bin/python experiments/blackbox_diagnosis.py --iterations 100 --every 20 B_old5 A_old20 C_preln5 E_tied5 \
        F_preln_tied5 G_lr1e-3_5
    .venv/bin/python experiments/blackbox_diagnosis.py --iterations 100 --every 25 --heldout new5 new_preln5

Variants (name: ways, Adam lr, learner): ``old``: the earlier design, the linear read-out (``readout="linear"``,
post-LN; the same modules in the same order as before, so the same initial weights), lr 3e-4 as in the one-shot
PLANS; ``preln``: its Transformer rebuilt with pre-LN layers (under ``torch.manual_seed(0)``); ``tied``: the read-out
replaced by the transposed label embedding (logits = h_q W_y); ``lr1e-3``: lr 1e-3; ``new``: the current default
(label read-out), lr 1e-3; ``new_preln``: the same with ``norm_first=True``. The trailing number is the ways.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from metarl.agents import make_learner
from metarl.envs.fewshot import make_source
from metarl.evaluation import evaluate_fewshot


def build(name: str, source):
    old = "new" not in name
    fields = {"readout": "linear"} if old else ({"norm_first": True} if "preln" in name else {})
    learner = make_learner("blackbox", source, seed=0, **fields)
    if old and "preln" in name:
        layer = nn.TransformerEncoderLayer(128, 4, dim_feedforward=256, dropout=0.0, batch_first=True, norm_first=True)
        torch.manual_seed(0)
        learner.transformer = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    if old and "tied" in name:
        class Tied(nn.Module):
            def forward(self, h: torch.Tensor) -> torch.Tensor:
                return h @ learner.y_projection.weight

        learner.readout = Tied()
    return learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--heldout", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.variants:
        ways = 20 if name.endswith("20") else 5
        lr = 1e-3 if ("lr1e-3" in name or "new" in name) else 3e-4
        source = make_source("omniglot", root=str(args.data), ways=ways, shots=1, query_shots=5)
        learner = build(name, source)
        optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
        start, losses = time.time(), []
        for i in range(args.iterations):
            batch = source.sample(4, split="train", seed=i, ways=ways, shots=1, query_shots=5)
            losses.append(learner.outer_step(batch, optimizer)["loss"])
            if (i + 1) % args.every == 0:
                print(name, i + 1, f"loss(last {args.every})", round(sum(losses[-args.every:]) / args.every, 3),
                      "ln ways", round(math.log(ways), 3), f"{time.time() - start:.0f}s", flush=True)
        if args.heldout:
            five = make_source("omniglot", root=str(args.data), ways=5, shots=1, query_shots=5)
            result = evaluate_fewshot(learner, five, shots=[1], num_tasks=200, split="test", seed=7)["results"][0]
            print(name, "held-out 5-way 1-shot accuracy", result, flush=True)


if __name__ == "__main__":
    main()
