"""Reference policies of RL²'s bandits and tabular MDPs (envs/references.py): Gittins indices against hand
computation and exact bisection, the Bayes-optimal DP, the MDP posterior against counts, the planner against a
hand-made MDP, UCRL2's optimistic backup by hand, same seed same numbers, and the orderings the literature reports."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from metarl.envs.discrete import BernoulliBanditEnv, TabularMDPEnv
from metarl.envs.references import (
    BANDIT_REFERENCES,
    MDP_REFERENCES,
    MDPPosterior,
    _optimistic_backup,
    bandit_reference_returns,
    bandit_reference_trials,
    bayes_optimal_bandit_value,
    gittins_index,
    gittins_indices,
    mdp_reference_returns,
    plan,
)

BANDIT_PARAMS = {"epsilon_greedy": {"epsilon": 0.1}, "ucb1": {"c": 0.5}}
MDP_PARAMS = {"opsrl": {"samples": 3}, "ucrl2": {"scale": 0.1}, "beb": {"beta": 2.0},
              "epsilon_greedy": {"epsilon": 0.1}}


def bandit_means(k: int, n: int, seed: int = 0) -> np.ndarray:
    return np.array([task.means for task in BernoulliBanditEnv(k=k).sample_tasks(n, split="test", seed=seed)])


def mdp_parameters(n: int, seed: int = 0, **env_kwargs) -> tuple[np.ndarray, np.ndarray]:
    env = TabularMDPEnv(**env_kwargs)
    transitions, rewards = zip(*[env.parameters(task) for task in env.sample_tasks(n, split="test", seed=seed)])
    return np.array(transitions), np.array(rewards)


# --- Gittins indices ----------------------------------------------------------------------------------------------
@pytest.mark.math
def test_gittins_indices_match_the_hand_computed_small_horizons():
    # Q_m(s, f; λ) = p (1 + W_{m-1}(s+1, f)) + (1 - p) W_{m-1}(s, f+1) - λ, p = (1 + s) / (2 + s + f), W = max(0, Q).
    # m = 1: Q = p - λ, so the index is the posterior mean.
    # m = 2, (0, 0): p = 1/2; after a success p = 2/3 (keep pulling iff λ < 2/3), after a failure p = 1/3. For
    #   λ in [1/3, 2/3]: Q = 1/2 (1 + 2/3 - λ) - λ = 5/6 - 3/2 λ = 0 at λ = 5/9.
    # m = 2, (1, 0): p = 2/3, children 3/4 and 1/2. For λ in [1/2, 3/4]: Q = 2/3 (1 + 3/4 - λ) - λ = 7/6 - 5/3 λ,
    #   zero at 7/10.
    # m = 2, (0, 1): p = 1/3, children 1/2 and 1/4. For λ in [1/4, 1/2]: Q = 1/3 (3/2 - λ) - λ = 1/2 - 4/3 λ: 3/8.
    # m = 3, (0, 0): p = 1/2; W_2(0, 1; λ) = 0 for λ > 3/8, and for λ in [1/2, 7/10] W_2(1, 0; λ) = 7/6 - 5/3 λ, so
    #   Q = 1/2 (1 + 7/6 - 5/3 λ) - λ = 13/12 - 11/6 λ = 0 at λ = 13/22 (inside [1/2, 7/10]).
    hand = {(0, 0, 2): 5 / 9, (1, 0, 2): 7 / 10, (0, 1, 2): 3 / 8, (0, 0, 3): 13 / 22}
    for s, f in [(0, 0), (2, 1), (0, 4), (3, 3)]:
        hand[(s, f, 1)] = (1 + s) / (2 + s + f)
    table = gittins_indices(8)
    for (s, f, m), value in hand.items():
        assert gittins_index(s, f, m) == pytest.approx(value, abs=1e-10), (s, f, m)
        assert table[m][s, f] == pytest.approx(value, abs=1e-6), (s, f, m)


@pytest.mark.math
def test_gittins_table_is_a_tight_lower_bound_of_the_exact_index_and_has_the_index_properties():
    horizon = 40
    table = gittins_indices(horizon)
    rng = np.random.default_rng(0)
    for _ in range(12):
        m = int(rng.integers(1, horizon + 1))
        s = int(rng.integers(0, horizon - m + 1))
        f = int(rng.integers(0, horizon - m - s + 1))
        exact = gittins_index(s, f, m)
        assert exact - 2e-3 < table[m][s, f] <= exact + 1e-6, (s, f, m, exact, table[m][s, f])  # tangents: below
    counts = np.arange(horizon + 1)
    for m in range(1, horizon + 1):
        size = horizon - m + 1
        s, f = counts[:size, None], counts[None, :size]
        valid = s + f <= horizon - m
        index = table[m].astype(np.float64)
        mean = (1 + s) / (2 + s + f)
        assert np.all(index[valid] >= mean[valid] - 1e-6)  # never below the posterior mean
        if m == 1:
            assert np.allclose(index[valid], mean[valid], atol=1e-6)  # one pull left: myopic
        else:
            assert np.all(index[valid] > mean[valid] + 1e-4)  # something to learn, with m >= 2 pulls left
        if m < horizon:  # one more pull left: at least as much worth exploring
            longer = table[m + 1].astype(np.float64)
            inside = (s + f <= horizon - m - 1)[: size - 1, : size - 1]
            assert np.all(longer[inside] >= index[: size - 1, : size - 1][inside] - 1e-3)
        if m >= 2 and size > 4:  # equal posterior mean 1/2: the fewer observations, the larger the index
            assert index[0, 0] > index[1, 1] > index[2, 2]
            assert np.all(np.diff(index[: size - 1, 0]) > 0) and np.all(np.diff(index[0, : size - 1]) < 0)


@pytest.mark.math
def test_bayes_optimal_dp_by_hand_and_gittins_close_to_it():
    # two arms, two pulls: pull one (1/2); after a success pull it again (2/3), after a failure the other (1/2)
    assert bayes_optimal_bandit_value(2, 1) == pytest.approx(0.5)
    assert bayes_optimal_bandit_value(2, 2) == pytest.approx(0.5 + 0.5 * 2 / 3 + 0.5 * 0.5)
    assert bayes_optimal_bandit_value(1, 3) == pytest.approx(1.5)  # one arm: no choice, n * E[mean]

    def policy_value(pulls: int, score) -> float:
        """Exact expected reward on the prior of the index policy argmax score(s, f, left) (two arms, ties averaged)."""

        @functools.cache
        def value(state, left):
            if left == 0:
                return 0.0
            scores = [score(s, f, left) for s, f in state]
            best = [arm for arm, x in enumerate(scores) if x >= max(scores) - 1e-9]
            total = 0.0
            for arm in best:
                s, f = state[arm]
                p = (1 + s) / (2 + s + f)
                win = tuple(sorted(state[:arm] + ((s + 1, f),) + state[arm + 1:]))
                lose = tuple(sorted(state[:arm] + ((s, f + 1),) + state[arm + 1:]))
                total += p * (1 + value(win, left - 1)) + (1 - p) * value(lose, left - 1)
            return total / len(best)

        return value(((0, 0), (0, 0)), pulls)

    pulls = 12
    table = gittins_indices(pulls)
    optimal = bayes_optimal_bandit_value(2, pulls)
    gittins = policy_value(pulls, lambda s, f, left: float(table[left][s, f]))
    greedy = policy_value(pulls, lambda s, f, left: (1 + s) / (2 + s + f))
    assert gittins <= optimal + 1e-9
    assert gittins >= optimal - 0.005 * pulls, (gittins, optimal)  # within 0.5% of a pull per pull
    assert greedy < gittins - 0.01, (greedy, gittins)  # the index's exploration is worth something
    # the simulated index policy (arms drawn from the prior itself) plays the table as the exact evaluation does
    means = np.random.default_rng(1).random((40000, 2))
    simulated = bandit_reference_returns("gittins", means, pulls, np.random.default_rng(2), runs=5).sum(1)
    standard_error = simulated.std() / math.sqrt(simulated.size)
    assert abs(simulated.mean() - gittins) < 4 * standard_error, (simulated.mean(), gittins)


# --- MDP posterior, planner, UCRL2's optimism -------------------------------------------------------------------
@pytest.mark.math
def test_mdp_posterior_parameters_are_the_counts_and_sums():
    history = [(0, 1, 2.0, 1), (1, 0, -1.0, 1), (0, 1, 0.5, 0), (1, 0, 3.0, 0), (0, 1, 1.0, 1)]
    for noise_std in (1.0, 2.0):
        posterior = MDPPosterior(1, 2, 2, noise_std=noise_std)
        for s, a, r, s_next in history:
            posterior.update(np.array([s]), np.array([a]), np.array([r]), np.array([s_next]))
        alpha = posterior.dirichlet()[0]
        assert alpha[0, 1].tolist() == [2.0, 3.0]  # (0, 1) went to state 0 once and to 1 twice: 1 + counts
        assert alpha[1, 0].tolist() == [2.0, 2.0]
        assert alpha[0, 0].tolist() == [1.0, 1.0] and alpha[1, 1].tolist() == [1.0, 1.0]  # unvisited: the prior
        mean, std = posterior.reward_posterior()
        v = noise_std**2
        # N(1, 1) prior, noise variance v: precision 1 + n / v, mean (1 + sum / v) / precision
        assert mean[0, 0, 1] == pytest.approx((1 + 3.5 / v) / (1 + 3 / v))
        assert std[0, 0, 1] == pytest.approx((1 + 3 / v) ** -0.5)
        assert mean[0, 1, 0] == pytest.approx((1 + 2.0 / v) / (1 + 2 / v))
        assert std[0, 1, 0] == pytest.approx((1 + 2 / v) ** -0.5)
        assert mean[0, 0, 0] == 1.0 and std[0, 1, 1] == 1.0
    transitions, rewards = posterior.mean_model()
    assert transitions[0, 0, 1].tolist() == pytest.approx([0.4, 0.6])
    draws_p, draws_r = posterior.sample(np.random.default_rng(0), samples=20000)
    assert np.allclose(draws_p.mean(axis=0), transitions, atol=0.01)
    assert np.allclose(draws_r.mean(axis=0), rewards, atol=0.03)
    assert np.allclose(draws_r.std(axis=0), posterior.reward_posterior()[1], rtol=0.03)


@pytest.mark.math
def test_planner_on_a_hand_made_two_state_mdp():
    # s0: a0 stays (reward 1); a1 moves to s1 w.p. 3/4 (reward 0). s1: a0 stays (reward 2); a1 back to s0 (reward 0).
    transitions = np.array([[[1.0, 0.0], [0.25, 0.75]], [[0.0, 1.0], [1.0, 0.0]]])
    rewards = np.array([[1.0, 0.0], [2.0, 0.0]])
    q, value = plan(transitions, rewards, 3)
    # optimal: V1 = (1, 2); V2(s0) = max(1 + 1, 1/4 + 3/4 * 2) = 2, V2(s1) = max(2 + 2, 0 + 1) = 4;
    # step 0: Q(s0) = (1 + 2, 1/4 * 2 + 3/4 * 4) = (3, 3.5), Q(s1) = (2 + 4, 0 + 2) = (6, 2)
    assert np.allclose(q[0], [[3.0, 3.5], [6.0, 2.0]], rtol=0, atol=1e-12)
    assert np.array_equal(q[2], rewards)  # the last step: the reward alone
    assert value.tolist() == pytest.approx([3.5, 6.0])
    # uniformly random: U1 = (1/2, 1); U2(s0) = ((1 + 1/2) + (1/8 + 3/4)) / 2 = 1.1875, U2(s1) = ((2 + 1) + 1/2) / 2
    # = 1.75; U3(s0) = ((1 + 1.1875) + (1.1875 / 4 + 3/4 * 1.75)) / 2 = 1.8984375
    assert plan(transitions, rewards, 3, "mean")[1][0] == pytest.approx(1.8984375)
    # a batch of MDPs plans as each one alone
    batch_t = np.stack([transitions, transitions[::-1, :, ::-1]])
    batch_r = np.stack([rewards, rewards[::-1]])
    batch_q, _ = plan(batch_t, batch_r, 3)
    assert np.allclose(batch_q[1], plan(batch_t[1], batch_r[1], 3)[0]) and np.allclose(batch_q[0], q)


@pytest.mark.math
def test_ucrl2_optimistic_backup_moves_mass_to_the_best_state_from_the_worst():
    p_hat = np.array([0.5, 0.3, 0.2])[None, None, None, :]
    value = np.array([[1.0, 3.0, 2.0]])  # best state 1, worst state 0
    expected = {
        0.0: 0.5 * 1 + 0.3 * 3 + 0.2 * 2,
        0.4: 0.3 * 1 + 0.5 * 3 + 0.2 * 2,  # +0.2 on state 1, taken from state 0
        1.2: 0.0 * 1 + 0.9 * 3 + 0.1 * 2,  # +0.6: all of state 0 (0.5), then 0.1 from state 2
        3.0: 3.0,
    }
    for radius, hand in expected.items():
        assert _optimistic_backup(p_hat, np.full((1, 1, 1), radius), value)[0, 0, 0] == pytest.approx(hand), radius


@pytest.mark.api
def test_reference_trials_are_the_runs_the_returns_average():
    """The arms and rewards of one trial per task: the greedy policy's pulls are its posterior-mean argmax given
    what it saw, the rewards are those bandit_reference_returns gives for one run with the same seed."""
    means = bandit_means(4, 5)
    arms, rewards = bandit_reference_trials("greedy", means, 12, np.random.default_rng(5))
    assert arms.shape == rewards.shape == (5, 12)
    np.testing.assert_array_equal(rewards, bandit_reference_returns("greedy", means, 12, np.random.default_rng(5),
                                                                    runs=1))
    for i in range(5):
        wins, pulls = np.zeros(4), np.zeros(4)
        for t in range(12):
            posterior = (1 + wins) / (2 + pulls)
            assert posterior[arms[i, t]] == posterior.max()
            wins[arms[i, t]] += rewards[i, t]
            pulls[arms[i, t]] += 1
    with pytest.raises(ValueError, match="oracle"):
        bandit_reference_trials("oracle", means, 12, np.random.default_rng(5))


# --- simulations: same seed, same numbers; the orderings ----------------------------------------------------------
@pytest.mark.determinism
def test_every_reference_gives_the_same_numbers_for_the_same_seed():
    means = bandit_means(3, 6)
    for name in BANDIT_REFERENCES:
        run = functools.partial(bandit_reference_returns, name, means, 15, runs=4, **BANDIT_PARAMS.get(name, {}))
        a, b, c = run(np.random.default_rng(3)), run(np.random.default_rng(3)), run(np.random.default_rng(4))
        assert a.shape == (6, 15) and np.array_equal(a, b), name
        assert name == "oracle" or not np.array_equal(a, c), name
    transitions, rewards = mdp_parameters(4, n_states=4, n_actions=3, horizon=5)
    for name in MDP_REFERENCES:
        run = functools.partial(mdp_reference_returns, name, transitions, rewards, 6, runs=2, horizon=5,
                                **MDP_PARAMS.get(name, {}))
        a, b, c = run(np.random.default_rng(3)), run(np.random.default_rng(3)), run(np.random.default_rng(4))
        assert a.shape == (4, 6) and np.array_equal(a, b), name
        assert name in ("oracle", "random") or not np.array_equal(a, c), name


@pytest.mark.learning
def test_bandit_references_in_the_known_order_on_five_arms_and_a_hundred_pulls():
    means = bandit_means(5, 100)
    rng = np.random.default_rng(0)
    total = {name: bandit_reference_returns(name, means, 100, rng, runs=20, **BANDIT_PARAMS.get(name, {})).sum(1)
             for name in BANDIT_REFERENCES}
    mean = {name: float(values.mean()) for name, values in total.items()}
    assert mean["oracle"] == pytest.approx(100 * means.max(axis=1).mean())
    assert mean["random"] == pytest.approx(100 * means.mean(), abs=1.0)
    assert mean["oracle"] > mean["gittins"] + 2, mean
    assert mean["gittins"] > max(mean["thompson"], mean["greedy"], mean["epsilon_greedy"], mean["ucb1"]) + 1, mean
    assert min(mean["thompson"], mean["greedy"], mean["epsilon_greedy"], mean["ucb1"]) > mean["random"] + 15, mean


@pytest.mark.learning
def test_mdp_references_learn_within_a_trial_and_beat_random():
    transitions, rewards = mdp_parameters(60)
    rng = np.random.default_rng(0)
    per_episode = {name: mdp_reference_returns(name, transitions, rewards, 20, rng, runs=1,
                                               **MDP_PARAMS.get(name, {})) for name in MDP_REFERENCES}
    total = {name: float(values.sum(1).mean()) for name, values in per_episode.items()}
    assert total["oracle"] > max(v for name, v in total.items() if name != "oracle") + 5, total
    for name in ("psrl", "opsrl", "ucrl2", "beb", "greedy", "epsilon_greedy"):
        assert total[name] > total["random"] + 60, (name, total)  # random: 10 per episode on average
        first, last = per_episode[name][:, :3].mean(), per_episode[name][:, -3:].mean()
        assert last > first + 2, (name, first, last)  # it learns the MDP within the trial
    assert per_episode["random"][:, 0].mean() == pytest.approx(10.0, abs=1.0)  # mean reward 1, 10 steps


@pytest.mark.api
@pytest.mark.parametrize("call, message", [
    (lambda: bandit_reference_returns("bayes", [[0.5, 0.5]], 10, np.random.default_rng()), "unknown bandit"),
    (lambda: bandit_reference_returns("epsilon_greedy", [[0.5, 0.5]], 10, np.random.default_rng()), "epsilon"),
    (lambda: bandit_reference_returns("ucb1", [[0.5, 0.5]], 10, np.random.default_rng(), beta=2), "parameters"),
    (lambda: bandit_reference_returns("greedy", [0.5, 0.5], 10, np.random.default_rng()), "tasks, arms"),
    (lambda: bandit_reference_returns("greedy", [[0.5, 1.5]], 10, np.random.default_rng()), "probabilities"),
    (lambda: bandit_reference_returns("greedy", [[0.5, 0.5]], 0, np.random.default_rng()), "pulls"),
    (lambda: mdp_reference_returns("psrl", np.ones((2, 3, 2, 3)) / 3, np.ones((2, 3)), 5, None), "shapes"),
    (lambda: mdp_reference_returns("bamcp", np.ones((2, 3, 2, 3)) / 3, np.ones((2, 3, 2)), 5, None), "unknown MDP"),
    (lambda: mdp_reference_returns("beb", np.ones((2, 3, 2, 3)) / 3, np.ones((2, 3, 2)), 5, None, samples=3),
     "parameters"),
    (lambda: mdp_reference_returns("ucrl2", np.ones((2, 3, 2, 3)) / 3, np.ones((2, 3, 2)), 5, None, delta=2.0),
     "delta"),
    (lambda: mdp_reference_returns("random", np.ones((2, 3, 2, 3)) / 3, np.ones((2, 3, 2)), 5, None, beta=1.0),
     "no parameters"),
    (lambda: gittins_indices(0), "horizon"),
    (lambda: gittins_index(0, 0, 0), "remaining"),
])
def test_bad_reference_settings_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# --- the published numbers (Duan et al. 2016, tables 1 and 2, as quoted in issue 18) ----------------------------
@pytest.mark.slow
def test_references_near_the_published_rl2_tables():
    means = bandit_means(10, 1000, seed=1)
    gittins = bandit_reference_returns("gittins", means, 100, np.random.default_rng(0), runs=10).sum(1).mean()
    assert abs(gittins - 82.8) < 3.0, gittins  # k = 10, n = 100
    transitions, rewards = mdp_parameters(600, seed=1)
    psrl = mdp_reference_returns("psrl", transitions, rewards, 100, np.random.default_rng(0), runs=1).sum(1)
    assert abs(psrl.mean() - 1939.5) < 2 * 1.96 * psrl.std() / math.sqrt(psrl.size), psrl.mean()  # n = 100
