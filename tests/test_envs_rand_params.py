"""Rand-params dynamics task distributions (envs/rand_params.py): splits, scaling from defaults, Gymnasium (the task-env
contract every id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import dataclasses
import pickle

import gymnasium as gym
import numpy as np
import pytest

import metarl.envs  # noqa: F401 - registers the ids
from metarl.envs.base import TaskError, checkerboard_split_of
from metarl.envs.rand_params import (
    HalfCheetahRandParamsEnv,
    HopperRandParamsEnv,
    Walker2dRandParamsEnv,
)
from tests.helpers import rollout

ENVS = [HalfCheetahRandParamsEnv, HopperRandParamsEnv, Walker2dRandParamsEnv]
IDS = {
    HalfCheetahRandParamsEnv: "metarl/HalfCheetahRandParams-v0",
    HopperRandParamsEnv: "metarl/HopperRandParams-v0",
    Walker2dRandParamsEnv: "metarl/Walker2dRandParams-v0",
}
REFERENCES = {
    HalfCheetahRandParamsEnv: "HalfCheetah-v5",
    HopperRandParamsEnv: "Hopper-v5",
    Walker2dRandParamsEnv: "Walker2d-v5",
}
SHAPES = {  # (observation, action, descriptor = masses + 3 inertias per body + 3 frictions per geom + dampings)
    HalfCheetahRandParamsEnv: (17, 6, 7 + 21 + 27 + 9),
    HopperRandParamsEnv: (11, 3, 4 + 12 + 15 + 6),
    Walker2dRandParamsEnv: (17, 6, 7 + 21 + 24 + 9),
}
TERMS = {
    HalfCheetahRandParamsEnv: ["forward", "ctrl"],
    HopperRandParamsEnv: ["forward", "ctrl", "survive"],
    Walker2dRandParamsEnv: ["forward", "ctrl", "survive"],
}
env_classes = pytest.mark.parametrize("env_cls", ENVS, ids=lambda c: c.__name__)


def model_values(env) -> dict[str, np.ndarray]:
    """The rescalable model arrays (world body excluded), copied."""
    m = env.model
    return {
        "body_mass": m.body_mass[1:].copy(),
        "body_inertia": m.body_inertia[1:].copy(),
        "geom_friction": m.geom_friction.copy(),
        "dof_damping": m.dof_damping.copy(),
    }


# --- API ------------------------------------------------------------------------------------------------------
@pytest.mark.api
@env_classes
def test_registered_id_builds_the_class_with_shapes_and_horizon(env_cls):
    env = gym.make(IDS[env_cls])
    obs_dim, act_dim, desc_dim = SHAPES[env_cls]
    assert type(env.unwrapped) is env_cls and env.spec.max_episode_steps == 200
    assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
    assert env.unwrapped.task_descriptor_dim == desc_dim
    obs, info = env.reset(seed=0)
    assert obs.shape == (obs_dim,) and info["task"] == env.unwrapped.get_task()
    env.close()


@pytest.mark.api
@env_classes
def test_splits_are_disjoint_by_construction_and_ood_lies_beyond(env_cls):
    env = env_cls()
    assert env.splits_disjoint is True and env.splits == ("train", "test", "ood")
    dim = SHAPES[env_cls][2]
    for split in env.splits:
        tasks = env.sample_tasks(200, split=split, seed=3)
        exponents = np.array([env.task_descriptor(t) for t in tasks], dtype=np.float64)
        assert exponents.shape == (200, dim)
        if split == "ood":
            magnitude = np.abs(exponents)
            assert magnitude.min() > 3.0 - 1e-6 and magnitude.max() <= 3.5 + 1e-6
            assert 0.4 < (exponents > 0).mean() < 0.6  # both signs
        else:
            assert np.abs(exponents).max() <= 3.0 + 1e-6
            assert exponents.min() < -2.9 and exponents.max() > 2.9  # each split spans the whole box
            assert {checkerboard_split_of(e, -3.0, 3.0) for e in exponents} == {split}


@pytest.mark.api
@env_classes
def test_scales_are_written_from_the_defaults_at_reset_and_never_compound(env_cls):
    env = env_cls()
    defaults = model_values(env)
    task = env.sample_tasks(1, split="train", seed=1)[0]
    env.set_task(task)
    assert all(np.array_equal(v, defaults[k]) for k, v in model_values(env).items())  # not before reset
    env.reset(seed=0)
    scaled = model_values(env)
    for name, base in (("body_mass", 1.5), ("body_inertia", 1.5), ("geom_friction", 1.5), ("dof_damping", 1.3)):
        exponents = np.asarray(getattr(task, name)).reshape(defaults[name].shape)
        np.testing.assert_allclose(scaled[name], defaults[name] * base**exponents, rtol=1e-12)
        assert not np.array_equal(scaled[name][defaults[name] > 0], defaults[name][defaults[name] > 0])
    assert env.model.body_mass[0] == 0.0  # the world body is left alone
    for _ in range(3):  # the same task again: the same values, not scales of scales
        env.set_task(task)
        env.reset(seed=1)
        assert all(np.array_equal(v, scaled[k]) for k, v in model_values(env).items())
    env.reset(seed=2)  # no new task: nothing rewritten
    assert all(np.array_equal(v, scaled[k]) for k, v in model_values(env).items())
    env.set_task(env.default_task())
    env.reset(seed=0)
    assert all(np.array_equal(v, defaults[k]) for k, v in model_values(env).items())
    assert all(np.array_equal(v, defaults[k]) for k, v in env.default_parameters.items())


@pytest.mark.api
def test_rand_params_subset_varies_only_those_groups():
    env = HopperRandParamsEnv(rand_params=("body_mass", "dof_damping"))
    defaults = model_values(env)
    assert env.task_descriptor_dim == 4 + 6 and env.rand_params == ("body_mass", "dof_damping")
    task = env.sample_tasks(1, seed=0)[0]
    assert task.body_inertia == () and task.geom_friction == () and len(task.body_mass) == 4
    env.reset(seed=0, options={"task": task})
    values = model_values(env)
    assert np.array_equal(values["geom_friction"], defaults["geom_friction"])
    assert np.array_equal(values["body_inertia"], defaults["body_inertia"])
    assert not np.array_equal(values["body_mass"], defaults["body_mass"])
    with pytest.raises(TaskError, match="keeps fixed"):
        env.set_task(dataclasses.replace(task, geom_friction=(0.0,) * 15))
    assert HalfCheetahRandParamsEnv(rand_params="geom_friction").task_descriptor_dim == 27


@pytest.mark.api
@env_classes
def test_dynamics_tasks_change_the_trajectory(env_cls):
    env = env_cls()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(15, SHAPES[env_cls][1]))
    light = env.default_task()
    heavy = dataclasses.replace(light, body_mass=(2.5,) * len(light.body_mass))  # every body 2.8 times heavier
    env.set_task(light)
    obs_light, _ = rollout(env, actions, seed=0)
    env.set_task(heavy)
    obs_heavy, _ = rollout(env, actions, seed=0)
    assert np.array_equal(obs_light[0], obs_heavy[0])  # same start ...
    n = min(len(obs_light), len(obs_heavy))
    assert np.abs(obs_light[1:n] - obs_heavy[1:n]).max() > 1e-2  # ... different physics


@pytest.mark.api
@env_classes
def test_reward_terms_are_the_family_terms_in_order(env_cls):
    env = env_cls()
    task = env.sample_tasks(1, split="test", seed=11)[0]
    env.reset(seed=11, options={"task": task})
    for _ in range(40):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert [k for k in info if k.startswith("reward_")] == ["reward_" + t for t in TERMS[env_cls]]
        if terminated or truncated:
            env.reset()


@pytest.mark.api
@env_classes
def test_a_pending_task_leaves_the_model_alone_until_reset(env_cls):
    env = env_cls()
    first, second = env.sample_tasks(2, split="train", seed=12)
    env.reset(seed=0, options={"task": first})
    mass = env.model.body_mass.copy()
    env.set_task(second)
    env.step(np.zeros(env.action_space.shape))
    assert np.array_equal(env.model.body_mass, mass)
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape))
    assert not np.array_equal(env.model.body_mass, mass)


@pytest.mark.api
@env_classes
def test_bad_splits_tasks_actions_and_arguments_raise(env_cls):
    env = env_cls()
    good = dataclasses.asdict(env.sample_tasks(1, seed=0)[0])
    short = dict(good, body_mass=good["body_mass"][:-1])
    too_far = dict(good, dof_damping=(3.6,) + good["dof_damping"][1:])
    not_finite = dict(good, geom_friction=(float("nan"),) + good["geom_friction"][1:])
    missing = {k: v for k, v in good.items() if k != "body_inertia"}
    for task in [short, too_far, not_finite, missing, dict(good, extra=1), dict(good, body_mass="abc"), 3.0]:
        with pytest.raises(TaskError):
            env.set_task(task)
    env.set_task(dict(good, dof_damping=(3.5,) + good["dof_damping"][1:]))  # the ood edge is allowed
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(env.action_space.shape[0] + 2))
    for kwargs in ({"rand_params": ("body_mass", "gravity")}, {"rand_params": ()}, {"log_scale_limit": 4.0}):
        with pytest.raises(ValueError):
            env_cls(**kwargs)


@pytest.mark.api
@env_classes
@pytest.mark.parametrize("poison", ["huge_qvel", "nan_qpos"])
def test_physics_blow_up_truncates_without_crashing_or_poisoning(env_cls, poison, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warning to ./MUJOCO_LOG.TXT
    env = env_cls()
    env.reset(seed=0, options={"task": env.sample_tasks(1, split="ood", seed=0)[0]})
    last_obs = env.step(np.zeros(env.action_space.shape))[0]
    if poison == "huge_qvel":
        env.data.qvel[:] = 1e308
    else:
        env.data.qpos[2] = np.nan
    obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert info["physics_unstable"] is True and truncated and not terminated
    assert reward == 0.0 and np.array_equal(obs, last_obs) and np.isfinite(obs).all()
    env.reset(seed=1)
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and "physics_unstable" not in info


@pytest.mark.api
@env_classes
def test_pickle_round_trip_keeps_the_arguments_and_steps(env_cls):
    env = env_cls(rand_params=("body_mass", "geom_friction"), ctrl_cost_weight=0.5)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is env_cls and clone.model is not env.model
    assert clone.rand_params == ("body_mass", "geom_friction") and clone.ctrl_cost_weight == 0.5
    task = env.sample_tasks(1, seed=0)[0]
    env.set_task(task)
    clone.set_task(task)
    actions = [env.action_space.sample() for _ in range(5)]
    obs_a, rew_a = rollout(env, actions, seed=3)
    obs_b, rew_b = rollout(clone, actions, seed=3)
    assert np.array_equal(obs_a, obs_b) and np.array_equal(rew_a, rew_b)


# --- determinism ----------------------------------------------------------------------------------------------
@pytest.mark.determinism
@env_classes
def test_different_seed_different_start(env_cls):
    env = env_cls()
    env.set_task(env.sample_tasks(1, seed=1)[0])
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, SHAPES[env_cls][1]))
    obs_a, _ = rollout(env, actions, seed=21)
    obs_c, _ = rollout(env, actions, seed=22)
    assert not np.array_equal(obs_a[0], obs_c[0])


# --- the default task is Gymnasium's v5 env -------------------------------------------------------------------
@pytest.mark.math
@env_classes
def test_default_task_reproduces_gymnasium_v5(env_cls):
    env = env_cls()
    reference = gym.make(REFERENCES[env_cls]).unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, size=(80, SHAPES[env_cls][1])).astype(np.float32)
    obs, _ = env.reset(seed=5)
    ref_obs, _ = reference.reset(seed=5)
    assert np.array_equal(obs, ref_obs)
    for action in actions:
        obs, reward, terminated, _, info = env.step(action)
        ref_obs, ref_reward, ref_terminated, _, ref_info = reference.step(action)
        assert np.array_equal(obs, ref_obs) and terminated == ref_terminated
        assert info["reward_forward"] == pytest.approx(ref_info["reward_forward"], rel=1e-12)
        assert reward == pytest.approx(ref_reward, rel=1e-6, abs=1e-6)  # Gymnasium sums float32 squares
        if "reward_survive" in ref_info:
            assert info["reward_survive"] == ref_info["reward_survive"]
        if terminated:
            break
