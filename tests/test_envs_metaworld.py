"""Meta-World adapter (metarl.envs.metaworld): ML1 goals and success, ML10 classes, ML45 slow (the task-env contract
every id meets, ML45 under ``-m slow``: tests/test_env_contract.py)."""

from __future__ import annotations

import dataclasses
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


# --- seeding, checked against Meta-World's known seeding bugs (module docstring, "Seeding") ---------------------
def _rand_vecs(benchmark, split: str, env_name: str) -> np.ndarray:
    listing = benchmark.train_tasks if split == "train" else benchmark.test_tasks
    return np.stack([pickle.loads(t.data)["rand_vec"] for t in listing if t.env_name == env_name])


def _first_observations(env, tasks) -> np.ndarray:
    out = []
    for task in tasks:
        env.set_task(task)
        out.append(env.reset(seed=0)[0])
    return np.stack(out)


@pytest.mark.determinism
def test_ml1_same_seed_same_goals_and_first_observations_other_seed_other_ones(ml1: MetaWorldML1Env) -> None:
    import metaworld

    np.random.seed(1234)  # Meta-World's goals must not depend on NumPy's global state (#364, #350)
    fresh = metaworld.ML1("reach-v3", seed=0)
    for split in ("train", "test"):
        np.testing.assert_array_equal(_rand_vecs(fresh, split, "reach-v3"), _rand_vecs(ml1.benchmark, split,
                                                                                         "reach-v3"))
    other = MetaWorldML1Env("reach-v3", benchmark_seed=1)
    tasks = ml1.sample_tasks(5, split="test", seed=4)
    assert tasks == MetaWorldML1Env("reach-v3", benchmark_seed=0).sample_tasks(5, split="test", seed=4)
    assert tasks != ml1.sample_tasks(5, split="test", seed=5)
    twin = MetaWorldML1Env("reach-v3", benchmark_seed=0)
    np.testing.assert_array_equal(_first_observations(ml1, tasks), _first_observations(twin, tasks))
    shifted = [dataclasses.replace(t, benchmark_seed=1) for t in tasks]
    assert not np.allclose(_first_observations(ml1, tasks), _first_observations(other, shifted))
    assert not np.array_equal(_rand_vecs(other.benchmark, "train", "reach-v3"),
                              _rand_vecs(ml1.benchmark, "train", "reach-v3"))
    # Meta-World's own pitfall (documented): the test goals of seed s are the train goals of seed s + 1
    np.testing.assert_array_equal(_rand_vecs(ml1.benchmark, "test", "reach-v3"),
                                  _rand_vecs(other.benchmark, "train", "reach-v3"))
    twin.close()
    other.close()


@pytest.mark.determinism
def test_reset_reproduces_whatever_came_before_and_leaves_numpy_global_state(ml1: MetaWorldML1Env) -> None:
    task = ml1.sample_tasks(1, split="train", seed=8)[0]
    ml1.set_task(task)
    first, _ = ml1.reset(seed=0)
    state = np.random.get_state()
    for seed in (0, 1, None):
        for _ in range(25):
            ml1.step(ml1.action_space.sample())
        again, _ = ml1.reset(seed=seed)  # Meta-World ignores reset's seed (#555); the task fixes the state
        np.testing.assert_array_equal(again, first)  # #385: the frame stack is not carried across resets
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


@pytest.mark.determinism
def test_an_unfrozen_goal_is_refused_not_drawn_from_the_global_rng(ml1: MetaWorldML1Env) -> None:
    ml1.set_task(ml1.sample_tasks(1, seed=0)[0])
    ml1.reset(seed=0)
    original = type(ml1._active).set_task

    def unfreezing(self, task):
        original(self, task)
        self._freeze_rand_vec = False

    env = ml1._active
    env.set_task = unfreezing.__get__(env)
    try:
        with pytest.raises(RuntimeError, match="global generator"):
            ml1.reset(seed=0)
    finally:
        del env.set_task


@pytest.mark.determinism
def test_ml10_same_seed_same_goals_and_first_observations(ml10: MetaWorldML10Env) -> None:
    twin = MetaWorldML10Env(benchmark_seed=0)
    for split in ("train", "test"):
        tasks = ml10.sample_tasks(6, split=split, seed=11)
        assert tasks == twin.sample_tasks(6, split=split, seed=11)
        assert tasks != ml10.sample_tasks(6, split=split, seed=12)
        np.testing.assert_array_equal(_first_observations(ml10, tasks), _first_observations(twin, tasks))
        others = ml10.sample_tasks(6, split=split, seed=12)
        assert not np.array_equal(_first_observations(ml10, tasks), _first_observations(ml10, others))
    twin.close()


@pytest.mark.slow
@pytest.mark.determinism
def test_ml10_goals_are_rebuilt_identically_and_differ_across_seeds(ml10: MetaWorldML10Env) -> None:
    import metaworld

    ml10.benchmark  # noqa: B018 - the cached benchmark of seed 0
    np.random.seed(99)
    fresh, other = metaworld.ML10(seed=0), metaworld.ML10(seed=1)
    for split, classes in ml10.classes.items():
        for name in classes:
            np.testing.assert_array_equal(_rand_vecs(fresh, split, name), _rand_vecs(ml10.benchmark, split, name))
            assert not np.array_equal(_rand_vecs(other, split, name), _rand_vecs(fresh, split, name))


# --- reward function version and Meta-World's evaluation protocol --------------------------------------------
@pytest.mark.api
def test_reward_function_version_is_chosen_named_and_checked(ml1: MetaWorldML1Env) -> None:
    v1 = MetaWorldML1Env("reach-v3", reward_function_version="v1")
    task = ml1.sample_tasks(1, split="train", seed=2)[0]
    rewards = []
    for env in (ml1, v1):
        env.set_task(task)
        env.reset(seed=0)
        rewards.append(env.step(np.full(4, 0.5, dtype=np.float32))[1])
    assert rewards[0] != rewards[1]
    assert ml1.evaluation_metadata()["reward_function_version"] == "v2"
    assert v1.evaluation_metadata() == {"benchmark": "ML1", "task_name": "reach-v3", "benchmark_seed": 0,
                                        "reward_function_version": "v1", "metaworld_version": "3.1.1"}
    assert pickle.loads(pickle.dumps(v1)).reward_function_version == "v1"
    with pytest.raises(ValueError, match="reward_function_version"):
        MetaWorldML1Env("reach-v3", reward_function_version="v3")
    v1.close()


@pytest.mark.api
def test_metaworld_protocol_tasks_columns_and_seeds(ml1: MetaWorldML1Env, ml10: MetaWorldML10Env) -> None:
    from metarl.envs.metaworld import MetaWorldML25Env

    ml25 = MetaWorldML25Env()
    for env, classes in ((ml1, 1), (ml10, 5), (ml25, 5)):
        protocol = env.benchmark_protocol(1, None, 0)
        tasks = protocol["tasks"]
        assert len(tasks) == 200 and protocol["chunk"] == 20 and protocol["rounds"] == 10
        assert protocol["test_classes"] == list(env.classes["test"]) and len(protocol["test_classes"]) == classes
        assert all(t.split == "test" for t in tasks) and protocol["groups"] == [t.env_name for t in tasks]
        for start in range(0, 200, 20):  # every round holds each class equally
            names = [t.env_name for t in tasks[start:start + 20]]
            assert {names.count(n) for n in set(names)} == {20 // classes}
        for name in env.classes["test"]:
            indices = [t.index for t in tasks if t.env_name == name]
            assert protocol["goals_per_class"] == len(indices) == 200 // classes
            assert len(set(indices)) == min(50, len(indices)), "goals repeat only once all 50 are used"
        assert protocol["reward_function_version"] == "v2" and protocol["metric"] == "success"
        assert env.benchmark_protocol(1, None, 0)["tasks"] == tasks
        assert env.benchmark_protocol(1, None, 1)["tasks"] != tasks
    # in-context agents: 10 adaptation episodes, then 3 evaluated; MAML-TRPO with 10 rollouts per stage: 1 + 1
    in_context, maml = ml10.benchmark_protocol(1, 2, 0), ml10.benchmark_protocol(10, 2, 0)
    assert (in_context["num_episodes"], in_context["evaluation_columns"]) == (13, [10, 11, 12])
    assert (maml["num_episodes"], maml["evaluation_columns"], maml["evaluation_episodes_used"]) == (2, [1], 10)
    assert len(in_context["tasks"]) == 40
    assert ml25.classes["test"] == ("basketball-v3", "door-close-v3", "shelf-place-v3", "sweep-v3",
                                    "button-press-v3") and len(ml25.classes["train"]) == 25
    with pytest.raises(ValueError, match="rounds"):
        ml10.benchmark_protocol(1, 0, 0)
    ml25.close()


class _ScriptedAgent:
    """A stand-in agent: returns and success known per task and column (success rises with adaptation on the
    first test class only), recorded the way the core collectors record them."""

    name = "scripted"
    episodes_per_stage = 1

    def __init__(self) -> None:
        self.calls: list[int] = []

    def meta_test(self, tasks, num_episodes: int, seed: int) -> np.ndarray:
        from metarl.core.outcomes import record_meta_test_column

        self.calls.append(len(tasks))
        first = np.array([t.env_name == "reach-v3" for t in tasks], dtype=np.float64)
        for column in range(num_episodes):
            record_meta_test_column(column, first * (column >= 10))
        return np.tile(np.arange(num_episodes, dtype=np.float64), (len(tasks), 1))


@pytest.mark.api
def test_evaluate_runs_metaworld_protocol_and_names_it() -> None:
    from metarl.evaluation import evaluate_meta_rl

    agent = _ScriptedAgent()
    result = evaluate_meta_rl(agent, "metarl/MetaWorldML1-v0", seed=3, protocol="auto", protocol_rounds=1)
    assert agent.calls == [20] and result["num_episodes"] == 13 and result["num_tasks"] == 20
    protocol = result["benchmark_protocol"]
    assert protocol["name"] == "metaworld" and protocol["reward_function_version"] == "v2"
    assert "tasks" not in protocol and result["env_info"]["reward_function_version"] == "v2"
    summary = result["splits"]["test"]["benchmark"]
    assert summary["success"]["pre_adaptation"]["mean"] == 0.0
    assert summary["success"]["post_adaptation"]["mean"] == 1.0  # ML1 reach: every task is the first class
    assert summary["return"]["post_adaptation"]["mean"] == pytest.approx(11.0)  # columns 10, 11, 12
    generic = evaluate_meta_rl(agent, "metarl/MetaWorldML1-v0", num_tasks=2, num_episodes=3, seed=3,
                               protocol="generic")
    assert "benchmark_protocol" not in generic and generic["env_info"]["benchmark"] == "ML1"
    with pytest.raises(ValueError, match="protocol must be"):
        evaluate_meta_rl(agent, "metarl/MetaWorldML1-v0", protocol="metaworld")
