"""experiments/grid_references.py: a finished run is scored on exactly the test tasks its evaluation played, the
paired difference is the agent's trial return minus the reference's task by task, and bad runs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import metarl.evaluation
from experiments import grid_references
from metarl.cli import main as cli_main


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory):
    """A one-iteration RL² run on 3-pull, 2-arm bandits, its evaluation's tasks recorded."""
    played: list = []
    real = metarl.evaluation._meta_test
    metarl.evaluation._meta_test = lambda agent, tasks, *rest: played.extend(tasks) or real(agent, tasks, *rest)
    run_dir = tmp_path_factory.mktemp("grid") / "run"
    try:
        assert cli_main(["train", "rl2", "--env", "metarl/BernoulliBandit-v0", "--set", "env_kwargs.k=2",
                         "--set", "episodes_per_trial=3", "--set", "meta_batch_size=4", "--iterations", "1",
                         "--eval-tasks", "5", "--eval-splits", "test", "--eval-seed", "7", "--run-dir", str(run_dir),
                         "--no-progress", "--threads", "1"]) == 0
    finally:
        metarl.evaluation._meta_test = real
    return run_dir, played


def test_the_run_is_scored_on_the_tasks_its_evaluation_played(bandit_run):
    import gymnasium as gym

    run_dir, played = bandit_run
    env = gym.make("metarl/BernoulliBandit-v0", k=2)
    assert metarl.evaluation.generic_protocol_tasks(env, 5, "test", 7) == played
    row = grid_references.score_run(run_dir, runs=4)
    agent = np.asarray(json.loads((run_dir / "evaluation.json").read_text())["splits"]["test"]["per_task_returns"])
    assert row["n"] == 3 and row["tasks"] == 5 and row["agent"] == "rl2"
    assert row["agent_return"]["mean"] == pytest.approx(agent.sum(1).mean())
    assert row["agent_minus_gittins"]["mean"] == pytest.approx(agent.sum(1).mean() - row["gittins"]["mean"])
    assert row["oracle"]["mean"] >= row["random"]["mean"]
    assert "| 3 |" in grid_references.markdown([row])


def test_bad_runs_are_refused_with_one_line(bandit_run, tmp_path, capsys):
    run_dir, _ = bandit_run
    other = tmp_path / "tmaze"
    other.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["task"]["env"] = "metarl/PassiveTMaze-v0"
    (other / "config.json").write_text(json.dumps(config))
    (other / "evaluation.json").write_text((run_dir / "evaluation.json").read_text())
    for path, message in ((tmp_path / "missing", "not a finished run"), (other, "not on")):
        with pytest.raises(SystemExit) as exit_:
            grid_references.main([str(path)])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
