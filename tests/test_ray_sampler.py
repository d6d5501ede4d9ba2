"""The Ray sampler (issue 19): rollout workers as Ray actors behind the vector-env interface.

Same seed, same numbers as the local sampler (the vector env step by step; MAML-TRPO, RL², PEARL and VariBAD
iterations and meta-tests); a worker killed mid-iteration is replaced and the run's numbers equal an undisturbed
run's; bad input (Ray missing, num_workers <= 0, more workers than sub-envs, an unreachable RAY_ADDRESS) is one line
before any work; the local sampler never imports Ray. One local Ray instance (2 CPUs) for the module.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig  # noqa: E402
from metarl.agents.pearl import PEARL, PEARLConfig  # noqa: E402
from metarl.agents.rl2 import RL2, RL2Config  # noqa: E402
from metarl.agents.varibad import VariBAD, VariBADConfig  # noqa: E402
from metarl.core import distributed  # noqa: E402
from metarl.core.config import ConfigError  # noqa: E402
from metarl.envs.base import TaskError  # noqa: E402
from metarl.envs.vector import TaskVectorEnv  # noqa: E402

NAV = "metarl/Navigation2D-v0"
MAML_SMALL = dict(meta_batch_size=3, episodes_per_task=2, max_episode_steps=6, hidden_sizes=[8])
RL2_SMALL = dict(meta_batch_size=4, episodes_per_trial=3, hidden_size=16, num_minibatches=2, update_epochs=2)
PEARL_TINY = dict(num_train_tasks=6, hidden_sizes=[16], encoder_hidden_sizes=[16], meta_batch_size=4, batch_size=8,
                  embedding_batch_size=5, num_initial_steps=20, num_tasks_sample=2, num_steps_prior=10,
                  num_extra_rl_steps_posterior=10, gradient_steps=3, max_episode_steps=10, replay_capacity=100)

VARIBAD_SMALL = dict(meta_batch_size=4, episodes_per_trial=2, max_episode_steps=5, num_minibatches=2,
                     encoder_hidden_size=8, decoder_hidden_sizes=[8], policy_hidden_sizes=[8], latent_dim=3,
                     vae_updates=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def numbers(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that must not depend on the sampler (not the wall times)."""
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and "seconds" not in k and "SPS" not in k
            and not k.endswith("_per_s")}


def assert_infos_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_infos_equal(a[key], b[key])
        elif a[key].dtype == object:
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        else:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


# --- the vector env -----------------------------------------------------------------------------------------------
@pytest.fixture
def nav_workers(local_ray):
    """Two workers for the vector-env test (closed after it: the instance has 2 CPUs, one per worker)."""
    from metarl.core.ray_sampler import WorkerGroup

    group = WorkerGroup(NAV, 2, max_episode_steps=4)
    yield group
    group.close()


@pytest.mark.determinism
def test_vector_env_steps_exactly_as_the_local_one(nav_workers):
    for mode in ("NextStep", "SameStep"):
        check_against_local(nav_workers, mode)


def check_against_local(nav_workers, mode: str) -> None:
    n = 5
    local = TaskVectorEnv(NAV, n, max_episode_steps=4, autoreset_mode=mode)
    remote = nav_workers.vector_env(n, autoreset_mode=mode)
    try:
        assert remote.bounds == [(0, 2), (2, 5)] and remote.max_episode_steps == 4
        assert remote.single_observation_space == local.single_observation_space
        tasks = local.single_task_env.sample_tasks(n, seed=0)
        for envs in (local, remote):
            envs.set_tasks(tasks)
        assert remote.get_tasks() == local.get_tasks()
        (o1, i1), (o2, i2) = local.reset(seed=3), remote.reset(seed=3)
        np.testing.assert_array_equal(o1, o2)
        assert_infos_equal(i1, i2)
        rng = np.random.default_rng(0)
        for _ in range(11):  # past two time limits: autoreset in both modes
            actions = rng.uniform(-0.3, 0.3, size=(n, 2))
            a, b = local.step(actions), remote.step(actions)
            for x, y in zip(a[:4], b[:4]):
                assert x.dtype == y.dtype and np.array_equal(x, y)
            assert_infos_equal(a[4], b[4])
        mask = np.array([False, True, False, False, True])  # a partial reset touching both workers' slices
        (o1, i1), (o2, i2) = (envs.reset(seed=[7, 8, 9, 10, 11], options={"reset_mask": mask})
                              for envs in (local, remote))
        np.testing.assert_array_equal(o1, o2)
        assert_infos_equal(i1, i2)
        # workers killed: after a partial reset (the journal replays from the last whole reset), and before tasks are
        # set and every sub-env reset again; each is replaced and the numbers stay the local env's
        replaced = nav_workers.replacements
        kills = ((1, False), (0, True)) if mode == "NextStep" else ()
        for kill, before_reset in kills:
            ray.kill(nav_workers.workers[kill])
            if before_reset:
                new_tasks = local.single_task_env.sample_tasks(n, seed=1)
                for envs in (local, remote):
                    envs.set_tasks(new_tasks)
                np.testing.assert_array_equal(local.reset(seed=20)[0], remote.reset(seed=20)[0])
            for _ in range(3):
                actions = rng.uniform(-0.3, 0.3, size=(n, 2))
                a, b = local.step(actions), remote.step(actions)
                for x, y in zip(a[:4], b[:4]):
                    assert np.array_equal(x, y)
                assert_infos_equal(a[4], b[4])
        assert nav_workers.replacements == replaced + len(kills)
        assert remote.get_tasks() == local.get_tasks()
        # bad input: refused on the driver, before any worker is called
        with pytest.raises(ValueError, match="shape"):
            remote.step(np.zeros((n, 3)))
        with pytest.raises(ValueError, match="NaN"):
            remote.step(np.full((n, 2), np.nan))
        with pytest.raises(ValueError, match="expected 5 tasks"):
            remote.set_tasks(tasks[:2])
        bad = [*tasks[:3], "not a task", tasks[4]]  # task 3 (worker 1) is rejected: no task is set
        with pytest.raises(TaskError, match="^task 3: expected a"):
            remote.set_tasks(bad)
        assert remote.get_tasks() == local.get_tasks()
        # a meta-test env smaller than the group uses as many workers as it has sub-envs; a training env is refused
        single = nav_workers.vector_env(1, strict=False)
        assert single.bounds == [(0, 1)]
        alone = TaskVectorEnv(NAV, 1, max_episode_steps=4)
        for envs in (single, alone):
            envs.set_tasks(tasks[:1])
        np.testing.assert_array_equal(single.reset(seed=3)[0], alone.reset(seed=3)[0])
        actions = np.full((1, 2), 0.1)
        np.testing.assert_array_equal(single.step(actions)[0], alone.step(actions)[0])
        single.close()
        alone.close()
        with pytest.raises(ConfigError, match="num_workers=2 is more than the 1 sub-environments"):
            nav_workers.vector_env(1)
    finally:
        local.close()
        remote.close()


# --- agents: the same numbers with either sampler -------------------------------------------------------------------
@pytest.mark.determinism
@pytest.mark.parametrize("agent_type, env_id, config", [
    (MAMLTRPO, NAV, lambda **kw: MAMLTRPOConfig(**MAML_SMALL, **kw)),
    (RL2, "metarl/BernoulliBandit-v0", lambda **kw: RL2Config(**RL2_SMALL, **kw)),
    (PEARL, NAV, lambda **kw: PEARLConfig(**PEARL_TINY, **kw)),
    pytest.param(VariBAD, NAV, lambda **kw: VariBADConfig(**VARIBAD_SMALL, **kw), marks=pytest.mark.slow,
                 id="varibad"),  # RL²'s trial path with final_obs: slow only because Ray starts 2 more actors
], ids=["maml-trpo", "rl2", "pearl", None])
def test_agent_gives_the_local_samplers_numbers(local_ray, agent_type, env_id, config):
    results = []
    for sampler in ("local", "ray"):
        agent = agent_type(env_id, config(sampler=sampler, num_workers=2))
        try:
            if sampler == "ray":
                assert type(agent.envs).__name__ == "RayVectorEnv" and len(agent.envs.bounds) == 2
            metrics = [numbers(agent.train_iteration(i)) for i in range(2)]
            tasks = agent.envs.single_task_env.sample_tasks(3, split="test", seed=5)
            returns = agent.meta_test(tasks, 2, seed=1)  # the meta-test envs: over the same workers
            results.append((metrics, returns))
        finally:
            agent.close()
    (m1, r1), (m2, r2) = results
    assert m1 == m2
    np.testing.assert_array_equal(r1, r2)


@pytest.mark.determinism
def test_a_worker_killed_mid_iteration_is_replaced_and_the_run_is_unchanged(local_ray, tmp_path, monkeypatch):
    """Kill worker 1 at the 30th vector step of the run (iteration 1): the run finishes, its metrics.csv and its
    evaluation equal the local sampler's."""
    from metarl.core.ray_sampler import RayVectorEnv, WorkerGroup
    from metarl.training import make_run_config, train

    steps, kills, replaced = [0], [], []
    original_step, original_replace = RayVectorEnv.step, WorkerGroup.replace

    def step(self, actions):
        steps[0] += 1
        if steps[0] == 30:
            kills.append(self.group.placement[1][0])
            ray.kill(self.group.workers[1])
        return original_step(self, actions)

    def replace(self, k):
        replaced.append(k)
        original_replace(self, k)

    monkeypatch.setattr(RayVectorEnv, "step", step)
    monkeypatch.setattr(WorkerGroup, "replace", replace)
    tables = {}
    for sampler in ("local", "ray"):
        run = make_run_config("maml-trpo", env=NAV, iterations=2, eval_tasks=2, eval_episodes=2, progress=False,
                              run_dir=str(tmp_path / sampler), sampler=sampler, num_workers=2, **MAML_SMALL)
        run_dir = train(run)
        with open(run_dir / "metrics.csv") as f:
            rows = [numbers({k: v for k, v in row.items() if k != "time"}) for row in csv.DictReader(f)]
        evaluation = (run_dir / "evaluation.json").read_text()
        tables[sampler] = rows, evaluation.split('"config"')[0]
    assert len(kills) == 1 and replaced == [1]
    assert tables["local"][0] == tables["ray"][0] and len(tables["ray"][0]) == 2
    assert tables["local"][1] == tables["ray"][1]


# --- whole episodes on the workers (sampler "ray-episodes") ---------------------------------------------------------
@pytest.mark.determinism
def test_episode_level_collection_gives_the_local_per_episode_numbers(local_ray, monkeypatch):
    """MAML-TRPO with sampler="ray-episodes" (3 tasks × 2 episodes over 2 workers: one episode of every task each)
    equals the local sampler with per-episode streams, and no vector step crosses to the workers while it trains;
    worker 0, killed just before the third collection, is replaced and its block collected again, the numbers
    unchanged; the default shared streams give other numbers (so the comparison can fail)."""
    from metarl.core.ray_sampler import RayVectorEnv

    steps, collects = [0], [0]
    original_step, original_collect = RayVectorEnv.step, RayVectorEnv.collect_episodes

    def step(self, actions):
        steps[0] += 1
        return original_step(self, actions)

    def collect(self, *args, **kwargs):
        collects[0] += 1
        if collects[0] == 3:
            ray.kill(self.group.workers[0])
        return original_collect(self, *args, **kwargs)

    monkeypatch.setattr(RayVectorEnv, "step", step)
    monkeypatch.setattr(RayVectorEnv, "collect_episodes", collect)
    results = {}
    for name, kwargs in (("local", dict(rollout_streams="per-episode")), ("ray", dict(sampler="ray-episodes")),
                         ("shared", {})):
        agent = MAMLTRPO(NAV, MAMLTRPOConfig(**MAML_SMALL, num_workers=2, **kwargs))
        try:
            metrics = [numbers(agent.train_iteration(i)) for i in range(2)]
            tasks = agent.envs.single_task_env.sample_tasks(3, split="test", seed=5)
            results[name] = metrics, agent.meta_test(tasks, 2, seed=1)
            if name == "ray":
                assert agent.envs.group.replacements == 1
        finally:
            agent.close()
    assert steps[0] == 0 and collects[0] == 4 + 2  # 2 iterations × (support, query) + 2 meta-test stages
    assert results["local"][0] == results["ray"][0]
    np.testing.assert_array_equal(results["local"][1], results["ray"][1])
    assert results["shared"][0] != results["ray"][0]


@pytest.mark.api
def test_episode_blocks_cover_the_batch_once_with_the_smallest_largest_block():
    from metarl.core.ray_sampler import episode_blocks

    for tasks, episodes, workers in [(3, 2, 2), (40, 20, 32), (5, 1, 8), (1, 7, 3), (4, 4, 1), (7, 3, 5)]:
        blocks = episode_blocks(tasks, episodes, workers)
        assert 1 <= len(blocks) <= workers
        covered = np.zeros((tasks, episodes), dtype=int)
        for (a, b), (c, d) in blocks:
            covered[a:b, c:d] += 1
        assert np.all(covered == 1)
    largest = max((b - a) * (d - c) for (a, b), (c, d) in episode_blocks(40, 20, 32))
    assert largest == 25  # 8 task groups of 5 × 4 episode groups of 5
    assert episode_blocks(3, 2, 2) == [((0, 3), (0, 1)), ((0, 3), (1, 2))]


# --- bad input ----------------------------------------------------------------------------------------------------
def cli(argv: list[str], capsys) -> tuple[int, str]:
    from metarl.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.api
def test_bad_input_is_one_line_before_any_work(local_ray, tmp_path, capsys, monkeypatch):
    base = ["train", "maml-trpo", "--env", NAV, "--iterations", "1", "--no-progress", "--meta-batch-size", "2",
            "--episodes-per-task", "1", "--max-episode-steps", "3"]
    for workers in ("0", "-2"):
        code, err = cli([*base, "--run-dir", str(tmp_path / "a"), "--sampler", "ray", "--num-workers", workers], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("metarl: error: num_workers must be")
    code, err = cli([*base, "--run-dir", str(tmp_path / "b"), "--sampler", "rya"], capsys)
    assert code == 2 and "did you mean 'ray'" in err
    # more workers than the 2 sub-envs of a meta-batch of 2 (one episode per task): refused before any actor starts
    starts = []
    monkeypatch.setattr("metarl.core.ray_sampler.WorkerGroup.__init__", lambda *a, **k: starts.append(1))
    code, err = cli([*base, "--run-dir", str(tmp_path / "c"), "--sampler", "ray", "--num-workers", "3"], capsys)
    assert code == 2 and err.count("\n") == 1 and "num_workers=3 is more than the 2 sub-environments" in err
    assert not starts and not any(tmp_path.iterdir())
    code, err = cli([*base, "--run-dir", str(tmp_path / "d"), "--sampler", "ray-episodes", "--rollout-streams",
                     "shared"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs rollout_streams 'per-episode'" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.api
def test_ray_missing_is_refused_with_the_install_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    assert not distributed.ray_installed()
    with pytest.raises(ConfigError, match=r'pip install "metarl\[ray\]"'):
        distributed.import_ray()
    with pytest.raises(ConfigError, match="needs Ray, which is not installed"):
        MAMLTRPOConfig(sampler="ray")
    MAMLTRPOConfig(sampler="local", num_workers=4)  # the local sampler does not need Ray
    code, err = cli(["train", "rl2", "--env", "metarl/BernoulliBandit-v0", "--sampler", "ray", "--no-progress",
                     "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and "not installed" in err and not (tmp_path / "r").exists()


@pytest.mark.api
def test_an_unreachable_ray_address_fails_fast(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init must not be reached"))
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at RAY_ADDRESS='127.0.0.1:{port}'"):
        distributed.connect()
    asked = []

    def silent_head(address, timeout):  # a head that never answers: the connect times out
        asked.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent_head)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")
    with pytest.raises(ConfigError, match=r"within 5 s \(timed out\)"):
        distributed.connect()
    assert asked == [(("head.example", 10001), distributed.CONNECT_TIMEOUT)]
    monkeypatch.setenv("RAY_ADDRESS", "host:notaport")
    with pytest.raises(ConfigError, match="not a Ray address"):
        distributed.connect()


@pytest.mark.api
def test_the_local_sampler_never_imports_ray():
    code = ("import sys; from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig; "
            "a = MAMLTRPO('metarl/Navigation2D-v0', MAMLTRPOConfig(meta_batch_size=2, episodes_per_task=1, "
            "max_episode_steps=3, hidden_sizes=[4])); a.train_iteration(0); a.close(); "
            "import metarl.training, metarl.cli; assert 'ray' not in sys.modules, 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
