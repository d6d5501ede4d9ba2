"""Tuning record: CAVIA's inner step size, context size and FiLM-ed block for the 20-way Omniglot model of
experiments/omniglot_nway_kshot.py, chosen on the **validation** characters (never the test split the table reports).

    .venv/bin/python experiments/cavia_omniglot_tuning.py --data ../shared/data/omniglot --ways 20 \
        --inner-lr 30 100 --context-dim 100 400 --film-block 4 3

Each (inner_lr, context_dim, film_block) trains one CAVIA model exactly as the table's plan does at ``--ways``
(plan_of of experiments/omniglot_nway_kshot.py: 1-shot episodes with 5 queries per class, augmentation, the plan's
iterations and meta-batch, seed 0) with only those three fields changed, and scores ``--ways``-way 1-shot accuracy,
NLL and ECE on ``--eval-tasks`` tasks of the val split (the source's 0.7 / 0.1 / 0.2 character split). Prints JSON;
writes it to ``--out``. The plan's choice and the figures are in RESULTS "Omniglot N-way K-shot ..." (the CAVIA
rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from metarl.evaluation import evaluate_fewshot
from metarl.runs import atomic_write_json
from metarl.training import load_session, make_run_config, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot_nway_kshot import plan_of  # noqa: E402


def score(ways: int, inner_lr: float, context_dim: int, film_block: int, args: argparse.Namespace, root: Path) -> dict:
    plan = plan_of("cavia", ways, 1.0)
    eval_steps = plan.pop("eval_steps")
    plan.update(inner_lr=inner_lr, context_dim=context_dim, film_block=film_block)
    run_dir = root / f"lr{inner_lr:g}-ctx{context_dim}-block{film_block}"
    config = make_run_config("cavia", source="omniglot", data_root=str(args.data), ways=ways, shots=1,
                             query_shots=5, augment=True, eval_tasks=1, eval_shots=(1,), eval_steps=eval_steps,
                             seed=0, threads=args.threads, progress=False, log_every=100, run_dir=str(run_dir),
                             **plan)
    start = time.perf_counter()
    train(config)
    minutes = (time.perf_counter() - start) / 60
    session = load_session(run_dir)
    try:
        result = evaluate_fewshot(session.learner, config.task.build(), shots=[1], steps=eval_steps,
                                  num_tasks=args.eval_tasks, split="val", seed=args.eval_seed)
    finally:
        session.close()
    row = result["results"][0]
    out = {"inner_lr": inner_lr, "context_dim": context_dim, "film_block": film_block, "plan": plan,
           "train_minutes": round(minutes, 1),
           **{key: row[key] for key in ("accuracy", "ci95", "nll", "nll_ci95", "ece") if key in row}}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, nargs="+", default=[30.0, 100.0])
    parser.add_argument("--context-dim", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--film-block", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "records" / "cavia_omniglot_tuning.json")
    args = parser.parse_args(argv)
    if args.ways < 2 or args.eval_tasks < 2 or min(args.inner_lr) <= 0 or min(args.context_dim) < 1 \
            or not set(args.film_block) <= {1, 2, 3, 4}:
        parser.error("--ways and --eval-tasks must be >= 2, --inner-lr > 0, --context-dim >= 1, --film-block 1-4")
    if not args.data.is_dir():
        parser.error(f"no Omniglot data at {args.data}")
    with tempfile.TemporaryDirectory() as root:
        rows = [score(args.ways, lr, dim, block, args, Path(root)) for block in args.film_block
                for dim in args.context_dim for lr in args.inner_lr]
    summary = {"benchmark": "cavia_omniglot_tuning", "split": "val", "ways": args.ways, "shots": 1,
               "eval_tasks": args.eval_tasks, "command": " ".join(["python", *sys.argv]), "rows": rows}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
