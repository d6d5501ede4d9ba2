"""RESULTS table: Santoro et al. (2016)'s Omniglot protocol — accuracy by instance in sequences of labelled drawings.

An episode: 5 classes (characters, with the source's rotations as extra classes, labels assigned anew per episode)
× 10 drawings each, shown as one sequence of 50 in a random order, each label given one step late (the learner sees
x_t and y_{t−1} and predicts y_t). Accuracy by instance: on the 1st, 2nd, 3rd, 4th, 5th and 10th presentation of a
class in its episode, per episode the mean over its 5 classes, then the mean and 95% t-interval over episodes.
Characters: the two images_background_small zips split by character with the source's default fractions
0.7/0.1/0.2 (train/val/test); training episodes come from "train", scored episodes from the held-out "test"
characters. Drawings at 20×20 (the paper's size).

Learners, all on the same scored episodes:

* ``mann``: MANN (LRUA memory, :mod:`metarl.agents.mann`), trained on the per-step loss of 50-step episodes;
* ``lstm``: the same learner with ``memory_slots=0`` (the paper's LSTM baseline), trained the same way;
* ``blackbox``: the black-box Transformer (a set learner): the prediction at step t adapts on the t−1 labelled
  items before it (all episodes at once for each t); at t = 1, with nothing seen, it guesses label 0. Trained on
  5-way episodes of 5 shots and 5 queries per class.

    .venv/bin/python experiments/mann_omniglot.py --iterations 400 --threads 1
    .venv/bin/python experiments/mann_omniglot.py --score experiments/out/mann_omniglot/mann-*/ ...  # score again

Published (Santoro et al. 2016, Table 1, 5 classes, after 100,000 training episodes): MANN 36.4 / 82.8 / 91.0 /
92.6 / 94.9 / 98.1 %, LSTM 24.4 / 49.5 / 55.3 / 61.0 / 63.6 / 62.5 %, people 34.5 / 57.3 / 70.1 / 71.8 / 81.4 /
92.4 % (instances 1, 2, 3, 4, 5, 10).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metarl.agents.protonet import embed_tasks
from metarl.evaluation import mean_confidence_interval
from metarl.runs import atomic_write_json
from metarl.training import load_run, load_session, make_run_config, train

INSTANCES = (1, 2, 3, 4, 5, 10)
PUBLISHED = {"MANN (paper)": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1), "LSTM (paper)": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5),
             "people (paper)": (34.5, 57.3, 70.1, 71.8, 81.4, 92.4)}
WAYS, DRAWINGS, IMAGE_SIZE = 5, 10, 20

# training plans: 50-item episodes for the sequence learners (9 + 1 per class: the support/query split does not
# matter to their per-step loss), balanced 5-way episodes for the set learner
PLANS = {
    "mann": dict(learner="mann", shots=9, query_shots=1, meta_batch_size=16, outer_lr=5e-3),
    "lstm": dict(learner="mann", memory_slots=0, shots=9, query_shots=1, meta_batch_size=16, outer_lr=5e-3),
    "blackbox": dict(learner="blackbox", shots=5, query_shots=5, meta_batch_size=4, outer_lr=1e-3),
}


def scored_episodes(data: Path, episodes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[episodes, 50, 1, 20, 20]`` and ``y`` ``[episodes, 50]`` from the test characters, each episode in
    its own random order (numpy generator from ``seed``)."""
    from metarl.envs.fewshot.omniglot import OmniglotFewShot

    source = OmniglotFewShot(root=data, ways=WAYS, shots=DRAWINGS, query_shots=0, image_size=IMAGE_SIZE)
    batch = source.sample(episodes, split="test", seed=seed, ways=WAYS, shots=DRAWINGS, query_shots=0)
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(np.argsort(rng.random((episodes, WAYS * DRAWINGS)), axis=1))
    x = torch.take_along_dim(batch.support_x, order.view(episodes, -1, 1, 1, 1), dim=1)
    return x, torch.take_along_dim(batch.support_y, order, dim=1)


@torch.no_grad()
def step_predictions(name: str, learner, x: torch.Tensor, y: torch.Tensor, chunk: int = 50) -> torch.Tensor:
    """Predicted labels ``[episodes, 50]``: sequence learners in one pass, the set learner adapting on the items
    before each step."""
    learner.eval()
    out = []
    for start in range(0, x.shape[0], chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        if name == "blackbox":
            # each drawing embedded once (evaluation mode: an image's embedding does not depend on the batch), then
            # the learner runs on the embeddings with its encoder set aside
            features, encoder = embed_tasks(learner.encoder, xs), learner.encoder
            learner.encoder = torch.nn.Identity()
            try:
                steps = [torch.zeros(xs.shape[0], dtype=torch.long)]  # nothing seen yet: label 0
                for t in range(1, xs.shape[1]):
                    state = learner.adapt(features[:, :t], ys[:, :t])
                    steps.append(learner.predict(state, features[:, t:t + 1])[:, 0].argmax(dim=-1))
            finally:
                learner.encoder = encoder
            out.append(torch.stack(steps, dim=1))
        else:
            out.append(learner.run_sequence(xs, ys)[0].argmax(dim=-1))
    return torch.cat(out)


def accuracy_by_instance(predictions: torch.Tensor, y: torch.Tensor) -> dict[int, dict[str, float]]:
    """Per instance k: mean and 95% interval over episodes of the accuracy on the k-th presentation of a class."""
    presentation = torch.nn.functional.one_hot(y, WAYS).cumsum(dim=1).gather(2, y.unsqueeze(-1)).squeeze(-1)
    correct = (predictions == y).float()
    result = {}
    for k in INSTANCES:
        mask = presentation == k  # exactly one item per class and episode
        per_episode = (correct * mask).sum(dim=1) / mask.sum(dim=1)
        result[k] = mean_confidence_interval(per_episode.numpy())
    return result


def train_plan(name: str, args: argparse.Namespace) -> Path:
    plan = dict(PLANS[name])
    learner = plan.pop("learner")
    config = make_run_config(learner, source="omniglot", data_root=str(args.data), ways=WAYS,
                             image_size=IMAGE_SIZE, iterations=args.iterations if name != "blackbox"
                             else args.blackbox_iterations, eval_tasks=20, seed=args.seed, threads=args.threads,
                             progress=False, log_every=25, checkpoint_every=100,
                             run_dir=str(args.out / f"{name}-{time.strftime('%H%M%S')}"), **plan)
    return train(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--learners", nargs="*", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--iterations", type=int, default=400, help="meta-iterations of mann and lstm")
    parser.add_argument("--blackbox-iterations", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=500, help="scored held-out episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--score", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                        help="no training: score these runs (name taken from the run: mann, lstm or blackbox)")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/mann_omniglot"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    if args.score:
        for run_dir in args.score:
            run = load_run(run_dir)
            name = run.name if run.name != "mann" or run.learner.memory_slots else "lstm"
            runs.append((name, run_dir))
    else:
        runs = [(name, train_plan(name, args)) for name in args.learners]
    x, y = scored_episodes(args.data, args.episodes, seed=12345)
    rows = []
    for name, run_dir in runs:
        run = load_run(run_dir)
        learner = load_session(run_dir).learner
        result = accuracy_by_instance(step_predictions(name, learner, x, y), y)
        rows.append({"learner": name, "run_dir": str(run_dir), "iterations": run.iterations,
                     "meta_batch_size": run.learner.meta_batch_size, "train_shots": run.task.shots,
                     "train_query_shots": run.task.query_shots, "episodes_scored": args.episodes,
                     "by_instance": {str(k): v for k, v in result.items()}})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"scores-{time.strftime('%H%M%S')}.json", rows)
    print(f"\n| learner | training episodes | {' | '.join(f'instance {k}' for k in INSTANCES)} |")
    print("| --- | --- |" + " --- |" * len(INSTANCES))
    for row in rows:
        cells = [f"{100 * v['mean']:.1f} ± {100 * v['ci95']:.1f}" for v in row["by_instance"].values()]
        print(f"| {row['learner']} | {row['iterations']} × {row['meta_batch_size']} | {' | '.join(cells)} |")
    for name, values in PUBLISHED.items():
        budget = "—" if name.startswith("people") else "100,000 episodes"
        print(f"| {name} | {budget} | {' | '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
