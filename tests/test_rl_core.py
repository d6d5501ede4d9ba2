"""The RL core: policies under fast weights, GAE/returns, the linear baseline, TRPO's maths, episode sampling."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call, vmap

import metarl.envs  # noqa: F401
from metarl.core.baselines import fit_linear_baseline, linear_baseline_features, linear_baseline_values
from metarl.core.policies import CategoricalMLPPolicy, GaussianMLPPolicy, make_policy
from metarl.core.rl import discounted_returns, generalized_advantages, normalize_per_task
from metarl.core.sampling import collect_episodes
from metarl.core.seeding import seeded
from metarl.core.trpo import (
    assign_flat,
    conjugate_gradient,
    fisher_vector_product,
    flatten,
    gauss_newton_fvp,
    trpo_step,
)
from metarl.envs.vector import TaskVectorEnv


def tiny_policy(kind: str, dtype=torch.float64, seed: int = 0):
    with seeded(seed):
        policy = GaussianMLPPolicy(3, 2, (5,), init_std=0.7) if kind == "gaussian" else CategoricalMLPPolicy(3, 4, (5,))
    return policy.to(dtype)


def random_actions(policy, shape, generator):
    if policy.discrete:
        return torch.randint(0, policy.n_actions, shape, generator=generator)
    return torch.randn(*shape, policy.action_dim, generator=generator, dtype=torch.float64)


# --- policies ---------------------------------------------------------------------------------------------------
@pytest.mark.math
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_policy_batched_fast_weights_match_functional_call_and_vmap(kind):
    policy = tiny_policy(kind)
    g = torch.Generator().manual_seed(0)
    tasks = 4
    fast = {k: v.detach() + 0.1 * torch.randn(tasks, *v.shape, generator=g, dtype=v.dtype)
            for k, v in policy.named_parameters()}
    obs = torch.randn(tasks, 6, 3, generator=g, dtype=torch.float64)
    batched = policy.distribution(fast, obs)
    mapped = vmap(lambda p, o: functional_call(policy, p, (o,)))(fast, obs)
    for a, b in zip(batched, mapped):
        torch.testing.assert_close(a, b)
    # shared weights: any leading shape, same as the module itself
    shared = policy.distribution(dict(policy.named_parameters()), obs)
    for a, b in zip(shared, policy(obs)):
        torch.testing.assert_close(a, b)
    # mixed: only the head per task (ANIL-style)
    mixed = {k: (fast[k] if k in policy.head_keys else v) for k, v in policy.named_parameters()}
    in_dims = ({k: (0 if k in policy.head_keys else None) for k in mixed}, 0)
    ref = vmap(lambda p, o: functional_call(policy, p, (o,)), in_dims=in_dims)(mixed, obs)
    for a, b in zip(policy.distribution(mixed, obs), ref):
        torch.testing.assert_close(a, b)


@pytest.mark.math
def test_gaussian_policy_maths_match_torch_distributions():
    policy = tiny_policy("gaussian")
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(7, 3, generator=g, dtype=torch.float64)
    mean, log_std = policy(obs)
    other = (mean + 0.3, log_std - 0.2)
    actions = torch.randn(7, 2, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, log_std.exp())
    ref_other = torch.distributions.Normal(other[0], other[1].exp())
    torch.testing.assert_close(policy.log_prob((mean, log_std), actions), ref.log_prob(actions).sum(-1))
    kl = torch.distributions.kl_divergence(ref, ref_other).sum(-1)
    torch.testing.assert_close(policy.kl((mean, log_std), other), kl)
    torch.testing.assert_close(policy.entropy((mean, log_std)), ref.entropy().sum(-1))
    assert torch.allclose(log_std, torch.full_like(log_std, np.log(0.7)))
    big = torch.zeros(20000, 2, dtype=torch.float64)
    samples = policy.sample((big, torch.full_like(big, np.log(0.7))), torch.Generator().manual_seed(0))
    assert abs(float(samples.std()) - 0.7) < 0.02 and abs(float(samples.mean())) < 0.02


@pytest.mark.math
def test_categorical_policy_maths_match_torch_distributions():
    policy = tiny_policy("categorical")
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(7, 3, generator=g, dtype=torch.float64)
    (log_probs,) = policy(obs)
    other = (torch.log_softmax(log_probs + torch.randn(7, 4, generator=g, dtype=torch.float64), -1),)
    actions = torch.randint(0, 4, (7,), generator=g)
    ref = torch.distributions.Categorical(logits=log_probs)
    ref_other = torch.distributions.Categorical(logits=other[0])
    torch.testing.assert_close(policy.log_prob((log_probs,), actions), ref.log_prob(actions))
    torch.testing.assert_close(policy.kl((log_probs,), other), torch.distributions.kl_divergence(ref, ref_other))
    torch.testing.assert_close(policy.entropy((log_probs,)), ref.entropy())
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    samples = policy.sample((probs.log().expand(40000, 4),), torch.Generator().manual_seed(0))
    freq = torch.bincount(samples, minlength=4).double() / 40000
    assert torch.allclose(freq, probs[0], atol=0.01)


@pytest.mark.api
def test_make_policy_rejects_unsupported_spaces():
    box = gym.spaces.Box(-1, 1, (3,))
    assert isinstance(make_policy(box, gym.spaces.Box(-1, 1, (2,))), GaussianMLPPolicy)
    assert isinstance(make_policy(box, gym.spaces.Discrete(3)), CategoricalMLPPolicy)
    with pytest.raises(ValueError, match="action space"):
        make_policy(box, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="observation space"):
        make_policy(gym.spaces.Discrete(4), gym.spaces.Discrete(3))
    bounded = gym.spaces.Box(np.array([-0.1, 0.0], np.float32), np.array([0.1, 2.0], np.float32))
    scaled = make_policy(box, bounded, normalize_actions=True)
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(scaled.env_action(corners), torch.tensor([[-0.1, 0.0], [0.1, 2.0], [0.0, 1.0]]))
    unbounded = make_policy(box, gym.spaces.Box(-np.inf, np.inf, (2,)), normalize_actions=True)
    assert torch.equal(unbounded.env_action(corners), corners)
    with pytest.raises(ValueError, match="start at 0"):
        make_policy(box, gym.spaces.Discrete(3, start=1))


# --- returns, GAE, normalisation ----------------------------------------------------------------------------------
def padded_episodes(lengths, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(len(lengths), steps, generator=g, dtype=torch.float64)
    values = torch.randn(len(lengths), steps, generator=g, dtype=torch.float64)
    mask = torch.zeros(len(lengths), steps, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    # padding holds garbage: it must not leak into the results
    return rewards * mask + 99 * (1 - mask), values * mask - 77 * (1 - mask), mask


@pytest.mark.math
def test_gae_and_returns_match_a_naive_loop_with_padding():
    lengths, steps, gamma, lam = [6, 3, 1, 6], 6, 0.9, 0.8
    rewards, values, mask = padded_episodes(lengths, steps)
    advantages = generalized_advantages(rewards, values, gamma, lam, mask)
    returns = discounted_returns(rewards, gamma, mask)
    for i, n in enumerate(lengths):
        r, v = rewards[i, :n].tolist(), values[i, :n].tolist() + [0.0]
        for t in range(n):
            naive_adv = sum((gamma * lam) ** k * (r[t + k] + gamma * v[t + k + 1] - v[t + k]) for k in range(n - t))
            naive_ret = sum(gamma**k * r[t + k] for k in range(n - t))
            assert advantages[i, t].item() == pytest.approx(naive_adv, abs=1e-12)
            assert returns[i, t].item() == pytest.approx(naive_ret, abs=1e-12)
        assert torch.all(advantages[i, n:] == 0)
    # λ = 1: GAE is the discounted return minus the value
    torch.testing.assert_close(generalized_advantages(rewards, values, gamma, 1.0, mask), (returns - values) * mask)


@pytest.mark.math
def test_normalize_per_task_matches_numpy():
    rewards, _, mask = padded_episodes([6, 3, 1, 6], 6)
    values, mask = rewards.reshape(2, 2, 6), mask.reshape(2, 2, 6)
    out = normalize_per_task(values, mask)
    for task in range(2):
        real = values[task][mask[task] > 0].numpy()
        expected = (real - real.mean()) / (real.std() + 1e-8)
        np.testing.assert_allclose(out[task][mask[task] > 0].numpy(), expected, atol=1e-10)
        assert torch.all(out[task][mask[task] == 0] == 0)


# --- linear feature baseline ------------------------------------------------------------------------------------
@pytest.mark.math
def test_linear_baseline_matches_numpy_lstsq():
    tasks, episodes, steps, obs_dim, reg = 3, 4, 9, 2, 1e-5
    g = torch.Generator().manual_seed(3)
    obs = 3 * torch.randn(tasks, episodes, steps, obs_dim, generator=g, dtype=torch.float64)
    obs[0, 0, 0, 0] = 50.0  # clipped to 10 in the features
    lengths = torch.randint(2, steps + 1, (tasks, episodes), generator=g)
    mask = (torch.arange(steps) < lengths.unsqueeze(-1)).double()
    returns = torch.randn(tasks, episodes, steps, generator=g, dtype=torch.float64) * mask
    values = linear_baseline_values(obs, returns, mask, reg)
    for task in range(tasks):
        rows, targets = [], []
        for e in range(episodes):
            n = int(lengths[task, e])
            o = np.clip(obs[task, e, :n].numpy(), -10, 10)
            t = (np.arange(n) / 100.0)[:, None]
            rows.append(np.concatenate([o, o**2, t, t**2, t**3, np.ones((n, 1))], axis=1))
            targets.append(returns[task, e, :n].numpy())
        x, y = np.concatenate(rows), np.concatenate(targets)
        # ridge regression as an ordinary least-squares problem on the augmented system [X; sqrt(c) I]
        augmented = np.concatenate([x, np.sqrt(reg) * np.eye(x.shape[1])])
        coeffs = np.linalg.lstsq(augmented, np.concatenate([y, np.zeros(x.shape[1])]), rcond=None)[0]
        start = 0
        for e in range(episodes):
            n = int(lengths[task, e])
            np.testing.assert_allclose(values[task, e, :n].numpy(), x[start:start + n] @ coeffs, atol=1e-6)
            assert torch.all(values[task, e, n:] == 0)
            start += n
    assert linear_baseline_features(obs).shape == (tasks, episodes, steps, 2 * obs_dim + 4)


@pytest.mark.math
def test_linear_baseline_survives_degenerate_features():
    # constant observations (a bandit): the obs and obs² columns are all zero; ridge keeps the solve finite
    obs = torch.zeros(2, 3, 1, 1, dtype=torch.float64)
    returns = torch.tensor([[[1.0], [0.0], [1.0]], [[0.0], [0.0], [0.0]]], dtype=torch.float64)
    values = linear_baseline_values(obs, returns, torch.ones_like(returns))
    assert torch.isfinite(values).all()
    assert values[0, 0, 0].item() == pytest.approx(2 / 3, abs=1e-3)
    with pytest.raises(ValueError, match="expected features"):
        fit_linear_baseline(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))


# --- TRPO maths -------------------------------------------------------------------------------------------------
@pytest.mark.math
def test_conjugate_gradient_solves_an_spd_system():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    matrix = a @ a.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: matrix @ v, b, iters=50, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, b))
    assert residual < 1e-15
    x10, residual10 = conjugate_gradient(lambda v: matrix @ v, b, iters=3)
    assert residual10 > residual  # fewer iterations, a rougher solution
    # what trpo_step relies on for its step size: every iterate from 0 has xᵀAx = xᵀb, converged or not
    for iters in (1, 3, 6):
        xk, _ = conjugate_gradient(lambda v: matrix @ v, b, iters=iters)
        assert float(xk @ matrix @ xk) == pytest.approx(float(xk @ b), rel=1e-10)


def kl_of_flat(policy, obs, old_dist, weight):
    names = [k for k, _ in policy.named_parameters()]
    shapes = [p.shape for _, p in policy.named_parameters()]

    def kl(flat):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = int(np.prod(shape))
            params[name] = flat[offset:offset + n].reshape(shape)
            offset += n
        return (policy.kl(old_dist, policy.distribution(params, obs)) * weight).sum()

    return kl


@pytest.mark.math
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fisher_vector_products_match_the_explicit_kl_hessian(kind):
    policy = tiny_policy(kind)
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(10, 3, generator=g, dtype=torch.float64)
    weight = torch.rand(10, generator=g, dtype=torch.float64)
    params = list(policy.parameters())
    with torch.no_grad():
        old = tuple(t.detach() for t in policy(obs))
    hessian = torch.autograd.functional.hessian(kl_of_flat(policy, obs, old, weight), flatten(params).detach())
    v = torch.randn(hessian.shape[0], generator=g, dtype=torch.float64)
    kl = (policy.kl(old, policy(obs)) * weight).sum()
    double_backward = fisher_vector_product(kl, params, damping=0.1)(v)
    torch.testing.assert_close(double_backward, hessian @ v + 0.1 * v)
    metric = lambda t: policy.fisher_product(old, tuple(x * weight.unsqueeze(-1) for x in t))
    gauss_newton = gauss_newton_fvp(policy(obs), params, metric, damping=0.1)(v)
    torch.testing.assert_close(gauss_newton, hessian @ v + 0.1 * v)


def quadratic_problem():
    """A Gaussian policy with a linear loss in the mean: TRPO must move as far as the KL limit allows."""
    policy = tiny_policy("gaussian")
    obs = torch.randn(32, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        old = tuple(t.detach() for t in policy(obs))

    def objective(differentiable: bool):
        dist = policy(obs)
        return -dist[0][:, 0].mean(), policy.kl(old, dist).mean()

    return policy, objective


@pytest.mark.math
def test_trpo_step_improves_within_the_kl_limit():
    policy, objective = quadratic_problem()
    before = flatten(list(policy.parameters())).detach().clone()
    loss_before = float(objective(False)[0].detach())
    stats = trpo_step(list(policy.parameters()), objective, max_kl=0.01)
    loss_after, kl_after = (float(x.detach()) for x in objective(False))
    assert stats.accepted and stats.reason == "accepted"
    assert loss_after < loss_before and loss_after == pytest.approx(stats.loss_after)
    assert 0 < kl_after <= 0.01 and kl_after == pytest.approx(stats.kl_after)
    assert kl_after > 0.004  # the step uses a good part of the trust region
    assert not torch.equal(before, flatten(list(policy.parameters())))


@pytest.mark.math
def test_trpo_line_search_rejects_steps_that_break_the_kl_limit():
    policy, objective = quadratic_problem()
    params = list(policy.parameters())
    before = flatten(params).detach().clone()
    # a Fisher product that underestimates the curvature 1e6-fold: every candidate overshoots the KL limit
    stats = trpo_step(params, objective, max_kl=0.01, max_backtracks=15, fisher=lambda: (lambda v: 1e-6 * v))
    assert not stats.accepted and stats.reason == "line search" and stats.backtracks == 15
    assert stats.kl_after > 0.01
    assert torch.equal(before, flatten(params))  # left exactly as it was


@pytest.mark.math
def test_trpo_rejects_non_finite_losses_and_restores_parameters():
    policy, objective = quadratic_problem()
    params = list(policy.parameters())
    before = flatten(params).detach().clone()
    stats = trpo_step(params, lambda d: (objective(d)[0] * float("nan"), objective(d)[1]), max_kl=0.01)
    assert not stats.accepted and stats.reason == "non-finite loss"
    assert torch.equal(before, flatten(params))
    assign_flat(params, before + 1)
    assert torch.equal(flatten(params), before + 1)


# --- sampling -----------------------------------------------------------------------------------------------------
def replay(env_id: str, task, seed: int, actions: np.ndarray, max_episode_steps: int | None = None):
    """Step one env by hand with the recorded actions; returns its observations and rewards."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=int(seed))
    observations, rewards = [], []
    for action in actions:
        observations.append(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    env.close()
    return np.array(observations), np.array(rewards), terminated


@pytest.mark.api
@pytest.mark.parametrize(
    "env_id, per_task, episodes, max_steps",
    [("metarl/CartPoleContext-v0", 2, 3, 60), ("metarl/Navigation2D-v0", 3, 4, 7)],
)
def test_sampling_matches_stepping_envs_one_by_one(env_id, per_task, episodes, max_steps):
    tasks_n = 2
    envs = TaskVectorEnv(env_id, tasks_n * per_task, max_episode_steps=max_steps)
    with seeded(0):
        policy = make_policy(envs.single_observation_space, envs.single_action_space, (8,), normalize_actions=True)
    tasks = envs.single_task_env.sample_tasks(tasks_n, seed=1)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    fast = {k: v.unsqueeze(0).repeat(tasks_n, *[1] * v.dim()) for k, v in params.items()}
    per_task_shift = torch.randn(tasks_n, 8, generator=torch.Generator().manual_seed(3))
    fast["body.0.bias"] = fast["body.0.bias"] + per_task_shift  # per-task weights
    batch = collect_episodes(envs, policy, fast, tasks, episodes, seed=5, generator=torch.Generator().manual_seed(0))
    steps = batch.mask.shape[2]
    assert batch.observations.shape[:3] == (tasks_n, episodes, steps) and batch.rewards.shape == batch.mask.shape
    assert batch.num_steps == int(batch.lengths.sum()) and steps == int(batch.lengths.max())
    if "CartPole" in env_id:
        assert len(set(batch.lengths.flatten().tolist())) > 1, "want episodes of different lengths"
        # the time axis ends at the longest kept episode, also when a dropped surplus episode ran longer
        for shift_seed in range(8):
            shifted = dict(fast, **{"body.0.bias": fast["body.0.bias"] + torch.randn(
                tasks_n, 8, generator=torch.Generator().manual_seed(shift_seed))})
            other = collect_episodes(envs, policy, shifted, tasks, episodes, seed=shift_seed,
                                     generator=torch.Generator().manual_seed(shift_seed))
            assert other.mask.shape[2] == int(other.lengths.max())
    for t in range(tasks_n):
        for e in range(episodes):
            n = int(batch.lengths[t, e])
            acts = policy.env_action(batch.actions[t, e, :n]).numpy()
            obs, rewards, terminated = replay(env_id, tasks[t], batch.reset_seeds[t, e], acts, max_steps)
            assert len(rewards) == n
            np.testing.assert_allclose(batch.observations[t, e, :n].numpy(), obs.astype(np.float32), rtol=1e-6)
            np.testing.assert_allclose(batch.rewards[t, e, :n].numpy(), rewards.astype(np.float32), rtol=1e-6)
            assert bool(batch.terminated[t, e]) == bool(terminated)
            assert torch.all(batch.mask[t, e, n:] == 0) and torch.all(batch.observations[t, e, n:] == 0)
            assert torch.all(batch.rewards[t, e, n:] == 0)
    np.testing.assert_allclose(batch.returns.numpy(), batch.rewards.sum(-1).numpy())
    # the same seeds and generator state give the same batch; the actions follow the per-task weights
    again = collect_episodes(envs, policy, fast, tasks, episodes, seed=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.observations, batch.observations) and torch.equal(again.actions, batch.actions)
    envs.close()


@pytest.mark.api
@pytest.mark.parametrize("env_id, fast_weights",
                         [("metarl/CartPoleContext-v0", True), ("metarl/Navigation2D-v0", False)])
def test_per_episode_streams_give_the_same_episodes_however_the_batch_is_split(env_id, fast_weights):
    """streams="per-episode": an episode does not depend on the rest of its batch, nor on the sub-env or round that
    runs it (what the episode-level Ray sampler relies on); "shared" streams do, so they differ. Exact with per-task
    weights (one batched matmul per task); with one set of weights the policy is one matmul over the whole batch,
    whose last bits depend on its row count on some CPUs (MKL on AVX-512: a row alone differs from the same row in a
    batch by ~1e-7), so there the floats agree to rounding and lengths, masks and seeds exactly."""
    tasks_n, per_task, episodes = 4, 2, 3  # 3 episodes over 2 sub-envs: two rounds, the second with a surplus
    with seeded(0):
        probe = TaskVectorEnv(env_id, 1)
        policy = make_policy(probe.single_observation_space, probe.single_action_space, (8,), normalize_actions=True)
        probe.close()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    if fast_weights:
        params = {k: v.unsqueeze(0).repeat(tasks_n, *[1] * v.dim()) for k, v in params.items()}
        params["body.0.bias"] = params["body.0.bias"] + torch.randn(tasks_n, 8,
                                                                    generator=torch.Generator().manual_seed(3))
    envs = TaskVectorEnv(env_id, tasks_n * per_task, max_episode_steps=40)
    tasks = envs.single_task_env.sample_tasks(tasks_n, seed=1)
    whole = collect_episodes(envs, policy, params, tasks, episodes, seed=9, generator=torch.Generator(),
                             streams="per-episode")
    # blocks (tasks [a, b), episodes [c, d)) with their own numbers of sub-envs per task
    for (a, b), (c, d), k in (((0, 1), (0, 3), 3), ((1, 4), (0, 2), 1), ((1, 4), (2, 3), 1)):
        block_envs = TaskVectorEnv(env_id, (b - a) * k, max_episode_steps=40)
        block_params = {n: v[a:b] for n, v in params.items()} if fast_weights else params
        part = collect_episodes(block_envs, policy, block_params, tasks[a:b], d - c, seed=9,
                                generator=torch.Generator().manual_seed(123), streams="per-episode",
                                task_offset=a, episode_offset=c)
        block_envs.close()
        n = part.mask.shape[2]
        assert torch.equal(whole.lengths[a:b, c:d], part.lengths)
        assert torch.all(whole.mask[a:b, c:d, n:] == 0)
        assert torch.equal(whole.mask[a:b, c:d, :n], part.mask)
        for name in ("observations", "actions", "rewards"):
            if fast_weights:
                assert torch.equal(getattr(whole, name)[a:b, c:d, :n], getattr(part, name)), name
            else:
                torch.testing.assert_close(getattr(whole, name)[a:b, c:d, :n], getattr(part, name), rtol=1e-5,
                                           atol=1e-5, msg=name)
        np.testing.assert_array_equal(whole.reset_seeds[a:b, c:d], part.reset_seeds)
    shared = collect_episodes(envs, policy, params, tasks, episodes, seed=9, generator=torch.Generator())
    assert not torch.equal(shared.actions[1:], whole.actions[1:])
    with pytest.raises(ValueError, match="streams"):
        collect_episodes(envs, policy, params, tasks, 1, seed=0, generator=torch.Generator(), streams="per-env")
    envs.close()


@pytest.mark.api
def test_sampling_rejects_bad_arguments():
    envs = TaskVectorEnv("metarl/Navigation2D-v0", 3)
    policy = make_policy(envs.single_observation_space, envs.single_action_space, (4,))
    params = dict(policy.named_parameters())
    tasks = envs.single_task_env.sample_tasks(2, seed=0)
    with pytest.raises(ValueError, match="not a multiple"):
        collect_episodes(envs, policy, params, tasks, 2, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="episodes_per_task"):
        collect_episodes(envs, policy, params, tasks[:1], 0, seed=0, generator=torch.Generator())
    envs.close()
