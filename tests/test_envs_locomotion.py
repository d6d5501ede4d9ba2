"""Locomotion goal task distributions (envs/locomotion.py): splits, reward formulas, references, blow-ups (the task-env
contract every id meets: tests/test_env_contract.py)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest

import metarl.envs  # noqa: F401 - registers the ids
from metarl.envs.base import TaskError, checkerboard_split_of
from metarl.envs.locomotion import (
    AngleTask,
    AntDirEnv,
    AntGoalEnv,
    DirectionTask,
    GoalTask,
    HalfCheetahDirEnv,
    HalfCheetahVelEnv,
    HumanoidDirEnv,
    VelocityTask,
)
from tests.helpers import rollout

ENVS = [HalfCheetahVelEnv, HalfCheetahDirEnv, AntDirEnv, AntGoalEnv, HumanoidDirEnv]
IDS = {
    HalfCheetahVelEnv: "metarl/HalfCheetahVel-v0",
    HalfCheetahDirEnv: "metarl/HalfCheetahDir-v0",
    AntDirEnv: "metarl/AntDir-v0",
    AntGoalEnv: "metarl/AntGoal-v0",
    HumanoidDirEnv: "metarl/HumanoidDir-v0",
}
SHAPES = {  # (observation, action, descriptor)
    HalfCheetahVelEnv: (17, 6, 1),
    HalfCheetahDirEnv: (17, 6, 1),
    AntDirEnv: (105, 8, 2),
    AntGoalEnv: (107, 8, 2),
    HumanoidDirEnv: (348, 17, 2),
}
TERMS = {
    HalfCheetahVelEnv: ["forward", "ctrl"],
    HalfCheetahDirEnv: ["forward", "ctrl"],
    AntDirEnv: ["forward", "ctrl", "contact", "survive"],
    AntGoalEnv: ["goal", "ctrl", "contact", "survive"],
    HumanoidDirEnv: ["forward", "ctrl", "contact", "survive"],
}
env_classes = pytest.mark.parametrize("env_cls", ENVS, ids=lambda c: c.__name__)


def split_of(env, task) -> str:
    """The split a task belongs to, recomputed from its parameters with the base's checkerboard inverse."""
    if isinstance(env, HalfCheetahVelEnv):
        return checkerboard_split_of([task.velocity], [env.velocity_range[0]], [env.velocity_range[1]])
    if isinstance(env, (AntDirEnv, HumanoidDirEnv)):
        return checkerboard_split_of([task.angle / (2 * math.pi)], [0.0], [1.0], cells=16)
    if isinstance(env, AntGoalEnv):
        return checkerboard_split_of(env.split_coordinates(task.goal), [0.0, 0.0], [1.0, 1.0])
    raise AssertionError(f"no split law for {type(env).__name__}")


# --- API ------------------------------------------------------------------------------------------------------
@pytest.mark.api
@env_classes
def test_registered_id_builds_the_class_with_shapes_and_horizon(env_cls):
    env = gym.make(IDS[env_cls])
    obs_dim, act_dim, desc_dim = SHAPES[env_cls]
    assert type(env.unwrapped) is env_cls
    assert env.spec.max_episode_steps == 200
    assert env.observation_space.shape == (obs_dim,) and env.action_space.shape == (act_dim,)
    assert env.unwrapped.task_descriptor_dim == desc_dim
    obs, info = env.reset(seed=0)
    assert obs.shape == (obs_dim,) and obs.dtype == np.float64
    assert info["task"] == env.unwrapped.get_task()
    env.close()


@pytest.mark.api
@env_classes
def test_splits_are_disjoint_by_construction(env_cls):
    env = env_cls()
    for split in env.splits:
        tasks = env.sample_tasks(300, split=split, seed=3)
        if split != "ood" and env.splits_disjoint:
            assert {split_of(env, t) for t in tasks} == {split}
    if env_cls is HalfCheetahDirEnv:  # the documented exception: two tasks, both in both splits
        assert env.splits_disjoint is False
        for split in env.splits:
            tasks = env.sample_tasks(5, split=split, seed=0)
            assert {t.direction for t in tasks} == {-1, 1}
            assert sorted(t.direction for t in env.sample_tasks(4, split=split, seed=1)) == [-1, -1, 1, 1]
    else:
        assert env.splits_disjoint is True


@pytest.mark.api
def test_velocity_law_ranges_and_ood_beyond_training():
    env = HalfCheetahVelEnv()
    train = np.array([t.velocity for t in env.sample_tasks(2000, split="train", seed=0)])
    test = np.array([t.velocity for t in env.sample_tasks(2000, split="test", seed=0)])
    ood = np.array([t.velocity for t in env.sample_tasks(500, split="ood", seed=0)])
    assert 0.0 <= train.min() and train.max() <= 3.0 and 0.0 <= test.min() and test.max() <= 3.0
    assert train.min() < 0.1 and test.max() > 2.9  # both splits span the range
    assert 3.0 <= ood.min() and ood.max() <= 4.0
    maml = HalfCheetahVelEnv(velocity_range=(0.0, 2.0))
    assert maml.ood_velocity_range == pytest.approx((2.0, 2.0 + 2.0 / 3.0))
    assert max(t.velocity for t in maml.sample_tasks(500, seed=1)) <= 2.0
    with pytest.raises(ValueError, match="overlaps"):
        HalfCheetahVelEnv(ood_velocity_range=(2.0, 4.0))


@pytest.mark.api
def test_ant_goal_law_is_uniform_on_the_disk_in_each_split_and_ood_is_the_annulus():
    env = AntGoalEnv()
    for split in ("train", "test"):
        goals = np.array([t.goal for t in env.sample_tasks(4000, split=split, seed=5)])
        r2 = (goals**2).sum(axis=1)
        assert r2.max() <= 9.0 + 1e-9
        # r² ~ U[0, 9] for a uniform law on the disk: mean 4.5, standard error ~0.04 with 4000 goals
        assert r2.mean() == pytest.approx(4.5, abs=0.2)
        angles = np.arctan2(goals[:, 1], goals[:, 0])
        assert np.abs(np.mean(np.cos(angles))) < 0.1 and np.abs(np.mean(np.sin(angles))) < 0.1
    ood = np.array([t.goal for t in env.sample_tasks(500, split="ood", seed=5)])
    radius = np.hypot(ood[:, 0], ood[:, 1])
    assert radius.min() >= 3.0 - 1e-9 and radius.max() <= 4.0 + 1e-9


@pytest.mark.api
def test_direction_tasks_cover_every_sector_of_their_split_and_forward_backward_option():
    env = AntDirEnv()
    for split, parity in (("train", 0), ("test", 1)):
        angles = np.array([t.angle for t in env.sample_tasks(1000, split=split, seed=2)])
        sectors = np.floor(angles / (2 * math.pi) * 16).astype(int)
        assert set(sectors) == {s for s in range(16) if s % 2 == parity}
    two = AntDirEnv(forward_backward=True)
    assert two.splits_disjoint is False
    for split in two.splits:
        assert {t.angle for t in two.sample_tasks(6, split=split, seed=0)} == {0.0, math.pi}
    with pytest.raises(TaskError, match="forward_backward"):
        two.set_task(AngleTask(1.0))
    assert two.task_descriptor(AngleTask(math.pi)) == pytest.approx([-1.0, 0.0], abs=1e-7)


@pytest.mark.api
@env_classes
def test_reward_terms_are_the_family_terms_in_order(env_cls):
    env = env_cls()
    task = env.sample_tasks(1, split="test", seed=11)[0]
    env.set_task(task)
    env.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert [k for k in info if k.startswith("reward_")] == ["reward_" + t for t in TERMS[env_cls]]
        if terminated or truncated:
            env.reset(seed=int(rng.integers(1000)))
    assert np.array_equal(env.task_descriptor(), env.task_descriptor(task))


@pytest.mark.api
def test_pending_target_velocity_changes_the_reward_only_after_reset():
    env = HalfCheetahVelEnv()
    env.reset(seed=0, options={"task": VelocityTask(0.5)})
    env.set_task(VelocityTask(2.5))
    info = env.step(np.zeros(6))[4]
    assert info["reward_forward"] == pytest.approx(-abs(info["x_velocity"] - 0.5))
    env.reset(seed=0)
    info = env.step(np.zeros(6))[4]
    assert info["reward_forward"] == pytest.approx(-abs(info["x_velocity"] - 2.5))


@pytest.mark.api
@env_classes
def test_bad_splits_tasks_and_actions_raise(env_cls):
    env = env_cls()
    with pytest.raises(ValueError, match="non-negative"):
        env.sample_tasks(-1)
    field = dataclasses.fields(env.task_type)[0].name
    bad = {
        HalfCheetahVelEnv: [{"velocity": 9.0}, {"velocity": float("nan")}, {"velocity": -1.0}],
        HalfCheetahDirEnv: [{"direction": 0}, {"direction": 2}, {"direction": 0.5}],
        AntDirEnv: [{"angle": -0.1}, {"angle": 7.0}, {"angle": float("inf")}],
        AntGoalEnv: [{"goal": (3.5, 3.5)}, {"goal": (5.0, 0.0)}, {"goal": (1.0, 2.0, 3.0)}, {"goal": (0.0, "a")}],
        HumanoidDirEnv: [{"angle": -0.1}, {"angle": 6.3}, {"angle": float("nan")}],
    }[env_cls]
    for task in [{}, {field: 1.0, "extra": 1}, "not a task", *bad]:
        with pytest.raises(TaskError):
            env.set_task(task)
    with pytest.raises(TaskError):
        env.task_descriptor({"nope": 1})
    env.reset(seed=0)
    for wrong in (np.zeros(env.action_space.shape[0] + 1), 0.5, np.zeros((1,) + env.action_space.shape)):
        with pytest.raises(ValueError, match="shape"):
            env.step(wrong)
    caller = np.full(env.action_space.shape, 5.0)
    env.step(caller)  # out-of-range actions are clipped inside the env, never in the caller's array
    assert np.all(caller == 5.0)


@pytest.mark.api
@pytest.mark.parametrize("kwargs", [{"velocity_range": (2.0, 1.0)}, {"ctrl_cost_weight": -1.0}], ids=str)
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        HalfCheetahVelEnv(**kwargs)


@pytest.mark.api
def test_bad_ant_goal_arguments_raise():
    with pytest.raises(ValueError, match="distance"):
        AntGoalEnv(distance="l3")
    with pytest.raises(ValueError, match="radius"):
        AntGoalEnv(radius=3.0, ood_radius=2.0)


@pytest.mark.api
@env_classes
@pytest.mark.parametrize("poison", ["huge_qvel", "nan_qpos"])
def test_physics_blow_up_truncates_without_crashing_or_poisoning(env_cls, poison, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warning to ./MUJOCO_LOG.TXT
    env = env_cls()
    env.reset(seed=0)
    last_obs = env.step(np.zeros(env.action_space.shape))[0]
    if poison == "huge_qvel":
        env.data.qvel[:] = 1e308
    else:
        env.data.qpos[3] = np.nan
    obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert info["physics_unstable"] is True and truncated and not terminated
    assert reward == 0.0 and np.array_equal(obs, last_obs) and np.isfinite(obs).all()
    assert info["task"] == env.get_task()
    obs, _ = env.reset(seed=1)  # a fresh episode works again
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and "physics_unstable" not in info


@pytest.mark.api
@env_classes
def test_pickle_round_trip_keeps_the_arguments_and_steps(env_cls):
    kwargs = {
        HalfCheetahVelEnv: {"velocity_range": (0.0, 2.0), "ctrl_cost_weight": 0.2},
        HalfCheetahDirEnv: {"ctrl_cost_weight": 0.2},
        AntDirEnv: {"forward_backward": True},
        AntGoalEnv: {"distance": "l2", "radius": 2.0},
        HumanoidDirEnv: {"healthy_reward": 2.0},
    }[env_cls]
    env = env_cls(**kwargs)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is env_cls and clone is not env and clone.model is not env.model
    for name, value in kwargs.items():
        assert getattr(clone, name) == value
    actions = [env.action_space.sample() for _ in range(5)]
    task = env.sample_tasks(1, seed=0)[0]
    env.set_task(task)
    clone.set_task(task)
    obs_a, rew_a = rollout(env, actions, seed=3)
    obs_b, rew_b = rollout(clone, actions, seed=3)
    assert np.array_equal(obs_a, obs_b) and np.array_equal(rew_a, rew_b)


# --- determinism ----------------------------------------------------------------------------------------------
@pytest.mark.determinism
@env_classes
def test_different_seed_different_start(env_cls):
    env = env_cls()
    env.set_task(env.sample_tasks(1, seed=1)[0])
    low, high = env.action_space.low, env.action_space.high
    actions = np.random.default_rng(0).uniform(low, high, size=(30, low.shape[0]))
    obs_a, _ = rollout(env, actions, seed=21)
    obs_d, _ = rollout(env, actions, seed=22)
    assert not np.array_equal(obs_a[0], obs_d[0])


# --- reward formulas: scripted checks and the reference environments ------------------------------------------
def push(env, qpos_xy=None, qvel_xy=None) -> dict:
    """Reset, put the torso at ``qpos_xy`` and/or moving at ``qvel_xy``, take one zero-action step; its info."""
    env.reset(seed=0)
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    n = 1 if isinstance(env, (HalfCheetahVelEnv, HalfCheetahDirEnv)) else 2
    if qpos_xy is not None:
        qpos[:n] = qpos_xy[:n]
    if qvel_xy is not None:
        qvel[:] = 0.0
        qvel[:n] = qvel_xy[:n]
    env._set_state(qpos, qvel)
    return env.step(np.zeros(env.action_space.shape))[4]


@pytest.mark.math
def test_running_at_the_target_velocity_beats_standing_and_running_too_fast():
    env = HalfCheetahVelEnv()
    env.set_task(VelocityTask(2.0))
    at_target = push(env, qvel_xy=[2.0])
    standing = push(env, qvel_xy=[0.0])
    too_fast = push(env, qvel_xy=[5.0])
    assert at_target["x_velocity"] == pytest.approx(2.0, abs=0.3)
    assert at_target["reward_forward"] > standing["reward_forward"] + 1.0
    assert at_target["reward_forward"] > too_fast["reward_forward"] + 1.0
    assert at_target["reward_forward"] == pytest.approx(-abs(at_target["x_velocity"] - 2.0))


@pytest.mark.math
def test_direction_rewards_follow_the_task_direction():
    cheetah = HalfCheetahDirEnv()
    for direction in (-1, 1):
        cheetah.set_task(DirectionTask(direction))
        info = push(cheetah, qvel_xy=[2.0])
        assert np.sign(info["reward_forward"]) == direction and abs(info["reward_forward"]) > 1.0
    for env in (AntDirEnv(), HumanoidDirEnv()):
        angle = 2.0
        env.set_task(AngleTask(angle))
        along = push(env, qvel_xy=[2 * math.cos(angle), 2 * math.sin(angle)])
        against = push(env, qvel_xy=[-2 * math.cos(angle), -2 * math.sin(angle)])
        across = push(env, qvel_xy=[-2 * math.sin(angle), 2 * math.cos(angle)])
        assert along["reward_forward"] > 0.5 > abs(across["reward_forward"]) and against["reward_forward"] < -0.5
        assert along["xy_velocity"].shape == (2,)


@pytest.mark.math
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_ant_goal_reward_is_minus_the_distance_to_the_goal(distance):
    env = AntGoalEnv(distance=distance)
    goal = (1.5, -2.0)
    env.set_task(GoalTask(goal))
    at_goal = push(env, qpos_xy=goal)
    at_origin = push(env, qpos_xy=(0.0, 0.0))
    x, y = env.data.qpos[0], env.data.qpos[1]
    expected = abs(x - goal[0]) + abs(y - goal[1]) if distance == "l1" else math.hypot(x - goal[0], y - goal[1])
    assert at_origin["distance"] == pytest.approx(expected) and at_origin["reward_goal"] == -at_origin["distance"]
    assert at_goal["reward_goal"] > at_origin["reward_goal"] + 1.5
    obs = env.step(np.zeros(8))[0]
    assert np.array_equal(obs[:2], env.data.qpos[:2])  # the agent sees where it is


def reference_rollouts(env, reference_id: str, steps: int = 60, **reference_kwargs):
    """Step ``env`` and Gymnasium's own v5 env side by side with the same seed and actions."""
    reference = gym.make(reference_id, **reference_kwargs).unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, env.action_space.shape[0])) * env.action_space.high
    obs, _ = env.reset(seed=5)
    ref_obs, _ = reference.reset(seed=5)
    yield obs, ref_obs, None, None
    for action in actions.astype(np.float32):
        step = env.step(action)
        ref_step = reference.step(action)
        yield step[0], ref_step[0], step, ref_step
        if step[2] or ref_step[2]:
            assert step[2] == ref_step[2]
            break


@pytest.mark.math
def test_half_cheetah_dir_forward_equals_gymnasium_half_cheetah_v5():
    env = HalfCheetahDirEnv(ctrl_cost_weight=0.1)  # Gymnasium's weight; PEARL's default is 0.05
    for obs, ref_obs, step, ref_step in reference_rollouts(env, "HalfCheetah-v5"):
        assert np.array_equal(obs, ref_obs)
        if step is not None:
            assert step[4]["reward_forward"] == pytest.approx(ref_step[4]["reward_forward"], rel=1e-12)
            assert step[1] == pytest.approx(ref_step[1], rel=1e-6, abs=1e-6)  # their ctrl cost sums in float32


@pytest.mark.math
def test_ant_dir_along_x_matches_gymnasium_ant_v5():
    env = AntDirEnv()
    for obs, ref_obs, step, ref_step in reference_rollouts(env, "Ant-v5"):
        assert np.array_equal(obs, ref_obs)
        if step is not None:
            for name in ("ctrl", "contact", "survive"):
                assert step[4]["reward_" + name] == pytest.approx(ref_step[4]["reward_" + name], rel=1e-6, abs=1e-9)
            # Gymnasium differences body xpos (one physics substep behind qpos); we difference the free joint's qpos
            assert step[4]["reward_forward"] == pytest.approx(ref_step[4]["reward_forward"], abs=0.3)


@pytest.mark.math
def test_humanoid_dir_along_x_equals_gymnasium_humanoid_v5():
    env = HumanoidDirEnv()
    for obs, ref_obs, step, ref_step in reference_rollouts(env, "Humanoid-v5"):
        assert np.array_equal(obs, ref_obs)
        if step is not None:
            for name in ("forward", "ctrl", "contact", "survive"):
                assert step[4]["reward_" + name] == pytest.approx(ref_step[4]["reward_" + name], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "env_id", ["metarl/HalfCheetahVel-v0", "metarl/HalfCheetahMorph-v0", "metarl/Walker2dRandParams-v0"]
)
def test_gathered_observation_equals_the_concatenation_and_is_a_fresh_copy(env_id):
    """The one-call gather (``data_gather``) against ``np.concatenate`` of the same views, across resets that
    rebuild the model (morphology) and steps; the returned array never aliases mjData."""
    env = gym.make(env_id).unwrapped
    for seed, task in enumerate(env.sample_tasks(2, split="train", seed=3)):
        obs, _ = env.reset(seed=seed, options={"task": task})
        for _ in range(5):
            parts = env._observation_parts()
            expected = np.concatenate(parts)
            if env_id.startswith("metarl/Walker2d"):
                expected[env._nq - 1 :] = np.clip(expected[env._nq - 1 :], -10.0, 10.0)
            np.testing.assert_array_equal(obs, expected)
            before = env.data.qvel.copy()
            obs[:] = 1e6  # writing to an observation must not reach the simulator
            np.testing.assert_array_equal(env.data.qvel, before)
            obs = env.step(env.action_space.sample())[0]
    env.close()


def test_data_gather_rejects_arrays_that_are_not_views_of_one_mjdata():
    import mujoco

    from metarl.envs.mujoco_base import data_gather

    xml = "<mujoco><worldbody><body><freejoint/><geom size='.1'/></body></worldbody></mujoco>"
    model = mujoco.MjModel.from_xml_string(xml)
    first, second = mujoco.MjData(model), mujoco.MjData(model)
    source, index = data_gather((first.qvel, first.qpos[3:]))
    first.qpos[:] = np.arange(7.0)
    first.qvel[:] = -np.arange(6.0)
    np.testing.assert_array_equal(source[index], np.concatenate((first.qvel, first.qpos[3:])))
    with pytest.raises(ValueError, match="one mjData"):
        data_gather((first.qpos, second.qvel))
    with pytest.raises(ValueError, match="one mjData"):
        data_gather((np.zeros(3), np.zeros(2)))
    with pytest.raises(ValueError, match="contiguous float64"):
        data_gather((first.qpos[::2],))


def test_moving_data_time_between_steps_is_not_mistaken_for_a_blow_up(tmp_path, monkeypatch):
    """The env keeps data.time from its last step (``_time``); someone moving the clock (restoring a saved state)
    must not end the episode, and a real blow-up after that must still."""
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warning to ./MUJOCO_LOG.TXT
    env = HalfCheetahVelEnv()
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(6))
    env.data.time = 0.0  # backwards
    _, _, _, truncated, info = env.step(np.zeros(6))
    assert not truncated and "physics_unstable" not in info
    env.data.time = 100.0  # forwards, then a blow-up
    env.data.qvel[:] = 1e308
    _, reward, _, truncated, info = env.step(np.zeros(6))
    assert truncated and info["physics_unstable"] is True and reward == 0.0
