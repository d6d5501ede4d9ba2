"""Few-shot learners end to end: smoke, determinism, resume, bad input through the CLI, learning with margins."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl.agents import LEARNERS, entry, make_learner
from metarl.cli import main as cli_main
from metarl.envs.fewshot import make_source
from metarl.evaluation import evaluate_fewshot, mean_confidence_interval
from metarl.runs import CHECKPOINT_FORMAT, RunError, load_checkpoint
from metarl.training import RunConfig, load_session, make_run_config, train

REGRESSION_LEARNERS = [name for name in LEARNERS if "regression" in entry(name).load()[0].task_kinds]
CLASSIFICATION_LEARNERS = [name for name in LEARNERS if "classification" in entry(name).load()[0].task_kinds]
CLASSIFICATION_ONLY = [name for name in CLASSIFICATION_LEARNERS if name not in REGRESSION_LEARNERS]
PROBABILISTIC = [name for name in REGRESSION_LEARNERS if entry(name).load()[0].probabilistic]


def _quick(tmp_path: Path, **overrides) -> RunConfig:
    options = dict(iterations=6, meta_batch_size=4, eval_tasks=8, eval_steps=(0, 1), log_every=2,
                   checkpoint_every=3, progress=False, run_dir=str(tmp_path / "run"))
    options.update(overrides)
    return make_run_config(options.pop("learner", "maml"), options)


@pytest.mark.smoke
@pytest.mark.parametrize("learner", REGRESSION_LEARNERS)
def test_every_learner_trains_and_evaluates_on_sinusoid(tmp_path, learner):
    run_dir = train(_quick(tmp_path, learner=learner))
    for name in ("config.json", "metrics.csv", "evaluation.json", "adaptation.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["metric"] == "mse" and result["results"]
    assert any(p.name.startswith("events") for p in (run_dir / "tb").iterdir())


@pytest.mark.smoke
@pytest.mark.parametrize("learner", CLASSIFICATION_LEARNERS)
def test_classification_learners_run_on_omniglot(tmp_path, omniglot_dir, learner):
    config = _quick(tmp_path, learner=learner, source="omniglot", data_root=str(omniglot_dir), ways=3, shots=1,
                    query_shots=2, iterations=2, meta_batch_size=2, eval_tasks=4)
    run_dir = train(config)
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["metric"] == "accuracy"
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in result["results"])
    # every classifier is scored as a predictive distribution too: NLL, 15-bin ECE, a reliability diagram
    for row in result["results"]:
        assert row["nll"] > 0 and 0.0 <= row["ece"] <= 1.0, row
        assert len(row["reliability"]["count"]) == 15 and sum(row["reliability"]["count"]) == 4 * 3 * 2
    assert (run_dir / "reliability.png").stat().st_size > 0


@pytest.mark.smoke
def test_within_alphabet_and_image_size_reach_the_source_model_and_one_shot_runs(tmp_path, omniglot_dir):
    runs = omniglot_dir / "one_shot_runs_01-05.zip"
    scoring = dict(eval_tasks=0, one_shot_runs=str(runs)) if runs.exists() else dict(eval_tasks=2, eval_split="train")
    config = _quick(tmp_path, learner="protonet", source="omniglot", data_root=str(omniglot_dir), ways=20, shots=1,
                    query_shots=1, iterations=2, meta_batch_size=1, within_alphabet=1.0, image_size=32,
                    split_fractions=(1.0, 0.0, 0.0), **scoring)
    source = config.task.build()
    assert source.within_alphabet == 1.0 and source.input_shape == (1, 32, 32)
    run_dir = train(config)
    learner = load_session(run_dir).learner  # the stored config rebuilds the same 32x32 model
    assert learner.embedding.embedding_dim == 64 * 2 * 2  # 28x28 inputs would give 64
    assert learner.embedding(torch.zeros(1, 1, 32, 32)).shape == (1, 256)
    if runs.exists():
        result = json.loads((run_dir / "one_shot_runs.json").read_text())
        assert result["queries"] == 100 and 0 <= result["errors"] <= 100


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # wall-clock columns differ between runs by nature
        row.pop("time")
        row.pop("charts/iterations_per_s")
    return rows


@pytest.mark.determinism
def test_same_seed_same_run_and_different_seed_differs(tmp_path):
    a = train(_quick(tmp_path / "a", seed=3))
    b = train(_quick(tmp_path / "b", seed=3))
    c = train(_quick(tmp_path / "c", seed=4))
    assert _rows(a) == _rows(b)
    assert _rows(a) != _rows(c)
    ea, eb = (json.loads((d / "evaluation.json").read_text())["results"] for d in (a, b))
    assert ea == eb


def _small_run(tmp_path: Path, learner: str, omniglot_dir: Path | None = None, **overrides) -> RunConfig:
    """A tiny run of ``learner``: sinusoid where it regresses, else 3-way 1-shot Omniglot."""
    if learner not in REGRESSION_LEARNERS:
        overrides = dict(source="omniglot", data_root=str(omniglot_dir), ways=3, shots=1, query_shots=2,
                         meta_batch_size=2, eval_tasks=4, **overrides)
    return _quick(tmp_path, learner=learner, **overrides)


@pytest.mark.determinism
@pytest.mark.parametrize("learner", ["maml", "protonet", "siamese"])
def test_the_dry_run_before_training_changes_no_weight_buffer_or_random_state(tmp_path, omniglot_dir, learner):
    """The session's check runs the training loss on one drawn task; the learner's weights and batch-norm buffers,
    and the torch random state, are those of a learner that was never run."""
    from metarl.training import FewShotSession

    config = _small_run(tmp_path, learner, omniglot_dir)
    fresh = make_learner(learner, config.task.build(), config.learner)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    session = FewShotSession(config)
    assert torch.equal(torch.random.get_rng_state(), before)
    state, expected = session.learner.state_dict(), fresh.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        assert torch.equal(state[key], expected[key]), key


@pytest.mark.determinism
@pytest.mark.parametrize("learner", ["maml", "reptile", "film", "cavia", *CLASSIFICATION_ONLY, *PROBABILISTIC])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, omniglot_dir, learner):
    """Every learner: a run killed after a checkpoint and resumed ends with the weights and metrics of an
    uninterrupted run with the same seed (so also: same seed, same result)."""
    from metarl.training import FewShotSession

    full = train(_small_run(tmp_path / "full", learner, omniglot_dir, iterations=8, checkpoint_every=3))
    # a run killed after its iteration-6 checkpoint (the 7th iteration raises)
    config = _small_run(tmp_path / "killed", learner, omniglot_dir, iterations=8, checkpoint_every=3)
    original = FewShotSession.train_iteration
    calls = {"n": 0}

    def dying_iteration(self, iteration):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(FewShotSession, "train_iteration", dying_iteration)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    killed_dir = Path(config.run_dir)
    assert load_checkpoint(killed_dir / "checkpoints" / "last.pt")["iteration"] == 6
    monkeypatch.setattr(FewShotSession, "train_iteration", original)
    assert cli_main(["resume", str(killed_dir), "--no-progress"]) == 0
    final_a = load_checkpoint(full / "checkpoints" / "last.pt")["state"]["model"]
    final_b = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["state"]["model"]
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key
    assert _rows(full) == _rows(killed_dir)


@pytest.mark.smoke
def test_resume_with_more_iterations_equals_a_longer_run(tmp_path, capsys):
    longer = train(_quick(tmp_path / "longer", iterations=8, checkpoint_every=4))
    short = train(_quick(tmp_path / "short", iterations=4, checkpoint_every=4))
    assert cli_main(["resume", str(short), "--iterations", "2", "--no-progress"]) == 2  # below what is done
    assert "below the 4 iterations" in capsys.readouterr().err
    assert cli_main(["resume", str(short), "--iterations", "8", "--no-progress"]) == 0
    assert json.loads((short / "config.json").read_text())["iterations"] == 8
    final_a = load_checkpoint(longer / "checkpoints" / "last.pt")
    final_b = load_checkpoint(short / "checkpoints" / "last.pt")
    assert final_b["iteration"] == 8
    for key in final_a["state"]["model"]:
        assert torch.equal(final_a["state"]["model"][key], final_b["state"]["model"][key]), key
    assert _rows(longer) == _rows(short)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarl.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.api
@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nosuchlearner"], "unknown learner"),
        (["train", "maml", "--source", "nosuchsource"], "unknown task source"),
        (["train", "maml", "--shots", "0"], "shots must be an integer >= 1"),
        (["train", "maml", "--outer-lr", "-1"], "outer_lr must be"),
        (["train", "maml", "--iterations", "abc"], "Error parsing --iterations"),
        (["train", "protonet"], "needs a classification task source"),
        (["train", "protonet", "--source", "omniglot", "--data-root", "/nonexistent"], "expected"),
        (["train", "maml", "--device", "tpu"], "device must be"),
        (["train", "maml", "--within-alphabet", "0.5"], "applies to the omniglot source only"),
        (["train", "protonet", "--source", "omniglot", "--within-alphabet", "2"], "within_alphabet must be"),
        (["train", "protonet", "--source", "omniglot", "--image-size", "8"], "image_size must be an integer in"),
        (["evaluate", "/nonexistent/run"], "not a metarl run directory"),
        (["resume", "/nonexistent/run"], "not a metarl run directory"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit_and_no_run_dir(tmp_path, args, message):
    result = _cli([*args, "--run-dir", str(tmp_path / "run")] if args[0] == "train" else args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.api
def test_impossible_episode_shapes_on_omniglot(tmp_path, omniglot_dir):
    for args, message in [(["--ways", "5000"], "exceeds"), (["--shots", "19", "--query-shots", "5"], "20")]:
        result = _cli(["train", "protonet", "--source", "omniglot", "--data-root", str(omniglot_dir), *args,
                       "--run-dir", str(tmp_path / "run")], tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


@pytest.mark.api
def test_corrupt_missing_and_foreign_checkpoints_are_refused(tmp_path):
    run_dir = train(_quick(tmp_path))
    checkpoint = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    assert state["format"] == CHECKPOINT_FORMAT
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RunError, match="cannot read checkpoint"):
        load_checkpoint(checkpoint)
    result = _cli(["resume", str(run_dir)], tmp_path)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr
    torch.save({"weights": torch.zeros(2)}, checkpoint)  # a foreign torch file
    result = _cli(["evaluate", str(run_dir)], tmp_path)
    assert result.returncode == 2 and "not a metarl checkpoint" in result.stderr

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": CHECKPOINT_FORMAT, "x": Evil()}, checkpoint)  # arbitrary code: weights_only refuses
    with pytest.raises(RunError, match="cannot read checkpoint"):
        load_checkpoint(checkpoint)
    (run_dir / "config.json").write_text('{"learner": "maml", "shots": -3}')
    result = _cli(["evaluate", str(run_dir)], tmp_path)
    assert result.returncode == 2 and "invalid" in result.stderr


@pytest.mark.api
def test_run_directory_is_not_overwritten(tmp_path):
    train(_quick(tmp_path))
    result = _cli(["train", "maml", "--run-dir", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr


@pytest.mark.math
def test_confidence_interval_matches_the_t_formula():
    summary = mean_confidence_interval([1.0, 2.0, 3.0, 4.0])
    assert summary["mean"] == pytest.approx(2.5)
    assert summary["ci95"] == pytest.approx(3.182446 * 1.2909944 / 2, rel=1e-5)


@pytest.mark.learning
def test_maml_on_sinusoid_adapts_well_below_the_unadapted_error(tmp_path):
    """After 1,500 meta-iterations, one step on 10 shots must cut held-out MSE to below 40% of the unadapted MSE."""
    config = make_run_config("maml", iterations=1500, progress=False, run_dir=str(tmp_path / "maml"),
                             eval_steps=(0, 1, 10), eval_tasks=200, threads=1)
    result = json.loads((train(config) / "evaluation.json").read_text())
    mse = {row["steps"]: row["mse"] for row in result["results"]}
    assert mse[1] < 0.4 * mse[0], mse
    assert mse[10] < 0.25 * mse[0], mse


@pytest.mark.learning
def test_prototypical_networks_on_held_out_omniglot_classes_far_above_chance(omniglot_dir):
    source = make_source("omniglot", root=str(omniglot_dir), ways=5, shots=1, query_shots=5)
    learner = make_learner("protonet", source, seed=0)
    optimizer = learner.configure_optimizer(1e-3)
    learner.train()
    for iteration in range(60):
        batch = source.sample(2, split="train", seed=iteration, ways=20, shots=1, query_shots=5)
        learner.outer_step(batch, optimizer)
    result = evaluate_fewshot(learner, source, shots=[1], num_tasks=200, split="test", seed=7)
    accuracy = result["results"][0]["accuracy"]
    assert accuracy > 0.80, f"5-way 1-shot held-out accuracy {accuracy:.3f} (chance 0.20)"


@pytest.mark.api
def test_a_plain_non_editable_install_imports_both_namespaces(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(repo)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    # -S: no site module, so the editable install's .pth finder is not loaded; dependencies come from site-packages
    import sysconfig

    probe = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]];"
             "import metarl.envs, metarl.agents, metarl.envs.fewshot;"
             "assert metarl.envs.__file__.startswith(sys.argv[1]), metarl.envs.__file__;"
             "import importlib.util as u; assert u.find_spec('envs') is None and u.find_spec('agents') is None;"
             "print('ok')")
    result = subprocess.run([sys.executable, "-S", "-c", probe, str(target), sysconfig.get_paths()["purelib"]],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.smoke
def test_evaluate_on_the_original_one_shot_runs(tmp_path, omniglot_dir, capsys):
    runs = omniglot_dir / "one_shot_runs_01-05.zip"
    if not runs.is_file():
        pytest.skip("one_shot_runs_01-05.zip not in the data folder")
    config = _quick(tmp_path, learner="protonet", source="omniglot", data_root=str(omniglot_dir), ways=3, shots=1,
                    query_shots=2, iterations=2, meta_batch_size=2, eval_tasks=4)
    run_dir = train(config)
    assert cli_main(["evaluate", str(run_dir), "--one-shot-runs", str(runs)]) == 0
    result = json.loads((run_dir / "one_shot_runs.json").read_text())
    assert result["queries"] == 100 and result["runs"] == 5 and 0 <= result["errors"] <= 100
    assert "Omniglot one-shot runs" in capsys.readouterr().out
    # test-time augmentation: its own result file, the plain one kept
    assert cli_main(["evaluate", str(run_dir), "--one-shot-runs", str(runs), "--one-shot-augment", "2"]) == 0
    augmented = json.loads((run_dir / "one_shot_runs_augment2.json").read_text())
    assert augmented["augment_copies"] == 2 and augmented["queries"] == 100
    assert json.loads((run_dir / "one_shot_runs.json").read_text()) == result
    assert "test-time augmentation x2" in capsys.readouterr().out
    assert cli_main(["evaluate", str(run_dir), "--one-shot-augment", "2"]) == 2
    assert "--one-shot-runs" in capsys.readouterr().err
    maml = train(_quick(tmp_path / "maml", learner="maml", source="omniglot", data_root=str(omniglot_dir),
                                ways=3, shots=1, query_shots=2, iterations=1, meta_batch_size=1, eval_tasks=2))
    assert cli_main(["evaluate", str(maml), "--one-shot-runs", str(runs)]) == 2
    assert "20-way" in capsys.readouterr().err


@pytest.mark.learning
def test_reptile_leaves_out_tasks_whose_inner_sgd_diverged():
    """A task whose inner SGD blows up does not move the initialisation; with every task diverging there is no
    update at all (the 5-shot sinusoid run that diverged without this guard, RESULTS "Few-shot regression")."""
    from metarl.core.batch import EpisodeBatch

    source = make_source("sinusoid", shots=5)
    batch = source.sample(2, split="train", seed=0)

    def scaled(factor):  # the second task's targets scaled: its inner SGD at this step size explodes
        return EpisodeBatch(batch.support_x, batch.support_y * torch.tensor([1.0, factor]).view(2, 1, 1),
                            batch.query_x, batch.query_y * torch.tensor([1.0, factor]).view(2, 1, 1))

    def step(data):
        learner = make_learner("reptile", source, seed=0, inner_lr=0.05)
        optimizer = learner.configure_optimizer(1e-3)
        metrics = learner.outer_step(data, optimizer)
        return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}, metrics

    initial = make_learner("reptile", source, seed=0).model.state_dict()
    mixed, metrics = step(scaled(300.0))
    assert metrics["diverged_tasks"] == 1.0
    alone, _ = step(batch.task(slice(0, 1)))  # the healthy task by itself
    for key in mixed:
        assert torch.allclose(mixed[key], alone[key]), key
        assert not torch.equal(mixed[key], initial[key]), key
    both = EpisodeBatch(batch.support_x, batch.support_y * 300.0, batch.query_x, batch.query_y * 300.0)
    frozen, metrics = step(both)
    assert metrics["diverged_tasks"] == 2.0 and metrics["skipped_nonfinite"] == 1.0
    for key in frozen:
        assert torch.equal(frozen[key], initial[key]), key
