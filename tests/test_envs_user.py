"""A user's own task environment, made through Gymnasium's ``"module:EnvId"`` form, works as an agent uses it (the
task-env contract it meets like every registered id: tests/test_env_contract.py)."""

from __future__ import annotations

import pathlib

import gymnasium as gym
import numpy as np
import pytest

from metarl.envs.base import is_task_env

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
USER_ID = "tests.user_env_example:UserGoal-v0"


@pytest.fixture
def user_env(monkeypatch):
    # `tests` is importable from the repository root (a namespace package); pytest's default import mode puts only
    # the tests folder itself on sys.path, so add the root as a user running from the checkout would have it.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    env = gym.make(USER_ID)
    yield env
    env.close()


@pytest.mark.api
def test_module_colon_id_imports_and_registers_the_user_env(user_env):
    assert user_env.spec.id == "UserGoal-v0" and user_env.spec.max_episode_steps == 20
    assert type(user_env.unwrapped).__module__ == "tests.user_env_example"
    assert is_task_env(user_env) and is_task_env(user_env.unwrapped)
    assert not is_task_env(gym.make("CartPole-v1"))


@pytest.mark.api
def test_user_env_follows_the_task_protocol_as_an_agent_uses_it(user_env):
    base = user_env.unwrapped
    train = base.sample_tasks(5, split="train", seed=0)
    test = base.sample_tasks(5, split="test", seed=0)
    assert all(t["goal"] < 0 for t in train) and all(t["goal"] >= 0 for t in test)
    returns = {}
    for task in (train[0], test[0]):
        base.set_task(task)
        obs, _ = user_env.reset(seed=0)
        total, done = 0.0, False
        while not done:  # move towards the goal: the task really changes the reward
            action = np.clip([task["goal"] - obs[0]], -0.25, 0.25).astype(np.float32)
            obs, reward, terminated, truncated, info = user_env.step(action)
            assert info["reward_distance"] == reward
            total += reward
            done = terminated or truncated
        returns[task["goal"]] = total
    # reaching the goal within 4 steps costs at most 0.75 + 0.5 + 0.25 (+ float32 rounding) in total
    assert all(r > -1.6 for r in returns.values()), returns
    base.set_task(test[0])
    user_env.reset(seed=0)
    wrong_way = sum(user_env.step(np.array([-0.25], np.float32))[1] for _ in range(20))
    assert wrong_way < returns[test[0]["goal"]] - 20
