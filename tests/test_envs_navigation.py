"""Navigation2D (MAML) and SparseNavigation2D (PEARL): task law, rewards, batch step, speed (the task-env contract every
id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import math
import pickle
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs.base import TaskError, checkerboard_split_of
from metarl.envs.navigation import (
    Navigation2DEnv,
    Navigation2DTask,
    SparseNavigation2DEnv,
    SparseNavigation2DTask,
)
from tests.helpers import rollout

IDS = ["metarl/Navigation2D-v0", "metarl/SparseNavigation2D-v0"]


@pytest.mark.api
@pytest.mark.parametrize("env_id", IDS)
def test_episode_runs_full_horizon_and_echoes_task(env_id):
    env = gym.make(env_id)
    assert env.spec.max_episode_steps == 100 and env.unwrapped.splits == ("train", "test", "ood")
    task = env.unwrapped.sample_tasks(1, seed=3)[0]
    obs, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == task
    np.testing.assert_array_equal(obs, np.zeros(2, np.float32))
    steps, truncated, terminated = 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert info["task"] == task
        assert env.observation_space.contains(obs)
    assert steps == 100 and truncated and not terminated


@pytest.mark.api
def test_navigation_splits_are_disjoint_checkerboards_and_ood_is_outside():
    env = Navigation2DEnv()
    train = np.array([[t.goal_x, t.goal_y] for t in env.sample_tasks(2000, split="train", seed=0)])
    test = np.array([[t.goal_x, t.goal_y] for t in env.sample_tasks(2000, split="test", seed=0)])
    ood = np.array([[t.goal_x, t.goal_y] for t in env.sample_tasks(2000, split="ood", seed=0)])
    assert all(checkerboard_split_of(g, [-0.5] * 2, [0.5] * 2) == "train" for g in train)
    assert all(checkerboard_split_of(g, [-0.5] * 2, [0.5] * 2) == "test" for g in test)
    for goals in (train, test):  # each split spans the whole square
        assert np.all(np.abs(goals) <= 0.5)
        assert goals.min() < -0.48 and goals.max() > 0.48
    assert np.all(np.abs(ood).max(axis=1) > 0.5) and np.all(np.abs(ood) <= 1.0)
    assert ood.min() < -0.95 and ood.max() > 0.95


@pytest.mark.api
def test_sparse_splits_are_alternating_sectors_and_ood_is_the_lower_half():
    env = SparseNavigation2DEnv()
    sector = lambda tasks: np.floor(np.array([t.angle for t in tasks]) / (math.pi / 8)).astype(int)  # noqa: E731
    train, test = env.sample_tasks(1000, split="train", seed=1), env.sample_tasks(1000, split="test", seed=1)
    assert set(sector(train) % 2) == {0} and set(sector(test) % 2) == {1}
    assert set(sector(train)) == {0, 2, 4, 6} and set(sector(test)) == {1, 3, 5, 7}
    ood = np.array([t.angle for t in env.sample_tasks(1000, split="ood", seed=1)])
    assert np.all((ood > math.pi) & (ood < 2 * math.pi))
    goals = np.array([env.task_descriptor(t) for t in train])
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0, rtol=1e-6)
    assert np.all(goals[:, 1] >= -1e-6)


@pytest.mark.api
def test_navigation_reward_is_negative_distance_after_the_clipped_move():
    env = Navigation2DEnv()
    env.set_task(Navigation2DTask(0.3, -0.2))
    env.reset(seed=0)
    obs, reward, _, _, info = env.step(np.array([1.0, -0.05]))  # x is clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-6)
    assert reward == pytest.approx(-math.hypot(0.1 - 0.3, -0.05 + 0.2))
    assert info["reward_distance"] == reward and info["distance"] == -reward
    for _ in range(10):
        _, reward, _, _, info = env.step([0.1, -0.1])
        assert sum(v for k, v in info.items() if k.startswith("reward_")) == reward
    np.testing.assert_allclose(env.position, [1.1, -1.05], atol=1e-12)
    assert env.task_descriptor().tolist() == pytest.approx([0.3, -0.2])


@pytest.mark.api
def test_sparse_reward_is_one_minus_distance_inside_the_radius_and_zero_outside():
    env = SparseNavigation2DEnv()
    env.set_task(SparseNavigation2DTask(math.pi / 2))  # goal (0, 1)
    env.reset(seed=0)
    rewards, infos = [], []
    for _ in range(10):
        _, reward, _, _, info = env.step([0.0, 0.1])
        rewards.append(reward)
        infos.append(info)
    for reward, info in zip(rewards, infos):
        assert info["reward_goal"] + info["reward_distance"] == reward
        if info["distance"] <= 0.2:
            assert info["success"] and reward == pytest.approx(1.0 - info["distance"])
        else:
            assert not info["success"] and reward == 0.0
        assert info["dense_reward"] == -info["distance"]
    assert rewards[:7] == [0.0] * 7  # at y <= 0.7 the goal is >= 0.3 away
    assert rewards[8] == pytest.approx(0.9) and rewards[9] == pytest.approx(1.0)


@pytest.mark.api
def test_set_task_takes_effect_at_the_next_reset():
    env = Navigation2DEnv()
    env.set_task(Navigation2DTask(0.5, 0.5))
    env.reset(seed=0)
    env.set_task(Navigation2DTask(-0.5, -0.5))
    assert env.get_task() == Navigation2DTask(-0.5, -0.5)
    _, reward, _, _, _ = env.step([0.0, 0.0])
    assert reward == pytest.approx(-math.hypot(0.5, 0.5))  # still the old goal
    env.reset()
    _, _, _, _, info = env.step([0.0, 0.0])
    assert info["task"] == Navigation2DTask(-0.5, -0.5)


@pytest.mark.api
def test_bad_input_raises_clear_errors():
    env = Navigation2DEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        env.sample_tasks(-1)
    with pytest.raises(TaskError, match="missing goal_y"):
        env.set_task({"goal_x": 0.1})
    with pytest.raises(TaskError, match="outside"):
        env.set_task(Navigation2DTask(1.5, 0.0))
    with pytest.raises(TaskError, match="not finite"):
        env.set_task({"goal_x": float("nan"), "goal_y": 0.0})
    with pytest.raises(ValueError, match="NaN"):
        env.step([np.nan, 0.0])  # a list (the contract test steps arrays)
    with pytest.raises(ValueError, match="2 numbers"):
        env.step([0.1, 0.1, 0.1])
    sparse = SparseNavigation2DEnv()
    with pytest.raises(TaskError, match="outside"):
        sparse.set_task({"angle": 7.0})
    with pytest.raises(TaskError, match="unknown keys"):
        sparse.set_task({"angle": 1.0, "radius": 2.0})
    with pytest.raises(ValueError, match="goal_radius"):
        SparseNavigation2DEnv(goal_radius=0.0)
    with pytest.raises(ValueError, match="max_action"):
        Navigation2DEnv(max_action=float("nan"))


@pytest.mark.math
@pytest.mark.parametrize("cls", [Navigation2DEnv, SparseNavigation2DEnv])
def test_batch_step_matches_step(cls):
    rng = np.random.default_rng(0)
    env = cls()
    tasks = env.sample_tasks(4, seed=0)
    goals = np.array([env._goal_of(t) for t in tasks])  # exact float64 goals (the descriptor is float32)
    actions = rng.uniform(-0.3, 0.3, size=(30, 4, 2))
    positions = np.zeros((4, 2))
    batch_rewards = []
    for step_actions in actions:
        positions, rewards = cls.batch_step(positions, step_actions, goals)
        batch_rewards.append(rewards)
    for i, task in enumerate(tasks):
        env.set_task(task)
        obs, rewards = rollout(env, actions[:, i], seed=0)
        np.testing.assert_allclose(np.array(batch_rewards)[:, i], rewards, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        cls.batch_step(positions, np.full((4, 2), np.nan), goals)


@pytest.mark.api
@pytest.mark.parametrize("cls", [Navigation2DEnv, SparseNavigation2DEnv])
def test_pickles_for_subprocess_vector_envs(cls):
    env = pickle.loads(pickle.dumps(cls(max_action=0.2)))
    assert env.max_action == 0.2
    env.reset(seed=0)
    obs, *_ = env.step([0.5, 0.0])
    assert obs[0] == pytest.approx(0.2)


@pytest.mark.smoke
def test_step_is_fast():
    env = Navigation2DEnv()
    env.reset(seed=0)
    action = np.array([0.05, -0.05], np.float32)
    start = time.perf_counter()
    for _ in range(20_000):
        env.step(action)
    per_step = (time.perf_counter() - start) / 20_000
    assert per_step < 50e-6, f"Navigation2D step took {per_step * 1e6:.1f} us"


@pytest.mark.api
@pytest.mark.parametrize("env_id", IDS)
def test_rgb_array_frames_show_the_path_and_the_goal(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    base = env.unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker's advice on infinite observation bounds
        check_env(base)  # with its render checks
    task = base.sample_tasks(1, split="test", seed=4)[0]
    env.reset(seed=0, options={"task": task})
    first = env.render()
    assert first.shape == (base.render_size, base.render_size, 3) and first.dtype == np.uint8
    frames = [first]
    for _ in range(5):
        env.step(np.array([0.1, 0.1], np.float32))
        frames.append(env.render())
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))  # the point moves, the path grows
    other = base.sample_tasks(1, split="test", seed=5)[0]
    env.reset(seed=0, options={"task": other})
    assert not np.array_equal(env.render(), first)  # another goal
    env.reset(seed=0, options={"task": task})
    np.testing.assert_array_equal(env.render(), first)  # the path starts again at the reset
    plain = gym.make(env_id)
    plain.reset(seed=0)
    assert plain.render() is None  # no render mode: nothing drawn
    with pytest.raises(ValueError, match="render_mode"):
        type(base)(render_mode="human")
    pickled = pickle.loads(pickle.dumps(base))
    assert pickled.render_mode == "rgb_array"
