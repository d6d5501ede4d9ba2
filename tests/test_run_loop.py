"""The one run loop and the command line, for both domains: what a user can rely on when a run is killed, resumed
twice, extended, evaluated again, or given bad input; and that importing metarl changes nothing process-wide."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import metarl.agents as agents
from metarl.cli import main as cli_main
from metarl.runs import RunError, RunLock, load_checkpoint
from metarl.training import load_run, make_run_config, resume, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def dummy_registered(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, "dummy", agents.Entry("dummy", "tests.dummy_agent", "DummyAgent",
                                                               "DummyConfig", "meta-rl"))


def _fewshot(tmp_path: Path, name: str = "run", **overrides):
    options = dict(iterations=7, meta_batch_size=3, eval_tasks=4, eval_steps=(0, 1), log_every=3,
                   checkpoint_every=2, progress=False, run_dir=str(tmp_path / name))
    options.update(overrides)
    return make_run_config("maml", options)


@contextlib.contextmanager
def killed_at_outer_step(monkeypatch, n: int):
    """Within the block, the n-th outer step of any few-shot learner raises KeyboardInterrupt (a kill)."""
    from metarl.core.learner import FewShotLearner

    original, calls = FewShotLearner.outer_step, {"n": 0}

    def dying(self, batch, optimizer):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, batch, optimizer)

    monkeypatch.setattr(FewShotLearner, "outer_step", dying)
    try:
        yield
    finally:
        monkeypatch.setattr(FewShotLearner, "outer_step", original)


def _csv_without_timing(run_dir: Path) -> list[str]:
    """metrics.csv as text, the timing columns blanked (byte for byte otherwise)."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    timing = {i for i, c in enumerate(header) if c in ("time", "charts/iterations_per_s", "charts/env_steps_per_s")}
    return [",".join("" if i in timing else v for i, v in enumerate(line.split(","))) for line in lines]


@pytest.mark.api
def test_importing_metarl_changes_no_process_setting():
    # gymnasium itself sets PYGAME_HIDE_SUPPORT_PROMPT on import: imported first, it is not metarl's doing
    probe = ("import os, torch, gymnasium; torch.set_num_threads(1); before = dict(os.environ);"
             "import metarl, metarl.envs, metarl.agents, metarl.training, metarl.evaluation, metarl.cli;"
             "import metarl.core.host_memory as h; from metarl.agents import make_learner;"
             "from metarl.envs.fewshot import Sinusoid; make_learner('maml', Sinusoid());"
             "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items());"
             "assert torch.get_num_threads() == 1; assert not h._applied; print('unchanged')")
    environ = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "METARL_KEEP_FREED_MEMORY")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=environ)
    assert result.stdout.strip() == "unchanged", result.stderr[-2000:]


@pytest.mark.api
def test_the_command_turns_on_its_process_settings_with_opt_outs():
    from metarl.cli import configure_process

    environ: dict[str, str] = {}
    assert configure_process(environ)["huge_pages"] == "1" and environ["THP_MEM_ALLOC_ENABLE"] == "1"
    environ = {"THP_MEM_ALLOC_ENABLE": "0"}
    assert configure_process(environ)["huge_pages"] == "0"  # the user's opt-out stands


@pytest.mark.determinism
def test_resume_mid_window_writes_the_same_metrics_csv_byte_for_byte(tmp_path, monkeypatch):
    """Checkpoints every 2 iterations, rows every 3: the kill after iteration 4's checkpoint leaves a half-filled
    window (iteration 4 of rows 4..6), which the checkpoint carries, so the resumed row 6 averages the same three."""
    full = train(_fewshot(tmp_path, "full"))
    with pytest.raises(KeyboardInterrupt), killed_at_outer_step(monkeypatch, 6):
        train(_fewshot(tmp_path, "killed"))
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["iteration"] == 4
    resume(tmp_path / "killed")
    assert _csv_without_timing(full) == _csv_without_timing(tmp_path / "killed")
    assert [line.split(",")[0] for line in _csv_without_timing(full)] == ["step", "3", "6", "7"]
    for name in ("evaluation.json",):
        a, b = (json.loads((d / name).read_text()) for d in (full, tmp_path / "killed"))
        assert a["results"] == b["results"]


@pytest.mark.determinism
def test_extending_a_finished_run_equals_the_longer_run_row_for_row(tmp_path):
    """A 5-iteration run logs a final row at 5 (off the every-3 grid); extended to 9 it must not keep that row and
    must log row 6 over iterations 4..6, as a 9-iteration run does."""
    longer = train(_fewshot(tmp_path, "longer", iterations=9))
    short = train(_fewshot(tmp_path, "short", iterations=5))
    assert [line.split(",")[0] for line in _csv_without_timing(short)] == ["step", "3", "5"]
    assert cli_main(["resume", str(short), "--iterations", "9", "--no-progress"]) == 0
    assert _csv_without_timing(longer) == _csv_without_timing(short)


@pytest.mark.api
def test_one_writer_per_run_directory(tmp_path, capsys):
    run_dir = train(_fewshot(tmp_path, iterations=2))
    with RunLock(run_dir):
        with pytest.raises(RunError, match="in use by another metarl process"):
            RunLock(run_dir).__enter__()  # another holder of the lock (a second open file description)
        assert cli_main(["resume", str(run_dir), "--iterations", "4", "--no-progress"]) == 2
        assert "in use by another metarl process" in capsys.readouterr().err
        assert load_run(run_dir).iterations == 2  # the refused resume changed nothing
    # a lock dies with its process: a holder that was killed does not block the next writer
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from metarl.runs import RunLock;"
                               "lock = RunLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(60)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunError, match=f"pid {holder.pid}"):
        RunLock(run_dir).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(run_dir):
        pass


@pytest.mark.api
def test_two_resumes_at_once_give_one_run_and_a_clean_metrics_csv(tmp_path):
    run_dir = train(_fewshot(tmp_path, iterations=3))
    codes: list[int] = []

    def resume_once() -> None:
        try:
            resume(run_dir, iterations=12)
            codes.append(0)
        except RunError:
            codes.append(2)

    threads = [threading.Thread(target=resume_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) in ([0, 0], [0, 2])  # the second either waited its turn (then had nothing to do) or refused
    steps = [int(line.split(",")[0]) for line in _csv_without_timing(run_dir)[1:]]
    assert steps == sorted(set(steps)) == [3, 6, 9, 12]


@pytest.mark.api
def test_a_failed_resume_changes_nothing(tmp_path, capsys):
    run_dir = train(_fewshot(tmp_path, iterations=2))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    checkpoint = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    import torch

    torch.save({**state, "name": "reptile"}, checkpoint)  # a foreign checkpoint in this run's place
    assert cli_main(["resume", str(run_dir), "--iterations", "30", "--no-progress"]) == 2
    assert "not a maml run" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.api
def test_stale_temporaries_are_removed_and_a_run_killed_before_its_first_checkpoint_resumes(tmp_path, monkeypatch):
    # a run killed before its first checkpoint leaves nothing behind (train removes what it created) ...
    with pytest.raises(KeyboardInterrupt), killed_at_outer_step(monkeypatch, 2):
        train(_fewshot(tmp_path, "gone", checkpoint_every=5))
    assert not (tmp_path / "gone").exists()
    # ... and one whose process died hard before it (config.json, no checkpoint) resumes from iteration 0
    full = train(_fewshot(tmp_path, "full", iterations=4))
    hard = train(_fewshot(tmp_path, "hard", iterations=4))
    (hard / "checkpoints" / "last.pt").unlink()
    (hard / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (hard / ".evaluation.json.x.tmp").write_bytes(b"{")
    assert cli_main(["resume", str(hard), "--no-progress"]) == 0
    assert not list(hard.glob(".*.tmp")) and not list((hard / "checkpoints").glob(".*.tmp"))
    assert _csv_without_timing(full) == _csv_without_timing(hard)


@pytest.mark.api
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "maml", "--eval-split", "bogus"], "unknown split 'bogus'"),
        (["train", "maml", "--eval-tasks", "1000000000000"], "needs about"),
        (["train", "maml", "--meta-batch-size", "1000000000000"], "needs about"),
        (["train", "maml", "--threads", "-1"], "threads must be"),
        (["train", "maml", "--eval-tasks", "0"], "eval_tasks must be >= 1"),
        (["train", "dummy", "--eval-splits", "bogus"], "eval_splits of metarl/Navigation2D-v0 must be one of"),
        (["train", "maml-trpo", "--set", "env_kwargs={bogus: 1}"], "no keyword argument 'bogus'"),
        (["train", "maml-trpo", "--set", "env_kwargs.bogus=1"], "no keyword argument 'bogus'"),
        (["train", "dummy", "--stepsize", "1"], "did you mean --step-size"),
        (["train", "maml", "--set", "inner_lrr=0.1"], "did you mean 'inner_lr'"),
        (["train", "maml", "--within-alphabet", "0.5"], "applies to the omniglot source only"),
        (["trian", "maml"], "did you mean 'train'"),
        (["evaluate", "RUN", "--eval-split", "bogus"], "unknown split 'bogus'"),
        (["evaluate", "RUN", "--eval-tasks", "1000000000000"], "needs about"),
        (["evaluate", "RUN", "--threads", "0"], "threads must be"),
        (["evaluate", "RUN", "--bogus", "1"], "see `metarl evaluate RUN_DIR --help`"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    if argv[0] == "evaluate":
        run_dir = train(_fewshot(tmp_path, "done", iterations=1))
        evaluation = (run_dir / "evaluation.json").read_bytes()
        argv = [argv[0], str(run_dir), *argv[2:]]
    else:
        argv = [*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()
    if argv[0] == "evaluate":
        assert (run_dir / "evaluation.json").read_bytes() == evaluation


@pytest.mark.api
def test_evaluate_takes_the_evaluation_fields_and_threads(tmp_path, capsys):
    run_dir = train(_fewshot(tmp_path, iterations=1, threads=1))
    assert cli_main(["evaluate", str(run_dir), "--eval-tasks", "6", "--eval-steps", "0", "--threads", "1"]) == 0
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["num_tasks"] == 6 and {r["steps"] for r in result["results"]} == {0}
    assert load_run(run_dir).evaluation.eval_tasks == 4  # the run's config is not rewritten by an evaluation
    assert cli_main(["evaluate", str(run_dir), "--help"]) == 0
    assert "--eval-tasks" in capsys.readouterr().out


@pytest.mark.api
def test_every_field_of_every_learner_and_agent_is_in_its_help(capsys):
    import dataclasses

    for name in agents.names():
        if name == "dummy":
            continue
        assert cli_main(["train", name, "--help"]) == 0
        text = capsys.readouterr().out
        config_type = agents.entry(name).config_type
        for f in dataclasses.fields(config_type):
            if f.name in ("env_kwargs", "algorithm_kwargs", "policy_kwargs"):  # mappings: --set key.sub=value
                continue
            assert "--" + f.name.replace("_", "-") in text, (name, f.name)
        assert "(default: $METARL_DATA) (default: None)" not in text


@pytest.mark.api
def test_flags_presets_and_set_give_one_config(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("meta_batch_size: 7\ninner_lr: 0.5\nsource: sinusoid\n")
    run = make_run_config("maml", {"inner_lr": 0.25}, preset=preset)
    assert run.learner.meta_batch_size == 7 and run.learner.inner_lr == 0.25 and run.preset == str(preset)
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner_lrr: 0.5\n")
    with pytest.raises(ValueError, match="unknown maml config field 'inner_lrr' in preset .*did you mean 'inner_lr'"):
        make_run_config("maml", preset=bad)
    assert cli_main(["train", "maml", "--preset", str(preset), "--set", "inner_steps=2", "--inner-lr", "0.125",
                     "--iterations", "1", "--eval-tasks", "2", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    stored = load_run(tmp_path / "r")
    assert (stored.learner.meta_batch_size, stored.learner.inner_lr, stored.learner.inner_steps) == (7, 0.125, 2)


@pytest.mark.api
def test_meta_rl_evaluation_records_adaptation_data_and_a_random_policy_reference(tmp_path):
    import gymnasium as gym
    import numpy as np

    from metarl.evaluation import random_policy_returns

    run_dir = train(make_run_config("dummy", env="metarl/Navigation2D-v0", iterations=1, eval_tasks=3,
                                    eval_episodes=2, progress=False, run_dir=str(tmp_path / "r")))
    result = json.loads((run_dir / "evaluation.json").read_text())
    test = result["splits"]["test"]
    assert [e["adaptation_episodes"] for e in test["episodes"]] == [0, 1]
    assert test["episodes"][1]["max_adaptation_env_steps"] == gym.spec("metarl/Navigation2D-v0").max_episode_steps
    env = gym.make("metarl/Navigation2D-v0")
    tasks = env.unwrapped.sample_tasks(3, split="test", seed=1)
    a, b = random_policy_returns(env, tasks, seed=5), random_policy_returns(env, tasks, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, random_policy_returns(env, tasks, seed=6))
    assert np.isfinite(test["random_policy_return"]["return"])
    env.close()
