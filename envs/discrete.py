"""Discrete task distributions for RL² (Duan et al. 2016): Bernoulli multi-armed bandits and random tabular MDPs.

An RL² *trial* chains several episodes of one task, keeping the agent's hidden state across episode boundaries;
these environments provide the episodes (one pull of a bandit, ten steps of an MDP) and the task distributions.
The policies an RL² agent is compared with on these tasks (Gittins indices, Thompson sampling, UCB1, PSRL, UCRL2,
BEB, ...) live in :mod:`metarl.envs.references`; the bandit functions this module used to hold
(``random_policy_return``, ``ucb1_return``, ``thompson_sampling_return``, ``oracle_return``) are imported here
under their old names, and the MDP's exact optimal and random returns are methods of :class:`TabularMDPEnv`.

Reference: Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel 2016, "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning", section 4.1 (multi-armed bandits) and 4.2 (tabular MDPs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle

from .base import SPLITS, TaskEnvMixin, TaskError, check_task_fields, checkerboard_uniform
from .references import (  # noqa: F401  (the old names of the bandit baselines, now in references)
    expected_episode_return,
    oracle_return,
    random_policy_return,
    thompson_sampling_return,
    ucb1_return,
)

__all__ = [
    "BernoulliBanditTask",
    "BernoulliBanditEnv",
    "TabularMDPTask",
    "TabularMDPEnv",
    "tabular_mdp_parameters",
    "random_policy_return",
    "ucb1_return",
    "thompson_sampling_return",
    "oracle_return",
]


# ------------------------------------------------------------------------------------------------------------------
# Bernoulli bandits
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BernoulliBanditTask:
    """The success probability of every arm. Lists (from JSON) become tuples, numbers floats."""

    means: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            means = tuple(float(m) for m in self.means)
        except (TypeError, ValueError):
            raise TaskError(f"BernoulliBanditTask.means must be a sequence of numbers, got {self.means!r}") from None
        object.__setattr__(self, "means", means)


class BernoulliBanditEnv(TaskEnvMixin, gym.Env, EzPickle):
    """A ``k``-armed Bernoulli bandit; one episode is one pull (RL² chains episodes into a trial).

    ## Action space
    ``Discrete(k)``: the arm to pull. Anything else (a float, NaN, an out-of-range index) raises ``ValueError``.

    ## Observation space
    ``Box(0, 1, (1,))`` float32, always the constant ``[0.0]``: a bandit has no state, and everything the agent
    learns comes through the rewards (an RL² policy also receives the previous action, reward and done flag).

    ## Rewards
    ``reward = reward_pull ~ Bernoulli(means[action])`` (0 or 1), drawn from ``self.np_random``. ``info`` also holds
    ``arm_mean = means[action]``, ``best_mean = max(means)`` and ``regret = best_mean - arm_mean`` (the expected
    regret of the pull), plus the task.

    ## Starting state
    The constant observation.

    ## Episode end
    Every step terminates (one pull per episode). Stepping again before ``reset`` raises ``RuntimeError``.

    ## Task law
    The task is :class:`BernoulliBanditTask` ``(means)`` with ``k`` entries; descriptor = the means.

    * ``train`` / ``test``: means uniform over the white / black cells of a checkerboard with 8 cells per arm on
      ``[0, 1]^k``: disjoint by construction, each mean covering ``[0, 1]``, so marginally ``means ~ U[0, 1]^k``
      within each split (the RL² paper draws ``U[0, 1]`` means).
    * no ``ood`` split (``[0, 1]`` is all there is).
    * ``set_task`` accepts any ``k`` numbers in ``[0, 1]``.

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``k`` | ``5`` | number of arms |
    """

    metadata = {"render_modes": [], "render_fps": 1}
    task_type = BernoulliBanditTask
    splits = SPLITS
    episode_step_limit = 1  # one pull

    def __init__(self, k: int = 5) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
            raise ValueError(f"k (number of arms) must be an integer >= 2, got {k!r}")
        EzPickle.__init__(self, k)
        self.k = int(k)
        self.action_space = spaces.Discrete(self.k)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._done = True
        self._init_task(BernoulliBanditTask((0.5,) * self.k))
        self._on_task_change(self._task)

    def _validate_task(self, task: Any) -> BernoulliBanditTask:
        task = check_task_fields(task, BernoulliBanditTask, {"means": (0.0, 1.0)})
        if len(task.means) != self.k:
            raise TaskError(f"task has {len(task.means)} arm means, this bandit has k={self.k} arms")
        return task

    def _on_task_change(self, task: BernoulliBanditTask) -> None:
        self._means = task.means
        self._best = max(task.means)

    def _descriptor(self, task: BernoulliBanditTask) -> Sequence[float]:
        return task.means

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[BernoulliBanditTask]:
        means = checkerboard_uniform(rng, [0.0] * self.k, [1.0] * self.k, n, split)
        return [BernoulliBanditTask(tuple(float(m) for m in row)) for row in means]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        self._done = False
        return np.zeros(1, dtype=np.float32), {"task": self._task}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer arm index in [0, {self.k - 1}], got {action!r}")
        if self._done:
            raise RuntimeError("the episode (one pull) is over: call reset() before the next pull")
        self._done = True
        arm_mean = self._means[int(action)]
        reward = 1.0 if self.np_random.random() < arm_mean else 0.0
        info = {
            "reward_pull": reward,
            "arm_mean": arm_mean,
            "best_mean": self._best,
            "regret": self._best - arm_mean,
            "task": self._task,
        }
        return np.zeros(1, dtype=np.float32), reward, True, False, info


# ------------------------------------------------------------------------------------------------------------------
# Tabular MDPs
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TabularMDPTask:
    """An MDP named by an integer seed: even seeds are training tasks, odd seeds test tasks.

    The MDP's arrays follow from the seed (and the env's sizes) by :func:`tabular_mdp_parameters`.
    """

    seed: int


def tabular_mdp_parameters(seed: int, n_states: int = 10, n_actions: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The MDP of task ``seed``: ``transitions [S, A, S]`` (rows ~ Dirichlet(1)), ``mean_rewards [S, A]`` ~ N(1, 1).

    Deterministic: the same arguments always give the same arrays (from ``np.random.default_rng(seed)``).
    """
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
    mean_rewards = rng.normal(1.0, 1.0, size=(n_states, n_actions))
    return transitions, mean_rewards


class TabularMDPEnv(TaskEnvMixin, gym.Env, EzPickle):
    """A random tabular MDP (RL², Duan et al. 2016): 10 states, 5 actions, episodes of 10 steps.

    ## Action space
    ``Discrete(n_actions)``. Anything else (a float, NaN, an out-of-range index) raises ``ValueError``.

    ## Observation space
    ``Box(0, 1, (n_states,))`` float32: the one-hot encoding of the current state (one-hot, so any policy network
    takes it as is; ``info["state"]`` has the index).

    ## Dynamics and rewards
    From state ``s`` with action ``a``, the next state is drawn from ``transitions[s, a]`` and the reward is
    ``reward = reward_mean + reward_noise`` with ``reward_mean = mean_rewards[s, a]`` and
    ``reward_noise ~ N(0, noise_std^2)`` (``noise_std = 1``), all from ``self.np_random``.

    ## Starting state
    State 0 (``uniform_start=False``, the default) or uniform over the states (``uniform_start=True``).

    ## Episode end
    The episode *terminates* after ``horizon = 10`` steps: the horizon is part of this finite-horizon MDP (as in
    the paper), not an outside time limit, and the registration adds no ``TimeLimit``. Stepping again before
    ``reset`` raises ``RuntimeError``.

    ## Task law
    The task is :class:`TabularMDPTask` ``(seed)``; the MDP is :func:`tabular_mdp_parameters` of the seed:
    ``transitions[s, a] ~ Dirichlet(1, ..., 1)``, ``mean_rewards[s, a] ~ N(1, 1)``.

    * ``train``: even seeds, ``test``: odd seeds, both uniform over ``[0, 2^63)``: disjoint by construction.
    * no ``ood`` split.
    * ``set_task`` accepts integer seeds in ``[0, 2^63 - 1]``.

    The descriptor is the flattened parameters, ``transitions`` then ``mean_rewards``
    (``n_states * n_actions * (n_states + 1)`` = 550 numbers by default).

    ## Arguments
    | name | default | meaning |
    | --- | --- | --- |
    | ``n_states`` | ``10`` | number of states |
    | ``n_actions`` | ``5`` | number of actions |
    | ``horizon`` | ``10`` | steps per episode |
    | ``noise_std`` | ``1.0`` | standard deviation of the observed reward around its mean |
    | ``uniform_start`` | ``False`` | start in a uniformly random state instead of state 0 |
    """

    metadata = {"render_modes": [], "render_fps": 1}
    task_type = TabularMDPTask
    splits = SPLITS
    max_seed = 2**63 - 1

    def __init__(
        self,
        n_states: int = 10,
        n_actions: int = 5,
        horizon: int = 10,
        noise_std: float = 1.0,
        uniform_start: bool = False,
    ) -> None:
        for name, value, least in (("n_states", n_states, 1), ("n_actions", n_actions, 1), ("horizon", horizon, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a non-negative number, got {noise_std!r}")
        EzPickle.__init__(self, n_states, n_actions, horizon, noise_std, uniform_start)
        self.n_states, self.n_actions, self.horizon = int(n_states), int(n_actions), int(horizon)
        self.episode_step_limit = self.horizon
        self.noise_std = float(noise_std)
        self.uniform_start = bool(uniform_start)
        self.action_space = spaces.Discrete(self.n_actions)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.n_states,), dtype=np.float32)
        self._state = 0
        self._t = self.horizon
        self._init_task(TabularMDPTask(0))
        self._on_task_change(self._task)

    # --- task ---------------------------------------------------------------------------------------------
    def _validate_task(self, task: Any) -> TabularMDPTask:
        task = check_task_fields(task, TabularMDPTask, {"seed": (0, self.max_seed)})
        if not isinstance(task.seed, (int, np.integer)) or isinstance(task.seed, bool):
            raise TaskError(f"task field seed must be an integer, got {task.seed!r}")
        return TabularMDPTask(int(task.seed))

    def _on_task_change(self, task: TabularMDPTask) -> None:
        self.transitions, self.mean_rewards = self.parameters(task)
        cdf = np.cumsum(self.transitions, axis=-1)
        cdf[..., -1] = 1.0  # guard against rounding: a uniform draw in [0, 1) always lands in some state
        self._cdf = cdf

    def parameters(self, task: TabularMDPTask | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(transitions [S, A, S], mean_rewards [S, A])`` of ``task`` (default: the current one)."""
        task = self.get_task() if task is None else self._validate_task(task)
        return tabular_mdp_parameters(task.seed, self.n_states, self.n_actions)

    def _descriptor(self, task: TabularMDPTask) -> np.ndarray:
        transitions, mean_rewards = self.parameters(task)
        return np.concatenate([transitions.ravel(), mean_rewards.ravel()])

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[TabularMDPTask]:
        halves = rng.integers(0, 2**62, size=n)
        parity = 0 if split == "train" else 1
        return [TabularMDPTask(int(2 * h + parity)) for h in halves]

    # --- gymnasium API ------------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._apply_pending_task()
        self._state = int(self.np_random.integers(self.n_states)) if self.uniform_start else 0
        self._t = 0
        return self._obs(), {"task": self._task, "state": self._state}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, {self.n_actions - 1}], got {action!r}")
        if self._t >= self.horizon:
            raise RuntimeError(f"the episode ended after {self.horizon} steps: call reset() first")
        s, a = self._state, int(action)
        reward_mean = float(self.mean_rewards[s, a])
        reward_noise = self.noise_std * float(self.np_random.standard_normal())
        self._state = int(np.searchsorted(self._cdf[s, a], self.np_random.random(), side="right"))
        self._t += 1
        info = {"reward_mean": reward_mean, "reward_noise": reward_noise, "state": self._state, "task": self._task}
        return self._obs(), reward_mean + reward_noise, self._t >= self.horizon, False, info

    # --- exact references (the reference policies themselves: metarl.envs.references) -----------------------
    def _start_distribution(self) -> np.ndarray:
        if self.uniform_start:
            return np.full(self.n_states, 1.0 / self.n_states)
        start = np.zeros(self.n_states)
        start[0] = 1.0
        return start

    def optimal_expected_return(self, task: TabularMDPTask | None = None) -> float:
        """Expected episode return of the optimal (time-dependent) policy that knows the MDP: finite-horizon DP."""
        transitions, mean_rewards = self.parameters(task)
        return float(expected_episode_return(transitions, mean_rewards, self.horizon, self._start_distribution()))

    def random_expected_return(self, task: TabularMDPTask | None = None) -> float:
        """Expected episode return of uniformly random actions (exact)."""
        transitions, mean_rewards = self.parameters(task)
        return float(expected_episode_return(transitions, mean_rewards, self.horizon, self._start_distribution(),
                                             "mean"))
