"""Bernoulli bandits and tabular MDPs (RL²): task law, statistics of rewards and transitions, baselines (the task-env
contract every id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import itertools
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs.base import TaskError, checkerboard_split_of
from metarl.envs.discrete import (
    BernoulliBanditEnv,
    BernoulliBanditTask,
    TabularMDPEnv,
    TabularMDPTask,
    oracle_return,
    random_policy_return,
    tabular_mdp_parameters,
    thompson_sampling_return,
    ucb1_return,
)


# --- Bernoulli bandit -----------------------------------------------------------------------------------------
@pytest.mark.api
def test_bandit_episode_is_one_pull_with_regret_info():
    env = gym.make("metarl/BernoulliBandit-v0", k=3)
    task = BernoulliBanditTask((0.2, 0.9, 0.5))
    obs, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == BernoulliBanditTask(means=(0.2, 0.9, 0.5))
    np.testing.assert_array_equal(obs, [0.0])
    obs, reward, terminated, truncated, info = env.step(2)
    assert terminated and not truncated and reward in (0.0, 1.0)
    assert info["reward_pull"] == reward and info["task"] == task
    assert info["arm_mean"] == 0.5 and info["best_mean"] == 0.9 and info["regret"] == pytest.approx(0.4)
    np.testing.assert_array_equal(obs, [0.0])
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)
    assert env.unwrapped.task_descriptor().tolist() == pytest.approx([0.2, 0.9, 0.5])


@pytest.mark.api
def test_bandit_rewards_are_bernoulli_with_the_arm_means():
    env = BernoulliBanditEnv(k=2)
    env.set_task(BernoulliBanditTask((0.3, 0.8)))
    env.reset(seed=0)
    pulls = 4000
    for arm, mean in ((0, 0.3), (1, 0.8)):
        total = 0.0
        for _ in range(pulls):
            env.reset()
            total += env.step(arm)[1]
        std = np.sqrt(mean * (1 - mean) / pulls)
        assert abs(total / pulls - mean) < 4 * std


@pytest.mark.api
def test_bandit_splits_are_disjoint_checkerboards_covering_the_unit_cube():
    env = BernoulliBanditEnv(k=5)
    assert env.splits == ("train", "test")  # no ood split
    train = np.array([t.means for t in env.sample_tasks(500, split="train", seed=0)])
    test = np.array([t.means for t in env.sample_tasks(500, split="test", seed=0)])
    assert all(checkerboard_split_of(m, [0] * 5, [1] * 5) == "train" for m in train)
    assert all(checkerboard_split_of(m, [0] * 5, [1] * 5) == "test" for m in test)
    for means in (train, test):
        assert means.min() < 0.01 and means.max() > 0.99
        assert abs(means.mean() - 0.5) < 0.03  # marginally U[0, 1]


@pytest.mark.api
def test_bandit_bad_input():
    env = BernoulliBanditEnv(k=3)
    env.reset(seed=0)
    with pytest.raises(TaskError, match="k=3"):
        env.set_task(BernoulliBanditTask((0.1, 0.2)))
    with pytest.raises(TaskError, match="outside"):
        env.set_task({"means": [0.1, 0.2, 1.5]})
    with pytest.raises(TaskError, match="missing means"):
        env.set_task({})
    with pytest.raises(TaskError):
        env.set_task({"means": ["a", 0.1, 0.2]})
    with pytest.raises(ValueError, match="k"):
        BernoulliBanditEnv(k=1)


# --- bandit baselines -------------------------------------------------------------------------------------------
@pytest.mark.learning
def test_thompson_and_ucb1_beat_random_on_five_arms_and_a_hundred_pulls():
    env = BernoulliBanditEnv(k=5)
    tasks = env.sample_tasks(100, split="test", seed=0)
    rng = np.random.default_rng(0)
    returns = {"random": [], "ucb1": [], "thompson": [], "oracle": []}
    for task in tasks:
        returns["random"].append(random_policy_return(task.means, 100, rng, runs=20))
        returns["ucb1"].append(ucb1_return(task.means, 100, rng, runs=20))
        returns["thompson"].append(thompson_sampling_return(task.means, 100, rng, runs=20))
        returns["oracle"].append(oracle_return(task.means, 100))
    mean = {name: float(np.mean(values)) for name, values in returns.items()}
    assert mean["random"] == pytest.approx(100 * np.mean([t.means for t in tasks]), abs=1.5)
    assert mean["thompson"] > mean["random"] + 20, mean
    assert mean["ucb1"] > mean["random"] + 10, mean
    assert mean["thompson"] > mean["ucb1"], mean  # the known ordering at this horizon
    assert mean["oracle"] > mean["thompson"], mean


@pytest.mark.math
def test_baselines_are_exact_on_degenerate_bandits_and_reproducible():
    rng = np.random.default_rng(0)
    for policy in (random_policy_return, ucb1_return, thompson_sampling_return):
        assert policy([1.0, 1.0, 1.0], 50, rng, runs=5) == 50.0
        assert policy([0.0, 0.0], 50, rng, runs=5) == 0.0
        assert policy([0.3, 0.7], 0, rng) == 0.0
        a = policy([0.2, 0.6, 0.4], 30, np.random.default_rng(9), runs=50)
        b = policy([0.2, 0.6, 0.4], 30, np.random.default_rng(9), runs=50)
        assert a == b
        with pytest.raises(ValueError, match="probabilities"):
            policy([0.5, 1.2], 10, rng)
        with pytest.raises(ValueError, match="pulls"):
            policy([0.5, 0.2], -1, rng)
    # with 0/1 means the rewards are deterministic: the vectorised UCB1 must equal a naive loop exactly
    means = [0.0, 1.0, 0.0, 1.0]
    counts, sums, total = [0] * 4, [0.0] * 4, 0.0
    for t in range(60):
        if t < 4:
            arm = t
        else:
            scores = [sums[i] / counts[i] + math.sqrt(2 * math.log(t) / counts[i]) for i in range(4)]
            arm = scores.index(max(scores))
        counts[arm] += 1
        sums[arm] += means[arm]
        total += means[arm]
    assert 30 < total < 60  # it keeps exploring logarithmically
    assert ucb1_return(means, 60, rng, runs=3) == total


# --- tabular MDP -------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_mdp_episode_terminates_after_the_horizon_with_one_hot_states():
    env = gym.make("metarl/TabularMDP-v0")
    task = env.unwrapped.sample_tasks(1, seed=0)[0]
    obs, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == task and info["state"] == 0
    np.testing.assert_array_equal(obs, np.eye(10, dtype=np.float32)[0])
    for t in range(10):
        obs, reward, terminated, truncated, info = env.step(t % 5)
        assert obs.sum() == 1.0 and obs[info["state"]] == 1.0
        assert info["reward_mean"] + info["reward_noise"] == reward
        assert info["task"] == task
        assert terminated == (t == 9) and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)


@pytest.mark.api
def test_mdp_splits_by_seed_parity_and_parameters_follow_from_the_seed():
    env = TabularMDPEnv()
    assert env.splits == ("train", "test")  # no ood split
    assert all(t.seed % 2 == 0 for t in env.sample_tasks(200, split="train", seed=0))
    assert all(t.seed % 2 == 1 for t in env.sample_tasks(200, split="test", seed=0))
    transitions, means = tabular_mdp_parameters(12)
    again, means_again = tabular_mdp_parameters(12)
    np.testing.assert_array_equal(transitions, again)
    np.testing.assert_array_equal(means, means_again)
    assert transitions.shape == (10, 5, 10) and means.shape == (10, 5)
    np.testing.assert_allclose(transitions.sum(axis=-1), 1.0)
    assert not np.allclose(transitions, tabular_mdp_parameters(13)[0])
    descriptor = env.task_descriptor(TabularMDPTask(12))
    assert descriptor.shape == (550,) and env.task_descriptor_dim == 550
    np.testing.assert_allclose(descriptor, np.concatenate([transitions.ravel(), means.ravel()]), rtol=1e-6)
    # the law of the parameters: Dirichlet(1) rows have mean 1/S; means ~ N(1, 1)
    draws = np.stack([tabular_mdp_parameters(s)[1] for s in range(40)])
    assert abs(draws.mean() - 1.0) < 0.1 and abs(draws.std() - 1.0) < 0.1


@pytest.mark.api
def test_mdp_transitions_and_rewards_follow_the_parameters():
    env = TabularMDPEnv(horizon=1)
    env.set_task(TabularMDPTask(8))
    env.reset(seed=0)
    transitions, means = env.parameters()
    n = 3000
    counts = np.zeros(10)
    rewards = np.empty(n)
    for i in range(n):
        env.reset()
        _, rewards[i], _, _, info = env.step(3)
        counts[info["state"]] += 1
    expected = transitions[0, 3]
    assert np.all(np.abs(counts / n - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3)
    assert abs(rewards.mean() - means[0, 3]) < 4 / np.sqrt(n)
    assert abs(rewards.std() - 1.0) < 0.05


@pytest.mark.math
def test_mdp_exact_returns_match_brute_force_and_simulation():
    env = TabularMDPEnv(n_states=2, n_actions=2, horizon=3)
    env.set_task(TabularMDPTask(5))
    env.reset(seed=0)
    transitions, means = env.parameters()
    # brute force over all time-dependent deterministic policies (state -> action at each step): 4^3 of them
    best = -np.inf
    for policy in itertools.product(itertools.product(range(2), repeat=2), repeat=3):
        distribution, total = np.array([1.0, 0.0]), 0.0
        for step_policy in policy:
            actions = np.array(step_policy)
            total += distribution @ means[np.arange(2), actions]
            distribution = distribution @ transitions[np.arange(2), actions]
        best = max(best, total)
    assert env.optimal_expected_return() == pytest.approx(best, rel=1e-12)
    assert env.optimal_expected_return() >= env.random_expected_return()
    # simulated random policy agrees with the exact expectation
    big = TabularMDPEnv()
    big.set_task(TabularMDPTask(3))
    big.reset(seed=1)
    rng = np.random.default_rng(0)
    returns = []
    for _ in range(2000):
        big.reset()
        returns.append(sum(big.step(int(rng.integers(5)))[1] for _ in range(10)))
    assert abs(np.mean(returns) - big.random_expected_return()) < 4 * np.std(returns) / np.sqrt(len(returns))
    assert big.optimal_expected_return() > big.random_expected_return() + 1.0


@pytest.mark.api
def test_mdp_uniform_start_and_set_task_at_reset():
    env = TabularMDPEnv(uniform_start=True)
    env.reset(seed=0)
    starts = {env.reset()[1]["state"] for _ in range(200)}
    assert starts == set(range(10))
    env.set_task(TabularMDPTask(2))
    assert env.get_task() == TabularMDPTask(2)
    assert env._task == TabularMDPTask(0)  # not yet in force
    env.reset()
    assert env._task == TabularMDPTask(2)
    np.testing.assert_array_equal(env.transitions, tabular_mdp_parameters(2)[0])


@pytest.mark.api
def test_mdp_bad_input_and_pickling():
    env = TabularMDPEnv()
    env.reset(seed=0)
    with pytest.raises(TaskError, match="outside"):
        env.set_task(TabularMDPTask(-2))
    with pytest.raises(TaskError, match="integer"):
        env.set_task({"seed": 2.5})
    with pytest.raises(TaskError, match="missing seed"):
        env.set_task({})
    with pytest.raises(ValueError, match="n_states"):
        TabularMDPEnv(n_states=0)
    with pytest.raises(ValueError, match="noise_std"):
        TabularMDPEnv(noise_std=float("nan"))
    clone = pickle.loads(pickle.dumps(TabularMDPEnv(n_states=4, horizon=3)))
    assert clone.n_states == 4 and clone.horizon == 3
