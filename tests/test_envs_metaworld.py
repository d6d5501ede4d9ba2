"""Meta-World adapter (metarl.envs.metaworld): ML1 goals and success, ML10 classes, ML45 slow (the task-env contract
every id meets, ML45 under ``-m slow``: tests/test_env_contract.py)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("metaworld")

import metarl.envs  # noqa: E402,F401  (registers the ids)
from metarl.envs.base import TaskError  # noqa: E402
from metarl.envs.metaworld import (  # noqa: E402
    TASKS_PER_CLASS,
    MetaWorldML1Env,
    MetaWorldML10Env,
    MetaWorldML45Env,
    MetaWorldTask,
)
from metarl.envs.vector import TaskVectorEnv  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*Box observation space.*:UserWarning")


@pytest.fixture(scope="module")
def ml1() -> MetaWorldML1Env:
    env = MetaWorldML1Env("reach-v3", benchmark_seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def ml10() -> MetaWorldML10Env:
    env = MetaWorldML10Env(benchmark_seed=0)
    yield env
    env.close()


def _reach_goal(env: MetaWorldML1Env) -> np.ndarray:
    """For reach-v3 the last three numbers of Meta-World's task vector are the goal (end of the descriptor)."""
    return env.task_descriptor()[-3:].astype(np.float64)


# --- API ----------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_registered_ids_make_the_adapters() -> None:
    for env_id, cls in [("metarl/MetaWorldML1-v0", MetaWorldML1Env), ("metarl/MetaWorldML10-v0", MetaWorldML10Env)]:
        env = gym.make(env_id)
        assert type(env.unwrapped) is cls
        assert env.spec.max_episode_steps == 500
        assert env.observation_space.shape == (39,) and env.action_space.shape == (4,)
        env.close()


@pytest.mark.api
def test_tasks_name_the_benchmark_and_class(ml1: MetaWorldML1Env) -> None:
    task = ml1.sample_tasks(1, split="test", seed=3)[0]
    assert task.benchmark == "ML1" and task.env_name == "reach-v3" and task.split == "test"


@pytest.mark.api
def test_one_reward_term_and_meta_world_diagnostics_in_info(ml1: MetaWorldML1Env) -> None:
    ml1.set_task(ml1.sample_tasks(1, split="train", seed=11)[0])
    ml1.reset(seed=0)
    _, reward, terminated, truncated, info = ml1.step(np.zeros(4, dtype=np.float32))
    assert reward == info["reward_metaworld"] and [k for k in info if k.startswith("reward_")] == ["reward_metaworld"]
    assert not terminated and not truncated
    for key in ("success", "near_object", "grasp_success", "in_place_reward"):
        assert key in info


@pytest.mark.api
def test_success_passes_through(ml1: MetaWorldML1Env) -> None:
    """A proportional controller to the task's goal solves reach-v3: Meta-World's success flag must reach us."""
    ml1.set_task(ml1.sample_tasks(1, split="test", seed=5)[0])
    obs, _ = ml1.reset(seed=0)
    goal = _reach_goal(ml1)
    successes = []
    for _ in range(150):
        action = np.zeros(4, dtype=np.float32)
        action[:3] = np.clip(10.0 * (goal - obs[:3]), -1.0, 1.0)
        obs, reward, _, _, info = ml1.step(action)
        successes.append(info["success"])
        if info["success"]:
            break
    assert set(np.unique(successes)) <= {0.0, 1.0}
    assert successes[-1] == 1.0, "the scripted reach never succeeded"
    assert successes[0] == 0.0


@pytest.mark.api
def test_spaces_identical_across_classes(ml10: MetaWorldML10Env) -> None:
    assert set(ml10.classes["train"]).isdisjoint(ml10.classes["test"])
    for name in ml10.classes["train"] + ml10.classes["test"]:
        mw_env = ml10._class_env(name)
        assert mw_env.observation_space == ml10.observation_space, name
        assert mw_env.action_space.shape == ml10.action_space.shape == (4,)


@pytest.mark.api
def test_descriptor_one_hot_and_task_vector(ml1: MetaWorldML1Env) -> None:
    tasks = ml1.sample_tasks(3, split="train", seed=2)
    descriptors = np.stack([ml1.task_descriptor(t) for t in tasks])
    assert descriptors.shape == (3, 1 + 6) == (3, ml1.task_descriptor_dim)
    assert np.all(descriptors[:, 0] == 1.0)
    assert len({tuple(d) for d in descriptors}) == 3


@pytest.mark.api
def test_constructing_ml10_is_lazy_and_lists_fifteen_classes() -> None:
    env = MetaWorldML10Env()
    assert len(env.all_classes) == 15
    assert env.all_classes[10:] == env.classes["test"]
    assert len(env._envs) == 1, "only the default class is built at construction"
    env.close()


# --- splits and seeding -------------------------------------------------------------------------------------
@pytest.mark.api
def test_ml1_train_and_test_goal_sets_are_disjoint(ml1: MetaWorldML1Env) -> None:
    train = {tuple(ml1.task_descriptor(MetaWorldTask("ML1", "reach-v3", "train", i, 0))) for i in range(50)}
    test = {tuple(ml1.task_descriptor(MetaWorldTask("ML1", "reach-v3", "test", i, 0))) for i in range(50)}
    assert len(train) == len(test) == TASKS_PER_CLASS
    assert train.isdisjoint(test)
    assert all(t.split == "test" for t in ml1.sample_tasks(60, split="test", seed=0))


@pytest.mark.api
def test_ml10_splits_are_disjoint_classes_and_sampling_is_class_balanced(ml10: MetaWorldML10Env) -> None:
    assert len(ml10.classes["train"]) == 10 and len(ml10.classes["test"]) == 5
    assert set(ml10.classes["train"]).isdisjoint(ml10.classes["test"])
    train = ml10.sample_tasks(20, split="train", seed=0)
    counts = {name: sum(t.env_name == name for t in train) for name in ml10.classes["train"]}
    assert set(counts.values()) == {2}
    test = ml10.sample_tasks(7, split="test", seed=0)
    assert {t.env_name for t in test} == set(ml10.classes["test"])
    for name in ml10.classes["test"]:
        indices = [t.index for t in test if t.env_name == name]
        assert len(indices) == len(set(indices)), "indices within a class are drawn without replacement"


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.api
def test_bad_input_raises_clear_errors(ml1: MetaWorldML1Env) -> None:
    assert ml1.splits == ("train", "test")  # no ood split
    with pytest.raises(TaskError, match="missing"):
        ml1.set_task({"benchmark": "ML1", "env_name": "reach-v3"})
    with pytest.raises(TaskError, match="outside"):
        ml1.set_task(MetaWorldTask("ML1", "reach-v3", "train", 50, 0))
    with pytest.raises(TaskError, match="not a train class"):
        ml1.set_task(MetaWorldTask("ML1", "push-v3", "train", 0, 0))
    with pytest.raises(TaskError, match="benchmark ML1|is from benchmark"):
        ml1.set_task(MetaWorldTask("ML10", "reach-v3", "train", 0, 0))
    with pytest.raises(TaskError, match="seed"):
        ml1.set_task(MetaWorldTask("ML1", "reach-v3", "train", 0, 1))
    with pytest.raises(TaskError, match="integer"):
        ml1.set_task(MetaWorldTask("ML1", "reach-v3", "train", 1.5, 0))
    with pytest.raises(ValueError, match="unknown Meta-World class"):
        MetaWorldML1Env("no-such-task-v3")
    ml1.set_task(ml1.sample_tasks(1, seed=0)[0])
    ml1.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        ml1.step(np.zeros(3, dtype=np.float32))


@pytest.mark.api
def test_physics_blow_up_ends_the_episode_flagged(ml1: MetaWorldML1Env) -> None:
    ml1.set_task(ml1.sample_tasks(1, seed=0)[0])
    obs, _ = ml1.reset(seed=0)
    obs, *_ = ml1.step(np.zeros(4, dtype=np.float32))
    ml1._active.data.qvel[:] = np.nan  # poison the simulation
    next_obs, reward, terminated, truncated, info = ml1.step(np.zeros(4, dtype=np.float32))
    assert info["physics_unstable"] is True
    assert truncated and not terminated and reward == 0.0 == info["reward_metaworld"]
    np.testing.assert_array_equal(next_obs, obs)
    assert np.isfinite(next_obs).all()
    ml1.reset(seed=0)  # the env recovers at the next reset
    assert "physics_unstable" not in ml1.step(np.zeros(4, dtype=np.float32))[4]


@pytest.mark.api
def test_pickles_with_its_constructor_arguments() -> None:
    env = MetaWorldML1Env("push-v3", benchmark_seed=3, max_cached_envs=2)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is MetaWorldML1Env
    assert (clone.task_name, clone.benchmark_seed, clone.max_cached_envs) == ("push-v3", 3, 2)
    env.close()
    clone.close()


# --- ML10 / ML45 / vector ------------------------------------------------------------------------------------
@pytest.mark.smoke
def test_ml10_steps_a_train_and_a_test_class(ml10: MetaWorldML10Env) -> None:
    for split in ("train", "test"):
        task = ml10.sample_tasks(1, split=split, seed=0)[0]
        ml10.set_task(task)
        obs, info = ml10.reset(seed=0)
        assert ml10.observation_space.contains(obs)
        assert info["task"].env_name in ml10.classes[split]
        for _ in range(3):
            obs, reward, terminated, truncated, info = ml10.step(ml10.action_space.sample())
            assert np.isfinite(obs).all() and np.isfinite(reward) and "success" in info
        descriptor = ml10.task_descriptor()
        assert descriptor.shape == (15 + 6,)
        assert descriptor[ml10.all_classes.index(task.env_name)] == 1.0 and descriptor[:15].sum() == 1.0


@pytest.mark.smoke
def test_task_vector_env_runs_meta_world_tasks(ml1: MetaWorldML1Env) -> None:
    envs = TaskVectorEnv("metarl/MetaWorldML1-v0", 2)
    assert envs.max_episode_steps == 500
    tasks = envs.single_task_env.sample_tasks(2, split="test", seed=0)
    envs.set_tasks(tasks)
    obs, infos = envs.reset(seed=0)
    assert obs.shape == (2, 39)
    obs, rewards, terminations, truncations, infos = envs.step(np.zeros((2, 4), dtype=np.float32))
    assert list(infos["task"]) == tasks
    np.testing.assert_array_equal(rewards, infos["reward_metaworld"])
    assert infos["success"].shape == (2,)
    envs.close()


@pytest.mark.slow
def test_ml45_constructs_and_steps_a_held_out_class() -> None:
    env = MetaWorldML45Env()
    assert len(env.classes["train"]) == 45 and len(env.classes["test"]) == 5
    assert set(env.classes["train"]).isdisjoint(env.classes["test"])
    task = env.sample_tasks(1, split="test", seed=0)[0]
    env.set_task(task)
    env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.shape == (39,) and np.isfinite(reward)
    assert env.task_descriptor().shape == (50 + 6,)
    env.close()
