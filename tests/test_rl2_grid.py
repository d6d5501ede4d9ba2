"""experiments/rl2_grid.py: a cell trained in two sittings (stopped, then continued from its saved state) gives the
numbers of one uninterrupted run; the table pairs RL² with the references task by task; ``--set`` overrides reach the
agent and are kept with the cell; bad cells and overrides are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import rl2_grid


def _cell(root, iterations):
    return rl2_grid.run_cell("5x10", 0, iterations, 1, 4, 6, 2, str(root))


def test_a_cell_continued_from_its_saved_state_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    first = _cell(tmp_path / "split", 2)
    assert (tmp_path / "split" / "5x10-seed0" / "state.pt").is_file()
    trained, make_agent = [], rl2_grid.make_agent

    def recording(cell, seed, overrides=None):
        agent = make_agent(cell, seed, overrides)
        step = agent.train_iteration
        agent.train_iteration = lambda i: trained.append(i) or step(i)
        return agent

    monkeypatch.setattr(rl2_grid, "make_agent", recording)
    continued = _cell(tmp_path / "split", 4)
    assert trained == [2, 3]  # continued from the saved state, not retrained from the start
    monkeypatch.undo()
    whole = _cell(tmp_path / "whole", 4)
    assert [p["iteration"] for p in first["curve"]] == [1, 2]
    for key in ("curve", "rl2_per_episode", "references", "env_steps"):
        assert continued[key] == whole[key], key
    assert continued["curve"][:2] == first["curve"]
    # a finished cell is reused as written, not retrained
    assert _cell(tmp_path / "whole", 4) == json.loads((tmp_path / "whole" / "5x10-seed0" / "result.json").read_text())

    row = rl2_grid.summarise([whole])["5x10"]
    rl2 = np.asarray(whole["rl2_per_episode"]).sum(1)
    gittins = np.asarray(whole["references"]["gittins"])
    assert len(rl2) == len(gittins) == 6
    assert row["rl2"]["mean"] == pytest.approx(rl2.mean())
    assert row["rl2_minus_gittins"]["mean"] == pytest.approx((rl2 - gittins).mean())
    assert row["oracle"]["mean"] >= row["gittins"]["mean"] >= row["random"]["mean"]
    assert "| 5 | 10 |" in rl2_grid.markdown({"5x10": row})


@pytest.mark.parametrize("cell", ["7x10", "5x20", "mdp30", "mdp", "5x10x2"])
def test_unknown_cells_are_refused_before_any_training(cell, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        rl2_grid.main(["--cells", cell, "--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert "unknown cell" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_overrides_reach_the_agent_are_saved_and_a_cell_never_mixes_two_recipes(tmp_path):
    overrides = {"normalize_advantages": False, "running_advantage_scale": True, "learning_rate": 1e-3}
    config = rl2_grid.make_agent("5x10", 0, overrides).config
    assert (config.running_advantage_scale, config.normalize_advantages, config.learning_rate) == (True, False, 1e-3)
    assert config.hidden_size == rl2_grid.TEN_PULLS["hidden_size"]  # the cell's other settings stay
    result = rl2_grid.run_cell("5x10", 0, 1, 1, 4, 6, 2, str(tmp_path), overrides)
    assert result["config"] == {**rl2_grid.TEN_PULLS, **overrides}
    plain = rl2_grid.run_cell("5x10", 0, 1, 1, 4, 6, 2, str(tmp_path / "plain"))
    assert plain["rl2_per_episode"] != result["rl2_per_episode"]
    for other in (None, {**overrides, "learning_rate": 3e-3}):
        with pytest.raises(ValueError, match="use another --root"):
            rl2_grid.run_cell("5x10", 0, 2, 1, 4, 6, 2, str(tmp_path), other)  # finished cell, other recipe
    (tmp_path / "5x10-seed0" / "result.json").unlink()  # only the saved state left: resuming is refused too
    with pytest.raises(ValueError, match="use another --root"):
        rl2_grid.run_cell("5x10", 0, 2, 1, 4, 6, 2, str(tmp_path))


@pytest.mark.parametrize("pair, message", [("bogus=1", "unknown RL2Config field"),
                                           ("running_advantage_scale=true", "normalize_advantages"),
                                           ("learning_rate", "key=value")])
def test_bad_overrides_are_refused_before_any_training(pair, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        rl2_grid.main(["--cells", "5x10", "--root", str(tmp_path), "--set", pair])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
