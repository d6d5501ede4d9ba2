"""`metarl sweep`: seeds × grid values as Ray tasks on a local Ray instance started here (num_cpus=2), each trial an
ordinary run directory; a trial whose worker is killed mid-run resumes from its checkpoint and ends equal to an
uninterrupted run; a re-run skips finished trials and resumes unfinished ones; bad input is one line, before Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metarl.agents as agents
from metarl.cli import main as cli_main
from metarl.runs import load_checkpoint
from metarl.sweep import parse_grid, split_values
from metarl.training import make_run_config, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def crashonce_registered(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, "crashonce", agents.Entry("crashonce", "tests.sweep_agent", "CrashOnceAgent",
                                                                   "CrashOnceConfig", "meta-rl"))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # workers import tests.sweep_agent
    yield ray
    ray.shutdown()


def _argv(out: Path, *extra: str) -> list[str]:
    return ["sweep", "crashonce", "--env", "metarl/Navigation2D-v0", "--out", str(out), "--iterations", "6",
            "--checkpoint-every", "2", "--eval-tasks", "4", "--eval-episodes", "3", *extra]


def _uninterrupted(trial_dir: Path, where: Path) -> Path:
    """The same run as ``trial_dir``'s (its config.json), trained here in one go without any crash."""
    record = json.loads((trial_dir / "config.json").read_text())
    values = {**record["learner"], **record["task"], **record["evaluation"],
              **{k: record[k] for k in ("iterations", "checkpoint_every", "log_every", "threads")},
              "progress": False, "run_dir": str(where / trial_dir.name)}
    return train(make_run_config(record["name"], values))


def _interrupted_run(run_dir: Path, seed: int, monkeypatch) -> None:
    """``run_dir``: a trial of ``_argv``'s sweep stopped at iteration 3 (its last checkpoint: iteration 2)."""
    from tests.sweep_agent import CrashOnceAgent

    original = CrashOnceAgent.train_iteration

    def interrupted(self, iteration):
        if iteration == 3:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(CrashOnceAgent, "train_iteration", interrupted)
    values = dict(env="metarl/Navigation2D-v0", iterations=6, checkpoint_every=2, eval_tasks=4, eval_episodes=3,
                  seed=seed, threads=1, progress=False, run_dir=str(run_dir))
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config("crashonce", values))
    monkeypatch.setattr(CrashOnceAgent, "train_iteration", original)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 2


def _same_state(x, y) -> bool:
    """Checkpoint contents equal: tensors exactly, containers element by element."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same_state(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_same_state(a, b) for a, b in zip(x, y))
    return x == y


def _assert_same_run(a: Path, b: Path) -> None:
    """The same checkpoint, metrics.csv (all but its timing columns) and held-out evaluation."""
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["iteration"] == cb["iteration"] and ca["env_steps"] == cb["env_steps"]
    assert _same_state(ca["state"], cb["state"])
    rows = [(d / "metrics.csv").read_text().splitlines() for d in (a, b)]
    header = rows[0][0].split(",")
    timing = [c for c in header if c in ("time", "charts/SPS") or c.startswith("time/") or c.endswith("_per_s")]
    keep = [i for i, c in enumerate(header) if c not in timing]
    assert len(rows[0]) > 1 and [[line.split(",")[i] for i in keep] for line in rows[0]] == \
        [[line.split(",")[i] for i in keep] for line in rows[1]]
    ea, eb = (json.loads((d / "evaluation.json").read_text()) for d in (a, b))
    assert ea["splits"] == eb["splits"]


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written, no Ray started


@pytest.mark.api
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "step_size"], "--grid expects KEY=V1,V2"),
        (["--grid", "step_size="], "--grid expects KEY=V1,V2"),
        (["--grid", "=1,2"], "--grid expects KEY=V1,V2"),
        (["--grid", "step_size=0.1,,0.2"], "has an empty value"),
        (["--grid", "step_size=0.1,1e-1"], "lists the value '0.1' twice (as '1e-1')"),
        (["--grid", "step_size=0.1", "--grid", "step_size=0.2"], "given twice"),
        (["--grid", "nonsense=1,2"], "unknown crashonce config field 'nonsense'"),
        (["--grid", "step_size=0.1,-1"], "grid point step_size=-1: step_size must be > 0"),
        (["--grid", "seed=1,2"], "give seeds with --seeds"),
        (["--grid", "run_dir=a,b"], "not a sweep axis"),
        (["--grid", "crash_marker=a/b,a_b"], "give the same run directory"),
        (["--seeds", "0", "0"], "lists a seed twice"),
        (["--seeds", "x"], "--seeds expects one or more integers"),
        (["--seed", "3"], "give seeds with --seeds"),
        (["--run-dir", "somewhere"], "give seeds with --seeds and the sweep's folder with --out"),
        (["--max-concurrent", "0"], "--max-concurrent must be an integer >= 1"),
        (["--retries", "-1"], "--retries must be an integer >= 0"),
        (["--step-size", "-1"], "step_size must be > 0"),
        (["--nonsense", "1"], "unrecognized option --nonsense"),
        (["--env", "NoSuchEnv-v0"], "cannot make environment"),
        (["--device", "cuda"], "device cuda needs --gpus-per-trial"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "sweep"
    code = cli_main(_argv(out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not out.exists()
    import ray

    assert not ray.is_initialized()


@pytest.mark.api
def test_unknown_agent_and_missing_out(tmp_path, capsys):
    assert cli_main(["sweep", "nosuchagent", "--out", str(tmp_path / "s")]) == 2
    assert "unknown learner or agent" in capsys.readouterr().err
    assert cli_main(["sweep", "crashonce", "--seeds", "0"]) == 2
    assert "sweep needs --out DIR" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.api
def test_an_existing_run_of_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    train(make_run_config("crashonce", dict(env="metarl/Navigation2D-v0", iterations=2, checkpoint_every=2,
                                            eval_tasks=4, eval_episodes=3, threads=1, progress=False,
                                            run_dir=str(out / "crashonce-seed0"))))
    assert cli_main(_argv(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run of another config (iterations: 2 there, 6 here)" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["crashonce-seed0"]


@pytest.mark.api
def test_ray_missing_and_an_unreachable_ray_address(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
        assert cli_main(_argv(out)) == 2
        assert capsys.readouterr().err.strip() == ('metarl: error: metarl sweep needs Ray, which is not installed: '
                                                  'install the extra: pip install "metarl[ray]" (or make install)')
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens on port 1: refused at once
    assert cli_main(_argv(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at RAY_ADDRESS='127.0.0.1:1'" in err[0], err
    monkeypatch.setenv("RAY_ADDRESS", "host:notaport")
    assert cli_main(_argv(out)) == 2
    assert "is not a Ray address" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.api
def test_ray_is_imported_by_the_sweep_command_only():
    code = ("import sys, metarl, metarl.cli, metarl.sweep, metarl.training\n"
            "from metarl.cli import main\n"
            "assert main(['list']) == 0\n"
            "assert main(['sweep', '--help']) == 0\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--grid KEY=V1,V2" in result.stdout


def test_trials_asking_for_more_than_the_cluster_has():
    from types import SimpleNamespace

    from metarl.core.config import ConfigError
    from metarl.sweep import SweepOptions, _check_resources

    fake_ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    trials = [SimpleNamespace(threads=1), SimpleNamespace(threads=3)]
    options = SweepOptions(name="maml", out=Path("x"), seeds=None, grid=[])
    with pytest.raises(ConfigError, match="a trial asks for 3 CPUs .* has 2: ask for less"):
        _check_resources(fake_ray, trials, options, started=True, log=print)
    warnings = []
    _check_resources(fake_ray, trials, options, started=False, log=warnings.append)  # a cluster may grow
    assert len(warnings) == 1 and "trials wait until the cluster has them" in warnings[0]
    options.gpus_per_trial = 0.5
    with pytest.raises(ConfigError, match="--gpus-per-trial 0.5 and the Ray cluster has 0 GPUs"):
        _check_resources(fake_ray, trials[:1], options, started=True, log=print)


def test_grid_values_split_at_top_level_commas():
    assert split_values("a,[1, 2],{x: 3, y: 4},'p,q'") == ["a", "[1, 2]", "{x: 3, y: 4}", "'p,q'"]
    grid = parse_grid(["hidden_sizes=[32, 32],[64]", "env_kwargs.goal-x=1,2", "inner-lr=0.1"])
    assert grid[0] == ("hidden_sizes", [("[32, 32]", {"hidden_sizes": [32, 32]}), ("[64]", {"hidden_sizes": [64]})])
    assert grid[1] == ("env_kwargs.goal-x", [("1", {"env_kwargs": {"goal-x": 1}}),
                                             ("2", {"env_kwargs": {"goal-x": 2}})])
    assert grid[2] == ("inner_lr", [("0.1", {"inner_lr": 0.1})])
    assert parse_grid(["lr=1e-3,2E+1"])[0][1] == [("1e-3", {"lr": 0.001}), ("2E+1", {"lr": 20.0})]  # not strings


# ----------------------------------------------------------------------------------------------------------------------
# On a local Ray instance (started by the fixture on first use, after the tests above)


@pytest.mark.determinism
def test_a_killed_trial_resumes_and_equals_an_uninterrupted_run(tmp_path, local_ray, capsys):
    marker = tmp_path / "crashed"
    out = tmp_path / "sweep"
    code = cli_main(_argv(out, "--seeds", "0", "1", "--crash-marker", str(marker), "--crash-at", "5"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert marker.is_file(), "no trial was killed"  # exactly one trial's worker killed itself at iteration 5
    assert int(marker.read_text()) != os.getpid()  # a Ray worker, not this process
    labels = ["crashonce-seed0", "crashonce-seed1"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("crashonce-")) == labels
    record = json.loads((out / "sweep.json").read_text())
    attempts = {label: t["attempts"] for label, t in record["trials"].items()}
    assert sorted(attempts.values()) == [1, 2], attempts
    assert all(t["state"] == "finished" for t in record["trials"].values())
    crashed = next(label for label, n in attempts.items() if n == 2)
    assert record["trials"][crashed]["how"] == "resumed" and "resuming from its last checkpoint" in printed
    for label in labels:  # both trials, the killed one included, equal an undisturbed run of their config
        _assert_same_run(out / label, _uninterrupted(out / label, tmp_path / "reference"))
    # the summary: the seeds combined as `metarl aggregate` does
    combined = json.loads((out / "aggregate" / "crashonce" / "evaluation_seeds.json").read_text())
    assert combined["num_seeds"] == 2 and set(combined["splits"]) == {"test", "ood"}
    assert (out / "aggregate" / "crashonce" / "adaptation_seeds.png").is_file()
    assert cli_main(["aggregate", *(str(out / label) for label in labels)]) == 0
    assert combined["splits"] == json.loads(json.dumps(_aggregate_splits(out, labels)))


def _aggregate_splits(out: Path, labels: list[str]) -> dict:
    from metarl.evaluation import combine_meta_rl_seeds

    return combine_meta_rl_seeds([json.loads((out / label / "evaluation.json").read_text())
                                  for label in labels])["splits"]


@pytest.mark.determinism
def test_a_rerun_skips_finished_trials_and_resumes_unfinished_ones(tmp_path, local_ray, capsys, monkeypatch):
    out = tmp_path / "sweep"
    argv = _argv(out, "--seeds", "0", "1", "--max-concurrent", "1")
    _interrupted_run(out / "crashonce-seed1", seed=1, monkeypatch=monkeypatch)  # by an earlier sweep
    assert cli_main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert record["trials"]["crashonce-seed0"]["how"] == "trained"
    assert record["trials"]["crashonce-seed1"]["how"] == "resumed"
    _assert_same_run(out / "crashonce-seed1", _uninterrupted(out / "crashonce-seed1", tmp_path / "reference"))
    capsys.readouterr()

    before = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/last.pt")}
    assert cli_main(argv) == 0  # everything finished: nothing runs again
    assert "finished already, skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/last.pt")} == before
    assert all(t["state"] == "finished" for t in json.loads((out / "sweep.json").read_text())["trials"].values())


@pytest.mark.determinism
def test_a_trial_that_raises_is_retried_from_its_checkpoint(tmp_path, local_ray, capsys):
    marker, out = tmp_path / "raised", tmp_path / "sweep"
    assert cli_main(_argv(out, "--seeds", "4", "--crash-marker", str(marker), "--crash-at", "3", "--crash-how",
                          "raise")) == 0
    assert marker.is_file() and "raised RuntimeError: a crash at iteration 3; resuming" in capsys.readouterr().out
    record = json.loads((out / "sweep.json").read_text())["trials"]["crashonce-seed4"]
    assert record["attempts"] == 2 and record["how"] == "resumed"
    _assert_same_run(out / "crashonce-seed4", _uninterrupted(out / "crashonce-seed4", tmp_path / "reference"))


@pytest.mark.api
def test_bad_input_inside_a_trial_is_not_retried(tmp_path, local_ray, capsys, monkeypatch):
    """A run directory locked by another process (here: this one) fails its trial at once, with one line."""
    from metarl.runs import RunLock

    out = tmp_path / "sweep"
    _interrupted_run(out / "crashonce-seed0", seed=0, monkeypatch=monkeypatch)
    with RunLock(out / "crashonce-seed0"):
        assert cli_main(_argv(out, "--retries", "3")) == 2
    captured = capsys.readouterr()
    assert "failed after 1 attempt(s): RunError:" in captured.out and "is in use by another metarl process" in \
        captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "1 of 1 trials failed (crashonce-seed0)" in err[0] and "run the same command again" \
        in err[0], err
    assert json.loads((out / "sweep.json").read_text())["trials"]["crashonce-seed0"]["state"] == "failed"


@pytest.mark.smoke
def test_a_few_shot_sweep_of_maml(tmp_path, local_ray, capsys):
    out = tmp_path / "sweep"
    assert cli_main(["sweep", "maml", "--out", str(out), "--seeds", "0", "1", "--grid", "inner_lr=0.01,1e-1",
                     "--iterations", "2", "--checkpoint-every", "2", "--meta-batch-size", "2", "--eval-tasks", "4",
                     "--eval-steps", "0", "1"]) == 0
    printed = capsys.readouterr().out
    for value in ("0.01", "1e-1"):
        runs = [out / f"maml-inner_lr={value}-seed{seed}" for seed in (0, 1)]
        assert all((run / "evaluation.json").is_file() for run in runs)
        assert json.loads((runs[0] / "config.json").read_text())["learner"]["inner_lr"] == float(value)
        combined = json.loads((out / "aggregate" / f"maml-inner_lr={value}" / "evaluation_seeds.json").read_text())
        assert combined["metric"] == "mse" and [len(r["per_seed"]) for r in combined["results"]] == [2, 2]
        assert f"maml-inner_lr={value} (2 seeds): shots=" in printed


@pytest.mark.slow
@pytest.mark.determinism
def test_maml_trpo_trial_whose_ray_worker_is_killed_from_outside_equals_an_uninterrupted_run(tmp_path, local_ray):
    """SIGKILL from another thread to the Ray worker holding the run's lock once its first checkpoint exists."""
    import signal
    import threading

    out = tmp_path / "sweep"
    trial = out / "maml-trpo-seed3"
    killed: dict[str, int] = {}

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 300
        while not (trial / "checkpoints" / "last.pt").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        killed["pid"] = int((trial / ".lock").read_text().split()[0])
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    options = ["--env", "metarl/Navigation2D-v0", "--iterations", "8", "--checkpoint-every", "2",
               "--meta-batch-size", "4", "--eval-tasks", "3", "--max-episode-steps", "20"]
    assert cli_main(["sweep", "maml-trpo", "--out", str(out), "--seeds", "3", *options]) == 0
    killer.join(timeout=5)
    assert killed and killed["pid"] != os.getpid()
    record = json.loads((out / "sweep.json").read_text())["trials"]["maml-trpo-seed3"]
    assert record["attempts"] == 2 and record["how"] == "resumed"
    assert cli_main(["train", "maml-trpo", "--seed", "3", "--threads", "1", "--run-dir", str(tmp_path / "reference"),
                     "--no-progress", *options]) == 0
    _assert_same_run(trial, tmp_path / "reference")
