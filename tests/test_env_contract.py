"""The task-environment contract (ARCHITECTURE.md, "Contracts") on every registered ``metarl/`` id.

One module, parametrised over every id registered under ``metarl/`` in Gymnasium's registry (a new environment in
:data:`metarl.envs.ENVIRONMENTS` is picked up with no edit here) and over the user's example environment made through
Gymnasium's ``"module:EnvId"`` form (``tests/user_env_example.py``), which must meet the same contract without
importing metarl. For each id:

- Gymnasium's ``check_env`` on ``env.unwrapped`` with tasks of every split it offers (``train``, ``test``, ``ood``);
- held-out splits disjoint from ``train`` (compared as task sets), ``sample_tasks`` seeded, tasks JSON-safe (through
  ``dataclasses.asdict``, or plain dicts), an unknown split refused with ``ValueError``;
- ``set_task`` in force from the next ``reset``, echoed by ``info["task"]`` and returned by ``get_task``;
- the ``reward_*`` terms of ``info`` summing exactly to the reward; same seed and actions, same trajectory;
- a non-finite action refused with ``ValueError`` (a ``Box`` action space); for a ``Discrete`` space, an action out
  of range, a float (even a whole one) or NaN refused with ``ValueError``.

Each check runs a few short episodes so that the expensive envs (Meta-World, morphology rebuilds) stay cheap; the
task laws, dynamics and physics facts of each family live in the per-family ``tests/test_envs_*.py``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import metarl.envs  # noqa: F401  (registers the ids)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
USER_ID = "tests.user_env_example:UserGoal-v0"
ENV_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("metarl/")) + [USER_ID]
# the checker's advice on space bounds that our envs share with Gymnasium's own (unbounded MuJoCo observations);
# any other warning of check_env fails the test, but for the two rules on the spaces in `quiet_check_env`
EXPECTED_WARNINGS = ("Box observation space maximum value is infinity", "Box observation space minimum value is -inf")
INHERITED_ACTION_SPACE_WARNING = "For Box action spaces, we recommend using a symmetric and normalized space"
HIDDEN_ENTRIES_WARNING = "A Box observation space maximum and minimum values are equal"
# the ids too slow for `make test` (Meta-World builds the goals of all 50 (30) classes at the first reset, about 30 s
# on 2 cores): its contract runs with `pytest -m slow`, like the rest of its tests in tests/test_envs_metaworld.py
SLOW_IDS = {"metarl/MetaWorldML25-v0", "metarl/MetaWorldML45-v0"}
STEPS = 30  # steps per check: a few short episodes (the bandit's episode is one pull, the tabular MDP's ten)


@pytest.fixture(
    scope="module", params=[pytest.param(i, marks=pytest.mark.slow) if i in SLOW_IDS else i for i in ENV_IDS]
)
def base(request) -> Any:
    """``gym.make(id).unwrapped``, once per id for the module (building the Meta-World goals costs seconds)."""
    env_id = request.param
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO_ROOT))  # `tests.user_env_example` imports from the repository root
        try:
            env = make(env_id)
            env.reset(seed=0)  # an optional dependency may be needed only once the first task is built
        except ImportError as err:
            pytest.skip(f"{env_id} needs an optional dependency that is not installed: {err}")
        yield env
    env.close()


def make(env_id: str) -> Any:
    return gym.make(env_id, disable_env_checker=True).unwrapped  # check_env below is the stricter check


def offered_splits(env: Any) -> tuple[str, ...]:
    """The env's ``splits`` if it declares them; otherwise the standard ones its ``sample_tasks`` accepts."""
    declared = getattr(env, "splits", None)
    if declared is not None:
        return tuple(declared)
    offered = []
    for split in ("train", "test", "ood"):
        try:
            env.sample_tasks(1, split=split, seed=0)
        except ValueError:
            continue
        offered.append(split)
    return tuple(offered)


def task_data(task: Any) -> dict:
    """A task as JSON-ready data: ``dataclasses.asdict`` of a dataclass task, or the plain dict itself."""
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        return dataclasses.asdict(task)
    assert isinstance(task, dict), f"a task is a dataclass or a plain dict, got {type(task).__name__}"
    return task


def task_key(task: Any) -> str:
    """A canonical string of a task, so tasks (hashable or not) can be compared as sets."""
    return json.dumps(task_data(task), sort_keys=True, allow_nan=False)


def reward_terms(info: dict) -> dict[str, float]:
    return {key: value for key, value in info.items() if key.startswith("reward_")}


def action_sequence(env: Any, n: int = STEPS, seed: int = 0) -> list:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


def trajectory(env: Any, task: Any, actions: list, seed: int) -> list:
    """Everything observable of ``actions`` played from ``reset(seed=seed)`` under ``task``, across episode ends
    (each later episode starts with an unseeded reset, so the env's own generator carries on)."""
    env.set_task(task)
    obs, info = env.reset(seed=seed)
    steps = [(obs, task_key(info["task"]))]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, reward_terms(info)))
        if terminated or truncated:
            obs, info = env.reset()
            steps.append((obs,))
    return steps


def assert_same_trajectory(a: list, b: list) -> None:
    assert len(a) == len(b)
    for step_a, step_b in zip(a, b):
        assert len(step_a) == len(step_b)
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:] == step_b[1:]


def quiet_check_env(env: Any) -> None:
    expected = EXPECTED_WARNINGS
    if any(cls.__module__.startswith("gymnasium.envs.") for cls in type(env).__mro__):
        expected += (INHERITED_ACTION_SPACE_WARNING,)  # built on a Gymnasium env: its action space (Pendulum's ±2)
    space = env.observation_space
    if isinstance(space, spaces.Box) and np.all(space.low[space.low == space.high] == 0):
        expected += (HIDDEN_ENTRIES_WARNING,)  # entries pinned at 0 are hidden ones (Meta-World's goal), not a slip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if not any(e in str(w.message) for e in expected)]
    assert not unexpected, unexpected


# --- Gymnasium's checker ------------------------------------------------------------------------------------------
@pytest.mark.api
def test_check_env_passes_for_tasks_of_every_split(base):
    splits = offered_splits(base)
    assert {"train", "test"} <= set(splits) <= {"train", "test", "ood"}, splits
    for split in splits:
        for task in base.sample_tasks(2, split=split, seed=7):
            base.set_task(task)
            quiet_check_env(base)
            assert base.get_task() == task


# --- the task law: splits, seeds, JSON ----------------------------------------------------------------------------
@pytest.mark.api
def test_held_out_splits_share_no_task_with_train(base):
    if not getattr(base, "splits_disjoint", True):
        pytest.skip(f"{type(base).__name__} declares splits_disjoint=False: too few tasks to hold any out")
    splits = offered_splits(base)
    sampled = {split: set() for split in splits}
    for seed in range(3):  # the same seeds in every split: a split drawn from another's law repeats its tasks
        for split in splits:
            sampled[split] |= {task_key(t) for t in base.sample_tasks(100, split=split, seed=seed)}
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            shared = sampled[first] & sampled[second]
            assert not shared, f"{first} and {second} share {len(shared)} tasks, e.g. {sorted(shared)[0]}"


@pytest.mark.determinism
def test_sample_tasks_same_seed_same_tasks_other_seed_other_tasks(base):
    other = make(base.spec.id)  # a fresh env draws the same tasks
    for split in offered_splits(base):
        tasks = base.sample_tasks(50, split=split, seed=3)
        assert len(tasks) == 50
        assert tasks == base.sample_tasks(50, split=split, seed=3)
        assert tasks == other.sample_tasks(50, split=split, seed=3)
        assert tasks != base.sample_tasks(50, split=split, seed=4)
        task_type = getattr(base, "task_type", None)
        if task_type is not None:
            assert all(type(t) is task_type for t in tasks)
    other.close()


@pytest.mark.api
def test_tasks_round_trip_through_json(base):
    for split in offered_splits(base):
        for task in base.sample_tasks(20, split=split, seed=2):
            loaded = json.loads(json.dumps(task_data(task), allow_nan=False))  # plain numbers, strings, lists
            if dataclasses.is_dataclass(task):
                assert type(task)(**loaded) == task
            base.set_task(loaded)  # a task as data is accepted, as a dict
            assert base.get_task() == task
            if dataclasses.is_dataclass(task):
                assert hash(base.get_task()) == hash(task)


@pytest.mark.api
def test_unknown_split_is_refused(base):
    unknown = ["validation"] + [split for split in ("ood",) if split not in offered_splits(base)]
    for split in unknown:
        with pytest.raises(ValueError, match="unknown split"):
            base.sample_tasks(1, split=split)


# --- set_task, info and rewards -----------------------------------------------------------------------------------
@pytest.mark.api
def test_set_task_takes_effect_at_the_next_reset(base):
    first, second = base.sample_tasks(2, split="train", seed=12)
    assert first != second
    base.set_task(first)
    assert base.get_task() == first
    _, info = base.reset(seed=0)
    assert info["task"] == first and base.get_task() == first
    base.set_task(second)
    assert base.get_task() == second  # the pending task is reported ...
    action = action_sequence(base, 1)[0]
    assert base.step(action)[4]["task"] == first  # ... but the episode keeps its task
    _, info = base.reset(seed=0)
    assert info["task"] == second and base.get_task() == second
    assert base.step(action)[4]["task"] == second


@pytest.mark.api
def test_reward_terms_sum_exactly_to_the_reward_and_the_task_is_echoed(base):
    task = base.sample_tasks(1, split="test", seed=11)[0]
    base.set_task(task)
    _, info = base.reset(seed=11)
    assert info["task"] == task
    for action in action_sequence(base, 2 * STEPS, seed=1):
        _, reward, terminated, truncated, info = base.step(action)
        terms = list(reward_terms(info).values())
        assert terms, f"no reward_* terms in info: {sorted(info)}"
        assert sum(terms) == reward and isinstance(reward, float)
        assert info["task"] == task == base.get_task()
        if terminated or truncated:
            base.reset()


@pytest.mark.determinism
def test_same_seed_and_actions_same_trajectory(base):
    other = make(base.spec.id)
    actions = action_sequence(base, 80, seed=0)
    for split in ("train", "test"):
        task = base.sample_tasks(1, split=split, seed=1)[0]
        first = trajectory(base, task, actions, seed=21)
        assert_same_trajectory(first, trajectory(base, task, actions, seed=21))
        assert_same_trajectory(first, trajectory(other, task, actions, seed=21))  # a fresh env with the same task
    other.close()


# --- bad actions --------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_non_finite_or_invalid_actions_are_refused(base):
    space = base.action_space
    base.reset(seed=0)
    if isinstance(space, spaces.Box):
        for index, value in ((0, np.nan), (-1, np.inf), (space.shape[0] // 2, -np.inf)):
            action = np.zeros(space.shape, dtype=space.dtype)
            action.reshape(-1)[index] = value
            with pytest.raises(ValueError, match="NaN or infinite|must be finite"):
                base.step(action)
    elif isinstance(space, spaces.Discrete):  # no NaN-able action: out of range, not an integer, or NaN
        start, n = int(space.start), int(space.n)
        for action in (start + n, start + n + 100, start - 1, float(start), start + 0.5, float("nan"), np.nan):
            with pytest.raises(ValueError, match="must be an integer"):
                base.step(action)
    else:
        pytest.fail(f"no action rule for {type(space).__name__}: add one here")
