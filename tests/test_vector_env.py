"""TaskVectorEnv (metarl.envs.vector): same results as stepping the envs one by one, tasks, autoreset, bad input.

The reference steps the same environments (each in a ``TimeLimit``) one by one through their own ``step``, with
Gymnasium's autoreset rules written out (:class:`OneByOne`), or is Gymnasium's ``SyncVectorEnv`` where every
sub-env's episodes end together. Equal outputs (observations, rewards, terminations, truncations and every info
entry, bit for bit) mean the fast paths change nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import shutil

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils import EzPickle
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import TimeLimit

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs import physics_worker
from metarl.envs import vector as vector_module
from metarl.envs.base import TaskError, check_task_fields, checkerboard_uniform
from metarl.envs.mujoco_base import MujocoTaskEnv, gymnasium_asset
from metarl.envs.registration import ENVIRONMENTS
from metarl.envs.vector import TaskVectorEnv, batch_infos


# --- a small MuJoCo task env of our own, so these tests do not hinge on the suite's envs --------------------------
@dataclasses.dataclass(frozen=True)
class SpeedTask:
    speed: float


class CheetahSpeedEnv(MujocoTaskEnv):
    """HalfCheetah asked to run at ``speed``; terminates once simulated time reaches ``terminate_at`` (if given)."""

    task_type = SpeedTask

    def __init__(self, terminate_at: float | None = None) -> None:
        super().__init__(mujoco.MjModel.from_xml_path(gymnasium_asset("half_cheetah.xml")), frame_skip=5)
        self.terminate_at = terminate_at
        self._init_task(SpeedTask(1.0))
        EzPickle.__init__(self, terminate_at)

    def _sample_task_list(self, n, split, rng):
        return [SpeedTask(float(v)) for v in checkerboard_uniform(rng, [0.0], [3.0], n, split)[:, 0]]

    def _validate_task(self, task):
        return check_task_fields(task, SpeedTask, {"speed": (0.0, 3.0)})

    def _get_obs(self):
        return np.concatenate([self.data.qpos[1:], self.data.qvel])

    def _reward(self, action, x_before):
        velocity = (self.data.qpos[0] - x_before[0]) / self.dt
        speed, ctrl = -abs(velocity - self._task.speed), -0.1 * float(action.dot(action))
        terminated = self.terminate_at is not None and self.data.time >= self.terminate_at - 1e-9
        return speed + ctrl, bool(terminated), {"reward_speed": speed, "reward_ctrl": ctrl, "x_velocity": velocity}


TERMINATE_AT = [0.6, None, 1.3, None]  # sub-env k: episodes end by termination (12 / 26 steps) or the time limit
TIME_LIMIT = 17


def cheetah_factories(n: int) -> list:
    """n factories; the k-th builds CheetahSpeedEnv(terminate_at=TERMINATE_AT[k % 4]) under a TimeLimit."""
    return [lambda k=k: TimeLimit(CheetahSpeedEnv(TERMINATE_AT[k % 4]), TIME_LIMIT) for k in range(n)]


def cycling_factory(n: int):
    """One factory that builds the same sequence of envs as ``cheetah_factories`` on successive calls."""
    counter = itertools.count()
    factories = cheetah_factories(n)
    return lambda: factories[next(counter) % n]()


class OneByOne:
    """The reference: envs stepped one by one, each through its own ``step``, autoreset as Gymnasium defines it."""

    def __init__(self, factories, autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP) -> None:
        self.envs = [factory() for factory in factories]
        self.mode = autoreset_mode
        self.done = [False] * len(self.envs)

    def reset(self, seed: int) -> tuple[list, list]:
        self.done = [False] * len(self.envs)
        out = [env.reset(seed=seed + i) for i, env in enumerate(self.envs)]
        return [o for o, _ in out], [info for _, info in out]

    def step(self, actions) -> list[tuple]:
        results = []
        for i, env in enumerate(self.envs):
            if self.mode == AutoresetMode.NEXT_STEP and self.done[i]:
                obs, info = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = env.step(actions[i])
                if self.mode == AutoresetMode.SAME_STEP and (terminated or truncated):
                    final = {"final_obs": obs, "final_info": info}
                    obs, info = env.reset()
                    info = {**final, **info}
            self.done[i] = terminated or truncated
            results.append((obs, reward, terminated, truncated, info))
        return results

    def set_tasks(self, tasks) -> None:
        for env, task in zip(self.envs, tasks):
            env.unwrapped.set_task(task)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def unbatch(infos: dict, i: int) -> dict:
    """Sub-env ``i``'s info dict out of Gymnasium's batched format."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") or not infos["_" + key][i]:
            continue
        out[key] = unbatch(value, i) if isinstance(value, dict) else value[i]
    return out


def assert_info_equal(got: dict, expected: dict, where: str) -> None:
    assert set(got) == set(expected), f"{where}: keys differ: {set(got) ^ set(expected)}"
    for key, value in expected.items():
        if isinstance(value, dict) and isinstance(got[key], dict):
            assert_info_equal(got[key], value, f"{where}[{key!r}]")
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=f"{where}[{key!r}]")
        else:
            assert got[key] == value, f"{where}[{key!r}]: {got[key]!r} != {value!r}"


def assert_infos_equal(a: dict, b: dict, where: str = "infos") -> None:
    assert set(a) == set(b), f"{where}: keys differ: {set(a) ^ set(b)}"
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert_infos_equal(x, y, f"{where}[{key!r}]")
            continue
        assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f"{where}[{key!r}]: {x} {y}"
        if x.dtype == object:
            for u, v in zip(x, y):
                assert (np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v), f"{where}[{key!r}]"
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{where}[{key!r}]")


def assert_same_step(a: tuple, b: tuple, where: str) -> None:
    """Two vector-env step results are identical, infos in Gymnasium's batched format included."""
    for name, x, y in zip(("obs", "rewards", "terminations", "truncations"), a[:4], b[:4]):
        np.testing.assert_array_equal(x, y, err_msg=f"{where}: {name}")
        assert x.dtype == y.dtype, f"{where}: {name} dtype"
    assert_infos_equal(a[4], b[4], f"{where}: infos")


def run_side_by_side(fast: TaskVectorEnv, reference: OneByOne, steps: int, seed: int, new_tasks_at: int) -> int:
    """Step both with the same seeded float32 actions (20% beyond the bounds); return the number of episode ends."""
    tasks = fast.single_task_env.sample_tasks(fast.num_envs, split="train", seed=seed)
    fast.set_tasks(tasks)
    reference.set_tasks(tasks)
    obs, infos = fast.reset(seed=seed)
    ref_obs, ref_infos = reference.reset(seed=seed)
    for i in range(fast.num_envs):
        np.testing.assert_array_equal(obs[i], ref_obs[i])
        assert_info_equal(unbatch(infos, i), ref_infos[i], f"reset, sub-env {i}")
    rng = np.random.default_rng(seed)
    low, high = fast.single_action_space.low, fast.single_action_space.high
    ends = 0
    for t in range(steps):
        if t == new_tasks_at:
            tasks = fast.single_task_env.sample_tasks(fast.num_envs, split="test", seed=seed + 1)
            fast.set_tasks(tasks)
            reference.set_tasks(tasks)
        actions = rng.uniform(1.2 * low, 1.2 * high, size=(fast.num_envs, *low.shape)).astype(np.float32)
        obs, rewards, terminations, truncations, infos = fast.step(actions.copy())
        for i, (ref_obs, reward, terminated, truncated, info) in enumerate(reference.step(actions.copy())):
            where = f"step {t}, sub-env {i}"
            np.testing.assert_array_equal(obs[i], ref_obs, err_msg=where)
            assert (rewards[i], terminations[i], truncations[i]) == (reward, terminated, truncated), where
            assert_info_equal(unbatch(infos, i), info, where)
        assert obs.dtype == fast.single_observation_space.dtype and rewards.dtype == np.float64
        ends += int(np.sum(terminations | truncations))
    return ends


# --- equality with stepping the envs one by one --------------------------------------------------------------
@pytest.mark.math
@pytest.mark.parametrize("autoreset_mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize(
    "physics_threads, native_worker",
    [(1, None), (2, None), (2, False), (3, None), (None, None)],
    ids=["loop", "threads", "python-threads", "two-workers", "auto"],
)
def test_matches_stepping_the_envs_one_by_one(autoreset_mode, physics_threads, native_worker) -> None:
    fast = TaskVectorEnv(cycling_factory(4), 4, physics_threads=physics_threads, autoreset_mode=autoreset_mode,
                         native_worker=native_worker)
    reference = OneByOne(cheetah_factories(4), autoreset_mode)
    assert fast.max_episode_steps == TIME_LIMIT and fast._fast.all()
    ends = run_side_by_side(fast, reference, steps=150, seed=3, new_tasks_at=70)
    assert ends >= 20, "the run must cross many terminations, truncations and autoresets"
    fast.close()
    reference.close()


def _mujoco_ids() -> list[str]:
    ids = []
    for env_id, entry_point, _, _ in ENVIRONMENTS:
        module, name = entry_point.split(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if issubclass(cls, MujocoTaskEnv):
            ids.append(env_id)
    return ids


@pytest.mark.math
@pytest.mark.parametrize("env_id", _mujoco_ids())
def test_registered_mujoco_envs_match_stepping_one_by_one(env_id: str) -> None:
    """Every MuJoCo env of the suite goes through the fast path and gives the same results as its own step."""
    fast = TaskVectorEnv(env_id, 2, physics_threads=2, max_episode_steps=12)
    reference = OneByOne([lambda: TimeLimit(gym.make(env_id).unwrapped, 12)] * 2)
    assert fast._fast.all(), f"{env_id} should take the fast MuJoCo path"
    run_side_by_side(fast, reference, steps=30, seed=0, new_tasks_at=15)
    fast.close()
    reference.close()


@pytest.mark.math
@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", "metarl/BernoulliBandit-v0"])
def test_other_envs_match_stepping_one_by_one(env_id: str) -> None:
    """Envs off the MuJoCo path (Box and Discrete actions) are stepped through their own step, time limit here."""
    fast = TaskVectorEnv(env_id, 3)
    reference = SyncVectorEnv([lambda: gym.make(env_id)] * 3)
    assert not fast._fast.any()
    tasks = fast.single_task_env.sample_tasks(3, seed=1)
    fast.set_tasks(tasks)
    for env, task in zip(reference.envs, tasks):
        env.unwrapped.set_task(task)
    (obs, infos), (ref_obs, ref_infos) = fast.reset(seed=5), reference.reset(seed=5)
    np.testing.assert_array_equal(obs, ref_obs)
    assert_infos_equal(infos, ref_infos, "reset infos")
    rng = np.random.default_rng(0)
    for t in range(120):
        if isinstance(fast.single_action_space, gym.spaces.Discrete):
            actions = rng.integers(0, fast.single_action_space.n, size=3)
        else:
            actions = rng.uniform(-0.2, 0.2, size=(3, 2)).astype(np.float32)
        assert_same_step(fast.step(actions), reference.step(actions), f"step {t}")
    fast.close()
    reference.close()


@pytest.mark.math
def test_batch_infos_matches_gymnasium_merge() -> None:
    """The batched info merge gives what VectorEnv._add_info builds env by env, missing keys and nesting included."""
    infos = [
        {"a": 1.5, "b": np.arange(3.0), "c": "x", "d": {"e": True}, "final_obs": np.ones(2)},
        None,
        {"a": 2.0, "c": ("tuple",), "f": np.int32(7)},
        {"d": {"e": False, "g": 3}, "b": np.ones(3)},
    ]
    reference = SyncVectorEnv([lambda: gym.make("metarl/Navigation2D-v0")] * 4)
    expected: dict = {}
    for i, info in enumerate(infos):
        expected = reference._add_info(expected, info or {}, i)
    assert_infos_equal(batch_infos(infos, 4), expected)
    same_keys = [{"r": float(i), "t": SpeedTask(float(i))} for i in range(4)]
    expected = {}
    for i, info in enumerate(same_keys):
        expected = reference._add_info(expected, info, i)
    assert_infos_equal(batch_infos(same_keys, 4), expected)
    reference.close()


# --- tasks ---------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_set_tasks_takes_effect_at_reset_and_each_sub_env_runs_its_own() -> None:
    envs = TaskVectorEnv(CheetahSpeedEnv, 3, max_episode_steps=50)
    old = [SpeedTask(0.5)] * 3
    envs.set_tasks(old)
    envs.reset(seed=0)
    new = [SpeedTask(0.0), SpeedTask(1.5), SpeedTask(3.0)]
    envs.set_tasks(new)
    assert envs.get_tasks() == new
    infos = envs.step(np.zeros((3, 6), dtype=np.float32))[4]
    assert list(infos["task"]) == old, "tasks must not change before the reset"
    obs, infos = envs.reset(seed=[7, 7, 7])
    assert list(infos["task"]) == new
    np.testing.assert_array_equal(obs[0], obs[1])  # same seed: same start; only the tasks differ
    _, rewards, _, _, infos = envs.step(np.zeros((3, 6), dtype=np.float32))
    assert list(infos["task"]) == new
    np.testing.assert_array_equal(infos["x_velocity"], infos["x_velocity"][0])  # same physics...
    assert len(set(rewards.tolist())) == 3  # ...but each sub-env is scored against its own task
    np.testing.assert_allclose(infos["reward_speed"], -np.abs(infos["x_velocity"] - [0.0, 1.5, 3.0]))
    np.testing.assert_array_equal(envs.task_descriptors(), [[0.0], [1.5], [3.0]])
    envs.close()


@pytest.mark.api
def test_reset_options_tasks_and_reset_mask() -> None:
    envs = TaskVectorEnv(CheetahSpeedEnv, 2, max_episode_steps=50)
    obs, _ = envs.reset(seed=0, options={"tasks": [SpeedTask(1.0), SpeedTask(2.0)]})
    assert envs.get_tasks() == [SpeedTask(1.0), SpeedTask(2.0)]
    moved, *_ = envs.step(np.ones((2, 6), dtype=np.float32))
    again, infos = envs.reset(seed=[0, None], options={"reset_mask": np.array([True, False])})
    np.testing.assert_array_equal(again[0], obs[0])  # sub-env 0 back at its seeded start
    np.testing.assert_array_equal(again[1], moved[1])  # sub-env 1 untouched
    np.testing.assert_array_equal(infos["_task"], [True, False])
    envs.close()


# --- autoreset -----------------------------------------------------------------------------------------------
@pytest.mark.api
def test_next_step_autoreset() -> None:
    envs = TaskVectorEnv(CheetahSpeedEnv, 2, max_episode_steps=5)
    envs.reset(seed=0)
    actions = np.full((2, 6), 0.5, dtype=np.float32)
    for _ in range(4):
        assert not envs.step(actions)[3].any()
    obs, _, terminated, truncated, _ = envs.step(actions)
    assert truncated.all() and not terminated.any()
    obs_after, rewards, terminated, truncated, infos = envs.step(actions)  # the reset step: action ignored
    assert not (terminated.any() or truncated.any()) and np.all(rewards == 0.0)
    assert infos["_task"].all() and "reward_speed" not in infos
    assert np.all(np.abs(obs_after[:, :8]) <= 0.1 + 1e-12), "a fresh start (qpos noise 0.1 around the initial pose)"
    for _ in range(4):
        assert not envs.step(actions)[3].any()
    assert envs.step(actions)[3].all(), "the time limit restarts after an autoreset"
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    envs.close()


@pytest.mark.api
def test_same_step_and_disabled_autoreset() -> None:
    envs = TaskVectorEnv(CheetahSpeedEnv, 2, max_episode_steps=3, autoreset_mode="SameStep")
    envs.reset(seed=0)
    actions = np.zeros((2, 6), dtype=np.float32)
    envs.step(actions)
    envs.step(actions)
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    assert truncated.all() and infos["_final_obs"].all()
    assert not np.array_equal(infos["final_obs"][0], obs[0]), "obs is the next episode's first observation"
    assert infos["final_info"]["_reward_speed"].all()
    assert not envs.step(actions)[3].any()
    envs.close()

    envs = TaskVectorEnv(CheetahSpeedEnv, 2, max_episode_steps=2, autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0)
    envs.step(actions)
    assert envs.step(actions)[3].all()
    with pytest.raises(RuntimeError, match="reset them"):
        envs.step(actions)
    envs.reset(options={"reset_mask": np.array([True, True])})
    assert not envs.step(actions)[3].any()
    envs.close()


# --- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.api
def test_bad_input_raises_before_touching_any_sub_env() -> None:
    envs = TaskVectorEnv(CheetahSpeedEnv, 3, max_episode_steps=50)
    twin = TaskVectorEnv(CheetahSpeedEnv, 3, max_episode_steps=50)
    envs.reset(seed=1)
    twin.reset(seed=1)
    with pytest.raises(ValueError, match="expected 3 tasks"):
        envs.set_tasks([SpeedTask(1.0)] * 2)
    with pytest.raises(ValueError, match="sequence"):
        envs.set_tasks(SpeedTask(1.0))
    with pytest.raises(TaskError, match="task 2: .*outside"):
        envs.set_tasks([SpeedTask(2.0), SpeedTask(2.5), SpeedTask(9.0)])
    assert envs.get_tasks() == [SpeedTask(1.0)] * 3, "a rejected task list leaves every task as it was"
    with pytest.raises(ValueError, match=r"shape \(3, 6\)"):
        envs.step(np.zeros((2, 6), dtype=np.float32))
    bad = np.zeros((3, 6), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"sub-envs \[1\].*NaN or infinite"):
        envs.step(bad)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        envs.step(bad)
    actions = np.full((3, 6), 0.3, dtype=np.float32)
    assert_same_step(envs.step(actions), twin.step(actions), "after the rejected calls")
    with pytest.raises(ValueError, match="expected 3 seeds"):
        envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.array([1, 0, 1])})
    for kwargs, match in [
        ({"num_envs": 0}, "num_envs"),
        ({"num_envs": 2, "autoreset_mode": "Sometimes"}, "autoreset_mode"),
        ({"num_envs": 2, "physics_threads": 0}, "physics_threads"),
        ({"num_envs": 2, "max_episode_steps": -1}, "max_episode_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            TaskVectorEnv(CheetahSpeedEnv, **kwargs)
    with pytest.raises(ValueError, match="env_kwargs"):
        TaskVectorEnv(CheetahSpeedEnv, 2, env_kwargs={"x": 1})
    with pytest.raises(RuntimeError, match="reset"):
        TaskVectorEnv(CheetahSpeedEnv, 2).step(np.zeros((2, 6)))
    envs.close()
    twin.close()


@pytest.mark.api
@pytest.mark.parametrize("physics_threads, native_worker", [(1, None), (2, None), (2, False)],
                         ids=["loop", "threads", "python-threads"])
def test_physics_blow_up_stays_in_its_sub_env(physics_threads, native_worker) -> None:
    """Sub-env 1 blows up (NaN velocities): it alone is truncated and flagged, exactly as its own step would."""
    fast = TaskVectorEnv(cycling_factory(4), 4, physics_threads=physics_threads, native_worker=native_worker)
    reference = OneByOne(cheetah_factories(4))
    fast.reset(seed=0)
    reference.reset(seed=0)
    actions = np.full((4, 6), 0.2, dtype=np.float32)

    def compare(where: str) -> tuple:
        out = fast.step(actions)
        for i, (obs, reward, terminated, truncated, info) in enumerate(reference.step(actions)):
            np.testing.assert_array_equal(out[0][i], obs, err_msg=where)
            assert (out[1][i], out[2][i], out[3][i]) == (reward, terminated, truncated), where
            assert_info_equal(unbatch(out[4], i), info, f"{where}, sub-env {i}")
        return out

    compare("before")
    fast.envs[1].data.qvel[:] = np.nan
    reference.envs[1].unwrapped.data.qvel[:] = np.nan
    _, rewards, terminated, truncated, infos = compare("blow-up step")
    for env, ref in zip(fast.envs, reference.envs):  # the simulator state too, not only what the step returned
        ref_data = ref.unwrapped.data
        assert env.data.time == ref_data.time
        for field in ("qpos", "qvel", "qacc_warmstart", "ctrl"):
            np.testing.assert_array_equal(getattr(env.data, field), getattr(ref_data, field), err_msg=field)
        np.testing.assert_array_equal(env.data.warning.number, ref_data.warning.number)
    np.testing.assert_array_equal(infos["_physics_unstable"], [False, True, False, False])
    assert truncated[1] and rewards[1] == 0.0 and not truncated[[0, 2, 3]].any()
    for t in range(3):  # the flagged sub-env autoresets; the others carry on
        compare(f"after {t}")
    fast.close()
    reference.close()


# --- helpers -------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_vector_env_helpers() -> None:
    envs = TaskVectorEnv("metarl/Navigation2D-v0", 3, copy=False)
    assert envs.num_envs == 3
    assert envs.single_observation_space == gym.make("metarl/Navigation2D-v0").observation_space
    assert envs.observation_space.shape == (3, 2) and envs.action_space.shape == (3, 2)
    assert envs.max_episode_steps == 100
    assert envs.get_attr("max_action") == (envs.envs[0].max_action,) * 3
    tasks = envs.call("sample_tasks", 1, split="test", seed=4)
    assert len(tasks) == 3 and tasks[0] == tasks[2]
    envs.set_attr("max_action", [0.1, 0.1, 0.1])
    obs, _ = envs.reset(seed=0)
    assert obs is envs.step(np.zeros((3, 2), dtype=np.float32))[0], "copy=False hands out the internal buffer"
    assert "TaskVectorEnv(metarl/Navigation2D-v0, num_envs=3)" == repr(envs)
    envs.close()
    assert envs.closed


@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", "metarl/HalfCheetahVel-v0", "metarl/BernoulliBandit-v0"])
def test_gymnasium_sync_vector_env_merges_task_infos_across_autoresets(env_id: str) -> None:
    """info["task"] is the task object at reset and at step, so Gymnasium's own info merge never mixes types."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, max_episode_steps=3)] * 2)
    _, infos = envs.reset(seed=0)
    tasks = list(infos["task"])
    for _ in range(7):  # two autoresets
        _, _, _, _, infos = envs.step(envs.action_space.sample())
        assert list(infos["task"]) == tasks
    envs.close()


# --- the compiled physics worker ---------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler to build it")
def test_compiled_worker_is_built_and_used() -> None:
    """With a C compiler at install (`pip install -e .` runs setup.py) the threads are the compiled worker."""
    envs = TaskVectorEnv(CheetahSpeedEnv, 2, physics_threads=2)
    assert envs.native_physics, "envs/_physics_worker.c was not built: reinstall with `pip install -e .`"
    envs.close()
    python = TaskVectorEnv(CheetahSpeedEnv, 2, physics_threads=2, native_worker=False)
    assert not python.native_physics and python._pool is not None
    python.close()


def _overflowing_model() -> mujoco.MjModel:
    """Thirty spheres dropped on each other in a 32 KB arena: the first mj_step overflows MuJoCo's stack."""
    bodies = "".join(f'<body pos="0 0 {0.02 * i}"><freejoint/><geom size=".1"/></body>' for i in range(30))
    xml = f'<mujoco><size memory="32K"/><worldbody><geom type="plane" size="5 5 .1"/>{bodies}</worldbody></mujoco>'
    return mujoco.MjModel.from_xml_string(xml)


@pytest.mark.api
def test_compiled_worker_turns_a_mujoco_error_into_an_exception() -> None:
    """A MuJoCo error (mju_error) in the worker's mj_step raises mujoco.FatalError, as a direct call does, instead
    of ending the process; the worker then steps the next block normally."""
    library = vector_module._NativeWorkerLibrary.load()
    if library is None:
        pytest.skip("the compiled physics worker is not built")
    bad = _overflowing_model()
    bad_data = mujoco.MjData(bad)
    with pytest.raises(mujoco.FatalError, match="stack"):
        mujoco.mj_step(bad, mujoco.MjData(bad))  # what the Python bindings do
    good = CheetahSpeedEnv()
    good.reset(seed=0)
    twin = CheetahSpeedEnv()
    twin.reset(seed=0)
    worker = vector_module._NativeWorker(library, 2)
    try:
        worker.models[:2] = [good.model._address, bad._address]
        worker.datas[:2] = [good.data._address, bad_data._address]
        worker.nsteps[:2] = [3, 1]
        worker.submit(2)
        with pytest.raises(mujoco.FatalError, match="MuJoCo error in the physics worker: .*stack"):
            worker.wait()
        mujoco.mj_step(twin.model, twin.data, 3)
        np.testing.assert_array_equal(good.data.qpos, twin.data.qpos)  # the block's first model was stepped
        worker.models[0], worker.datas[0], worker.nsteps[0] = good.model._address, good.data._address, 5
        worker.submit(1)
        worker.wait()
        mujoco.mj_step(twin.model, twin.data, 5)
        np.testing.assert_array_equal(good.data.qpos, twin.data.qpos)
        np.testing.assert_array_equal(good.data.qvel, twin.data.qvel)
    finally:
        worker.close()


@pytest.mark.api
def test_native_worker_argument(monkeypatch) -> None:
    with pytest.raises(ValueError, match="native_worker"):
        TaskVectorEnv(CheetahSpeedEnv, 2, native_worker="yes")
    # not built (no C compiler at install): Python threads by default, a clear error when asked for
    monkeypatch.setattr(vector_module._NativeWorkerLibrary, "_cache", None)
    envs = TaskVectorEnv(CheetahSpeedEnv, 2, physics_threads=2)
    assert not envs.native_physics and envs._pool is not None
    envs.close()
    with pytest.raises(ValueError, match="not built"):
        TaskVectorEnv(CheetahSpeedEnv, 2, physics_threads=2, native_worker=True)


@pytest.mark.api
def test_pinned_mujoco_has_the_error_hook_of_the_compiled_worker() -> None:
    """The compiled worker relies on a private MuJoCo symbol: a MuJoCo release without it must show up here."""
    hook = physics_worker.MUJOCO_ERROR_HOOK
    assert hasattr(physics_worker._open_mujoco(), hook), (
        f"MuJoCo {mujoco.__version__} no longer exports {hook}, the private thread-local error hook that the "
        "compiled physics worker (envs/physics_worker.py, envs/_physics_worker.c) installs so that a MuJoCo error in "
        "its thread raises mujoco.FatalError instead of ending the process. TaskVectorEnv still works, on Python "
        "threads (slower). To fix: pin mujoco back to the last release that has it (constraints.txt, "
        "pyproject.toml), or find what MuJoCo's Python bindings now call to set a thread-local error handler and "
        "set physics_worker.MUJOCO_ERROR_HOOK to it (then the tests of the compiled worker below must pass)."
    )


class _MujocoWithout:
    """libmujoco as ctypes sees it, less one symbol (what a MuJoCo release that dropped it looks like)."""

    def __init__(self, library, symbol: str) -> None:
        self._library, self._symbol = library, symbol

    def __getattr__(self, name: str):
        if name == self._symbol:
            raise AttributeError(f"undefined symbol: {name}")
        return getattr(self._library, name)


@pytest.mark.math
def test_without_the_error_hook_python_threads_give_the_same_results(monkeypatch) -> None:
    """A MuJoCo without the private error hook: the vector env warns, steps on Python threads, results unchanged."""
    if physics_worker._worker_path() is None:
        pytest.skip("the compiled physics worker is not built: the hook is never looked for")
    hook, real_open = physics_worker.MUJOCO_ERROR_HOOK, physics_worker._open_mujoco
    monkeypatch.setattr(physics_worker, "_open_mujoco", lambda: _MujocoWithout(real_open(), hook))
    monkeypatch.setattr(physics_worker.NativeLibrary, "_cache", False)  # look for the library again
    monkeypatch.setattr(physics_worker.NativeLibrary, "unavailable_reason", physics_worker.NOT_BUILT)
    with pytest.warns(RuntimeWarning, match=hook):
        fast = TaskVectorEnv(cycling_factory(4), 4, physics_threads=2)
    assert not fast.native_physics and fast._pool is not None, "the fallback is the Python threads"
    reference = OneByOne(cheetah_factories(4))
    ends = run_side_by_side(fast, reference, steps=150, seed=3, new_tasks_at=70)
    assert ends >= 20, "the run must cross many terminations, truncations and autoresets"
    fast.close()
    reference.close()
    with pytest.raises(ValueError, match=f"not available: MuJoCo .* has no {hook}"):
        TaskVectorEnv(CheetahSpeedEnv, 2, physics_threads=2, native_worker=True)


@pytest.mark.api
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_compiled_worker_survives_a_fork() -> None:
    """A forked child (multiprocessing's fork start method) gets new worker threads instead of hanging on the
    parent's, and gets the same trajectory as the parent."""
    envs = TaskVectorEnv(cycling_factory(4), 4, physics_threads=2)
    envs.reset(seed=0)
    actions = np.full((4, 6), 0.3, dtype=np.float32)
    envs.step(actions)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: step, send the observations, leave without running the parent's cleanup
        try:
            obs = envs.step(actions)[0]
            os.write(write, obs.astype(np.float64).tobytes())
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 1 << 16):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    obs = envs.step(actions)[0]
    np.testing.assert_array_equal(np.frombuffer(child, dtype=np.float64).reshape(obs.shape), obs)
    envs.close()
