"""experiments/belief_probe.py: the posterior's statistics against a plain loop, agreement with ties, the ridge
probe's R² on known cases, and a run's evaluation trials played again exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import belief_probe
from metarl.cli import main as cli_main


def test_posterior_statistics_match_a_plain_loop():
    rng = np.random.default_rng(0)
    actions, rewards = rng.integers(0, 3, size=(4, 9)), rng.integers(0, 2, size=(4, 9)).astype(float)
    successes, failures = belief_probe.posterior_statistics(actions, rewards, 3)
    for i in range(4):
        s, f = np.zeros(3), np.zeros(3)
        for t in range(9):
            np.testing.assert_array_equal(successes[i, t], s)  # before the pull of step t
            np.testing.assert_array_equal(failures[i, t], f)
            s[actions[i, t]] += rewards[i, t]
            f[actions[i, t]] += 1 - rewards[i, t]


def test_agreement_counts_ties_and_only_the_best():
    scores = np.array([[[0.5, 0.5, 0.1], [0.2, 0.9, 0.3]]])
    np.testing.assert_array_equal(belief_probe.agreement(np.array([[1, 0]]), scores), [[1.0, 0.0]])


def test_ridge_probe_r2_is_one_for_a_linear_target_and_near_zero_for_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    assert belief_probe.ridge_r2(x, x @ rng.normal(size=(5, 2)) + 3.0, 1e-6) == pytest.approx(1.0, abs=1e-6)
    assert belief_probe.ridge_r2(x, rng.normal(size=(400, 2)), 1e-3) < 0.05


def test_the_probe_plays_the_runs_evaluation_trials_again(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli_main(["train", "amago", "--env", "metarl/BernoulliBandit-v0", "--set", "env_kwargs.k=3",
                     "--set", "episodes_per_trial=5", "--set", "meta_batch_size=4", "--set", "gradient_steps=2",
                     "--set", "transformer_d_model=16", "--set", "hidden_sizes=[16]", "--iterations", "1",
                     "--eval-tasks", "8", "--eval-splits", "test", "--run-dir", str(run_dir), "--no-progress",
                     "--threads", "1"]) == 0
    out = tmp_path / "probe.json"
    assert belief_probe.main([str(run_dir), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    played = np.asarray(evaluation["splits"]["test"]["per_task_returns"]).sum(1)
    np.testing.assert_allclose(result["per_task_returns"], played)
    assert result["tasks"] == 8 and result["arms"] == 3 and result["pulls"] == 5
    assert 0 <= result["agrees_with_gittins"] <= 1 and set(result["probe_r2"]) == {"trained", "untrained"}
    references = result["references"]
    assert references["greedy"]["agrees_with_greedy"] == 1.0 and references["gittins"]["agrees_with_gittins"] == 1.0
    # --deterministic: the actor's most probable arm at every pull, as meta-testing with deterministic_test
    assert belief_probe.main([str(run_dir), "--deterministic", "--json", str(out)]) == 0
    argmax = json.loads(out.read_text())
    from metarl.evaluation import generic_protocol_meta_test_seed, generic_protocol_tasks
    from metarl.training import load_session

    session = load_session(run_dir)
    agent = session.agent
    agent.config.deterministic_test = True
    tasks = generic_protocol_tasks(agent.task_env, 8, "test", int(evaluation["seed"]))
    returns = agent.meta_test(tasks, 5, generic_protocol_meta_test_seed(int(evaluation["seed"]), "test")).sum(1)
    session.close()
    assert argmax["deterministic"] and not result["deterministic"]
    np.testing.assert_allclose(argmax["per_task_returns"], returns)
    config = json.loads((run_dir / "config.json").read_text())
    config["task"]["env"] = "metarl/TabularMDP-v0"
    other = tmp_path / "mdp"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "evaluation.json").write_text((run_dir / "evaluation.json").read_text())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        belief_probe.main([str(other)])
    assert exit_.value.code == 2 and "is needed" in capsys.readouterr().err
