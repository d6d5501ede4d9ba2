"""RESULTS table: the original Omniglot one-shot task (20-way, 1-shot, within-alphabet runs) with the minimal
background — every classification learner trained on the two images_background_small zips only (all their
characters: split fractions 1/0/0), then scored on the shared one-shot runs (error rate over all queries, 95%
Wilson interval). Calibration baselines of the data set itself (pixel nearest neighbour, modified Hausdorff
distance) are computed on the same runs.

    .venv/bin/python experiments/omniglot_one_shot.py --data ../shared/data/omniglot --learners protonet matching
    .venv/bin/python experiments/omniglot_one_shot.py --evaluate experiments/out/omniglot/*/   # score runs again
    .venv/bin/python experiments/omniglot_one_shot.py --ensemble RUN_A RUN_B   # mean probabilities of finished runs

Every run is scored twice: as trained, and with test-time augmentation (``--tta 16``: 16 randomly distorted copies
of each support drawing as extra shots of its class, and the class probabilities averaged over 16 distorted copies
of each query; still one drawing per class from the run itself).

Budgets per learner are in PLANS (iterations × episode shape); --scale multiplies the iterations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from metarl.envs.fewshot.omniglot_runs import (
    OneShotRuns,
    modified_hausdorff_error,
    pixel_nearest_neighbour_error,
)
from metarl.envs.fewshot.sources import one_shot_result_name
from metarl.runs import atomic_write_json
from metarl.training import RunConfig, evaluate, load_run, load_session, make_run_config, train

# Training episodes: metric learners as Snell et al. (60-way, 5 queries per class); the MAML family and the
# black-box learner need a 20-way output layer, so they train on 20-way 1-shot episodes (Finn et al. 2017: inner
# lr 0.1, 5 steps in training, 10 at test; meta-batch 16, here smaller for CPU budgets). A plan's "learner" names
# the registered learner when the plan's key is not one (matching-fce: Matching Networks with full-context
# embeddings). Relation Networks score every query-class pair (Sung et al. 2018 train 20-way 1-shot with 10
# queries per class; fewer here for CPU budgets) and average the support maps ("mean", the paper's sum at one shot)
# so test-time augmentation's extra shots keep the relation module's input scale.
PLANS: dict[str, dict] = {
    "protonet": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "matching": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "film": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "versa": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=6000, outer_lr=1e-3),
    "maml": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                 eval_steps=(10,)),
    "fomaml": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                   eval_steps=(10,)),
    "anil": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                 eval_steps=(10,)),
    # CAVIA: the N-way table's context step (30, two steps in training and at test); BMAML: MAML's plan
    "cavia": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=30.0, inner_steps=2,
                  eval_steps=(2,)),
    "bmaml": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=3,
                  eval_steps=(10,)),
    "meta-sgd": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.1, inner_steps=1,
                     eval_steps=(1,)),
    "reptile": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, inner_lr=0.05, inner_steps=5,
                    eval_steps=(10,)),
    "blackbox": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=3000, outer_lr=1e-3),
    # MANN on the per-step loss of shuffled 20-way episodes (1 support + 5 queries per class: 120 steps), on the
    # Conv-4 embedding (the paper's flattened pixels are kept for its own 5-way protocol, experiments/mann_omniglot.py)
    "mann": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, outer_lr=5e-3, encoder="conv"),
    "metanet": dict(ways=20, query_shots=5, meta_batch_size=4, iterations=1500, outer_lr=3e-3),
    "matching-fce": dict(learner="matching", full_context=True, ways=20, train_ways=60, query_shots=5,
                         meta_batch_size=1, iterations=1000, outer_lr=1e-3),
    "relation": dict(ways=20, query_shots=2, meta_batch_size=1, iterations=1000, outer_lr=1e-3,
                     support_pooling="mean"),
    "siamese": dict(ways=20, train_ways=60, query_shots=5, meta_batch_size=1, iterations=1000, outer_lr=1e-3),
    # Ravi & Larochelle 2017: T = 5 updates (their 1-shot setting), evaluated with the T it was trained for; every
    # weight of the 32-filter Conv-4 is a row of the coordinate-wise LSTM, so fewer tasks per meta-batch
    "meta-lstm": dict(ways=20, query_shots=5, meta_batch_size=2, iterations=1500, inner_steps=5, eval_steps=(5,)),
}

#: what the table keeps of a one-shot-runs result
SCORE_KEYS = ("error_rate", "errors", "queries", "ci95_low", "ci95_high")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--runs", type=Path, default=None,
                        help="one-shot runs zip (default: DATA/one_shot_runs_01-05.zip)")
    parser.add_argument("--learners", nargs="*", default=list(PLANS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every plan's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--within-alphabet", type=float, default=0.0, metavar="P",
                        help="share of training episodes drawn from one alphabet (the runs are within-alphabet)")
    parser.add_argument("--image-size", type=int, default=28, help="side of the resized drawings")
    parser.add_argument("--train-ways", type=int, default=None,
                        help="classes per training episode for the metric learners (plans: 60)")
    parser.add_argument("--query-shots", type=int, default=None, help="queries per class in training episodes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training run")
    parser.add_argument("--baselines", action="store_true", help="also compute the pixel-NN and MHD baselines")
    parser.add_argument("--tta", type=int, default=16,
                        help="also score with test-time augmentation: K distorted copies per drawing (0: off)")
    parser.add_argument("--evaluate", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                        help="no training: score these finished (or checkpointed) runs, plain and with --tta")
    parser.add_argument("--ensemble", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                        help="no training: score the mean class probabilities of these runs (plain and with --tta)")
    parser.add_argument("--tta-seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="--ensemble: also score test-time augmentation with these distortion seeds (spread of "
                             "the result over the random copies)")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/omniglot"))
    args = parser.parse_args()
    runs_path = args.runs or args.data / "one_shot_runs_01-05.zip"
    rows = []
    if args.baselines:
        runs = OneShotRuns(runs_path)
        for name, fn in (("pixel nearest neighbour", pixel_nearest_neighbour_error),
                         ("modified Hausdorff distance", modified_hausdorff_error)):
            rows.append({"learner": name, "error_rate": float(fn(runs)), "iterations": 0})
            print(json.dumps(rows[-1]), flush=True)
    if args.evaluate:
        for run_dir in args.evaluate:
            run = load_run(run_dir)
            config = dataclasses.replace(run, task=dataclasses.replace(run.task, one_shot_runs=str(runs_path)))
            rows.append(score(run_dir, config, args.tta, train_minutes=None, fresh=True))
            print(json.dumps(rows[-1]), flush=True)
        args.learners = []
    if args.ensemble:
        rows.append(score_ensemble(args.ensemble, runs_path, args.tta, args.out, args.tta_seeds or []))
        print(json.dumps(rows[-1]), flush=True)
        args.learners = []
    for learner in args.learners:
        plan = dict(PLANS[learner])
        registered = plan.pop("learner", learner)
        plan["iterations"] = max(1, int(plan["iterations"] * args.scale))
        if args.train_ways is not None and "train_ways" in plan:
            plan["train_ways"] = args.train_ways
        if args.query_shots is not None:
            plan["query_shots"] = args.query_shots
        config = make_run_config(registered, source="omniglot", data_root=str(args.data), shots=1,
                                 augment=not args.no_augment, split_fractions=(1.0, 0.0, 0.0), eval_tasks=0,
                                 within_alphabet=args.within_alphabet, image_size=args.image_size,
                                 one_shot_runs=str(runs_path), seed=args.seed, threads=args.threads, progress=False,
                                 log_every=50, checkpoint_every=250,
                                 run_dir=str(args.out / f"{learner}-{time.strftime('%H%M%S')}"), **plan)
        start = time.perf_counter()
        run_dir = train(config)
        rows.append(score(run_dir, config, args.tta, train_minutes=round((time.perf_counter() - start) / 60, 1)))
        rows[-1]["learner"] = learner
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| learner | training | error on the one-shot runs (95% CI) | with test-time augmentation x{args.tta} |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        cells = []
        for key in ("plain", "tta"):
            r = row.get(key)
            cells.append(f"{100 * r['error_rate']:.1f}% ({100 * r['ci95_low']:.1f}–{100 * r['ci95_high']:.1f})"
                         if r else "")
        if "plain" not in row:
            cells[0] = f"{100 * row['error_rate']:.1f}%"
        budget = "none"
        if row["iterations"]:
            budget = f"{row['iterations']} its, {row['train_ways']}-way"
            if row.get("within_alphabet"):
                budget += f", within-alphabet {row['within_alphabet']:g}"
            if row.get("image_size", 28) != 28:
                budget += f", {row['image_size']}px"
            if row.get("train_minutes") is not None:
                budget += f", {row['train_minutes']} min"
        print(f"| {row['learner']} | {budget} | {cells[0]} | {cells[1]} |")


def score(run_dir: Path, config: RunConfig, tta: int, train_minutes: float | None, fresh: bool = False) -> dict:
    """Error rates of a run's last checkpoint on the one-shot runs: plain (written at training) and with ``tta``;
    ``fresh`` scores both again (a run scored while it was still training)."""
    task = config.task
    row = {"learner": config.name, "run_dir": str(run_dir), "iterations": checkpoint_iteration(run_dir),
           "train_ways": task.train_ways or task.ways, "train_minutes": train_minutes,
           "within_alphabet": task.within_alphabet, "image_size": task.image_size}
    for key, copies in (("plain", 0), ("tta", tta)):
        if key == "tta" and not copies:
            continue
        path = Path(run_dir) / one_shot_result_name(copies)
        if fresh or not path.exists():
            evaluate(run_dir, one_shot_runs=task.one_shot_runs, one_shot_augment=copies)
        result = json.loads(path.read_text())
        row[key] = {k: result[k] for k in SCORE_KEYS}
    return row


def score_ensemble(run_dirs: list[Path], runs_path: Path, tta: int, out: Path, tta_seeds: list[int]) -> dict:
    """Error rates of the mean class probabilities of several finished runs (each at its own image size and
    adaptation steps, the same test-time distortions for all), plain and with ``tta`` (distortions drawn from the
    first run's evaluation seed, and again from each of ``tta_seeds``); written to
    ``OUT/ensemble-<run names>.json``."""
    import torch

    from metarl.envs.fewshot.omniglot_runs import one_shot_probabilities, one_shot_score

    members, seed = [], load_run(run_dirs[0]).evaluation.eval_seed
    for run_dir in run_dirs:
        config = load_run(run_dir)
        learner = load_session(run_dir).learner
        steps = max(config.evaluation.eval_steps) if learner.uses_gradient_steps else None
        members.append((learner, OneShotRuns(runs_path, image_size=config.task.image_size).as_episode_batch(),
                        steps))
    row = {"learner": "ensemble: " + " + ".join(Path(r).name for r in run_dirs), "iterations": 0,
           "run_dirs": [str(r) for r in run_dirs]}
    def ensemble_score(copies: int, distortion_seed: int) -> dict:
        probabilities = torch.stack([one_shot_probabilities(learner, batch, steps=steps, augment_copies=copies,
                                                            seed=distortion_seed)
                                     for learner, batch, steps in members]).mean(dim=0)
        result = one_shot_score(probabilities, members[0][1].query_y)
        return {k: result[k] for k in SCORE_KEYS}

    row["plain"] = ensemble_score(0, seed)
    if tta:
        row["tta"] = ensemble_score(tta, seed)
        if tta_seeds:
            row["tta_by_seed"] = {s: ensemble_score(tta, s)["errors"] for s in tta_seeds}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"ensemble-{'+'.join(Path(r).name for r in run_dirs)}.json", row)
    return row


def checkpoint_iteration(run_dir: Path) -> int:
    """The iteration of a run's last checkpoint (a run still training is scored where it stands)."""
    from metarl.runs import load_checkpoint

    return int(load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt").get("iteration", 0))


if __name__ == "__main__":
    main()
