"""Episode success (metarl.core.outcomes): ``info["success"]`` of any env reaches Episodes, trials, the meta-test
columns of every agent family (MAML-TRPO, RL², PEARL), evaluation.json, metrics.csv and the adaptation plot."""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from metarl.core.outcomes import (
    EpisodeSuccess,
    record_episodes,
    record_meta_test_column,
    record_success,
    step_successes,
)
from metarl.core.policies import GaussianMLPPolicy
from metarl.core.sampling import collect_episodes
from metarl.envs.base import TaskEnvMixin, task_to_dict
from metarl.envs.vector import TaskVectorEnv

LENGTH = 4


@dataclasses.dataclass(frozen=True)
class SuccessTask:
    step: int
    """the one step of the episode (1..LENGTH) whose info says success; 0: never"""


class SuccessAtStepEnv(TaskEnvMixin, gym.Env):
    """Episodes of LENGTH steps; ``info["success"]`` is 1.0 at step ``task.step`` only (0.0 at every other step, so
    an episode succeeds "at any step" but not "at the last step"). Train tasks always succeed, test tasks may not."""

    task_type = SuccessTask

    def __init__(self, report: bool = True) -> None:
        self.observation_space = spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.report = report
        self._init_task(SuccessTask(1))
        self._t = 0

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[SuccessTask]:
        low = 1 if split == "train" else 0
        return [SuccessTask(int(v)) for v in rng.integers(low, LENGTH, size=n)]  # never the last step

    def _obs(self) -> np.ndarray:
        return np.array([self._t, self._task.step], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._apply_pending_task()
        self._t = 0
        return self._obs(), {"task": task_to_dict(self._task)}

    def step(self, action):
        self._t += 1
        info: dict[str, Any] = {"task": task_to_dict(self._task)}
        if self.report:
            info["success"] = float(self._t == self._task.step)
        return self._obs(), float(np.asarray(action).sum()), False, False, info


ENV_ID = "test_outcomes/SuccessAtStep-v0"
gym.register(ENV_ID, entry_point=SuccessAtStepEnv, max_episode_steps=LENGTH)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expected(tasks: list[SuccessTask]) -> np.ndarray:
    return np.array([float(t.step > 0) for t in tasks])


# --- the definition --------------------------------------------------------------------------------------------
@pytest.mark.math
def test_any_step_counts_and_unreported_episodes_have_no_value() -> None:
    tracker = EpisodeSuccess(3)
    steps = [({"success": np.array([0.0, 1.0, 0.0]), "_success": np.array([True, True, False])}),
             ({"success": np.array([1.0, 0.0, 0.0]), "_success": np.array([True, True, False])}),
             ({"success": np.array([0.0, 0.0, 0.0]), "_success": np.array([True, True, False])})]
    active = [np.array([True, True, True]), np.array([False, True, True]), np.array([True, True, True])]
    for infos, mask in zip(steps, active):
        tracker.update(*step_successes(infos, 3), mask)
    values = tracker.values()
    assert values[0] == 0.0, "a success at an inactive step (after the episode ended) must not count"
    assert values[1] == 1.0, "success at step 1, none after: the episode succeeded"
    assert np.isnan(values[2])
    with record_success() as recorder:
        record_episodes(values)
    assert (recorder.episodes, recorder.successes, recorder.success_rate) == (2, 1, 0.5)
    record_episodes(values)  # no recorder open: nothing happens, nothing fails
    assert step_successes({}, 2)[1].tolist() == [False, False]


@pytest.mark.math
def test_same_step_autoreset_reads_the_final_info() -> None:
    infos = {"success": np.array([0.0, 0.0]), "_success": np.array([True, True]),
             "final_info": {"success": np.array([1.0, 0.0]), "_success": np.array([True, False])}}
    success, reported = step_successes(infos, 2, done=np.array([True, False]))
    assert success.tolist() == [True, False] and reported.tolist() == [True, True]


@pytest.mark.math
def test_nested_recorders_collect_for_themselves() -> None:
    with record_success() as outer:
        record_episodes([1.0])
        with record_success() as inner:
            record_episodes([0.0, 0.0])
            record_meta_test_column(1, [0.5])
        record_episodes([1.0])
    assert (outer.episodes, outer.successes, inner.episodes) == (2, 2, 2)
    assert inner.column_matrix(1, 2)[0, 1] == 0.5 and np.isnan(inner.column_matrix(1, 2)[0, 0])
    assert outer.column_matrix(1, 2) is None


# --- collectors ------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_collect_episodes_records_success_per_episode() -> None:
    envs = TaskVectorEnv(ENV_ID, 4)
    tasks = envs.single_task_env.sample_tasks(2, split="test", seed=3) + [SuccessTask(0), SuccessTask(2)]
    policy = GaussianMLPPolicy(2, 1, (4,))
    params = dict(policy.named_parameters())
    with record_success() as recorder:
        episodes = collect_episodes(envs, policy, params, tasks, 3, seed=0, generator=torch.Generator())
    np.testing.assert_array_equal(episodes.successes.numpy(), np.repeat(expected(tasks)[:, None], 3, axis=1))
    assert recorder.episodes == 12 and recorder.successes == int(expected(tasks).sum()) * 3
    envs.close()
    silent = TaskVectorEnv(ENV_ID, 2, env_kwargs={"report": False})
    episodes = collect_episodes(silent, policy, params, tasks[:2], 1, seed=0, generator=torch.Generator())
    assert episodes.successes is None
    silent.close()


# --- every agent family's meta-test, through the one protocol --------------------------------------------------
def _agents():
    from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig
    from metarl.agents.pearl import PEARL, PEARLConfig
    from metarl.agents.rl2 import RL2, RL2Config

    yield MAMLTRPO(ENV_ID, MAMLTRPOConfig(meta_batch_size=3, episodes_per_task=2, hidden_sizes=[8]))
    yield RL2(ENV_ID, RL2Config(meta_batch_size=4, episodes_per_trial=3, hidden_size=16, num_minibatches=2,
                                update_epochs=2))
    yield PEARL(ENV_ID, PEARLConfig(num_train_tasks=6, hidden_sizes=[16], encoder_hidden_sizes=[16],
                                    meta_batch_size=4, batch_size=8, embedding_batch_size=5, num_initial_steps=20,
                                    num_tasks_sample=2, num_steps_prior=10, num_extra_rl_steps_posterior=10,
                                    gradient_steps=3, replay_capacity=100))


@pytest.mark.smoke
def test_success_of_every_agent_family_reaches_the_evaluation() -> None:
    from metarl.evaluation import evaluate_meta_rl

    for agent in _agents():
        try:
            result = evaluate_meta_rl(agent, ENV_ID, num_tasks=6, num_episodes=3, seed=7)
            test = result["splits"]["test"]
            tasks = gym.make(ENV_ID).unwrapped.sample_tasks(6, split="test", seed=_task_seed(7))
            truth = expected(tasks)
            np.testing.assert_array_equal(np.array(test["per_task_successes"]), np.repeat(truth[:, None], 3, 1),
                                          err_msg=agent.name)
            for row in test["episodes"]:
                assert row["success"] == pytest.approx(truth.mean()) and row["success_tasks"] == 6, agent.name
            assert test["pre_adaptation_success"] == test["post_adaptation_success"] == pytest.approx(truth.mean())
        finally:
            agent.close()


def _task_seed(seed: int) -> int:
    from metarl.core.seeding import derive_seed

    return derive_seed(seed, "tasks", "test")


@pytest.mark.api
def test_envs_without_success_leave_the_evaluation_as_it_was() -> None:
    from metarl.agents.rl2 import RL2, RL2Config
    from metarl.evaluation import evaluate_meta_rl

    agent = RL2(ENV_ID, RL2Config(meta_batch_size=2, episodes_per_trial=2, hidden_size=8, num_minibatches=1,
                                  update_epochs=1, env_kwargs={"report": False}))
    try:
        result = evaluate_meta_rl(agent, ENV_ID, num_tasks=3, num_episodes=2, seed=1)
    finally:
        agent.close()
    test = result["splits"]["test"]
    assert "per_task_successes" not in test and all("success" not in row for row in test["episodes"])


# --- the run loop: metrics.csv, evaluation.json, adaptation.png ------------------------------------------------
@pytest.mark.smoke
def test_a_run_records_success_in_metrics_evaluation_and_plot(tmp_path) -> None:
    from metarl.training import make_run_config, train

    run = make_run_config("rl2", {"env": ENV_ID, "iterations": 2, "meta_batch_size": 4, "episodes_per_trial": 2,
                                  "hidden_size": 8, "num_minibatches": 2, "update_epochs": 1, "eval_tasks": 4,
                                  "eval_episodes": 2, "progress": False, "run_dir": str(tmp_path / "run")})
    run_dir = train(run)
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["charts/success_rate"]) for r in rows] == [1.0, 1.0], "every train task succeeds"
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert all(row["success"] is not None for row in result["splits"]["test"]["episodes"])
    assert result["protocol"] == "meta-rl" and "benchmark_protocol" not in result  # no benchmark of its own
    assert (run_dir / "adaptation.png").stat().st_size > 0


@pytest.mark.api
def test_plot_draws_a_success_panel_beside_the_return(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    import matplotlib.pyplot as plt

    from metarl.evaluation import plot_meta_rl

    rows = [{"episode": k, "return": float(k), "ci95": 0.1, "success": 0.25 * k, "success_ci95": 0.05}
            for k in range(3)]
    result = {"agent": "a", "env": "e", "splits": {"test": {"episodes": rows}}}
    with mock.patch.object(plt, "subplots", wraps=plt.subplots) as subplots:
        plot_meta_rl(result, tmp_path / "with.png")
        plot_meta_rl({**result, "splits": {"test": {"episodes": [
            {k: v for k, v in r.items() if not k.startswith("success")} for r in rows]}}}, tmp_path / "without.png")
    assert [call.args[:2] for call in subplots.call_args_list] == [(1, 2), (1, 1)]


@pytest.mark.api
@pytest.mark.parametrize("columns", [3, 100])
def test_plot_labels_every_episode_of_a_short_trial_and_a_few_of_a_long_one(columns, tmp_path) -> None:
    from unittest import mock

    import metarl.evaluation
    from metarl.evaluation import MAX_LABELLED_EPISODES, plot_meta_rl

    rows = [{"episode": k, "return": float(k), "ci95": 0.1, "success": 0.5, "success_ci95": 0.1}
            for k in range(columns)]
    figures = []
    with mock.patch.object(metarl.evaluation, "save_figure", side_effect=lambda fig, path: figures.append(fig)):
        plot_meta_rl({"agent": "a", "env": "e", "splits": {"test": {"episodes": rows}}}, tmp_path / "plot.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= columns - 1]
        assert all(float(t).is_integer() for t in ticks)
        if columns <= MAX_LABELLED_EPISODES:
            assert ticks == list(range(columns))
        else:
            assert 3 <= len(ticks) <= MAX_LABELLED_EPISODES


@pytest.mark.api
def test_a_benchmark_protocol_on_an_env_without_one_is_refused_before_work(tmp_path) -> None:
    from metarl.core.config import ConfigError
    from metarl.training import make_run_config, train

    run = make_run_config("rl2", {"env": ENV_ID, "iterations": 1, "meta_batch_size": 2, "hidden_size": 8,
                                  "num_minibatches": 1, "protocol": "benchmark", "progress": False,
                                  "run_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="no benchmark protocol"):
        train(run)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="protocol"):
        make_run_config("rl2", {"env": ENV_ID, "protocol": "metaworld"})


@pytest.mark.math
def test_seeds_combine_success_like_the_return() -> None:
    from metarl.evaluation import combine_meta_rl_seeds

    def result(successes, post):
        return {"protocol": "meta-rl", "agent": "a", "env": "e", "num_tasks": 2, "num_episodes": 2, "seed": 1,
                "splits": {"test": {"per_task_returns": [[0.0, 1.0], [0.0, 1.0]], "per_task_successes": successes,
                                    "benchmark": {"success": {"pre_adaptation": {"mean": 0.0},
                                                              "post_adaptation": {"mean": post}}}}}}

    combined = combine_meta_rl_seeds([result([[0.0, 1.0], [0.0, 0.0]], 0.5), result([[0.0, 1.0], [0.0, 1.0]], 1.0)])
    test = combined["splits"]["test"]
    assert [e["success"] for e in test["episodes"]] == [0.0, 0.75]
    assert test["episodes"][1]["success_per_seed"] == [0.5, 1.0]
    assert test["benchmark"]["success"]["post_adaptation"]["mean"] == 0.75
    assert test["benchmark"]["success"]["post_adaptation"]["per_seed"] == [0.5, 1.0]
