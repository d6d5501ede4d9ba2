"""What an in-context agent on Bernoulli bandits has learnt to track, and whose choices it makes (issue 18, item 2:
why the off-policy agent plays at the greedy policy's level, below Gittins).

    .venv/bin/python experiments/belief_probe.py runs/amago_grid/10x100-seed0 --json experiments/records/...json

For a finished ``metarl train`` run (``amago`` or ``rl2``) on ``metarl/BernoulliBandit-v0``: one meta-test trial on
each of ``--tasks`` test-split tasks (the generic protocol's draw, :func:`metarl.evaluation.generic_protocol_tasks`,
and its meta-test seed; with the run's evaluation task count, the default, these are again the very trials its
``evaluation.json`` scored), the sequence model's features h_t that the heads read at every
step, and the Bayesian posterior (uniform Beta(1, 1) priors) before each step's pull:

* **Choices.** How often the agent's pull is an arm the greedy policy would pull (highest posterior mean) and one the
  finite-horizon Gittins policy would pull (highest index with the steps left; :func:`envs.references.gittins_indices`),
  ties counted as agreement, by tenths of the trial.
* **Linear probes.** Ridge regression (features standardised, λ = ``--ridge`` × rows) from h_t to each arm's pull
  count n_i, its posterior mean (1 + s_i) / (2 + n_i) and its Gittins index, fitted on the first half of the tasks,
  R² on the second half (pooled over arms). The same probes on the features of a freshly initialised model of the
  same config (the run's seed) are the control: what is decodable without training.
* **Argmax acting** (``--deterministic``): the agent pulls its actor's most probable arm at every step, as the
  references do, instead of sampling (meta-test trials as with ``deterministic_test``; not evaluation.json's).
* **References on the same tasks**: one trial each of the Gittins, greedy and Thompson policies
  (:func:`metarl.envs.references.bandit_reference_trials`), their returns and agreements scored the same way (how
  often Gittins itself pulls the greedy arm).

Prints a JSON object (and writes it to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.core.seeding import derive_seed

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDIT = "metarl/BernoulliBandit-v0"
REFERENCES = ("gittins", "greedy", "thompson")


def posterior_statistics(actions: np.ndarray, rewards: np.ndarray, arms: int) -> tuple[np.ndarray, np.ndarray]:
    """``(successes, failures)`` ``[N, T, arms]`` before each step's pull, from the trials' ``[N, T]`` pulls and 0/1
    rewards."""
    pulls = np.eye(arms)[actions]  # [N, T, arms]
    won = pulls * rewards[..., None]
    before = lambda x: np.concatenate([np.zeros_like(x[:, :1]), np.cumsum(x, axis=1)[:, :-1]], axis=1)
    successes = before(won)
    return successes, before(pulls) - successes


def agreement(actions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[N, T]`` 1.0 where the pull is one of the arms of highest ``scores`` ``[N, T, arms]`` (ties agree)."""
    chosen = np.take_along_axis(scores, actions[..., None], axis=-1)[..., 0]
    return (chosen >= scores.max(-1) - 1e-12).astype(float)


def ridge_r2(features: np.ndarray, targets: np.ndarray, ridge: float) -> float:
    """R² on the second half of the rows of a ridge fit on the first half (rows in task order: halves = tasks)."""
    half = len(features) // 2
    mean, std = features[:half].mean(0), features[:half].std(0) + 1e-8
    x = np.concatenate([(features - mean) / std, np.ones((len(features), 1))], axis=1)
    a = x[:half].T @ x[:half] + ridge * half * np.eye(x.shape[1])
    weights = np.linalg.solve(a, x[:half].T @ targets[:half])
    residual = targets[half:] - x[half:] @ weights
    return float(1.0 - (residual ** 2).sum() / ((targets[half:] - targets[half:].mean(0)) ** 2).sum())


def choices(actions: np.ndarray, rewards: np.ndarray, arms: int, table: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Trial return and the pulls' agreement with the greedy and the Gittins policy (overall and by tenths of the
    trial) of trials ``[N, T]`` (``table``: :func:`metarl.envs.references.gittins_indices` of T pulls)."""
    pulls = actions.shape[1]
    successes, failures = posterior_statistics(actions, rewards, arms)
    means = (1.0 + successes) / (2.0 + successes + failures)
    index = np.stack([table[pulls - t][successes[:, t].astype(np.intp), failures[:, t].astype(np.intp)]
                      for t in range(pulls)], axis=1)
    blocks = min(10, pulls)
    by_block = lambda x: [float(b.mean()) for b in np.array_split(x, blocks, axis=1)]
    greedy, gittins = agreement(actions, means), agreement(actions, index)
    return {"trial_return": float(rewards.sum(1).mean()), "per_task_returns": rewards.sum(1).tolist(),
            "per_pull_return_by_block": by_block(rewards), "agrees_with_greedy": float(greedy.mean()),
            "agrees_with_gittins": float(gittins.mean()), "agrees_with_greedy_by_block": by_block(greedy),
            "agrees_with_gittins_by_block": by_block(gittins),
            "targets": {"pull_count": successes + failures, "posterior_mean": means, "gittins_index": index}}


def trial_features(agent: Any, inputs: torch.Tensor) -> np.ndarray:
    """The sequence model's features h_t at every step ``[N, T, F]`` (one uncached pass; AMAGO's ``input_shortcut``
    input beside them is left out: the probes ask what the memory holds)."""
    model = getattr(agent, "encoder", None) or agent.policy
    with torch.no_grad():
        return model(inputs)[3].numpy()


def probe(run_dir: str | Path, num_tasks: int | None, ridge: float, deterministic: bool = False) -> dict[str, Any]:
    from metarl.envs.references import bandit_reference_trials, gittins_indices
    from metarl.evaluation import generic_protocol_meta_test_seed, generic_protocol_tasks
    from metarl.training import build_session, load_run, load_session

    run = load_run(run_dir)
    if run.task.env != BANDIT or run.name not in ("amago", "rl2"):
        raise ValueError(f"{run_dir}: an amago or rl2 run on {BANDIT} is needed, this is {run.name} on {run.task.env}")
    evaluation = json.loads((Path(run_dir) / "evaluation.json").read_text())
    if "test" not in evaluation.get("splits", {}) or "benchmark_protocol" in evaluation:
        raise ValueError(f"{run_dir} has no generic-protocol test-split evaluation")
    num_tasks = num_tasks or len(evaluation["splits"]["test"]["per_task_returns"])
    session = load_session(run_dir)
    fresh = build_session(run)
    try:
        agent = session.agent
        agent.config.deterministic_test = deterministic or agent.config.deterministic_test
        arms, pulls = agent.inputs.action_size, int(run.learner.episodes_per_trial)
        seed = int(evaluation["seed"])
        tasks = generic_protocol_tasks(agent.task_env, num_tasks, "test", seed)
        batch = agent.meta_test_trials(agent.env_pool.test(num_tasks), tasks, pulls,
                                       generic_protocol_meta_test_seed(seed, "test"))
        inputs = batch["inputs"][:, :pulls]
        features = {"trained": trial_features(agent, inputs), "untrained": trial_features(fresh.agent, inputs)}
    finally:
        session.close()
        fresh.close()
    table = gittins_indices(pulls)
    agent_row = choices(batch["actions"][:, :pulls].numpy(), batch["rewards"][:, :pulls].numpy(), arms, table)
    targets = agent_row.pop("targets")
    probes = {name: {target: ridge_r2(feats.reshape(-1, feats.shape[-1]), values.reshape(-1, arms), ridge)
                     for target, values in targets.items()} for name, feats in features.items()}
    means = np.array([task.means for task in tasks])
    references = {}
    for name in REFERENCES:  # the same tasks, one trial each: how greedy Gittins is, how Gittins-like greedy is
        rng = np.random.default_rng(derive_seed(int(run.learner.seed), "belief-probe", name))
        row = choices(*bandit_reference_trials(name, means, pulls, rng), arms, table)
        references[name] = {k: v for k, v in row.items() if k not in ("targets", "per_task_returns")}
    return {"benchmark": "belief_probe", "run": str(run_dir), "agent": run.name, "arms": arms, "pulls": pulls,
            "tasks": num_tasks, "split": "test", "ridge": ridge,
            "deterministic": bool(agent.config.deterministic_test), **agent_row, "probe_r2": probes,
            "references": references}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished amago or rl2 run directory on metarl/BernoulliBandit-v0")
    parser.add_argument("--tasks", type=int, default=None,
                        help="held-out test-split tasks (one trial each); default: the run's evaluation's")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge strength per row of the probes")
    parser.add_argument("--deterministic", action="store_true",
                        help="the agent pulls its actor's most probable arm (deterministic_test) instead of sampling "
                             "(the trials then differ from evaluation.json's)")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if (args.tasks is not None and args.tasks < 4) or args.ridge < 0:
        parser.error("--tasks must be >= 4 and --ridge >= 0")
    import metarl.envs  # noqa: F401  (registers metarl/...)
    from metarl.training import RunError

    try:
        result = probe(args.run, args.tasks, args.ridge, args.deterministic)
    except (ValueError, RunError, FileNotFoundError) as err:
        parser.error(str(err))
    print(json.dumps(result, indent=2))
    if args.json:
        from metarl.runs import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
