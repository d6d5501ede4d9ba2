"""RESULTS table: N-way K-shot accuracy on held-out Omniglot characters for every classification learner, in the
shape of Sung et al. 2018, Table 1 (5-way and 20-way, 1-shot and 5-shot).

    .venv/bin/python experiments/omniglot_nway_kshot.py --data ../shared/data/omniglot --threads 1
    .venv/bin/python experiments/omniglot_nway_kshot.py --learners protonet maml --scale 0.5
    .venv/bin/python experiments/omniglot_nway_kshot.py --table          # print the table of what has been run
    .venv/bin/python experiments/omniglot_nway_kshot.py --rescore        # finished runs scored again (NLL, ECE)
    .venv/bin/python experiments/omniglot_nway_kshot.py --table --calibration   # + NLL/ECE table, reliability PNGs

Data: the minimal background only (the two ``images_background_small`` zips, 242 characters × 4 rotations), split
by character with the source's default fractions 0.7 / 0.1 / 0.2 (``split_seed`` 0; the rotations of a character
stay in its split): training episodes come from the train split, every cell is scored on ``--eval-tasks`` tasks
of the test split's characters (the same tasks for every learner: seeds derived from ``--eval-seed``), accuracy
over each task's queries (5 per class), mean and 95% Student-t interval over tasks. The published figures (full
background of 964 characters, 1,200 / 423 character split of Vinyals et al.; more training) are not the same data.

Training, one run per learner — or per number of ways for a learner with a fixed ``ways``-class output layer
(``fixed_ways``: the MAML family, the black-box learner and the like train a 5-way and a 20-way model) — with 1-shot
training episodes (5 queries per class, random-affine augmentation) of the plan below (``PLANS``; a learner
without a plan gets the default plan of its kind, so a newly registered learner is picked up without an edit):
metric learners train on 20-way episodes and are scored at 5 and 20 ways; all are scored at 1 and 5 shots.
Gradient-based learners take ``eval_steps`` steps at test. Every run directory is kept
(``--out``/LEARNER-Wway) and a finished one is not trained again (an unfinished one is resumed), so the script can
be stopped and started again; ``results.json`` there holds every cell. Each finished record is also kept in
``--records`` (``experiments/records/nway_kshot/LEARNER-Wway.json``, committed: a few KB each, with the commit that
trained it), so that the table can be completed over sessions on machines that do not have the earlier run
directories: a learner with a kept record and no run directory is not trained again (``--rescore`` needs the run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metarl.agents import LEARNERS, entry
from metarl.evaluation import evaluate_fewshot
from metarl.runs import atomic_write_json, head_commit, load_checkpoint
from metarl.training import load_session, make_run_config, resume, train

CELLS = ((5, 1), (5, 5), (20, 1), (20, 5))
"""(ways, shots) of the table's columns, Sung et al.'s order."""

# Budgets (CPU-sized): metric learners train on iterations × meta_batch_size episodes of 20-way 1-shot; fixed-ways
# learners on iterations × meta_batch_size episodes of 5-way 1-shot, and at 20 ways with half the meta-batch
# (the same number of images per iteration, twice over). Inner-loop settings of the MAML family: Finn et al.'s
# 5-way Omniglot ones (inner lr 0.4, one step in training, three at test).
DEFAULT_PLANS: dict[str, dict] = {
    "metric": dict(meta_batch_size=1, iterations=1000, outer_lr=1e-3),
    "fixed": dict(meta_batch_size=4, iterations=300, outer_lr=1e-3),
}
PLANS: dict[str, dict] = {
    "maml": dict(meta_batch_size=4, iterations=300, inner_lr=0.4, inner_steps=1, eval_steps=(3,)),
    "fomaml": dict(meta_batch_size=4, iterations=300, inner_lr=0.4, inner_steps=1, eval_steps=(3,)),
    "anil": dict(meta_batch_size=4, iterations=300, inner_lr=0.4, inner_steps=1, eval_steps=(3,)),
    "meta-sgd": dict(meta_batch_size=4, iterations=300, inner_lr=0.4, inner_steps=1, eval_steps=(1,)),
    "reptile": dict(meta_batch_size=4, iterations=300, inner_lr=0.05, inner_steps=5, eval_steps=(10,)),
    # CAVIA: the paper's two context steps in training and at test; α = 30, not its 1 (at α = 1 the zero-initialised
    # context hardly moves within this budget: tests/test_cavia.py's Omniglot test)
    "cavia": dict(meta_batch_size=4, iterations=300, inner_lr=30.0, inner_steps=2, eval_steps=(2,)),
    "blackbox": dict(meta_batch_size=4, iterations=300, outer_lr=3e-4),
    "bmaml": dict(meta_batch_size=4, iterations=300, inner_lr=0.4, inner_steps=1, eval_steps=(3,)),
}

WIDE_PLANS: dict[str, dict] = {
    # CAVIA's 20-way model: α = 100, chosen on the validation characters among α in {30, 100} x FiLM-ed block in
    # {3, 4} (experiments/cavia_omniglot_tuning.py; record experiments/records/cavia_omniglot_tuning.json): 13.7%
    # at the paper's block 3 as at block 4, against 9.1% with the 5-way α = 30
    "cavia": dict(inner_lr=100.0),
}
"""Changes to a fixed-ways learner's plan for its model of more than 5 ways."""

PUBLISHED = {  # Sung et al. 2018, Table 1 (accuracy %, 5w1s / 5w5s / 20w1s / 20w5s; full background)
    "protonet": (98.8, 99.7, 96.0, 98.9), "maml": (98.7, 99.9, 95.8, 98.9), "relation": (99.6, 99.8, 97.6, 99.1),
    "metanet": (99.0, None, 97.0, None), "siamese": (97.3, 98.4, 88.1, 97.0), "matching": (98.1, 98.9, 93.8, 98.5),
}


def classification_learners() -> list[str]:
    return [n for n in LEARNERS if "classification" in entry(n).load()[0].task_kinds]


def is_fixed_ways(name: str) -> bool:
    return bool(entry(name).load()[0].fixed_ways)


def plan_of(name: str, ways: int, scale: float) -> dict:
    plan = dict(PLANS.get(name) or DEFAULT_PLANS["fixed" if is_fixed_ways(name) else "metric"])
    plan["iterations"] = max(1, int(plan["iterations"] * scale))
    if is_fixed_ways(name) and ways > 5:
        plan["meta_batch_size"] = max(1, plan["meta_batch_size"] // 2)
        plan.update(WIDE_PLANS.get(name, {}))
    return plan


def run_learner(name: str, ways: int, args: argparse.Namespace) -> dict:
    """Train (or resume, or reuse) one run and score its cells; returns the run's record."""
    plan = plan_of(name, ways, args.scale)
    eval_steps = plan.pop("eval_steps", None)
    if eval_steps is None:  # a learner without a plan: at test the steps it trains with (0: no gradient steps)
        learner_type, config_type = entry(name).load()
        eval_steps = (getattr(config_type(), "inner_steps", 0) if learner_type.uses_gradient_steps else 0,)
    run_dir = args.out / f"{name}-{ways}way"
    record_path = run_dir / "results.json"
    kept = json.loads(record_path.read_text()) if record_path.exists() else None
    if kept is not None and not args.rescore:
        return keep_record(kept, args.records)
    earlier = args.records / f"{name}-{ways}way.json"
    if kept is None and earlier.exists() and not (run_dir / "config.json").exists() and not args.rescore:
        return json.loads(earlier.read_text())  # finished in an earlier session, on another machine
    config = make_run_config(name, source="omniglot", data_root=str(args.data), ways=ways, shots=1, query_shots=5,
                             augment=True, eval_tasks=1, eval_shots=(1,), eval_steps=tuple(eval_steps),
                             seed=args.seed, threads=args.threads, progress=False, log_every=50,
                             checkpoint_every=100, run_dir=str(run_dir), **plan)
    start = time.perf_counter()
    last = run_dir / "checkpoints" / "last.pt"
    if kept is not None:  # --rescore: the finished run scored again with the current protocol, not retrained
        pass
    elif (run_dir / "config.json").exists():  # an unfinished run of an earlier invocation
        done = load_checkpoint(last)["iteration"] if last.exists() else 0
        if done < config.iterations or not (run_dir / "evaluation.json").exists():
            resume(run_dir)
    else:
        train(config)
    minutes = kept["train_minutes"] if kept is not None else round((time.perf_counter() - start) / 60, 1)
    session = load_session(run_dir)
    try:
        learner = session.learner
        cells = [(w, k) for w, k in CELLS if w == ways or not is_fixed_ways(name)]
        rows = []
        for cell_ways in sorted({w for w, _ in cells}):
            source = config.task.build() if cell_ways == ways else _with_ways(config, cell_ways)
            result = evaluate_fewshot(learner, source, shots=[k for w, k in cells if w == cell_ways],
                                      steps=eval_steps, num_tasks=args.eval_tasks, split="test",
                                      seed=args.eval_seed, device=session.device)
            for row in result["results"]:
                rows.append({"ways": cell_ways, "shots": row["shots"], "steps": row["steps"],
                             "accuracy": row["accuracy"], "ci95": row["ci95"], "tasks": row["tasks"],
                             **{key: row[key] for key in ("nll", "nll_ci95", "ece", "reliability") if key in row}})
    finally:
        session.close()
    record = {"learner": name, "train_ways": ways, "run_dir": str(run_dir), "plan": plan_of(name, ways, args.scale),
              "iterations": config.iterations, "episodes": config.iterations * config.learner.meta_batch_size,
              "train_minutes": minutes, "eval_tasks": args.eval_tasks, "eval_seed": args.eval_seed,
              "seed": args.seed, "commit": (kept or {}).get("commit") or head_commit(), "cells": rows}
    atomic_write_json(record_path, record)
    return keep_record(record, args.records)


def keep_record(record: dict, records: Path) -> dict:
    """Copy a finished run's record into the committed ``records`` directory (atomic); returns it."""
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{record['learner']}-{record['train_ways']}way.json"
    if not path.exists() or json.loads(path.read_text()) != record:
        atomic_write_json(path, record)
    return record


def _with_ways(config, ways: int):
    import dataclasses

    return dataclasses.replace(config.task, ways=ways, augment=False).build()


def table(records: list[dict]) -> str:
    """Markdown: one row per learner, the four cells (accuracy % ± 95% half-width), and the published row."""
    by_learner: dict[str, dict] = {}
    for record in records:
        entry_ = by_learner.setdefault(record["learner"], {"cells": {}, "budget": []})
        for row in record["cells"]:
            entry_["cells"][(row["ways"], row["shots"])] = row
        entry_["budget"].append(f"{record['episodes']} × {record['train_ways']}-way"
                                + (f" ({record['train_minutes']} min)" if record.get("train_minutes") else ""))
        entry_["tasks"] = record["eval_tasks"]
    head = " | ".join(f"{w}-way {k}-shot" for w, k in CELLS)
    lines = [f"| learner | training episodes (1-shot) | test tasks per cell | {head} "
             "| published (Sung et al. Table 1) |",
             "| --- | --- | --- |" + " --- |" * (len(CELLS) + 1)]
    for name, entry_ in by_learner.items():
        cells = []
        for cell in CELLS:
            row = entry_["cells"].get(cell)
            cells.append("–" if row is None or row["accuracy"] is None
                         else f"{100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f}")
        published = PUBLISHED.get(name)
        published_text = " / ".join("–" if p is None else f"{p}" for p in published) if published else ""
        lines.append(f"| {name} | {'; '.join(entry_['budget'])} | {entry_['tasks']} | {' | '.join(cells)} | "
                     f"{published_text} |")
    return "\n".join(lines)


def calibration_table(records: list[dict]) -> str:
    """Markdown: per learner and cell, accuracy %, NLL (± 95% over tasks) and 15-bin ECE over all queries."""
    lines = ["| learner | cell | accuracy % | NLL (nats) | ECE |", "| --- | --- | --- | --- | --- |"]
    for record in records:
        for row in record["cells"]:
            if "ece" not in row:
                continue
            lines.append(f"| {record['learner']} ({record['train_ways']}-way model) | {row['ways']}-way "
                         f"{row['shots']}-shot | {100 * row['accuracy']:.1f} ± {100 * row['ci95']:.1f} | "
                         f"{row['nll']:.3f} ± {row['nll_ci95']:.3f} | {row['ece']:.3f} |")
    return "\n".join(lines)


def reliability_figures(records: list[dict], figures: Path) -> list[Path]:
    """One reliability diagram per learner (a panel per cell) in ``figures``/nway_reliability_LEARNER.png."""
    from metarl.evaluation import plot_reliability

    paths = []
    for name in dict.fromkeys(r["learner"] for r in records):
        rows = [dict(row, shots=f"{row['ways']}-way {row['shots']}", steps=row["steps"])
                for r in records if r["learner"] == name for row in r["cells"] if "reliability" in row]
        if rows:
            result = {"results": rows, "learner": name, "num_tasks": records[0]["eval_tasks"]}
            paths.append(plot_reliability(result, figures / f"nway_reliability_{name}.png",
                                          title=f"{name}: reliability on held-out Omniglot tasks"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--learners", nargs="*", default=None, help="default: every classification learner")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every plan's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tasks", type=int, default=200, help="held-out tasks per cell")
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="no training: print the table of the finished runs")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/nway_kshot"))
    parser.add_argument("--rescore", action="store_true",
                        help="score finished runs again with the current protocol (NLL, ECE), without training")
    parser.add_argument("--calibration", action="store_true",
                        help="with --table: print accuracy, NLL and ECE per cell and write reliability diagrams")
    parser.add_argument("--figures", type=Path, default=Path("experiments/figures"))
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "nway_kshot",
                        help="committed copies of the finished records (the table across sessions)")
    args = parser.parse_args()
    known = classification_learners()
    names = args.learners if args.learners is not None else known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"not a classification learner: {', '.join(unknown)} (choose from {', '.join(known)})")
    records = []
    if args.table:
        found = {p.parent.name: keep_record(json.loads(p.read_text()), args.records)
                 for p in sorted(args.out.glob("*/results.json"))}
        for path in sorted(args.records.glob("*.json")):  # finished in earlier sessions
            found.setdefault(path.stem, json.loads(path.read_text()))
        records = list(found.values())
        records = sorted((r for r in records if r["learner"] in names),
                         key=lambda r: (names.index(r["learner"]), r["train_ways"]))
    else:
        for name in names:
            for ways in ((5, 20) if is_fixed_ways(name) else (20,)):
                records.append(run_learner(name, ways, args))
                print(json.dumps(records[-1]), flush=True)
    print(table(records))
    if args.calibration:
        print(calibration_table(records))
        for path in reliability_figures(records, args.figures):
            print(path)


if __name__ == "__main__":
    main()
