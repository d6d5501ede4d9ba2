"""Classic-control context envs and the generic AttributeTaskWrapper: task law, fidelity to Gymnasium (the task-env
contract every id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import math
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from gymnasium.utils.env_checker import check_env

import metarl.envs  # noqa: F401  (registers the ids)
from metarl.envs.base import TaskError, is_task_env
from metarl.envs.classic_control import (
    AcrobotContextEnv,
    CartPoleContextEnv,
    MountainCarContinuousContextEnv,
    PendulumContextEnv,
)
from metarl.envs.wrappers import AttributeContext, AttributeTaskWrapper, ContextTask

# (context class, Gymnasium class, registered id, episode length)
CASES = [
    (CartPoleContextEnv, CartPoleEnv, "metarl/CartPoleContext-v0", 500),
    (PendulumContextEnv, PendulumEnv, "metarl/PendulumContext-v0", 200),
    (MountainCarContinuousContextEnv, Continuous_MountainCarEnv, "metarl/MountainCarContinuousContext-v0", 999),
    (AcrobotContextEnv, AcrobotEnv, "metarl/AcrobotContext-v0", 500),
]
CONTEXT_CLASSES = [case[0] for case in CASES]


def quiet_check_env(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker's advice on unbounded or asymmetric spaces
        check_env(env, skip_render_check=True)


def run(env: gym.Env, actions, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    observations, rewards, ends = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(float(reward))
        ends.append((terminated, truncated))
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards), ends


def action_sequence(env: gym.Env, n: int = 120, seed: int = 0) -> list:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


# --- the context envs -------------------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.parametrize("cls, _, env_id, horizon", CASES)
def test_registered_with_the_horizon_and_every_split(cls, _, env_id, horizon):
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, cls) and env.spec.max_episode_steps == horizon
    assert is_task_env(env) and env.unwrapped.splits == ("train", "test", "ood")


@pytest.mark.api
@pytest.mark.parametrize("cls, gym_cls, env_id, _", CASES)
def test_nominal_task_reproduces_gymnasium(cls, gym_cls, env_id, _):
    ours, theirs = cls(), gym_cls()
    assert ours.get_task().as_dict() == ours.nominal_constants
    actions = action_sequence(theirs)
    obs_ours, rew_ours, ends_ours = run(ours, actions)
    obs_theirs, rew_theirs, ends_theirs = run(theirs, actions)
    assert ends_ours == ends_theirs
    if cls is MountainCarContinuousContextEnv:  # float64 here, mixed float32/float64 in Gymnasium
        np.testing.assert_allclose(obs_ours, obs_theirs, atol=1e-6)
        np.testing.assert_allclose(rew_ours, rew_theirs, atol=1e-6)
    else:
        np.testing.assert_array_equal(obs_ours, obs_theirs)
        np.testing.assert_allclose(rew_ours, rew_theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.api
@pytest.mark.parametrize("cls, gym_cls, env_id, _", CASES)
def test_a_task_is_gymnasium_with_those_constants_and_derived_ones(cls, gym_cls, env_id, _):
    ours = cls()
    task = ours.sample_tasks(1, split="ood", seed=5)[0]
    ours.set_task(task)
    ours.reset(seed=0)
    theirs = gym_cls()
    for name, value in task.values:
        assert getattr(ours, name) == value
        setattr(theirs, name, value)
    if cls is CartPoleContextEnv:
        theirs.total_mass = theirs.masspole + theirs.masscart
        theirs.polemass_length = theirs.masspole * theirs.length
        assert ours.total_mass == theirs.total_mass and ours.polemass_length == theirs.polemass_length
    if cls is AcrobotContextEnv:
        theirs.LINK_COM_POS_1, theirs.LINK_COM_POS_2 = theirs.LINK_LENGTH_1 / 2, theirs.LINK_LENGTH_2 / 2
        assert ours.LINK_COM_POS_2 == theirs.LINK_COM_POS_2
    if cls is MountainCarContinuousContextEnv:
        return  # Gymnasium hard-codes the slope constant; the nominal test covers the shared equations
    actions = action_sequence(theirs, seed=1)
    obs_ours, rew_ours, _ = run(ours, actions, seed=4)
    obs_theirs, rew_theirs, _ = run(theirs, actions, seed=4)
    np.testing.assert_array_equal(obs_ours, obs_theirs)
    np.testing.assert_allclose(rew_ours, rew_theirs, rtol=1e-12, atol=1e-12)
    # and the task matters: the nominal constants give another trajectory
    obs_nominal, _, _ = run(cls(), actions, seed=4)
    assert obs_nominal.shape != obs_ours.shape or not np.allclose(obs_nominal, obs_ours)


@pytest.mark.api
def test_mountain_car_gravity_and_power_change_the_dynamics():
    env = MountainCarContinuousContextEnv()
    env.reset(seed=0)
    x0 = float(env.state[0])
    env.step([1.0])
    nominal_velocity = float(env.state[1])
    assert nominal_velocity == pytest.approx(0.0015 - 0.0025 * math.cos(3 * x0))
    env.set_task({"power": 0.003, "gravity": 0.001})
    env.reset(seed=0)
    env.step([1.0])
    assert float(env.state[1]) == pytest.approx(0.003 - 0.001 * math.cos(3 * x0))


@pytest.mark.api
@pytest.mark.parametrize("cls", CONTEXT_CLASSES)
def test_options_task_is_applied_and_the_descriptor_is_the_constants(cls):
    env = cls()
    task = env.sample_tasks(1, split="test", seed=2)[0]
    _, info = env.reset(seed=1, options={"task": task})
    assert info["task"] == task
    np.testing.assert_allclose(env.task_descriptor(), [value for _, value in task.values], rtol=1e-6)


@pytest.mark.api
@pytest.mark.parametrize("cls", CONTEXT_CLASSES)
def test_splits_are_disjoint_log_checkerboards_and_ood_lies_outside(cls):
    env = cls()
    nominal = np.array(list(env.nominal_constants.values()))
    for split in ("train", "test", "ood"):
        tasks = env.sample_tasks(300, split=split, seed=0)
        ratios = np.array([[value for _, value in t.values] for t in tasks]) / nominal
        assert all(env.context.split_of(t) == split for t in tasks)
        if split == "ood":
            outside = (ratios < 0.5) | (ratios > 2.0)
            assert outside.any(axis=1).all() and np.all((ratios >= 0.25) & (ratios <= 4.0))
            assert ratios.min() < 0.27 and ratios.max() > 3.7
        else:
            assert np.all((ratios >= 0.5) & (ratios <= 2.0))
            assert ratios.min() < 0.52 and ratios.max() > 1.9
            assert abs(np.median(np.log(ratios))) < 0.1  # log-uniform about the nominal value


@pytest.mark.api
def test_set_task_changes_the_constants_at_reset_and_mappings_are_tasks():
    env = CartPoleContextEnv()
    task = env.sample_tasks(1, seed=0)[0]
    env.set_task(task)
    assert env.get_task() == task and env.gravity == 9.8  # pending until reset
    env.reset(seed=0)
    assert env.gravity == task["gravity"] and env.total_mass == task["masspole"] + task["masscart"]
    env.set_task(task.as_dict())  # a {name: value} mapping works too
    assert env.get_task() == task


@pytest.mark.api
def test_varied_constants_subset_and_pickling():
    env = CartPoleContextEnv(varied_constants=["gravity", "length"], scale_range=(0.8, 1.25), ood_factor=None)
    assert env.splits == ("train", "test") and env.task_descriptor_dim == 2
    task = env.sample_tasks(1, seed=0)[0]
    assert task.names == ("gravity", "length") and 0.8 * 9.8 <= task["gravity"] <= 1.25 * 9.8
    env.set_task(task)
    env.reset(seed=0)
    assert env.masspole == 0.1 and env.force_mag == 10.0
    clone = pickle.loads(pickle.dumps(env))
    assert clone.context.names == ("gravity", "length") and clone.splits == ("train", "test")


@pytest.mark.api
@pytest.mark.parametrize("cls", CONTEXT_CLASSES)
def test_bad_input_raises_clear_errors(cls):
    env = cls()
    env.reset(seed=0)
    name = env.context.names[0]
    with pytest.raises(TaskError, match="missing"):
        env.set_task({name: env.nominal_constants[name]})
    with pytest.raises(TaskError, match="unknown"):
        env.set_task({**env.nominal_constants, "wind": 1.0})
    with pytest.raises(TaskError, match="outside"):
        env.set_task({**env.nominal_constants, name: 10 * env.nominal_constants[name]})
    with pytest.raises(TaskError, match="not finite"):
        env.set_task({**env.nominal_constants, name: float("nan")})
    if env.action_space.shape:  # NaN and out-of-range Discrete actions: tests/test_env_contract.py
        with pytest.raises(ValueError):
            env.step(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="varied_constants"):
        cls(varied_constants=["speed_of_light"])
    with pytest.raises(ValueError, match="scale_range"):
        cls(scale_range=(2.0, 0.5))
    with pytest.raises(ValueError, match="ood_factor"):
        cls(ood_factor=1.0)


@pytest.mark.api
@pytest.mark.parametrize("cls", CONTEXT_CLASSES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_ends_the_episode_without_crashing(cls, bad):
    env = cls()
    first, _ = env.reset(seed=0)
    env.state = np.full(len(env.state), bad)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert info["physics_unstable"] and truncated and not terminated and reward == 0.0
    np.testing.assert_array_equal(obs, first)  # the last finite observation
    if cls is CartPoleContextEnv:  # an overflow during the step (not only a poisoned state) is caught too
        env.reset(seed=0)
        env.state = np.array([0.0, 0.0, 0.1, 1e200])
        with np.errstate(all="ignore"):
            _, _, _, truncated, info = env.step(1)
        assert truncated and info["physics_unstable"]
    env.reset(seed=0)
    assert np.isfinite(env.step(env.action_space.sample())[0]).all()


# --- the generic wrapper ------------------------------------------------------------------------------------------
def derive_cartpole(cartpole, values):
    cartpole.total_mass = cartpole.masspole + cartpole.masscart
    cartpole.polemass_length = cartpole.masspole * cartpole.length


@pytest.mark.api
def test_wrapper_turns_any_env_into_a_task_env():
    calls = []

    def on_set(cartpole, values):
        calls.append(values)
        derive_cartpole(cartpole, values)

    env = AttributeTaskWrapper(
        gym.make("CartPole-v1"), {"gravity": (4.9, 19.6), "masspole": (0.05, 0.2)}, log_uniform=True, on_set=on_set
    )
    outer = gym.wrappers.RecordEpisodeStatistics(env)
    assert is_task_env(outer) and is_task_env(env)
    tasks = outer.unwrapped.sample_tasks(3, split="test", seed=0)  # what agents call
    assert tasks == env.sample_tasks(3, split="test", seed=0)
    outer.unwrapped.set_task(tasks[0])
    assert env.get_task() == tasks[0] and outer.unwrapped.get_task() == tasks[0]
    obs, info = outer.reset(seed=0)
    assert info["task"] == tasks[0]
    cartpole = env.unwrapped
    assert cartpole.gravity == tasks[0]["gravity"] and cartpole.masspole == tasks[0]["masspole"]
    assert cartpole.total_mass == cartpole.masscart + tasks[0]["masspole"] and calls[-1] == tasks[0].as_dict()
    _, reward, _, _, info = outer.step(0)
    assert info["task"] == tasks[0] and info["reward_env"] == reward
    np.testing.assert_allclose(outer.unwrapped.task_descriptor(), [tasks[0]["gravity"], tasks[0]["masspole"]])
    quiet_check_env(env)
    # options={"task": ...} is stripped before the wrapped env sees the options
    env.reset(seed=1, options={"task": tasks[1]})
    assert cartpole.gravity == tasks[1]["gravity"]


@pytest.mark.api
def test_wrapper_task_law_and_defaults():
    env = AttributeTaskWrapper(gym.make("Pendulum-v1"), {"g": (5.0, 20.0), "m": (0.5, 2.0)})
    assert env.get_task().as_dict() == {"g": 10.0, "m": 1.0}  # the env's own values lie in the box
    assert env.context.outer_low.tolist() == [2.5, 0.25] and env.context.outer_high.tolist() == [27.5, 2.75]
    for split in ("train", "test", "ood"):
        tasks = env.sample_tasks(200, split=split, seed=1)
        assert all(env.context.split_of(t) == split for t in tasks)
    ood = np.array([[v for _, v in t.values] for t in env.sample_tasks(200, split="ood", seed=1)])
    assert np.all(ood > 0) and np.all((ood[:, 0] < 5) | (ood[:, 0] > 20) | (ood[:, 1] < 0.5) | (ood[:, 1] > 2))
    # the env's value outside the box: the default is the box centre (geometric, for log-uniform ranges)
    centred = AttributeTaskWrapper(gym.make("Pendulum-v1"), {"g": (1.0, 4.0)}, log_uniform=True, ood_factor=None)
    assert centred.get_task()["g"] == pytest.approx(2.0) and centred.unwrapped.g == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown split"):
        centred.sample_tasks(1, split="ood")
    with pytest.raises(TaskError, match="outside"):
        centred.set_task({"g": 5.0})  # no ood shell: only the box is allowed


@pytest.mark.api
def test_wrapper_physics_blow_up_and_nan_actions():
    env = AttributeTaskWrapper(gym.make("Pendulum-v1").unwrapped, {"g": (5.0, 20.0)})
    first, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan], np.float32))
    env.unwrapped.state = np.array([np.nan, 0.0])
    obs, reward, terminated, truncated, info = env.step(np.array([0.0], np.float32))
    assert info["physics_unstable"] and truncated and not terminated and reward == 0.0
    np.testing.assert_array_equal(obs, first)


@pytest.mark.api
def test_wrapper_rejects_bad_arguments_at_construction():
    with pytest.raises(ValueError, match="no attribute 'gravty'.*gravity"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"gravty": (1.0, 2.0)})
    with pytest.raises(ValueError, match="non-numeric attribute 'kinematics_integrator'"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"kinematics_integrator": (1.0, 2.0)})
    with pytest.raises(ValueError, match="low < high"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"gravity": (2.0, 1.0)})
    with pytest.raises(ValueError, match="positive"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"gravity": (0.0, 1.0)}, log_uniform=True)
    with pytest.raises(ValueError, match="ood_factor"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"gravity": (1.0, 2.0)}, ood_factor=0.5)
    with pytest.raises(ValueError, match="already implements"):
        AttributeTaskWrapper(gym.make("metarl/CartPoleContext-v0"), {"force_mag": (5.0, 20.0)})
    with pytest.raises(ValueError, match="on_set"):
        AttributeTaskWrapper(gym.make("CartPole-v1"), {"gravity": (5.0, 20.0)}, on_set="total_mass")


@pytest.mark.math
def test_context_task_normalises_and_validates():
    context = AttributeContext({"a": (1.0, 2.0), "b": (-1.0, 1.0)}, ood_factor=3.0)
    assert context.outer_low.tolist() == [1.0 / 3.0, -3.0] and context.outer_high.tolist() == [3.0, 3.0]
    task = context.validate({"b": 0.5, "a": 1})  # reordered into the canonical order, ints made floats
    assert task == ContextTask((("a", 1.0), ("b", 0.5)))
    assert context.validate({"values": [["a", 1.5], ["b", 0.0]]}) == ContextTask((("a", 1.5), ("b", 0.0)))
    with pytest.raises(TaskError):
        ContextTask((("a",),))
    with pytest.raises(TaskError, match="must be numbers"):
        context.validate({"a": "heavy", "b": 0.0})
    with pytest.raises(TaskError, match="expected a ContextTask"):
        context.validate(3.0)
