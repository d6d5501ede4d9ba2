"""experiments/velocity_tracking.py: per-episode mean speeds from collected trials (padding and episode ends), and
a replay of a finished AMAGO run that is the run's own evaluation (the same returns, episode by episode)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments import velocity_tracking
from metarl.training import make_run_config, train


def test_episode_speeds_average_each_episodes_velocity_entry_and_skip_the_padding():
    inputs = torch.zeros(2, 6, 12)
    inputs[0, :, 8] = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])  # episodes of 2, 2, 2 steps
    inputs[1, :, 8] = torch.tensor([2.0, 4.0, 6.0, 8.0, 100.0, 100.0])  # episodes of 1, 3, then 2 padded steps
    dones = torch.tensor([[0, 1, 0, 1, 0, 1], [1, 0, 0, 1, 0, 0]], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    speeds = velocity_tracking.episode_speeds({"inputs": inputs, "dones": dones, "mask": mask}, 3)
    np.testing.assert_allclose(speeds[0], [2.0, 6.0, 10.0])
    np.testing.assert_allclose(speeds[1, :2], [2.0, 6.0])
    assert np.isnan(speeds[1, 2])


def test_the_replay_of_a_finished_run_is_its_evaluation(tmp_path, capsys):
    values = dict(meta_batch_size=2, episodes_per_trial=2, max_episode_steps=5, transformer_layers=1,
                  transformer_heads=2, transformer_d_model=16, hidden_sizes=[16], batch_size=2, gradient_steps=2,
                  replay_capacity=4)
    run_dir = train(make_run_config("amago", values, env="metarl/HalfCheetahVel-v0", iterations=1, eval_tasks=4,
                                    eval_episodes=2, eval_splits=["test"], progress=False,
                                    run_dir=str(tmp_path / "run")))
    assert velocity_tracking.main([str(run_dir), "--out", str(tmp_path / "v.json")]) == 0
    result = json.loads((tmp_path / "v.json").read_text())[0]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())["splits"]["test"]
    returns = np.asarray(evaluation["per_task_returns"]).mean(axis=0)
    assert [e["mean_return"] for e in result["per_episode"]] == pytest.approx(returns, abs=0.01)
    assert np.asarray(result["speeds"]).shape == (4, 2) and len(result["target_velocity"]) == 4


def test_bad_runs_are_refused_in_one_line(tmp_path, capsys):
    assert velocity_tracking.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ")
