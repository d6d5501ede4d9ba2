"""Morphology task distributions (envs/morphology.py): geometry of the rebuilt models, mass, determinism across rebuilds
(the task-env contract every id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import ctypes.util
import dataclasses
import os
import pickle
import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import metarl.envs  # noqa: F401 - registers the ids
from metarl.envs.base import TaskError, checkerboard_split_of
from metarl.envs.morphology import AntMorphEnv, HalfCheetahMorphEnv, MorphologyTask
from metarl.envs.mujoco_base import gymnasium_asset

ENVS = [HalfCheetahMorphEnv, AntMorphEnv]
IDS = {HalfCheetahMorphEnv: "metarl/HalfCheetahMorph-v0", AntMorphEnv: "metarl/AntMorph-v0"}
SHAPES = {HalfCheetahMorphEnv: (17, 6), AntMorphEnv: (105, 8)}
env_classes = pytest.mark.parametrize("env_cls", ENVS, ids=lambda c: c.__name__)


def uniform_task(env, length: float = 1.0, thickness: float = 1.0) -> MorphologyTask:
    n = len(env.limb_names)
    return MorphologyTask(length_scale=(length,) * n, thickness_scale=(thickness,) * n)


def one_limb_task(env, limb: str, length: float = 1.0, thickness: float = 1.0) -> MorphologyTask:
    i = env.limb_names.index(limb)
    lengths, thicknesses = [1.0] * len(env.limb_names), [1.0] * len(env.limb_names)
    lengths[i], thicknesses[i] = length, thickness
    return MorphologyTask(length_scale=tuple(lengths), thickness_scale=tuple(thicknesses))


def geom_id(model: mujoco.MjModel, name: str) -> int:
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)


def capsule_ends(model: mujoco.MjModel, gid: int) -> tuple[np.ndarray, np.ndarray]:
    """Both ends of a capsule's axis in its body's frame."""
    axis = np.zeros(3)
    mujoco.mju_rotVecQuat(axis, np.array([0.0, 0.0, 1.0]), model.geom_quat[gid])
    half = model.geom_size[gid, 1] * axis
    return model.geom_pos[gid] - half, model.geom_pos[gid] + half


def segment_distance(a0, a1, b0, b1, points: int = 201) -> float:
    """Distance between two segments, sampled finely (accurate to length/points)."""
    t = np.linspace(0.0, 1.0, points)[:, None]
    pa, pb = a0 + t * (a1 - a0), b0 + t * (b1 - b0)
    return float(np.min(np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)))


def lowest_point(model: mujoco.MjModel) -> float:
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    bottoms = []
    for gid in range(model.ngeom):
        if model.geom_bodyid[gid] == 0:
            continue
        # capsule ends in world frame (a sphere's "ends" are both its centre: its size[1] is 0)
        ends = [
            data.xpos[model.geom_bodyid[gid]] + data.xmat[model.geom_bodyid[gid]].reshape(3, 3) @ e
            for e in capsule_ends(model, gid)
        ]
        bottoms.append(min(ends[0][2], ends[1][2]) - model.geom_size[gid, 0])
    return min(bottoms)


# --- API -----------------------------------------------------------------------------------------------------
@pytest.mark.api
@env_classes
def test_spaces_stay_the_same_for_tasks_of_every_split(env_cls):
    env = env_cls()
    obs_dim, act_dim = SHAPES[env_cls]
    assert env.splits == ("train", "test", "ood")
    for split in env.splits:
        for task in env.sample_tasks(2, split=split, seed=11):
            obs, _ = env.reset(seed=0, options={"task": task})  # a rebuilt model
            assert obs.shape == (obs_dim,) and env.observation_space.contains(obs)
            assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)


@pytest.mark.api
@env_classes
def test_registered_id_makes_a_task_env(env_cls):
    env = gym.make(IDS[env_cls])
    assert isinstance(env.unwrapped, env_cls)
    assert env.spec.max_episode_steps == 200
    task = env.unwrapped.sample_tasks(1, split="test", seed=0)[0]
    obs, info = env.reset(seed=0, options={"task": task})
    assert obs.shape == (SHAPES[env_cls][0],) and info["task"] == task
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert info["task"] == task and np.isfinite(reward)
    env.close()


@pytest.mark.api
@env_classes
def test_splits_are_disjoint_seeded_and_in_range(env_cls):
    env = env_cls()
    n = len(env.limb_names)
    low = [env.length_scale_range[0]] * n + [env.thickness_scale_range[0]] * n
    high = [env.length_scale_range[1]] * n + [env.thickness_scale_range[1]] * n
    train = env.sample_tasks(300, split="train", seed=1)
    test = env.sample_tasks(300, split="test", seed=1)
    for split, tasks in (("train", train), ("test", test)):
        scales = np.array([env.task_descriptor(t) for t in tasks], dtype=np.float64)
        assert scales.shape == (300, 2 * n)
        assert np.all(scales >= low) and np.all(scales <= high)
        assert {checkerboard_split_of(s, low, high) for s in scales} == {split}
    # ood: every scale outside the training range, inside the ood range
    ood = np.array([env.task_descriptor(t) for t in env.sample_tasks(300, split="ood", seed=1)], dtype=np.float64)
    lengths, thicknesses = ood[:, :n], ood[:, n:]
    for values, inner, outer in (
        (lengths, env.length_scale_range, env.ood_length_scale_range),
        (thicknesses, env.thickness_scale_range, env.ood_thickness_scale_range),
    ):
        assert np.all((values < inner[0]) | (values > inner[1]))
        assert np.all((values >= outer[0]) & (values <= outer[1]))
        assert np.any(values < inner[0]) and np.any(values > inner[1])  # both bands are used
    # seed=None draws from the env's generator, itself seeded by reset(seed=...)
    other = env_cls()
    env.reset(seed=5)
    other.reset(seed=5)
    assert env.sample_tasks(3) == other.sample_tasks(3)


@pytest.mark.api
@env_classes
def test_task_descriptor_is_the_scales(env_cls):
    env = env_cls()
    task = env.sample_tasks(1, split="ood", seed=3)[0]
    env.set_task(task)
    descriptor = env.task_descriptor()
    assert descriptor.dtype == np.float32 and descriptor.shape == (env.task_descriptor_dim,)
    assert env.task_descriptor_dim == 2 * len(env.limb_names)
    np.testing.assert_allclose(descriptor, np.array(task.length_scale + task.thickness_scale), rtol=1e-6)


@pytest.mark.api
@env_classes
def test_bad_tasks_raise_task_error(env_cls):
    env = env_cls()
    n = len(env.limb_names)
    good = dataclasses.asdict(uniform_task(env))
    bad_tasks = [
        {"length_scale": good["length_scale"]},  # missing key
        dict(good, color="red"),  # unknown key
        dict(good, length_scale=(1.0,) * (n - 1)),  # wrong number of limbs
        dict(good, thickness_scale=(1.0,) * (n - 1) + (3.0,)),  # out of range
        dict(good, length_scale=(0.1,) + (1.0,) * (n - 1)),  # below the range
        dict(good, length_scale=(float("nan"),) + (1.0,) * (n - 1)),  # not finite
        dict(good, length_scale="long"),  # not numbers
        "a long-legged cheetah",  # not a task at all
    ]
    for bad in bad_tasks:
        with pytest.raises(TaskError):
            env.set_task(bad)
    assert env.get_task() == uniform_task(env)  # nothing was installed
    with pytest.raises(ValueError, match="length_scale_range"):
        env_cls(length_scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="must contain"):
        env_cls(ood_thickness_scale_range=(0.6, 2.0))


@pytest.mark.api
@env_classes
def test_physics_blow_up_truncates_without_poisoning(env_cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warning to ./MUJOCO_LOG.TXT
    env = env_cls()
    env.reset(seed=0, options={"task": uniform_task(env, 1.3, 0.7)})
    last_obs = env.step(np.zeros(env.action_space.shape))[0]
    env.data.qvel[:] = 1e12  # far past anything MuJoCo will integrate
    obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert info["physics_unstable"] is True and truncated and not terminated
    assert reward == 0.0 and np.array_equal(obs, last_obs) and np.isfinite(obs).all()
    obs, _ = env.reset(seed=1)  # a fresh episode works again
    assert np.isfinite(env.step(env.action_space.sample())[0]).all()


@pytest.mark.api
@env_classes
def test_reward_terms_are_the_family_terms(env_cls):
    env = env_cls()
    env.set_task(env.sample_tasks(1, split="test", seed=4)[0])
    env.reset(seed=4)
    names = {HalfCheetahMorphEnv: {"forward", "ctrl"}, AntMorphEnv: {"forward", "survive", "ctrl", "contact"}}
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        terms = {k[len("reward_") :]: v for k, v in info.items() if k.startswith("reward_")}
        assert set(terms) == names[env_cls]
        assert terms["ctrl"] <= 0.0
        if terminated or truncated:
            env.reset()


@pytest.mark.api
def test_ant_healthy_range_follows_shin_length():
    env = AntMorphEnv()
    long_shins = MorphologyTask(
        length_scale=tuple(1.5 if name.endswith("shin") else 0.5 for name in env.limb_names),
        thickness_scale=(1.0,) * 8,
    )
    assert env.task_healthy_z_range(long_shins) == pytest.approx((0.2, 1.5))
    assert env.task_healthy_z_range(uniform_task(env, 0.5)) == pytest.approx((0.2, 1.0))
    # the torso starts at 0.75 m: a range ending below it terminates on the first step, with no survive reward
    low = AntMorphEnv(healthy_z_range=(0.2, 0.5))
    low.reset(seed=0)
    _, _, terminated, _, info = low.step(np.zeros(8))
    assert terminated and info["reward_survive"] == 0.0
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.zeros(8))
    assert not terminated and info["reward_survive"] == 1.0


@pytest.mark.api
@env_classes
def test_set_task_takes_effect_at_reset_only(env_cls):
    env = env_cls()
    env.reset(seed=0)
    limb = env.limb_names[1]
    gid = geom_id(env.model, env.limb_geoms[1][1])
    default_half_length = env.model.geom_size[gid, 1]
    task = one_limb_task(env, limb, length=1.4, thickness=0.6)
    env.set_task(task)
    assert env.get_task() == task  # pending tasks count as "in force" for get_task
    assert env.model.geom_size[gid, 1] == default_half_length  # ... but the model is untouched
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["task"] == uniform_task(env)  # the episode runs on with the old morphology
    _, info = env.reset()
    assert info["task"] == task
    assert env.model.geom_size[gid, 1] == pytest.approx(1.4 * default_half_length, rel=1e-12)
    assert env.step(env.action_space.sample())[4]["task"] == task


@pytest.mark.api
@env_classes
def test_pickle_round_trip_keeps_arguments_and_task(env_cls):
    env = env_cls(preserve_mass=True, reset_noise_scale=0.05)
    task = env.sample_tasks(1, split="test", seed=8)[0]
    env.set_task(task)  # pending: pickling must carry it
    clone = pickle.loads(pickle.dumps(env))
    assert isinstance(clone, env_cls) and clone.get_task() == task
    assert clone.preserve_mass and clone.reset_noise_scale == 0.05
    obs_a, _ = env.reset(seed=3)
    obs_b, _ = clone.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(env.model.geom_size, clone.model.geom_size)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, env.action_space.shape[0]))
    for action in actions:
        np.testing.assert_array_equal(env.step(action)[0], clone.step(action)[0])


@pytest.mark.api
@env_classes
def test_models_are_cached_per_task(env_cls):
    env = env_cls(model_cache_size=2)
    a, b, c = env.sample_tasks(3, split="train", seed=9)
    models = {}
    for task in (a, b, a):
        env.reset(options={"task": task})
        models.setdefault(task, env.model)
        assert env.model is models[task]  # revisiting a task reuses its compiled model
    for task in (c, b):  # least recently used (a) is dropped beyond two models
        env.reset(options={"task": task})
    env.reset(options={"task": a})
    assert env.model is not models[a]


# --- geometry and mass ------------------------------------------------------------------------------------------
@pytest.mark.math
@env_classes
@pytest.mark.parametrize("preserve_mass", [False, True])
def test_default_task_reproduces_gymnasium_model(env_cls, preserve_mass):
    env = env_cls(preserve_mass=preserve_mass)
    reference = mujoco.MjModel.from_xml_path(gymnasium_asset(env.xml_file))
    for field in ("body_pos", "geom_pos", "geom_quat", "geom_size", "body_mass", "body_inertia", "qpos0"):
        np.testing.assert_allclose(getattr(env.model, field), getattr(reference, field), rtol=1e-12, atol=1e-14)


@pytest.mark.math
@env_classes
def test_longer_and_thicker_limbs_really_change_the_model(env_cls):
    env = env_cls()
    default = env.model
    for i, (limb, geom_name) in enumerate(env.limb_geoms):
        env.reset(options={"task": one_limb_task(env, limb, length=1.4, thickness=0.6)})
        gid = geom_id(env.model, geom_name)
        assert env.model.geom_size[gid, 1] == pytest.approx(1.4 * default.geom_size[gid, 1], rel=1e-12)
        assert env.model.geom_size[gid, 0] == pytest.approx(0.6 * default.geom_size[gid, 0], rel=1e-12)
        others = [geom_id(env.model, g) for j, (_, g) in enumerate(env.limb_geoms) if j != i]
        np.testing.assert_array_equal(env.model.geom_size[others], default.geom_size[others])
        body = env.model.geom_bodyid[gid]
        children = np.flatnonzero(env.model.body_parentid == body)
        for child in children:  # the next limb's joint moved outwards
            far_default = np.linalg.norm(default.body_pos[child])
            assert np.linalg.norm(env.model.body_pos[child]) > far_default + 0.1 * default.geom_size[gid, 1]
    env.reset(options={"task": uniform_task(env, length=1.4)})
    assert env.model.body_mass.sum() > 1.1 * default.body_mass.sum()  # mass follows geometry by default


@pytest.mark.math
@env_classes
def test_limbs_stay_connected(env_cls):
    env = env_cls()
    default = env.model
    tasks = [uniform_task(env, 2.0, 0.25), uniform_task(env, 0.25, 0.25), uniform_task(env, 0.25, 2.0)]
    tasks += [t for s in ("train", "test", "ood") for t in env.sample_tasks(3, split=s, seed=12)]
    for task in tasks:
        env.reset(options={"task": task})
        model = env.model
        for i, (_, geom_name) in enumerate(env.limb_geoms):
            gid = geom_id(model, geom_name)
            body = model.geom_bodyid[gid]
            ends = capsule_ends(model, gid)
            far = max(ends, key=np.linalg.norm)
            default_far = max(capsule_ends(default, gid), key=np.linalg.norm)
            radius = model.geom_size[gid, 0]
            for child in np.flatnonzero(model.body_parentid == body):
                # the child's joint sits where it sits in the default model relative to the capsule's far end,
                # measured in capsule radii ...
                offset = model.body_pos[child] - far
                default_offset = default.body_pos[child] - default_far
                np.testing.assert_allclose(offset, task.thickness_scale[i] * default_offset, atol=1e-9)
                # ... so it lies inside the parent capsule: the limbs are connected at every scale
                assert segment_distance(*ends, model.body_pos[child], model.body_pos[child]) < radius, geom_name
                # and the two capsules overlap
                child_geom = int(np.flatnonzero(model.geom_bodyid == child)[0])
                child_ends = []
                for end in capsule_ends(model, child_geom):
                    rotated = np.zeros(3)
                    mujoco.mju_rotVecQuat(rotated, end, model.body_quat[child])
                    child_ends.append(model.body_pos[child] + rotated)
                gap = segment_distance(*ends, *child_ends)
                assert gap <= radius + model.geom_size[child_geom, 0], (task, geom_name)


@pytest.mark.math
@env_classes
def test_initial_pose_keeps_lowest_point_height(env_cls):
    env = env_cls()
    reference = lowest_point(env.model)
    for task in (uniform_task(env, 1.5, 1.5), uniform_task(env, 0.5, 0.5), uniform_task(env, 1.0, 2.0)):
        env.reset(options={"task": task})
        assert lowest_point(env.model) == pytest.approx(reference, abs=1e-9)


@pytest.mark.math
@env_classes
def test_preserve_mass_keeps_total_mass(env_cls):
    env = env_cls(preserve_mass=True)
    total = env.model.body_mass.sum()
    tasks = [uniform_task(env, 2.0, 2.0), uniform_task(env, 0.25, 0.25)]
    tasks += [t for s in ("train", "test", "ood") for t in env.sample_tasks(2, split=s, seed=13)]
    for task in tasks:
        env.reset(options={"task": task})
        assert env.model.body_mass.sum() == pytest.approx(total, rel=1e-6)
    # geometry still sets how the mass is spread: a heavy limb takes a larger share
    limb, geom_name = env.limb_geoms[0]
    env.reset(options={"task": one_limb_task(env, limb, length=1.5, thickness=1.5)})
    body = env.model.geom_bodyid[geom_id(env.model, geom_name)]
    assert env.model.body_mass[body] / env.model.body_mass.sum() > 1.5 * (
        env_cls(preserve_mass=True).model.body_mass[body] / total
    )


# --- determinism ------------------------------------------------------------------------------------------------
def rollout(env, task, seed: int, steps: int = 40) -> np.ndarray:
    obs, _ = env.reset(seed=seed, options={"task": task})
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, env.action_space.shape[0]))
    trace = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace.append(np.append(obs, reward))
        if terminated or truncated:
            break
    return np.concatenate(trace)


@pytest.mark.determinism
@env_classes
def test_same_seed_same_trajectory_across_rebuilds(env_cls):
    env, fresh = env_cls(), env_cls(model_cache_size=0)
    a, b = env.sample_tasks(2, split="train", seed=21)
    first = rollout(env, a, seed=7)
    rollout(env, b, seed=7)
    np.testing.assert_array_equal(rollout(env, a, seed=7), first)  # cached model, after another morphology
    np.testing.assert_array_equal(rollout(fresh, a, seed=7), first)  # rebuilt from scratch in another env
    other = rollout(env, b, seed=7)
    size = min(other.size, first.size)
    assert not np.array_equal(other[:size], first[:size])  # and the morphology does matter


# --- rendering --------------------------------------------------------------------------------------------------
RENDER_SCRIPT = """
import numpy as np
from metarl.envs.morphology import AntMorphEnv, HalfCheetahMorphEnv, MorphologyTask
for cls in (HalfCheetahMorphEnv, AntMorphEnv):
    env = cls(render_mode="rgb_array", width=96, height=72)
    env.reset(seed=0)
    first = env.render()
    n = len(env.limb_names)
    env.reset(seed=0, options={"task": MorphologyTask((1.8,) * n, (1.8,) * n)})  # rebuilt model, new renderer
    second = env.render()
    assert first.shape == second.shape == (72, 96, 3) and first.dtype == np.uint8, (first.shape, first.dtype)
    assert first.std() > 1.0 and np.abs(first.astype(int) - second.astype(int)).mean() > 0.5, cls.__name__
    env.close()
print("rendered")
"""


@pytest.mark.smoke
def test_render_rgb_array_with_rebuilt_model():
    """Headless rendering in a subprocess, since MuJoCo picks its OpenGL backend once, at import."""
    backend = os.environ.get("MUJOCO_GL") or ("osmesa" if ctypes.util.find_library("OSMesa") else None)
    if backend is None:
        pytest.skip("no headless OpenGL: set MUJOCO_GL=egl, or install libosmesa6 for MUJOCO_GL=osmesa")
    environ = dict(os.environ, MUJOCO_GL=backend)
    if backend in ("osmesa", "egl"):
        environ.setdefault("PYOPENGL_PLATFORM", backend)
    result = subprocess.run(
        [sys.executable, "-c", RENDER_SCRIPT], env=environ, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "rendered" in result.stdout, result.stderr[-2000:]
