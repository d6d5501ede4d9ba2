"""The one meta-test protocol: adapt on held-out tasks, score against the amount of adaptation, with 95% CIs.

Few-shot supervised (:func:`evaluate_fewshot`): for every number of shots K and every number of inner gradient
steps S in the grid, sample held-out tasks (``split="test"`` by default) with a seed derived from the evaluation
seed (the same tasks for every learner given the same seed), ``adapt`` on the K-shot support set with S steps,
score the query set (MSE for regression, accuracy for classification) and report the mean over tasks with a 95%
confidence interval (Student t over tasks). Learners without gradient steps are scored once per K (S = 0).

Meta-RL (:func:`evaluate_meta_rl`): for each split (``test``, and ``ood`` where the env offers it), sample held-out
tasks with the evaluation seed, let the agent explore, adapt and act through its ``meta_test`` (see
metarl/core/agent.py: column 0 is the return before adaptation, column k after adapting on what came before), and
report the return of every adaptation episode with a 95% CI over tasks. Each column also records the adaptation
data behind it (``adaptation_episodes``: the episodes the agent adapted on before it; MAML-TRPO adapts on
``adapt_episodes`` rollouts per stage, in-context agents on one episode; ``max_adaptation_env_steps``: those episodes
times the episode step limit), so plots that compare agents can put experience on the x-axis
(``plot_meta_rl(..., x_axis="adaptation_episodes")``).

Success: for any env whose ``info`` carries ``"success"`` (Meta-World), every meta-RL column also holds the success
rate over tasks with its 95% interval (an episode succeeds when success was reached at any of its steps, Meta-World's
rule; :mod:`metarl.core.outcomes`), and the plot draws it beside the return. A task environment with a benchmark
protocol of its own (``benchmark_protocol``: Meta-World's, :mod:`metarl.envs.metaworld`) is evaluated with it by
default (``protocol="auto"``): its tasks, columns and rounds, its metric before and after adaptation
(``benchmark``), and what it must name (``benchmark_protocol``, ``env_info``: e.g. the reward-function version).

Results go to JSON (``save_json``) and a PNG (``plot_adaptation``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.core.batch import EpisodeBatch
from metarl.core.calibration import expected_calibration_error, reliability_bins
from metarl.core.learner import FewShotLearner
from metarl.core.outcomes import record_success
from metarl.core.seeding import derive_seed
from metarl.runs import atomic_write_bytes, atomic_write_json


def mean_confidence_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean and half-width of the Student-t confidence interval over independent samples."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    n = arr.size
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "ci95": float("nan"), "n": 1, "std": 0.0}
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": int(n), "std": std}


def _sample(source: Any, n: int, split: str, seed: int, shots: int) -> EpisodeBatch:
    return source.sample(n, split=split, seed=seed, shots=shots)


def evaluate_fewshot(
    learner: FewShotLearner,
    source: Any,
    *,
    shots: Sequence[int],
    steps: Sequence[int] = (0, 1, 10),
    num_tasks: int = 100,
    split: str = "test",
    seed: int = 12345,
    chunk: int = 25,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Score ``learner`` on ``num_tasks`` held-out tasks for each shots × steps; returns a JSON-ready dict."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    step_grid = sorted(set(int(s) for s in steps)) if learner.uses_gradient_steps else [0]
    metric = "mse" if learner.kind == "regression" else "accuracy"
    was_training = learner.training
    learner.eval()
    rows = []
    try:
        for k in shots:
            batch = _sample(source, num_tasks, split, derive_seed(seed, "eval", split, int(k)), int(k)).to(device)
            for s in step_grid:
                parts: dict[str, list[torch.Tensor]] = {}
                for start in range(0, num_tasks, chunk):
                    part = batch.task(slice(start, start + chunk))
                    with torch.no_grad():
                        for key, value in learner.evaluate(part, steps=s).items():
                            parts.setdefault(key, []).append(value.cpu())
                cell = {key: torch.cat(value).double().numpy() for key, value in parts.items()}
                values = cell["score"]
                diverged = int((~np.isfinite(values)).sum())
                if diverged:  # e.g. learned step sizes applied for more steps than trained: report, never average
                    rows.append({"shots": int(k), "steps": int(s), metric: None, "ci95": None, "std": None,
                                 "tasks": int(values.size), "diverged_tasks": diverged})
                    continue
                summary = mean_confidence_interval(values)
                rows.append({"shots": int(k), "steps": int(s), metric: summary["mean"], "ci95": summary["ci95"],
                             "std": summary["std"], "tasks": summary["n"], "diverged_tasks": 0,
                             **calibration_summary(cell)})
    finally:
        learner.train(was_training)
    return {"protocol": "fewshot", "learner": learner.name, "metric": metric, "split": split, "seed": seed,
            "num_tasks": num_tasks, "results": rows}


def calibration_summary(cell: dict[str, np.ndarray]) -> dict[str, Any]:
    """The probabilistic scores of one cell from a learner's per-task (and per-query) evaluation arrays: NLL
    (mean and 95% interval over tasks), for classifiers the 15-bin ECE over all queries and its reliability bins,
    for probabilistic regression the coverage of the central 95% interval (mean and interval over tasks) and its
    mean width. Tasks whose NLL is not finite are counted (``nll_diverged_tasks``), never averaged."""
    out: dict[str, Any] = {}
    if "nll" in cell:
        nll = cell["nll"]
        finite = np.isfinite(nll)
        out["nll_diverged_tasks"] = int((~finite).sum())
        if finite.any():
            summary = mean_confidence_interval(nll[finite])
            out["nll"], out["nll_ci95"] = summary["mean"], summary["ci95"]
    if "confidence" in cell:
        confidence, correct = cell["confidence"], cell["correct"]
        keep = np.isfinite(confidence)
        if keep.any():
            out["ece"] = expected_calibration_error(confidence[keep], correct[keep])
            out["reliability"] = reliability_bins(confidence[keep], correct[keep])
    if "coverage" in cell:
        summary = mean_confidence_interval(cell["coverage"])
        out["coverage95"], out["coverage95_ci95"] = summary["mean"], summary["ci95"]
        out["interval_width95"] = float(np.mean(cell["width"]))
    return out


def save_json(path: Path, result: dict[str, Any]) -> Path:
    atomic_write_json(Path(path), result)
    return Path(path)


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG atomically (never a half-written file) and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def plot_adaptation(result: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """PNG of score against adaptation steps, one line per shots (few-shot) — error bars are the 95% CIs."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in sorted({r["shots"] for r in result["results"]}):
        rows = sorted((r for r in result["results"] if r["shots"] == k and r[metric] is not None),
                      key=lambda r: r["steps"])
        xs = [r["steps"] for r in rows]
        ys = [r[metric] for r in rows]
        errs = [0.0 if r["ci95"] is None or math.isnan(r["ci95"]) else r["ci95"] for r in rows]
        if len(xs) == 1:
            ax.errorbar([k], ys, yerr=errs, fmt="o", capsize=3, label=f"{k} shots")
        else:
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"{k} shots")
    single = all(len({r["steps"] for r in result["results"] if r["shots"] == k}) == 1
                 for k in {r["shots"] for r in result["results"]})
    ax.set_xlabel("shots" if single else "adaptation gradient steps")
    ax.set_ylabel(f"held-out {metric} ({result['split']} split, 95% CI)")
    ax.set_title(title or f"{result['learner']}: {result['num_tasks']} held-out tasks")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_reliability(result: dict[str, Any], path: Path, title: str | None = None) -> Path | None:
    """PNG reliability diagram of a classifier's evaluation: accuracy against top-class confidence per bin, one
    panel per shots (the cell with the most adaptation steps), the diagonal for a calibrated learner, ECE in the
    legend. ``None`` (no file) when no row carries reliability bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[int, dict[str, Any]] = {}
    for row in result["results"]:
        if row.get("reliability") and (row["shots"] not in cells or row["steps"] > cells[row["shots"]]["steps"]):
            cells[row["shots"]] = row
    if not cells:
        return None
    fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.6), squeeze=False)
    for ax, (shots, row) in zip(axes[0], sorted(cells.items())):
        bins = row["reliability"]
        edges = np.asarray(bins["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        accuracy = [np.nan if a is None else a for a in bins["accuracy"]]
        ax.bar(centres, accuracy, width=np.diff(edges), edgecolor="black", alpha=0.7,
               label=f"ECE {row['ece']:.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-class confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{shots} shots, {row['steps']} steps")
        ax.legend(loc="upper left")
    fig.suptitle(title or f"{result['learner']}: reliability on {result['num_tasks']} held-out tasks")
    return save_figure(fig, path)


def random_policy_returns(env: Any, tasks: Sequence[Any], seed: int) -> np.ndarray:
    """The undiscounted return of one episode of uniformly random actions on each task (a reference level: what no
    learning at all scores on these tasks), seeded."""
    returns = []
    for i, task in enumerate(tasks):
        env.unwrapped.set_task(task)
        episode_seed = derive_seed(seed, "random-policy", i)
        env.reset(seed=episode_seed)
        env.action_space.seed(episode_seed % 2**32)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return np.asarray(returns, dtype=np.float64)


def _success_columns(successes: np.ndarray | None, num_episodes: int) -> list[dict[str, Any]]:
    """Per column, the success rate over tasks with its 95% interval (tasks without a value are left out)."""
    rows = []
    for k in range(num_episodes):
        column = successes[:, k] if successes is not None else np.array([])
        known = column[np.isfinite(column)]
        if known.size == 0:
            rows.append({"success": None, "success_ci95": None, "success_tasks": 0})
            continue
        summary = mean_confidence_interval(known)
        rows.append({"success": summary["mean"], "success_ci95": summary["ci95"], "success_tasks": summary["n"]})
    return rows


def _meta_test(agent: Any, tasks: list[Any], num_episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The agent's ``meta_test`` with the success of every column recorded (:mod:`metarl.core.outcomes`):
    ``([tasks, num_episodes] returns, [tasks, num_episodes] success rates or None)``."""
    with record_success() as recorder:
        returns = np.asarray(agent.meta_test(tasks, num_episodes, seed), dtype=np.float64)
    if returns.shape != (len(tasks), num_episodes):
        raise ValueError(f"meta_test returned shape {returns.shape}, expected {(len(tasks), num_episodes)}")
    return returns, recorder.column_matrix(len(tasks), num_episodes)


def generic_protocol_tasks(env: Any, num_tasks: int, split: str, seed: int) -> list[Any]:
    """The ``num_tasks`` tasks of ``split`` that the generic protocol of :func:`evaluate_meta_rl` plays with
    evaluation seed ``seed`` (so that a run's per-task returns can be paired with anything else on those tasks)."""
    return env.unwrapped.sample_tasks(num_tasks, split=split, seed=derive_seed(seed, "tasks", split))


def generic_protocol_meta_test_seed(seed: int, split: str) -> int:
    """The ``meta_test`` seed the generic protocol of :func:`evaluate_meta_rl` gives ``split``'s tasks with evaluation
    seed ``seed`` (with :func:`generic_protocol_tasks`, the evaluation's trials can be played again exactly)."""
    return derive_seed(seed, "meta-test", split)


def resolve_protocol(env: Any, protocol: str) -> str:
    """The protocol an evaluation runs: ``"generic"`` (:func:`evaluate_meta_rl`'s held-out splits) or
    ``"benchmark"`` (the task environment's own, ``env.unwrapped.benchmark_protocol``, e.g. Meta-World's);
    ``"auto"`` picks the env's own where it has one. One-line ``ValueError`` for ``"benchmark"`` on an env without."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    has_own = callable(getattr(env.unwrapped, "benchmark_protocol", None))
    if protocol == "benchmark" and not has_own:
        raise ValueError(f"{env.spec.id if env.spec else env} has no benchmark protocol of its own: use "
                         "protocol 'generic'")
    return "benchmark" if protocol == "benchmark" or (protocol == "auto" and has_own) else "generic"


PROTOCOLS = ("auto", "generic", "benchmark")
"""Values of ``evaluate_meta_rl(protocol=...)`` (the ``protocol`` evaluation field)."""


def evaluate_meta_rl(agent: Any, env_id: str, *, splits: Sequence[str] = ("test",), num_tasks: int = 20,
                     num_episodes: int = 3, seed: int = 12345,
                     env_kwargs: dict[str, Any] | None = None, protocol: str = "generic",
                     protocol_rounds: int | None = None) -> dict[str, Any]:
    """Meta-test ``agent`` on held-out tasks of every split the env offers among ``splits``.

    The tasks are sampled from ``gymnasium.make(env_id, **env_kwargs)``: pass the agent's own ``env_kwargs`` (e.g.
    HalfCheetahVel's ``velocity_range``) so the held-out tasks come from the distribution it was trained on; by
    default the agent's ``config.env_kwargs`` where it has one. Each split also records the return of random actions
    on the same tasks and episode length (``random_policy_return``, drawn as the reference level of the plot).

    Success: where the env reports ``info["success"]`` (Meta-World), every column also holds the success rate over
    tasks (an episode succeeds when success was reached at any of its steps, Meta-World's rule:
    :mod:`metarl.core.outcomes`) with its 95% interval, and ``per_task_successes`` the ``[tasks, episodes]`` rates.

    ``protocol``: ``"generic"`` (the above), ``"benchmark"`` (the env's own protocol instead:
    ``env.unwrapped.benchmark_protocol(episodes_per_stage, rounds, seed)`` gives its tasks, adaptation columns,
    evaluation columns and chunks — Meta-World's in :mod:`metarl.envs.metaworld`; ``splits``, ``num_tasks`` and
    ``num_episodes`` are then the protocol's, ``protocol_rounds`` its number of evaluation rounds, None: its own), or
    ``"auto"`` (the env's own where it has one).
    """
    import gymnasium as gym

    import metarl.envs  # noqa: F401 - registers the ids

    if env_kwargs is None:
        env_kwargs = dict(getattr(getattr(agent, "config", None), "env_kwargs", None) or {})
    env = gym.make(env_id, **env_kwargs)
    per_stage = int(getattr(agent, "episodes_per_stage", 1))
    step_limit = getattr(getattr(agent, "config", None), "max_episode_steps", None) or (
        env.spec.max_episode_steps if env.spec is not None else None)
    reference_env = gym.make(env_id, **({"max_episode_steps": step_limit} if step_limit else {}), **env_kwargs)
    benchmark: dict[str, Any] | None = None
    try:
        if resolve_protocol(env, protocol) == "benchmark":
            benchmark = env.unwrapped.benchmark_protocol(per_stage, protocol_rounds, seed)
            plan = {benchmark["split"]: benchmark["tasks"]}
            num_episodes, num_tasks = int(benchmark["num_episodes"]), len(benchmark["tasks"])
            chunk = int(benchmark.get("chunk") or num_tasks)
        else:
            offered = tuple(getattr(env.unwrapped, "splits", ("train", "test")))
            plan = {split: generic_protocol_tasks(env, num_tasks, split, seed) for split in splits if split in offered}
            chunk = None
        by_split: dict[str, Any] = {}
        for split, tasks in plan.items():
            if chunk is None:  # the generic protocol: one meta_test call per split (the seeds of earlier results)
                returns, successes = _meta_test(agent, tasks, num_episodes,
                                                generic_protocol_meta_test_seed(seed, split))
            else:  # a benchmark's rounds of meta_batch tasks, each its own meta_test call
                parts = [_meta_test(agent, tasks[i:i + chunk], num_episodes, derive_seed(seed, "meta-test", split, i))
                         for i in range(0, len(tasks), chunk)]
                returns = np.concatenate([r for r, _ in parts])
                successes = (None if all(s is None for _, s in parts) else np.concatenate(
                    [s if s is not None else np.full(r.shape, np.nan) for r, s in parts]))
            episodes = [mean_confidence_interval(returns[:, k]) for k in range(num_episodes)]
            success_rows = _success_columns(successes, num_episodes)
            random = mean_confidence_interval(random_policy_returns(reference_env, tasks,
                                                                    derive_seed(seed, "reference", split)))
            by_split[split] = {
                "episodes": [{"episode": k, "return": e["mean"], "ci95": e["ci95"], "std": e["std"],
                              "adaptation_episodes": k * per_stage,
                              "max_adaptation_env_steps": k * per_stage * step_limit if step_limit else None,
                              **(success_rows[k] if successes is not None else {})}
                             for k, e in enumerate(episodes)],
                "pre_adaptation_return": episodes[0]["mean"],
                "post_adaptation_return": episodes[-1]["mean"],
                "per_task_returns": returns.tolist(),
                "random_policy_return": {"return": random["mean"], "ci95": random["ci95"]},
            }
            if successes is not None:
                by_split[split].update({
                    "pre_adaptation_success": success_rows[0]["success"],
                    "post_adaptation_success": success_rows[-1]["success"],
                    "per_task_successes": [[None if not np.isfinite(v) else float(v) for v in row]
                                           for row in successes],
                })
            if benchmark is not None:
                by_split[split]["benchmark"] = benchmark_summary(benchmark, returns, successes)
        describe = getattr(env.unwrapped, "evaluation_metadata", None)
        env_info = describe() if callable(describe) else None
    finally:
        env.close()
        reference_env.close()
    if not by_split:
        raise ValueError(f"{env_id} offers none of the splits {list(splits)}")
    result = {"protocol": "meta-rl", "agent": getattr(agent, "name", type(agent).__name__), "env": env_id,
              "num_tasks": num_tasks, "num_episodes": num_episodes, "seed": seed, "splits": by_split}
    if env_info is not None:
        result["env_info"] = env_info
    if benchmark is not None:
        result["benchmark_protocol"] = {k: v for k, v in benchmark.items() if k != "tasks"}
    return result


def benchmark_summary(benchmark: dict[str, Any], returns: np.ndarray,
                      successes: np.ndarray | None) -> dict[str, Any]:
    """A benchmark protocol's scores: per task, the mean over the protocol's evaluation columns (after adaptation)
    and column 0 (before any adaptation) of the success rate (the benchmark's metric) and of the return; the mean
    over tasks with a 95% interval, the mean per group (Meta-World: per test class) and the mean of the group means
    (Meta-World's headline number: its classes are equally represented, so it equals the mean over tasks)."""
    columns = list(benchmark["evaluation_columns"])
    groups = list(benchmark.get("groups") or ["all"] * returns.shape[0])
    out: dict[str, Any] = {"metric": benchmark.get("metric", "success"), "evaluation_columns": columns}
    for name, matrix in (("success", successes), ("return", returns)):
        if matrix is None:
            out[name] = None
            continue
        with warnings.catch_warnings():  # a task whose evaluation columns hold no value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            post = np.nanmean(matrix[:, columns], axis=1)
        pre = matrix[:, 0]
        entry: dict[str, Any] = {}
        for stage, values in (("pre_adaptation", pre), ("post_adaptation", post)):
            known = np.isfinite(values)
            if not known.any():
                entry[stage] = None
                continue
            summary = mean_confidence_interval(values[known])
            by_group = {g: float(np.mean([values[i] for i, x in enumerate(groups) if x == g and known[i]]))
                        for g in dict.fromkeys(g for g, k in zip(groups, known) if k)}
            entry[stage] = {"mean": summary["mean"], "ci95": summary["ci95"], "tasks": summary["n"],
                            "per_group": by_group, "mean_of_groups": float(np.mean(list(by_group.values())))}
        out[name] = entry
    return out


def seed_statistics(per_task_returns: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per adaptation episode, the return over several seeds' ``[tasks, episodes]`` arrays (the same held-out tasks):
    ``return``/``ci95``: mean of the seed means ± the Student-t interval over seeds (over tasks for one seed);
    ``pooled_ci95``: the interval over every (task, seed) pair, which ignores that a seed's tasks share a policy."""
    arrays = [np.asarray(r, dtype=np.float64) for r in per_task_returns]
    if not arrays:
        raise ValueError("no seeds to summarise")
    if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"per-task returns differ in shape across seeds: {[a.shape for a in arrays]}")
    seed_means = np.stack([a.mean(axis=0) for a in arrays])  # [seeds, episodes]
    pooled = np.concatenate(arrays)  # [seeds * tasks, episodes]
    rows = []
    for k in range(seed_means.shape[1]):
        over = seed_means[:, k] if len(arrays) > 1 else arrays[0][:, k]
        stats, pooled_stats = mean_confidence_interval(over), mean_confidence_interval(pooled[:, k])
        rows.append({"episode": k, "return": stats["mean"], "ci95": stats["ci95"],
                     "pooled_ci95": pooled_stats["ci95"], "per_seed": seed_means[:, k].tolist()})
    return rows


def combine_meta_rl_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One :func:`evaluate_meta_rl`-shaped result from several runs' (seeds') evaluations of the same agent and
    env on the same held-out tasks: each split's episodes hold :func:`seed_statistics`. ``ValueError`` when the
    evaluations are not comparable (another env, agent, evaluation seed, task or episode count)."""
    if not results:
        raise ValueError("no evaluations to combine")
    if any(r.get("protocol") != "meta-rl" or not isinstance(r.get("splits"), dict) for r in results):
        raise ValueError("not a meta-RL evaluation (protocol 'meta-rl' with per-split returns)")
    first = results[0]
    for key in ("protocol", "agent", "env", "num_tasks", "num_episodes", "seed"):
        values = {json.dumps(r.get(key)) for r in results}
        if len(values) > 1:
            raise ValueError(f"evaluations differ in {key}: {sorted(values)}; seeds can only be combined on the "
                             "same held-out tasks")
    env_kwargs = {json.dumps(((r.get("config") or {}).get("learner") or {}).get("env_kwargs"), sort_keys=True)
                  for r in results}
    if len(env_kwargs) > 1:
        raise ValueError(f"evaluations differ in the env's kwargs: {sorted(env_kwargs)}")
    splits = [s for s in first["splits"] if all(s in r["splits"] for r in results)]
    if not splits:
        raise ValueError("the evaluations share no split")
    combined = {key: first[key] for key in ("protocol", "agent", "env", "num_tasks", "num_episodes", "seed")}
    combined["num_seeds"] = len(results)
    combined["splits"] = {}
    for split in splits:
        if any("per_task_returns" not in r["splits"][split] for r in results):
            raise ValueError(f"an evaluation has no per-task returns for the {split} split")
        episodes = seed_statistics([r["splits"][split]["per_task_returns"] for r in results])
        combined["splits"][split] = {"episodes": episodes, "pre_adaptation_return": episodes[0]["return"],
                                     "post_adaptation_return": episodes[-1]["return"]}
        successes = [np.asarray(r["splits"][split].get("per_task_successes") or [], dtype=np.float64)
                     for r in results]
        if all(a.size and np.isfinite(a).all() for a in successes):  # the same statistics for the success rate
            for row, stats in zip(episodes, seed_statistics(successes)):
                row.update(success=stats["return"], success_ci95=stats["ci95"],
                           success_pooled_ci95=stats["pooled_ci95"], success_per_seed=stats["per_seed"])
            combined["splits"][split].update(pre_adaptation_success=episodes[0]["success"],
                                             post_adaptation_success=episodes[-1]["success"])
        benchmarks = [(r["splits"][split].get("benchmark") or {}).get("success") or {} for r in results]
        if all(b.get("pre_adaptation") and b.get("post_adaptation") for b in benchmarks):
            # a benchmark protocol's success before / after adaptation: mean of the seeds' means ± t over seeds
            combined["splits"][split]["benchmark"] = {"success": {
                stage: {**mean_confidence_interval([b[stage]["mean"] for b in benchmarks]),
                        "per_seed": [b[stage]["mean"] for b in benchmarks]}
                for stage in ("pre_adaptation", "post_adaptation")}}
    if all("benchmark_protocol" in r for r in results):
        combined["benchmark_protocol"] = first["benchmark_protocol"]
    return combined


MAX_LABELLED_EPISODES = 20
"""Adaptation curves label every episode up to this many columns, beyond it (a 100-pull bandit trial) integer ticks
that matplotlib spaces, and draw the points without markers and caps."""


def _point_style(columns: int) -> dict[str, Any]:
    return {"marker": "o", "capsize": 3} if columns <= MAX_LABELLED_EPISODES else {"elinewidth": 0.6}


def _episode_ticks(ax: Any, xs: list[Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    if len(xs) <= MAX_LABELLED_EPISODES:
        ax.set_xticks(xs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_LABELLED_EPISODES // 2, integer=True))


def plot_meta_rl(result: dict[str, Any], path: Path, title: str | None = None, x_axis: str = "episode") -> Path:
    """PNG adaptation curve: return per adaptation episode (0 = before adaptation), one line per split;
    ``x_axis="adaptation_episodes"`` puts the episodes of adaptation data behind each column on the x-axis. Where the
    result holds success rates (an env reporting ``info["success"]``), a second panel beside it draws the success
    rate per adaptation episode with its 95% interval."""
    if x_axis not in ("episode", "adaptation_episodes"):
        raise ValueError(f"x_axis must be 'episode' or 'adaptation_episodes', got {x_axis!r}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_success = any(e.get("success") is not None for data in result["splits"].values() for e in data["episodes"])
    fig, axes = plt.subplots(1, 2 if with_success else 1, figsize=(11 if with_success else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    xlabel = ("adaptation episode (0 = before adaptation)" if x_axis == "episode"
              else "episodes of adaptation data")
    for split, data in result["splits"].items():
        xs = [e.get(x_axis, e["episode"]) for e in data["episodes"]]
        ys = [e["return"] for e in data["episodes"]]
        errs = [0.0 if math.isnan(e["ci95"]) else e["ci95"] for e in data["episodes"]]
        line = ax.errorbar(xs, ys, yerr=errs, label=f"{split} tasks", **_point_style(len(xs)))
        _episode_ticks(ax, xs)
        reference = data.get("random_policy_return")
        if reference is not None:
            ax.axhline(reference["return"], linestyle="--", linewidth=1, color=line[0].get_color(),
                       label=f"random actions ({split})")
        if with_success:
            rows = [e for e in data["episodes"] if e.get("success") is not None]
            sxs = [e.get(x_axis, e["episode"]) for e in rows]
            serrs = [0.0 if e.get("success_ci95") is None or math.isnan(e["success_ci95"]) else e["success_ci95"]
                     for e in rows]
            axes[0][1].errorbar(sxs, [e["success"] for e in rows], yerr=serrs, color=line[0].get_color(),
                                label=f"{split} tasks", **_point_style(len(sxs)))
            _episode_ticks(axes[0][1], sxs)
    ax.set_xlabel(xlabel)
    seeds = result.get("num_seeds")
    ax.set_ylabel(f"return (mean of {seeds} seeds, 95% CI over seeds)" if seeds else "return (mean over tasks, 95% CI)")
    ax.set_title(title or f"{result['agent']} on {result['env']}")
    ax.grid(alpha=0.3)
    ax.legend()
    if with_success:
        success_ax = axes[0][1]
        success_ax.set_ylim(-0.02, 1.02)
        success_ax.set_xlabel(xlabel)
        success_ax.set_ylabel(f"success rate (mean of {seeds} seeds, 95% CI over seeds)" if seeds
                              else "success rate (mean over tasks, 95% CI)")
        success_ax.set_title("success (reached at any step of the episode)")
        success_ax.grid(alpha=0.3)
        success_ax.legend()
    return save_figure(fig, path)
