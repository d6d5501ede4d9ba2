"""The meta-RL run loop and CLI, driven by a dummy agent: run directories, resume, evaluation, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import metarl.agents as agents
from metarl.cli import main as cli_main
from metarl.runs import load_checkpoint
from metarl.training_rl import RLRunConfig, train_meta_rl


@pytest.fixture(autouse=True)
def dummy_registered(monkeypatch):
    monkeypatch.setitem(agents.RL_AGENTS, "dummy", ("tests.dummy_agent", "DummyAgent", "DummyConfig"))


def _run(tmp_path, name="run", **overrides) -> RLRunConfig:
    options = dict(agent="dummy", env="metarl/Navigation2D-v0", iterations=5, checkpoint_every=2, eval_tasks=4,
                   eval_episodes=3, progress=False, run_dir=str(tmp_path / name))
    options.update(overrides)
    return RLRunConfig(**options)


@pytest.mark.smoke
def test_run_directory_and_evaluation(tmp_path):
    run_dir = train_meta_rl(_run(tmp_path))
    for name in ("config.json", "metrics.csv", "evaluation.json", "adaptation.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert set(result["splits"]) == {"test", "ood"}  # Navigation2D offers ood
    test = result["splits"]["test"]
    assert len(test["episodes"]) == 3 and test["post_adaptation_return"] > test["pre_adaptation_return"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["agent_config"]["step_size"] == 0.1


@pytest.mark.determinism
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    full = train_meta_rl(_run(tmp_path, "full", iterations=6))
    from tests.dummy_agent import DummyAgent

    original = DummyAgent.train_iteration

    def dying(self, iteration):
        if iteration == 5:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(DummyAgent, "train_iteration", dying)
    with pytest.raises(KeyboardInterrupt):
        train_meta_rl(_run(tmp_path, "killed", iterations=6))
    monkeypatch.setattr(DummyAgent, "train_iteration", original)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["iteration"] == 4
    assert cli_main(["resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert torch.equal(a["agent_state"]["value"], b["agent_state"]["value"])
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
        (["train", "dummy", "--set", "nonsense=3"], "unknown dummy config field"),
        (["train", "dummy", "--set", "novalue"], "key=value"),
        (["train", "dummy", "--preset", "/nonexistent.yaml"], "preset not found"),
        (["train", "dummy", "--eval-episodes", "0"], "eval_episodes must be >= 1"),
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
    assert "unknown learner" in capsys.readouterr().err


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
    full = train_meta_rl(_run(tmp_path, "full", iterations=6))
    short = train_meta_rl(_run(tmp_path, "short", iterations=4))
    assert cli_main(["resume", str(short), "--iterations", "6", "--no-progress"]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(short / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6 and a["env_steps"] == b["env_steps"]
    assert json.loads((short / "evaluation.json").read_text())["splits"] == \
        json.loads((full / "evaluation.json").read_text())["splits"]
