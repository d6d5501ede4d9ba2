"""Reference policies for the discrete task distributions of RL²: the numbers a learned in-context agent is measured by.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement
Learning" (arXiv:1611.02779), tables 1 and 2, compare RL² with these policies on the two benchmarks of
:mod:`metarl.envs.discrete`. Every figure here is computed honestly: by simulating the policy against the task with
an explicit ``numpy.random.Generator`` (vectorised over tasks and runs), or exactly by dynamic programming where
the expectation is cheap (the oracles and uniformly random MDP actions). Each ``*_reference_returns`` function
returns ``[tasks, episodes]`` per-episode returns averaged over ``runs`` simulated trials per task, the shape of
``RL2.meta_test``; the total over a trial is the sum over the last axis.

## Bernoulli bandits (``metarl/BernoulliBandit-v0``; a trial is ``n`` pulls, one pull per episode)

Every Bayesian policy uses the uniform ``Beta(1, 1)`` prior of the task law (means ~ U[0, 1]). Ties go to a uniformly
random arm, except in UCB1 (the lowest index, as the function this module took over always did).

| name | policy | parameter |
| --- | --- | --- |
| ``oracle`` | always the best arm; exact expectation ``n * max(means)`` | — |
| ``gittins`` | the arm of largest finite-horizon Gittins index (see :func:`gittins_indices`) | — |
| ``thompson`` | Thompson sampling: the arm of largest posterior sample | — |
| ``ucb1`` | UCB1 (Auer, Cesa-Bianchi & Fischer 2002): each arm once, then ``mean + c sqrt(2 ln t / n)`` | ``c`` |
| ``epsilon_greedy`` | with probability ``epsilon`` a uniformly random arm, else the greedy arm | ``epsilon`` |
| ``greedy`` | the arm of largest posterior mean ``(1 + s) / (2 + s + f)`` | — |
| ``random`` | uniformly random arms | — |

The Gittins index is the *finite-horizon* index (Niño-Mora 2011, "Computing a classic index for finite-horizon
bandits", INFORMS J. Computing 23(2)): with ``m`` pulls left, the arm's index is the retirement reward per pull
``λ`` at which pulling it now and retiring optimally later (at most ``m`` pulls in all) is worth exactly as much as
retiring now, i.e. ``sup over stopping times 1 <= τ <= m of E[reward of the first τ pulls] / E[τ]``, undiscounted.
The classic Gittins index solves the discounted infinite-horizon problem; RL² plays a finite undiscounted trial,
and the remaining-pulls calibration is the standard way to carry the index over (with one pull left it is the
posterior mean, the right myopic choice). It is not the Bayes-optimal policy for ``k >= 2`` finite-horizon arms
(no index policy is), but close to it: tests/test_references.py compares it with the exact Bayes-optimal DP.

## Tabular MDPs (``metarl/TabularMDP-v0``; a trial is ``n`` episodes of ``horizon`` steps)

The posterior (:class:`MDPPosterior`) matches the task law: ``Dirichlet(1, ..., 1)`` over each transition row and a
Normal ``N(1, 1)`` prior over each mean reward, observed with known Gaussian noise ``noise_std``, so the mean-reward
posterior is Normal (conjugate). Model-based policies plan at the start of each episode by finite-horizon dynamic
programming (:func:`plan`, time-dependent greedy actions, ties broken at random) and act on that plan all episode;
the posterior is updated after every step.

| name | episode plan | parameter |
| --- | --- | --- |
| ``oracle`` | optimal for the true MDP; exact expectation | — |
| ``psrl`` | posterior sampling (Strens 2000; Osband, Russo & Van Roy 2013): one MDP drawn from the posterior | — |
| ``opsrl`` | optimistic PSRL: ``samples`` MDPs drawn, each backup the best sample per state-action | ``samples`` |
| ``ucrl2`` | UCRL2 (Jaksch, Ortner & Auer 2010): finite-horizon extended value iteration | ``scale`` |
| ``beb`` | Bayesian exploration bonus (Kolter & Ng 2009): posterior-mean MDP, ``+ beta / (1 + n(s, a))`` | ``beta`` |
| ``epsilon_greedy`` | the greedy plan; each action uniformly random with probability ``epsilon`` | ``epsilon`` |
| ``greedy`` | optimal for the posterior-mean MDP | — |
| ``random`` | uniformly random actions; exact expectation | — |

OPSRL's per-(state, action) optimism over samples is the merged-sample MDP of BOSS (Asmuth et al. 2009) and of
Agrawal & Jia's optimistic posterior sampling (2017); with ``samples = 1`` it is PSRL. UCRL2's adaptation: its
confidence sets (an L1 ball of radius ``sqrt(14 S log(2 A t / δ) / max(1, N))`` around the empirical transition
row, an interval of half-width ``2 noise_std sqrt(7 log(2 S A t / δ) / (2 max(1, N)))`` around the empirical mean
reward; ``t`` the steps so far, ``δ = 0.05``; the ``2 noise_std`` turns UCRL2's [0, 1]-reward Hoeffding radius into
the Gaussian one) both multiplied by ``scale``; the optimistic MDP is planned by ``horizon`` backward steps of
extended value iteration at the start of every episode, in place of average-reward value iteration on doubling
episodes. Unvisited rows start from the uniform transition row and zero reward. Greedy, ε-greedy and BEB plan the
posterior-mean MDP (Dirichlet mean transitions, posterior mean rewards).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BANDIT_REFERENCES",
    "MDP_REFERENCES",
    "bandit_reference_returns",
    "bandit_reference_trials",
    "mdp_reference_returns",
    "gittins_indices",
    "gittins_index",
    "bayes_optimal_bandit_value",
    "MDPPosterior",
    "plan",
    "expected_episode_return",
    "random_policy_return",
    "ucb1_return",
    "thompson_sampling_return",
    "oracle_return",
]

BANDIT_REFERENCES: dict[str, str] = {
    "oracle": "always the best arm (exact)",
    "gittins": "finite-horizon Gittins index",
    "thompson": "Thompson sampling, Beta(1, 1) priors",
    "ucb1": "UCB1, mean + c sqrt(2 ln t / n)",
    "epsilon_greedy": "posterior-mean greedy, random arm with probability epsilon",
    "greedy": "posterior-mean greedy",
    "random": "uniformly random arms",
}
MDP_REFERENCES: dict[str, str] = {
    "oracle": "optimal policy of the true MDP (exact)",
    "psrl": "posterior sampling, one MDP per episode",
    "opsrl": "optimistic posterior sampling, best of `samples` MDPs per state-action",
    "ucrl2": "UCRL2, finite-horizon extended value iteration",
    "beb": "Bayesian exploration bonus beta / (1 + n)",
    "epsilon_greedy": "posterior-mean plan, random action with probability epsilon",
    "greedy": "posterior-mean plan",
    "random": "uniformly random actions (exact)",
}


def _argmax_random_ties(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Argmax over the last axis, ties (within 1e-12 relative) broken uniformly at random."""
    best = values.max(axis=-1, keepdims=True)
    ties = values >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return np.argmax(np.where(ties, rng.random(values.shape), -1.0), axis=-1)


def _check_count(name: str, value: Any, least: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------------------------
# Bernoulli bandits
# ------------------------------------------------------------------------------------------------------------------
def _check_means(means: Sequence[float] | np.ndarray, ndim: int) -> np.ndarray:
    arr = np.asarray(means, dtype=np.float64)
    if arr.ndim != ndim or arr.size < 1 or not np.all((arr >= 0) & (arr <= 1)):
        shape = "a 1-D sequence" if ndim == 1 else "a [tasks, arms] array"
        raise ValueError(f"means must be {shape} of probabilities in [0, 1], got {means!r}")
    return arr


def _bandit_args(means: Sequence[float] | np.ndarray, pulls: int, runs: int) -> np.ndarray:
    arr = _check_means(means, 1)
    if not isinstance(pulls, (int, np.integer)) or pulls < 0:
        raise ValueError(f"pulls must be a non-negative integer, got {pulls!r}")
    if not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    return arr


# A chooser maps (t, successes [rows, k], failures [rows, k], rng) to the arms pulled at step t ([rows] ints).
Chooser = Callable[[int, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _simulate_bandit(means: np.ndarray, pulls: int, rng: np.random.Generator, choose: Chooser,
                     runs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Play ``pulls`` pulls on every row of ``means [rows, k]`` (rows task-major, ``runs`` per task).

    Returns the total reward of each row ``[rows]`` and the mean reward of each pull over each task's runs
    ``[rows // runs, pulls]``.
    """
    rows, k = means.shape
    successes = np.zeros((rows, k))
    failures = np.zeros((rows, k))
    index = np.arange(rows)
    total = np.zeros(rows)
    per_pull = np.zeros((rows // runs, pulls))
    for t in range(pulls):
        arm = choose(t, successes, failures, rng)
        reward = rng.random(rows) < means[index, arm]
        successes[index, arm] += reward
        failures[index, arm] += ~reward
        total += reward
        per_pull[:, t] = reward.reshape(-1, runs).mean(axis=1)
    return total, per_pull


def _random_arm(t, successes, failures, rng):
    return rng.integers(0, successes.shape[1], size=successes.shape[0])


def _thompson_arm(t, successes, failures, rng):
    return np.argmax(rng.beta(1.0 + successes, 1.0 + failures), axis=1)


def _ucb1_chooser(c: float) -> Chooser:
    def choose(t, successes, failures, rng):
        k = successes.shape[1]
        if t < k:
            return np.full(successes.shape[0], t)
        counts = successes + failures
        return np.argmax(successes / counts + c * np.sqrt(2.0 * math.log(t) / counts), axis=1)

    return choose


def _greedy_arm(t, successes, failures, rng):
    return _argmax_random_ties((1.0 + successes) / (2.0 + successes + failures), rng)


def _epsilon_greedy_chooser(epsilon: float) -> Chooser:
    def choose(t, successes, failures, rng):
        explore = rng.random(successes.shape[0]) < epsilon
        return np.where(explore, _random_arm(t, successes, failures, rng), _greedy_arm(t, successes, failures, rng))

    return choose


def _gittins_chooser(pulls: int) -> Chooser:
    table = gittins_indices(pulls)

    def choose(t, successes, failures, rng):
        return _argmax_random_ties(table[pulls - t][successes.astype(np.intp), failures.astype(np.intp)], rng)

    return choose


def _bandit_chooser(name: str, pulls: int, params: dict[str, Any]) -> Chooser:
    expected = {"ucb1": {"c"}, "epsilon_greedy": {"epsilon"}}.get(name, set())
    if set(params) - expected or (name == "epsilon_greedy" and "epsilon" not in params):
        raise ValueError(f"bandit reference {name!r} takes parameters {sorted(expected) or 'none'}, got {params}")
    if name == "gittins":
        return _gittins_chooser(pulls)
    if name == "thompson":
        return _thompson_arm
    if name == "ucb1":
        c = float(params.get("c", 1.0))
        if not c >= 0:
            raise ValueError(f"ucb1's c must be >= 0, got {c!r}")
        return _ucb1_chooser(c)
    if name == "epsilon_greedy":
        epsilon = float(params["epsilon"])
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        return _epsilon_greedy_chooser(epsilon)
    if name == "greedy":
        return _greedy_arm
    if name == "random":
        return _random_arm
    raise ValueError(f"unknown bandit reference {name!r}: choose from {', '.join(BANDIT_REFERENCES)}")


def bandit_reference_returns(name: str, means: Sequence[Sequence[float]] | np.ndarray, pulls: int,
                             rng: np.random.Generator, *, runs: int = 100, **params: Any) -> np.ndarray:
    """Per-pull rewards ``[tasks, pulls]`` of reference ``name`` on bandits ``means [tasks, k]``, mean of ``runs``.

    ``name`` is a key of :data:`BANDIT_REFERENCES`; ``params`` its parameter (``c`` for ``ucb1``, ``epsilon``
    for ``epsilon_greedy``). ``oracle`` is exact (``max(means)`` every pull) and draws nothing from ``rng``.
    """
    arr = _check_means(means, 2)
    pulls, runs = _check_count("pulls", pulls, 1), _check_count("runs", runs, 1)
    if name == "oracle":
        if params:
            raise ValueError(f"bandit reference 'oracle' takes no parameters, got {params}")
        return np.repeat(arr.max(axis=1, keepdims=True), pulls, axis=1)
    choose = _bandit_chooser(name, pulls, params)
    _, per_pull = _simulate_bandit(np.repeat(arr, runs, axis=0), pulls, rng, choose, runs)
    return per_pull


def bandit_reference_trials(name: str, means: Sequence[Sequence[float]] | np.ndarray, pulls: int,
                            rng: np.random.Generator, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """One trial of reference ``name`` (not ``oracle``) per bandit of ``means [tasks, k]``: the arms it pulled and
    the rewards it earned, both ``[tasks, pulls]`` (what :func:`bandit_reference_returns` averages, one run)."""
    arr = _check_means(means, 2)
    pulls = _check_count("pulls", pulls, 1)
    if name == "oracle":
        raise ValueError("bandit_reference_trials plays a policy that learns; 'oracle' only knows the best arm")
    choose, arms = _bandit_chooser(name, pulls, params), []
    _, rewards = _simulate_bandit(arr, pulls, rng, lambda *args: arms.append(choose(*args)) or arms[-1])
    return np.stack(arms, axis=1), rewards


def random_policy_return(
    means: Sequence[float] | np.ndarray, pulls: int, rng: np.random.Generator, runs: int = 1000
) -> float:
    """Mean total reward of ``pulls`` uniformly random pulls, averaged over ``runs`` simulated trials."""
    arr = _bandit_args(means, pulls, runs)
    return float(_simulate_bandit(np.broadcast_to(arr, (runs, arr.size)), pulls, rng, _random_arm)[0].mean())


def ucb1_return(means: Sequence[float] | np.ndarray, pulls: int, rng: np.random.Generator, runs: int = 1000) -> float:
    """Mean total reward of UCB1 (Auer et al. 2002) over ``pulls`` pulls, averaged over ``runs`` simulated trials.

    Each arm is pulled once; then the arm maximising ``empirical mean + sqrt(2 ln t / n_arm)`` (``t`` pulls so far,
    ties to the lowest index).
    """
    arr = _bandit_args(means, pulls, runs)
    return float(_simulate_bandit(np.broadcast_to(arr, (runs, arr.size)), pulls, rng, _ucb1_chooser(1.0))[0].mean())


def thompson_sampling_return(
    means: Sequence[float] | np.ndarray, pulls: int, rng: np.random.Generator, runs: int = 1000
) -> float:
    """Mean total reward of Thompson sampling over ``pulls`` pulls, averaged over ``runs`` simulated trials.

    Beta(1, 1) priors (the uniform law the means are drawn from); each pull samples every arm's posterior and pulls
    the arm with the largest sample.
    """
    arr = _bandit_args(means, pulls, runs)
    return float(_simulate_bandit(np.broadcast_to(arr, (runs, arr.size)), pulls, rng, _thompson_arm)[0].mean())


def oracle_return(means: Sequence[float] | np.ndarray, pulls: int) -> float:
    """Expected total reward of always pulling the best arm (exact): ``pulls * max(means)``."""
    return float(pulls * _bandit_args(means, pulls, 1).max())


# --- the finite-horizon Gittins index ----------------------------------------------------------------------------
GITTINS_GRID = 64  # retirement rewards λ on which the calibration DP is run (see gittins_indices)


@functools.lru_cache(maxsize=4)
def gittins_indices(horizon: int, prior: tuple[float, float] = (1.0, 1.0), grid: int = GITTINS_GRID,
                    ) -> tuple[np.ndarray, ...]:
    """Finite-horizon Gittins indices of a Bernoulli arm with a ``Beta(prior)`` prior, for every state of a trial.

    ``table[m][s, f]`` (``1 <= m <= horizon``, ``s + f <= horizon - m``) is the index with ``m`` pulls left after
    ``s`` successes and ``f`` failures: the zero in ``λ`` of ``Q_m(s, f; λ)``, the value of pulling now (reward
    minus ``λ`` per pull) and then stopping optimally within ``m`` pulls in all::

        Q_m(s, f; λ) = p (1 + W_{m-1}(s+1, f; λ)) + (1 - p) W_{m-1}(s, f+1; λ) - λ,   p = (a + s) / (a + b + s + f)
        W_m = max(0, Q_m),   W_0 = 0.

    One backward pass at a fixed ``λ`` gives ``Q`` for *every* state at once (the retirement reward is the same
    throughout a root's subtree), so the table costs ``grid`` passes of ``O(horizon^3)``, not a bisection per state.
    ``Q_m`` is convex and decreasing in ``λ`` with slope ``-E[τ]`` (the expected number of pulls of the optimal
    stopping rule, carried along the pass), so every tangent's zero ``λ_g + Q(λ_g) / E[τ](λ_g)`` is a lower bound
    of the index; the table holds the largest of them over ``grid`` midpoints of [0, 1] (exact when ``Q`` is
    linear between the grid point below the index and the index). :func:`gittins_index` bisects one state exactly.
    Arrays are float32 and read-only; the result is cached.
    """
    horizon, grid = _check_count("horizon", horizon, 1), _check_count("grid", grid, 1)
    a, b = (float(v) for v in prior)
    if not (a > 0 and b > 0):
        raise ValueError(f"prior must be two positive Beta parameters, got {prior!r}")
    n = horizon
    dtype = np.float32
    counts = np.arange(n + 1, dtype=np.float64)
    success_probability = ((a + counts[:, None]) / (a + b + counts[:, None] + counts[None, :])).astype(dtype)
    table = [np.full((n - m + 1, n - m + 1), -np.inf, dtype) for m in range(n + 1)]
    lambdas = ((np.arange(grid) + 0.5) / grid).astype(dtype)
    chunk = max(1, min(grid, 2**21 // (n + 1) ** 2))  # λ values per pass: a few MB of working arrays
    for start in range(0, grid, chunk):
        lam = lambdas[start:start + chunk, None, None]
        shape = (lam.shape[0], n + 1, n + 1)
        stop_value, pulls_left = np.zeros(shape, dtype), np.zeros(shape, dtype)  # W_{m-1}, E[τ] of W_{m-1}
        q_buffer, tau_buffer, zero_buffer = np.empty(shape, dtype), np.empty(shape, dtype), np.empty(shape, dtype)
        for m in range(1, n + 1):
            size = n - m + 1
            p = success_probability[:size, :size]
            q, tau, zero = q_buffer[:, :size, :size], tau_buffer[:, :size, :size], zero_buffer[:, :size, :size]
            after_failure = stop_value[:, :size, 1:size + 1]
            np.subtract(stop_value[:, 1:size + 1, :size], after_failure, out=q)
            q += 1.0
            q *= p
            q += after_failure
            q -= lam
            tau_after_failure = pulls_left[:, :size, 1:size + 1]
            np.subtract(pulls_left[:, 1:size + 1, :size], tau_after_failure, out=tau)
            tau *= p
            tau += tau_after_failure
            tau += 1.0
            np.divide(q, tau, out=zero)
            zero += lam
            np.maximum(table[m], zero.max(axis=0), out=table[m])
            np.maximum(q, 0.0, out=stop_value[:, :size, :size])
            np.multiply(tau, q > 0, out=pulls_left[:, :size, :size])
    for values in table:
        values.flags.writeable = False
    return tuple(table)


def gittins_index(successes: int, failures: int, remaining: int, prior: tuple[float, float] = (1.0, 1.0),
                  tolerance: float = 1e-12) -> float:
    """The finite-horizon Gittins index of one state (see :func:`gittins_indices`), by bisection on ``λ``."""
    s, f = _check_count("successes", successes, 0), _check_count("failures", failures, 0)
    m = _check_count("remaining", remaining, 1)
    a, b = (float(v) for v in prior)
    i, j = np.arange(m + 1)[:, None], np.arange(m + 1)[None, :]
    p = (a + s + i) / (a + b + s + f + i + j)

    def pull_value(lam: float) -> float:
        stop_value = np.zeros((m + 1, m + 1))
        for _ in range(m):
            q = p[:-1, :-1] * (1.0 + stop_value[1:, :-1]) + (1.0 - p[:-1, :-1]) * stop_value[:-1, 1:] - lam
            stop_value = np.zeros((m + 1, m + 1))
            stop_value[:-1, :-1] = np.maximum(q, 0.0)
        return float(q[0, 0])

    low, high = (a + s) / (a + b + s + f), 1.0
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if pull_value(middle) > 0 else (low, middle)
    return 0.5 * (low + high)


def bayes_optimal_bandit_value(arms: int, pulls: int) -> float:
    """Exact Bayes-optimal expected total reward of ``pulls`` pulls of ``arms`` Beta(1, 1) arms (DP; small cases).

    The DP runs over the joint counts of every arm, ``O(pulls^(2 arms))`` states: for ``arms <= 2`` and tens of
    pulls. The upper bound of every policy on the prior, against which the index policies are checked.
    """
    arms, pulls = _check_count("arms", arms, 1), _check_count("pulls", pulls, 0)

    @functools.cache
    def value(state: tuple[tuple[int, int], ...], left: int) -> float:
        if left == 0:
            return 0.0
        best = 0.0
        for arm, (s, f) in enumerate(state):
            p = (1.0 + s) / (2.0 + s + f)
            win = tuple(sorted(state[:arm] + ((s + 1, f),) + state[arm + 1:]))
            lose = tuple(sorted(state[:arm] + ((s, f + 1),) + state[arm + 1:]))
            best = max(best, p * (1.0 + value(win, left - 1)) + (1.0 - p) * value(lose, left - 1))
        return best

    return value(((0, 0),) * arms, pulls)


# ------------------------------------------------------------------------------------------------------------------
# Tabular MDPs
# ------------------------------------------------------------------------------------------------------------------
def plan(transitions: np.ndarray, rewards: np.ndarray, horizon: int, how: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Finite-horizon backward induction: ``(Q [..., horizon, S, A], V [..., S])`` of ``horizon`` steps.

    ``transitions [..., S, A, S]``, ``rewards [..., S, A]`` (leading axes batch independent MDPs);
    ``Q[..., h, s, a]`` is the value of ``a`` in ``s`` at step ``h`` (``horizon - h`` steps left), ``V`` the value
    of the first step. ``how="max"`` is the optimal policy; ``how="mean"`` uniformly random actions.
    """
    horizon = _check_count("horizon", horizon, 1)
    reduce = {"max": np.max, "mean": np.mean}[how]
    value = np.zeros(transitions.shape[:-2])
    q = np.empty((*rewards.shape[:-2], horizon, *rewards.shape[-2:]))
    for h in reversed(range(horizon)):
        q[..., h, :, :] = rewards + np.matmul(transitions, value[..., None, :, None])[..., 0]
        value = reduce(q[..., h, :, :], axis=-1)
    return q, value


def expected_episode_return(transitions: np.ndarray, mean_rewards: np.ndarray, horizon: int, start: np.ndarray,
                            how: str = "max") -> np.ndarray:
    """Exact expected return of one episode from the start distribution ``start [S]``: optimal or random actions."""
    return plan(transitions, mean_rewards, horizon, how)[1] @ start


class MDPPosterior:
    """The conjugate posterior of a batch of tabular MDPs under the task law of ``metarl/TabularMDP-v0``.

    Transitions: each row ``P(· | s, a) ~ Dirichlet(transition_prior, ...)``; posterior ``Dirichlet(prior + counts)``.
    Mean rewards: ``r(s, a) ~ N(reward_prior_mean, reward_prior_std^2)`` observed with noise ``N(0, noise_std^2)``;
    posterior Normal with precision ``1 / reward_prior_std^2 + n / noise_std^2`` and mean
    ``(reward_prior_mean / reward_prior_std^2 + sum of rewards / noise_std^2) / precision``.
    """

    def __init__(self, batch: int, n_states: int, n_actions: int, *, noise_std: float = 1.0,
                 transition_prior: float = 1.0, reward_prior_mean: float = 1.0, reward_prior_std: float = 1.0) -> None:
        if not (noise_std > 0 and transition_prior > 0 and reward_prior_std > 0):
            raise ValueError("noise_std, transition_prior and reward_prior_std must be positive")
        self.noise_std, self.transition_prior = float(noise_std), float(transition_prior)
        self.reward_prior_mean, self.reward_prior_std = float(reward_prior_mean), float(reward_prior_std)
        self.transition_counts = np.zeros((batch, n_states, n_actions, n_states))
        self.visits = np.zeros((batch, n_states, n_actions))
        self.reward_sums = np.zeros((batch, n_states, n_actions))

    def update(self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray) -> None:
        """One observed step ``(s, a, r, s')`` for every MDP of the batch (arrays ``[batch]``)."""
        rows = np.arange(self.visits.shape[0])
        self.transition_counts[rows, states, actions, next_states] += 1.0
        self.visits[rows, states, actions] += 1.0
        self.reward_sums[rows, states, actions] += rewards

    def dirichlet(self) -> np.ndarray:
        """Posterior Dirichlet parameters of every transition row ``[batch, S, A, S]``."""
        return self.transition_prior + self.transition_counts

    def reward_posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of every mean reward ``[batch, S, A]``."""
        precision = 1.0 / self.reward_prior_std**2 + self.visits / self.noise_std**2
        mean = (self.reward_prior_mean / self.reward_prior_std**2 + self.reward_sums / self.noise_std**2) / precision
        return mean, 1.0 / np.sqrt(precision)

    def mean_model(self) -> tuple[np.ndarray, np.ndarray]:
        """The posterior-mean MDP: ``(transitions [batch, S, A, S], rewards [batch, S, A])``."""
        alpha = self.dirichlet()
        return alpha / alpha.sum(axis=-1, keepdims=True), self.reward_posterior()[0]

    def sample(self, rng: np.random.Generator, samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``samples`` posterior MDPs per batch entry: ``([samples, batch, S, A, S], [samples, batch, S, A])``."""
        alpha = self.dirichlet()
        gamma = rng.standard_gamma(np.broadcast_to(alpha, (samples, *alpha.shape)))
        mean, std = self.reward_posterior()
        return gamma / gamma.sum(axis=-1, keepdims=True), mean + std * rng.standard_normal((samples, *mean.shape))


def _optimistic_backup(p_hat: np.ndarray, radius: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``max p · value`` over transition rows ``p`` within L1 ``radius`` of ``p_hat`` (Jaksch et al. 2010, fig. 2).

    ``p_hat [B, S, A, S]``, ``radius [B, S, A]``, ``value [B, S]``: moves up to ``radius / 2`` of mass onto the best
    next state, taken from the worst states first.
    """
    order = np.argsort(-value, axis=-1)
    sorted_value = np.take_along_axis(value, order, axis=-1)[:, None, None, :]
    p = np.take_along_axis(p_hat, np.broadcast_to(order[:, None, None, :], p_hat.shape), axis=-1)
    best = np.minimum(1.0, p[..., 0] + radius / 2.0)
    added = best - p[..., 0]
    rest = p[..., 1:]
    mass_after = np.cumsum(rest[..., ::-1], axis=-1)[..., ::-1] - rest  # of the states worse than each
    rest = rest - np.clip(added[..., None] - mass_after, 0.0, rest)
    return best * sorted_value[..., 0] + (rest * sorted_value[..., 1:]).sum(axis=-1)


def _mdp_planner(name: str, horizon: int, params: dict[str, Any]):
    """``(planner(posterior, steps_so_far, rng) -> Q [B, horizon, S, A], epsilon)`` of reference ``name``."""
    defaults = {"opsrl": {"samples": 5}, "ucrl2": {"scale": 1.0, "delta": 0.05}, "beb": {"beta": 1.0},
                "epsilon_greedy": {"epsilon": 0.1}}.get(name, {})
    if set(params) - set(defaults):
        raise ValueError(f"MDP reference {name!r} takes parameters {sorted(defaults) or 'none'}, got {params}")
    settings = {**defaults, **params}
    epsilon = 0.0
    if name == "psrl":
        def planner(posterior, steps, rng):
            transitions, rewards = posterior.sample(rng)
            return plan(transitions[0], rewards[0], horizon)[0]
    elif name == "opsrl":
        samples = _check_count("opsrl samples", settings["samples"], 1)

        def planner(posterior, steps, rng):
            transitions, rewards = posterior.sample(rng, samples)
            value = np.zeros(transitions.shape[1:3])
            q = np.empty((*rewards.shape[1:3], horizon, rewards.shape[-1]))
            for h in reversed(range(horizon)):
                q[:, :, h] = (rewards + np.matmul(transitions, value[None, :, None, :, None])[..., 0]).max(axis=0)
                value = q[:, :, h].max(axis=-1)
            return q.transpose(0, 2, 1, 3)
    elif name == "ucrl2":
        scale, delta = float(settings["scale"]), float(settings["delta"])
        if not (scale >= 0 and 0 < delta < 1):
            raise ValueError(f"ucrl2 needs scale >= 0 and 0 < delta < 1, got scale={scale!r}, delta={delta!r}")

        def planner(posterior, steps, rng):
            batch, n_states, n_actions, _ = posterior.transition_counts.shape
            visits = np.maximum(1.0, posterior.visits)
            p_hat = np.where(posterior.visits[..., None] > 0, posterior.transition_counts / visits[..., None],
                             1.0 / n_states)
            log_term = math.log(2.0 * n_states * n_actions * max(1, steps) / delta)
            transition_radius = scale * np.sqrt(14.0 * n_states * math.log(2.0 * n_actions * max(1, steps) / delta)
                                                / visits)
            reward = posterior.reward_sums / visits + scale * 2.0 * posterior.noise_std * np.sqrt(
                7.0 * log_term / (2.0 * visits))
            value = np.zeros((batch, n_states))
            q = np.empty((batch, horizon, n_states, n_actions))
            for h in reversed(range(horizon)):
                q[:, h] = reward + _optimistic_backup(p_hat, transition_radius, value)
                value = q[:, h].max(axis=-1)
            return q
    elif name in ("beb", "greedy", "epsilon_greedy"):
        beta = float(settings.get("beta", 0.0))
        epsilon = float(settings.get("epsilon", 0.0))
        if not (beta >= 0 and 0 <= epsilon <= 1):
            raise ValueError(f"need beta >= 0 and epsilon in [0, 1], got beta={beta!r}, epsilon={epsilon!r}")

        def planner(posterior, steps, rng):
            transitions, rewards = posterior.mean_model()
            return plan(transitions, rewards + beta / (1.0 + posterior.visits), horizon)[0]
    else:
        raise ValueError(f"unknown MDP reference {name!r}: choose from {', '.join(MDP_REFERENCES)}")
    return planner, epsilon


def mdp_reference_returns(name: str, transitions: np.ndarray, mean_rewards: np.ndarray, episodes: int,
                          rng: np.random.Generator, *, runs: int = 10, horizon: int = 10, noise_std: float = 1.0,
                          uniform_start: bool = False, **params: Any) -> np.ndarray:
    """Per-episode returns ``[tasks, episodes]`` of reference ``name`` on MDPs, mean of ``runs`` trials per task.

    ``transitions [tasks, S, A, S]`` and ``mean_rewards [tasks, S, A]`` are the tasks' parameters
    (``TabularMDPEnv.parameters(task)``); ``horizon``, ``noise_std`` and ``uniform_start`` those of the env. The
    posterior's priors are the task law's (Dirichlet(1), N(1, 1)). ``oracle`` and ``random`` are exact and draw
    nothing from ``rng``. ``params``: ``samples`` (opsrl, default 5), ``scale`` and ``delta`` (ucrl2, 1 and 0.05),
    ``beta`` (beb, 1), ``epsilon`` (epsilon_greedy, 0.1).
    """
    transitions, mean_rewards = np.asarray(transitions, np.float64), np.asarray(mean_rewards, np.float64)
    if transitions.ndim != 4 or mean_rewards.shape != transitions.shape[:3] or transitions.shape[1] != \
            transitions.shape[3]:
        raise ValueError(f"need transitions [tasks, S, A, S] and mean_rewards [tasks, S, A], got shapes "
                         f"{transitions.shape} and {mean_rewards.shape}")
    episodes, runs, horizon = (_check_count(n, v, 1) for n, v in (("episodes", episodes), ("runs", runs),
                                                                   ("horizon", horizon)))
    tasks, n_states, n_actions, _ = transitions.shape
    start = np.full(n_states, 1.0 / n_states) if uniform_start else np.eye(n_states)[0]
    if name in ("oracle", "random"):
        if params:
            raise ValueError(f"MDP reference {name!r} takes no parameters, got {params}")
        per_episode = expected_episode_return(transitions, mean_rewards, horizon, start,
                                              "max" if name == "oracle" else "mean")
        return np.repeat(per_episode[:, None], episodes, axis=1)
    planner, epsilon = _mdp_planner(name, horizon, params)
    batch = tasks * runs
    transitions, mean_rewards = np.repeat(transitions, runs, axis=0), np.repeat(mean_rewards, runs, axis=0)
    cdf = np.cumsum(transitions, axis=-1)
    cdf[..., -1] = 1.0  # as the env: a uniform draw in [0, 1) always lands in some state
    posterior = MDPPosterior(batch, n_states, n_actions, noise_std=noise_std)
    rows = np.arange(batch)
    per_episode = np.zeros((tasks, episodes))
    for episode in range(episodes):
        q = planner(posterior, episode * horizon, rng)
        state = rng.integers(0, n_states, size=batch) if uniform_start else np.zeros(batch, dtype=np.intp)
        episode_return = np.zeros(batch)
        for h in range(horizon):
            action = _argmax_random_ties(q[rows, h, state], rng)
            if epsilon > 0:
                action = np.where(rng.random(batch) < epsilon, rng.integers(0, n_actions, size=batch), action)
            reward = mean_rewards[rows, state, action] + noise_std * rng.standard_normal(batch)
            next_state = (cdf[rows, state, action] <= rng.random(batch)[:, None]).sum(axis=-1)
            posterior.update(state, action, reward, next_state)
            episode_return += reward
            state = next_state
        per_episode[:, episode] = episode_return.reshape(tasks, runs).mean(axis=1)
    return per_episode
