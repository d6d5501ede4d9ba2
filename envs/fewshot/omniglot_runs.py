"""The original one-shot classification task of Omniglot (Lake, Salakhutdinov & Tenenbaum, *Science* 2015).

Runs (:class:`OneShotRuns`)
    Within-alphabet 20-way 1-shot: each run has 20 training images (one per class, drawn from one evaluation
    alphabet) and 20 test items; ``class_labels.txt`` gives each item's class. Read from ``one_shot_runs_01-05.zip``
    (5 runs), ``all_runs.zip`` (20 runs) or a folder of ``runNN/`` dirs, published in the data set's public repository
    (https://github.com/brendenlake/omniglot, folder ``python/one-shot-classification/``); the data root and the
    errors are those of :mod:`metarl.envs.fewshot.omniglot`. A run keeps its full-resolution 105×105 stroke masks (for
    the baselines) and the images preprocessed as :class:`~metarl.envs.fewshot.omniglot.OmniglotCharacters` does (for
    learners); :meth:`OneShotRuns.as_episode_batch` stacks all runs as one
    :class:`~metarl.core.batch.EpisodeBatch` (support labelled ``0..19``, queries with their true labels).

Scoring a learner (:func:`evaluate_one_shot_runs`)
    :func:`one_shot_probabilities` adapts the learner on each run's support set and returns its class probabilities
    for the queries, optionally with test-time augmentation (distorted copies of the run's own drawings,
    :func:`~metarl.envs.fewshot.distortions.random_affine`); :func:`one_shot_score` turns probabilities (one
    learner's, or the mean of an ensemble's) into the error rate over all queries with a 95% Wilson interval
    (:func:`wilson_interval`) and the per-run error rates.

Baselines (:func:`pixel_nearest_neighbour_error`, :func:`modified_hausdorff_error`)
    Both classify every test item as the training image of least cost and return the error rate over all runs
    (a fraction). Pixel nearest neighbour: squared Euclidean distance between the 105×105 stroke masks. Modified
    Hausdorff distance, as in the repository's demo: the ink pixels of each 105×105 image as ``(row, col)`` points,
    centred on their mean, cost ``max(mean_a min_b |a - b|, mean_b min_a |a - b|)`` (symmetric), exact nearest
    neighbours by SciPy's k-d tree when SciPy is installed, else by brute force in torch.

The published error rates (people, Bayesian Program Learning, the modified Hausdorff demo), the baselines' figures
on the shared runs and every learner's score are in experiments/RESULTS.md, section "Omniglot: the original one-shot
task with the minimal background", beside the commands that produce them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.core.batch import EpisodeBatch
from metarl.core.learner import FewShotLearner

from .distortions import random_affine
from .omniglot import (
    RUNS_EXPECTED,
    SOURCE_HINT,
    DatasetCorruptError,
    DatasetNotFoundError,
    _check_image_size,
    _check_resample,
    _decode,
    _ink,
    _is_junk,
    _open_zip,
    _preprocess,
    _read_member,
    data_dirs,
)

__all__ = [
    "OneShotRun",
    "OneShotRuns",
    "one_shot_probabilities",
    "one_shot_score",
    "evaluate_one_shot_runs",
    "wilson_interval",
    "one_shot_error",
    "pixel_nearest_neighbour_error",
    "modified_hausdorff_distance",
    "modified_hausdorff_error",
]


# --- the original one-shot runs ---------------------------------------------------------------------------------

_RUN_MEMBER = re.compile(r"(?:^|/)(run\d+)/(training/class\d+\.png|test/item\d+\.png|class_labels\.txt)$")


@dataclass(frozen=True, eq=False)
class OneShotRun:
    """One run of the within-alphabet one-shot task.

    ``support_raw``/``query_raw``: ``bool`` ``[classes, 105, 105]`` / ``[items, 105, 105]``, True where there is
    ink, in ``training/class01..`` and ``test/item01..`` order; ``query_labels``: ``int64`` ``[items]``, the
    index of each item's training class; ``support_x``/``query_x``: ``float32`` ``[.., 1, S, S]`` with the
    preprocessing of :class:`OmniglotCharacters` (ink 1.0).
    """

    name: str
    support_raw: np.ndarray
    query_raw: np.ndarray
    query_labels: np.ndarray
    support_x: torch.Tensor = field(repr=False)
    query_x: torch.Tensor = field(repr=False)

    @property
    def ways(self) -> int:
        return int(self.support_raw.shape[0])

    def as_episode_batch(self) -> EpisodeBatch:
        """This run as a one-task batch: support labelled ``0..ways-1``, queries with their true labels."""
        return EpisodeBatch(
            support_x=self.support_x[None],
            support_y=torch.arange(self.ways, dtype=torch.int64)[None],
            query_x=self.query_x[None],
            query_y=torch.from_numpy(self.query_labels)[None],
            ways=self.ways,
            shots=1,
        )


class OneShotRuns:
    """The runs of the original one-shot classification task (Lake et al. 2015).

    Args:
        path: a runs zip (``one_shot_runs_01-05.zip``, ``all_runs.zip``), a folder of ``runNN/`` dirs, or a folder
            holding such a zip or an ``all_runs/`` folder (also searched in its ``omniglot/`` subfolder); default
            ``$METARL_DATA``. Runs found in several sources are kept once (``all_runs.zip`` first).
        image_size: side of ``support_x``/``query_x`` (28).
        resample: Pillow filter for the resize (see :class:`OmniglotCharacters`).

    Attributes:
        runs: the runs, sorted by name.
    """

    def __init__(
        self, path: str | os.PathLike | None = None, *, image_size: int = 28, resample: str = "lanczos"
    ) -> None:
        self.image_size = _check_image_size(image_size)
        self._filter = _check_resample(resample)
        files: dict[str, dict[str, Callable[[], bytes]]] = {}
        for source in self._sources(path):
            for run, entries in self._read_source(source).items():
                files.setdefault(run, entries)
        if not files:
            where = path if path is not None else data_dirs(None)[0]
            raise DatasetNotFoundError(f"no one-shot runs in {where}: expected {RUNS_EXPECTED}, {SOURCE_HINT}")
        self.runs = [self._build_run(name, files[name]) for name in sorted(files)]
        shapes = {(r.support_raw.shape[0], r.query_raw.shape[0]) for r in self.runs}
        if len(shapes) != 1:
            raise DatasetCorruptError(f"runs differ in their numbers of classes and items: {sorted(shapes)}")

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, index: int) -> OneShotRun:
        return self.runs[index]

    def __iter__(self) -> Iterator[OneShotRun]:
        return iter(self.runs)

    @property
    def raw_images(self) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution stroke masks ``(support, query)``: ``bool`` ``[runs, 20, 105, 105]`` each, ink True."""
        return np.stack([r.support_raw for r in self.runs]), np.stack([r.query_raw for r in self.runs])

    @property
    def query_labels(self) -> np.ndarray:
        """``int64`` ``[runs, items]``: the training class of each test item."""
        return np.stack([r.query_labels for r in self.runs])

    def as_episode_batch(self) -> EpisodeBatch:
        """All runs stacked: ``support_x`` ``[runs, 20, 1, S, S]``, ``query_x`` likewise, ``ways=20``, ``shots=1``."""
        ways = self.runs[0].ways
        return EpisodeBatch(
            support_x=torch.stack([r.support_x for r in self.runs]),
            support_y=torch.arange(ways, dtype=torch.int64).repeat(len(self.runs), 1),
            query_x=torch.stack([r.query_x for r in self.runs]),
            query_y=torch.from_numpy(self.query_labels),
            ways=ways,
            shots=1,
        )

    # reading
    @staticmethod
    def _sources(path: str | os.PathLike | None) -> list[Path]:
        if path is not None and Path(path).expanduser().is_file():
            return [Path(path).expanduser()]
        if path is not None and not Path(path).expanduser().exists():
            raise DatasetNotFoundError(f"{path} does not exist: expected {RUNS_EXPECTED}, {SOURCE_HINT}")
        sources: list[Path] = []
        for folder in data_dirs(path):
            if not folder.is_dir():
                continue
            sources += [p for p in (folder / "all_runs.zip",) if p.is_file()]
            sources += sorted(p for p in folder.glob("one_shot_runs*.zip") if p.is_file())
            sources += [p for p in (folder / "all_runs",) if p.is_dir()]
            if any(p.is_dir() and re.fullmatch(r"run\d+", p.name) for p in folder.iterdir()):
                sources.append(folder)
        return sources

    @staticmethod
    def _read_source(source: Path) -> dict[str, dict[str, Callable[[], bytes]]]:
        """``{run: {"training/class01.png": reader, ..., "class_labels.txt": reader}}`` of one zip or folder."""
        runs: dict[str, dict[str, Callable[[], bytes]]] = {}
        if source.is_dir():
            for file in sorted(source.rglob("*")):
                rel = file.relative_to(source).as_posix()
                match = _RUN_MEMBER.search(rel)
                if match and file.is_file():
                    runs.setdefault(match.group(1), {})[match.group(2)] = file.read_bytes
            return runs
        with _open_zip(source) as archive:
            names = [n for n in archive.namelist() if not _is_junk(n)]
        for name in names:
            match = _RUN_MEMBER.search(name)
            if match:
                runs.setdefault(match.group(1), {})[match.group(2)] = _ZipMember(source, name)
        if not runs:
            raise DatasetCorruptError(
                f"{source} has the wrong layout: no runNN/training/classKK.png, runNN/test/itemKK.png, "
                "runNN/class_labels.txt"
            )
        return runs

    def _build_run(self, name: str, entries: dict[str, Callable[[], bytes]]) -> OneShotRun:
        training = sorted(k for k in entries if k.startswith("training/"))
        test = sorted(k for k in entries if k.startswith("test/"))
        if "class_labels.txt" not in entries or not training or not test:
            raise DatasetCorruptError(
                f"run {name} is incomplete: it needs training/classKK.png, test/itemKK.png and class_labels.txt"
            )
        try:
            lines = entries["class_labels.txt"]().decode("utf-8").split()
        except UnicodeDecodeError:
            raise DatasetCorruptError(f"{name}/class_labels.txt is not text") from None
        if len(lines) != 2 * len(test):
            raise DatasetCorruptError(f"{name}/class_labels.txt has {len(lines) / 2:g} pairs, expected {len(test)}")
        answer: dict[str, str] = {}
        for item, cls in zip(lines[0::2], lines[1::2]):
            item_key, cls_key = item.split(f"{name}/", 1)[-1], cls.split(f"{name}/", 1)[-1]
            if item_key not in test or cls_key not in training:
                raise DatasetCorruptError(f"{name}/class_labels.txt names files not in the run: {item} {cls}")
            answer[item_key] = cls_key
        if sorted(answer) != test:
            raise DatasetCorruptError(f"{name}/class_labels.txt does not label every test item exactly once")
        labels = np.array([training.index(answer[item]) for item in test], dtype=np.int64)

        def load(keys: list[str]) -> tuple[np.ndarray, torch.Tensor]:
            greys = [_decode(entries[k](), f"{name}/{k}") for k in keys]
            raw = np.stack([_ink(g) for g in greys])
            small = np.stack([_preprocess(g, self.image_size, self._filter) for g in greys])
            return raw, torch.from_numpy(small).to(torch.float32).div_(255.0).unsqueeze(1)

        support_raw, support_x = load(training)
        query_raw, query_x = load(test)
        return OneShotRun(name, support_raw, query_raw, labels, support_x, query_x)


class _ZipMember:
    """A deferred read of one zip member (opened on demand, so no zip handle stays open)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name

    def __call__(self) -> bytes:
        with _open_zip(self.path) as archive:
            return _read_member(archive, self.name, self.path)


# --- scoring a learner ------------------------------------------------------------------------------------------


def wilson_interval(errors: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson (1927) score interval for a binomial proportion: ``errors`` out of ``total`` trials, ``z`` the normal
    quantile (1.96: 95%); ``(nan, nan)`` for no trials."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = errors / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def one_shot_probabilities(learner: FewShotLearner, batch: EpisodeBatch, *, steps: int | None = None,
                           device: str | torch.device = "cpu", augment_copies: int = 0,
                           seed: int = 0) -> torch.Tensor:
    """Class probabilities ``[runs, queries, ways]`` of ``learner`` on the one-shot runs (all runs stacked as one
    ``EpisodeBatch``), on the CPU.

    ``augment_copies = K > 0`` adds test-time augmentation: each support drawing gets ``K`` randomly distorted
    copies (:func:`~metarl.envs.fewshot.distortions.random_affine`, the training distortion) as extra shots of its
    class, and each query's probabilities are the mean over itself and ``K`` distorted copies. Still one drawing
    per class from the run: the copies are made from it, never from other data. The distortions are drawn from
    ``seed``.
    """
    if augment_copies < 0:
        raise ValueError(f"augment_copies must be >= 0, got {augment_copies}")
    was_training = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            batch = batch.to(device)
            support_x, support_y, queries = batch.support_x, batch.support_y, [batch.query_x]
            if augment_copies:
                rng = np.random.default_rng(seed)

                def distort(x: torch.Tensor) -> torch.Tensor:
                    flat = x.reshape(-1, *x.shape[-3:]).cpu()  # [images, channels, height, width]
                    return random_affine(flat, rng).reshape(x.shape).to(x.device)

                tasks, ways = batch.num_tasks, batch.ways
                by_class = support_x.reshape(tasks, ways, -1, *support_x.shape[2:])  # class-major order
                copies = [by_class] + [distort(by_class) for _ in range(augment_copies)]
                support_x = torch.cat(copies, dim=2).reshape(tasks, -1, *support_x.shape[2:])
                labels = support_y.reshape(tasks, ways, -1)
                support_y = labels.repeat(1, 1, augment_copies + 1).reshape(tasks, -1)
                queries += [distort(batch.query_x) for _ in range(augment_copies)]
            state = learner.adapt(support_x, support_y, steps=steps)
            probabilities = sum(learner.predict(state, q).softmax(dim=-1) for q in queries) / len(queries)
    finally:
        learner.train(was_training)
    return probabilities.cpu()


def one_shot_score(probabilities: torch.Tensor, query_y: torch.Tensor) -> dict[str, Any]:
    """Errors, error rate, 95% Wilson interval and per-run error rates of ``[runs, queries, ways]`` probabilities
    (one learner's, or the mean of an ensemble's) against the true labels ``[runs, queries]``."""
    wrong = probabilities.argmax(dim=-1) != query_y.cpu()
    errors, total = int(wrong.sum()), int(wrong.numel())
    low, high = wilson_interval(errors, total)
    return {"protocol": "omniglot-one-shot-runs", "runs": int(wrong.shape[0]), "queries": total, "errors": errors,
            "error_rate": errors / total, "ci95_low": low, "ci95_high": high,
            "per_run_error_rate": wrong.float().mean(dim=1).tolist()}


def evaluate_one_shot_runs(learner: FewShotLearner, batch: EpisodeBatch, *, steps: int | None = None,
                           device: str | torch.device = "cpu", augment_copies: int = 0,
                           seed: int = 0) -> dict[str, Any]:
    """Error rate of ``learner`` on the original one-shot runs (see :func:`one_shot_probabilities`)."""
    probabilities = one_shot_probabilities(learner, batch, steps=steps, device=device,
                                           augment_copies=augment_copies, seed=seed)
    return {**one_shot_score(probabilities, batch.query_y), "learner": learner.name, "steps": steps,
            "augment_copies": augment_copies}


# --- baselines --------------------------------------------------------------------------------------------------


def one_shot_error(runs: Sequence[OneShotRun] | OneShotRuns, cost: Callable[[OneShotRun], np.ndarray]) -> float:
    """Error rate over all runs of the classifier that gives each test item the training class of least cost.

    ``cost(run)`` returns ``[items, classes]``; ties go to the lowest class index (as ``argmin`` does).
    """
    wrong = total = 0
    for run in runs:
        matrix = np.asarray(cost(run))
        if matrix.shape != (run.query_raw.shape[0], run.ways):
            expected = (run.query_raw.shape[0], run.ways)
            raise ValueError(f"cost for {run.name} has shape {matrix.shape}, expected {expected}")
        wrong += int(np.sum(np.argmin(matrix, axis=1) != run.query_labels))
        total += len(run.query_labels)
    if total == 0:
        raise ValueError("no runs to score")
    return wrong / total


def _pixel_cost(run: OneShotRun) -> np.ndarray:
    query = run.query_raw.reshape(len(run.query_raw), -1).astype(np.float64)
    support = run.support_raw.reshape(run.ways, -1).astype(np.float64)
    return ((query[:, None, :] - support[None, :, :]) ** 2).sum(axis=2)


def pixel_nearest_neighbour_error(runs: Sequence[OneShotRun] | OneShotRuns) -> float:
    """Error of nearest neighbour on raw pixels: squared Euclidean distance between the 105×105 stroke masks."""
    return one_shot_error(runs, _pixel_cost)


def _centred_points(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` of every ink pixel, less their mean (as the repository's demo does): ``float64`` ``[n, 2]``."""
    points = np.argwhere(mask).astype(np.float64)
    if len(points) == 0:
        raise ValueError("an image without ink has no modified Hausdorff distance")
    return points - points.mean(axis=0)


def _kd_tree() -> type | None:
    """SciPy's k-d tree when SciPy is installed (exact nearest neighbours, faster than all pairs), else None."""
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        return None
    return cKDTree


def _directed_means(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(mean_i min_j |a_i - b_j|, mean_j min_i |a_i - b_j|)`` by brute force (the fallback without SciPy)."""
    distances = torch.cdist(torch.from_numpy(a), torch.from_numpy(b))  # float64: as exact as the k-d tree
    return float(distances.min(dim=1).values.mean()), float(distances.min(dim=0).values.mean())


def modified_hausdorff_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Modified Hausdorff distance (Dubuisson & Jain 1994) between point sets ``a`` ``[n, 2]`` and ``b`` ``[m, 2]``.

    ``max(mean_i min_j |a_i - b_j|, mean_j min_i |a_i - b_j|)``: the larger of the two directed mean distances,
    so the distance is symmetric.
    """
    a_np = np.asarray(a, dtype=np.float64)
    b_np = np.asarray(b, dtype=np.float64)
    tree = _kd_tree()
    if tree is None:
        return max(_directed_means(a_np, b_np))
    return max(float(tree(b_np).query(a_np)[0].mean()), float(tree(a_np).query(b_np)[0].mean()))


def _hausdorff_cost(run: OneShotRun) -> np.ndarray:
    support = [_centred_points(m) for m in run.support_raw]
    query = [_centred_points(m) for m in run.query_raw]
    tree = _kd_tree()
    if tree is None:
        return np.array([[max(_directed_means(q, s)) for s in support] for q in query])
    support_trees, query_trees = [tree(s) for s in support], [tree(q) for q in query]
    return np.array(
        [
            [max(float(st.query(q)[0].mean()), float(qt.query(s)[0].mean())) for s, st in zip(support, support_trees)]
            for q, qt in zip(query, query_trees)
        ]
    )


def modified_hausdorff_error(runs: Sequence[OneShotRun] | OneShotRuns) -> float:
    """Error of the Omniglot repository's one-shot baseline: the modified Hausdorff distance between the ink pixels
    of the 105×105 images, each point set centred on its mean, classifying each test item by the least (symmetric)
    distance. The published and the measured figures are in experiments/RESULTS.md (Omniglot one-shot section)."""
    return one_shot_error(runs, _hausdorff_cost)
