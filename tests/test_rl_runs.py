"""The meta-RL run loop and CLI, driven by a dummy agent: run directories, resume, evaluation, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import metarl.agents as agents
from metarl.cli import main as cli_main
from metarl.runs import load_checkpoint
from metarl.training import RunConfig, make_run_config, train
from tests.helpers import kill_and_resume


@pytest.fixture(autouse=True)
def dummy_registered(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, "dummy", agents.Entry("dummy", "tests.dummy_agent", "DummyAgent",
                                                               "DummyConfig", "meta-rl"))


def _run(tmp_path, name="run", **overrides) -> RunConfig:
    options = dict(env="metarl/Navigation2D-v0", iterations=5, checkpoint_every=2, eval_tasks=4,
                   eval_episodes=3, progress=False, run_dir=str(tmp_path / name))
    options.update(overrides)
    return make_run_config("dummy", options)


@pytest.mark.smoke
def test_run_directory_and_evaluation(tmp_path):
    run_dir = train(_run(tmp_path))
    for name in ("config.json", "metrics.csv", "evaluation.json", "adaptation.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert set(result["splits"]) == {"test", "ood"}  # Navigation2D offers ood
    test = result["splits"]["test"]
    assert len(test["episodes"]) == 3 and test["post_adaptation_return"] > test["pre_adaptation_return"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["learner"]["step_size"] == 0.1


@pytest.mark.determinism
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    from tests.dummy_agent import DummyAgent

    full = tmp_path / "full"
    kill_and_resume(monkeypatch, DummyAgent, lambda name: _run(tmp_path, name, iterations=6), kill_at=5,
                    checkpointed=4)
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert torch.equal(a["state"]["value"], b["state"]["value"])
    assert a["env_steps"] == b["env_steps"] == 60
    rows = [(tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("full", "killed")]
    strip = [[",".join(line.split(",")[i] for i in (0, 2)) for line in r] for r in rows]  # step, return
    assert strip[0] == strip[1]


@pytest.mark.api
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "dummy", "--env", "NoSuchEnv-v0"], "cannot make environment"),
        (["train", "dummy", "--env", "CartPole-v1"], "is not a task environment"),
        (["train", "dummy", "--set", "step_size=-1"], "step_size must be > 0"),
        (["train", "dummy", "--step-size", "-1"], "step_size must be > 0"),
        (["train", "dummy", "--set", "nonsense=3"], "unknown dummy config field"),
        (["train", "dummy", "--set", "novalue"], "key=value"),
        (["train", "dummy", "--preset", "/nonexistent.yaml"], "preset not found"),
        (["train", "dummy", "--eval-episodes", "0"], "eval_episodes must be an integer >= 1"),
        (["train", "dummy", "--env", "nosuchmodule:Thing-v0"], "cannot make environment"),
    ],
)
def test_bad_input_one_line_no_run_dir(tmp_path, capsys, argv, message):
    code = cli_main([*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.api
def test_unknown_agent_is_refused(tmp_path, capsys):
    assert cli_main(["train", "nosuchagent", "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown learner or agent" in capsys.readouterr().err


def test_held_out_tasks_come_from_the_agents_env_kwargs():
    """An agent trained on HalfCheetahVel's U[0, 0.5] law is meta-tested on tasks of that law, not the default."""
    from types import SimpleNamespace

    import numpy as np

    from metarl.evaluation import evaluate_meta_rl

    class Recorder:
        name = "recorder"
        config = SimpleNamespace(env_kwargs={"velocity_range": (0.0, 0.5)})

        def meta_test(self, tasks, num_episodes, seed):
            self.tasks = list(tasks)
            return np.zeros((len(tasks), num_episodes))

    agent = Recorder()
    evaluate_meta_rl(agent, "metarl/HalfCheetahVel-v0", splits=("test",), num_tasks=8, num_episodes=2)
    assert len(agent.tasks) == 8 and all(0.0 <= t.velocity <= 0.5 for t in agent.tasks)
    evaluate_meta_rl(agent, "metarl/HalfCheetahVel-v0", splits=("test",), num_tasks=8, num_episodes=2, env_kwargs={})
    assert any(t.velocity > 0.5 for t in agent.tasks)  # the default law, U[0, 3]


@pytest.mark.determinism
def test_resume_with_more_iterations_extends_a_finished_run(tmp_path):
    full = train(_run(tmp_path, "full", iterations=6))
    short = train(_run(tmp_path, "short", iterations=4))
    assert cli_main(["resume", str(short), "--iterations", "6", "--no-progress"]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(short / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6 and a["env_steps"] == b["env_steps"]
    assert json.loads((short / "evaluation.json").read_text())["splits"] == \
        json.loads((full / "evaluation.json").read_text())["splits"]


def _evaluation(returns, env="metarl/Navigation2D-v0", seed=12345, env_kwargs=None) -> dict:
    """An evaluation.json's content with these per-task returns ``[tasks, episodes]`` on the test split."""
    return {"protocol": "meta-rl", "agent": "maml-trpo", "env": env, "num_tasks": len(returns),
            "num_episodes": len(returns[0]), "seed": seed, "config": {"learner": {"env_kwargs": env_kwargs or {}}},
            "splits": {"test": {"per_task_returns": returns}}}


def test_seed_statistics_against_a_hand_computed_interval():
    """Mean of the seed means ± t(0.975, seeds − 1) s / √seeds; pooled over every (task, seed); one seed: tasks."""
    import numpy as np
    from scipy import stats

    from metarl.evaluation import seed_statistics

    rng = np.random.default_rng(0)
    runs = [rng.normal(size=(5, 3)) + s for s in range(3)]
    rows = seed_statistics(runs)
    for k, row in enumerate(rows):
        means = np.array([r[:, k].mean() for r in runs])
        assert row["return"] == pytest.approx(means.mean())
        assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3))
        pooled = np.concatenate([r[:, k] for r in runs])
        assert row["pooled_ci95"] == pytest.approx(stats.t.ppf(0.975, 14) * pooled.std(ddof=1) / np.sqrt(15))
        assert row["per_seed"] == pytest.approx(means.tolist())
    single = seed_statistics(runs[:1])[0]
    assert single["ci95"] == pytest.approx(stats.t.ppf(0.975, 4) * runs[0][:, 0].std(ddof=1) / np.sqrt(5))
    with pytest.raises(ValueError, match="shape"):
        seed_statistics([runs[0], runs[1][:4]])


def test_combine_meta_rl_seeds_refuses_evaluations_on_other_tasks():
    from metarl.evaluation import combine_meta_rl_seeds

    a, b = _evaluation([[0.0, 1.0], [2.0, 3.0]]), _evaluation([[1.0, 2.0], [3.0, 6.0]])
    combined = combine_meta_rl_seeds([a, b])
    assert combined["num_seeds"] == 2
    assert combined["splits"]["test"]["post_adaptation_return"] == pytest.approx(3.0)
    for other in (_evaluation([[0.0, 1.0], [2.0, 3.0]], env="metarl/HalfCheetahVel-v0"),
                  _evaluation([[0.0, 1.0], [2.0, 3.0]], seed=1),
                  _evaluation([[0.0, 1.0], [2.0, 3.0]], env_kwargs={"velocity_range": [0, 2]}),
                  _evaluation([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]])):
        with pytest.raises(ValueError, match="differ"):
            combine_meta_rl_seeds([a, other])
    with pytest.raises(ValueError, match="meta-RL"):
        combine_meta_rl_seeds([a, {"protocol": "few-shot"}])
    with pytest.raises(ValueError, match="per-task"):
        combine_meta_rl_seeds([a, {**b, "splits": {"test": {}}}])


def test_cli_aggregate_writes_the_combined_evaluation_and_plot(tmp_path, capsys):
    for seed, returns in enumerate([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 6.0]]]):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "evaluation.json").write_text(json.dumps(_evaluation(returns)))
    out = tmp_path / "combined"
    assert cli_main(["aggregate", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 seeds" in printed and "ep1: 3.00" in printed
    combined = json.loads((out / "evaluation_seeds.json").read_text())
    assert combined["splits"]["test"]["episodes"][1]["per_seed"] == [2.0, 4.0]
    assert (out / "adaptation_seeds.png").stat().st_size > 0
    assert cli_main(["aggregate", str(tmp_path / "seed0"), str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("metarl: error:") and error.count("\n") == 1
