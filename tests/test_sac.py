"""SAC maths (metarl.core.sac) against hand computations, and the per-task replay buffer (metarl.core.replay):
storage order, ring overwrite, batched sampling, clearing, checkpoints, and transition collection from a vector env."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from metarl.core.replay import TaskReplayBuffer, collect_transitions
from metarl.core.sac import (
    CategoricalActor,
    TanhGaussianActor,
    TwinQ,
    actor_critic,
    actor_loss,
    check_sac_spaces,
    conditioned_actor_losses,
    conditioned_critic_loss,
    critic_loss,
    critic_target,
    default_target_entropy,
    discrete_sac_losses,
    normalize_values_,
    soft_update_,
    squashed_gaussian_log_prob,
    temperature_loss,
)
from metarl.core.seeding import seeded
from metarl.envs.vector import TaskVectorEnv


# --- SAC maths -----------------------------------------------------------------------------------------------------
@pytest.mark.math
def test_critic_target_matches_a_hand_computation():
    rewards = torch.tensor([1.0, -2.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q1 = torch.tensor([3.0, 10.0, -1.0])
    next_q2 = torch.tensor([2.0, 20.0, -4.0])
    next_log_prob = torch.tensor([-1.0, 5.0, 0.5])
    alpha, gamma, scale = 0.2, 0.9, 5.0
    target = critic_target(rewards, terminated, next_q1, next_q2, next_log_prob, alpha, gamma, scale)
    # y = scale r + γ (1 − d)(min Q' − α log π')
    expected = [5 * 1.0 + 0.9 * (2.0 + 0.2 * 1.0),   # min(3, 2) = 2; −α log π' = +0.2
                5 * -2.0,                            # terminal: no bootstrap
                5 * 0.5 + 0.9 * (-4.0 - 0.2 * 0.5)]
    assert torch.allclose(target, torch.tensor(expected))
    assert not target.requires_grad


@pytest.mark.math
def test_critic_actor_losses_and_polyak_update_match_hand_computations():
    q1, q2, y = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.0])
    assert critic_loss(q1, q2, y).item() == pytest.approx((0 + 1) / 2 + (1 + 9) / 2)
    log_prob, q_min = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, -1.0])
    assert actor_loss(log_prob, q_min, 0.1).item() == pytest.approx(((-0.1 - 2.0) + (0.05 + 1.0)) / 2)
    source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in target.parameters()]
    soft_update_(target, source, 0.25)
    for new, old, src in zip(target.parameters(), before, source.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * src)


@pytest.mark.math
def test_temperature_update_matches_a_hand_computation_and_moves_alpha_towards_the_target_entropy():
    log_prob = torch.tensor([-0.5, 0.25, 1.0])   # entropy estimate −mean log π = −0.25
    target_entropy = -2.0                        # entropy above target: α should fall
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    optimizer = torch.optim.SGD([log_alpha], lr=0.1)
    loss = temperature_loss(log_alpha, log_prob, target_entropy)
    assert loss.item() == pytest.approx(-math.log(0.5) * (0.25 - 2.0))
    loss.backward()
    # d/dlogα of −logα·mean(log π + H̄) is −mean(log π + H̄) = −(0.25 − 2) = 1.75
    assert log_alpha.grad.item() == pytest.approx(1.75)
    optimizer.step()
    assert log_alpha.item() == pytest.approx(math.log(0.5) - 0.1 * 1.75)

    # toy problem: a policy whose entropy is fixed below the target makes α grow, step after step
    log_alpha = torch.tensor(0.0, requires_grad=True)
    optimizer = torch.optim.SGD([log_alpha], lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        temperature_loss(log_alpha, torch.full((8,), 1.0), target_entropy=0.0).backward()  # entropy −1 < 0
        optimizer.step()
    assert log_alpha.item() == pytest.approx(20 * 0.05 * 1.0)


@pytest.mark.math
def test_discrete_sac_losses_match_a_per_row_loop_over_the_actions():
    """Discrete SAC (Christodoulou 2019): every expectation over the n actions summed exactly, row by row by hand."""
    with seeded(0):
        actor, critic, target_critic = actor_critic(6, spaces.Discrete(3), [8])
        for p in target_critic.parameters():  # the target critics drift from the critics
            p.data.add_(0.3 * torch.randn_like(p))
    rows = 5
    data = {"observations": torch.randn(rows, 6, requires_grad=True), "next_observations": torch.randn(rows, 6),
            "actions": torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).float(),
            "rewards": torch.randn(rows), "terminated": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])}
    actor_input = torch.randn(rows, 6)
    log_alpha, gamma, scale, target_entropy = torch.tensor(math.log(0.3), requires_grad=True), 0.9, 2.0, 0.4
    losses = discrete_sac_losses(actor, critic, target_critic, data, actor_input, log_alpha, gamma, scale,
                                 target_entropy)
    alpha = 0.3
    critic_terms, actor_terms, entropies = [], [], []
    with torch.no_grad():
        for i in range(rows):
            probs = torch.softmax(actor.net(data["next_observations"][i]), -1)
            nq1, nq2 = (q(data["next_observations"][i]) for q in (target_critic.q1, target_critic.q2))
            value = sum(probs[a] * (min(nq1[a], nq2[a]) - alpha * torch.log(probs[a])) for a in range(3))
            y = scale * data["rewards"][i] + gamma * (1 - data["terminated"][i]) * value
            taken = int(data["actions"][i].argmax())
            q1, q2 = critic.q1(data["observations"][i]), critic.q2(data["observations"][i])
            critic_terms.append((q1[taken] - y) ** 2 + (q2[taken] - y) ** 2)
            pi = torch.softmax(actor.net(actor_input[i]), -1)
            actor_terms.append(sum(pi[a] * (alpha * torch.log(pi[a]) - min(q1[a], q2[a])) for a in range(3)))
            entropies.append(-sum(pi[a] * torch.log(pi[a]) for a in range(3)))
    torch.testing.assert_close(losses["critic"], torch.stack(critic_terms).mean())
    torch.testing.assert_close(losses["actor"], torch.stack(actor_terms).mean())
    torch.testing.assert_close(losses["entropy"], torch.stack(entropies).mean())
    # temperature: −log α (−H + H̄); raises α while the entropy is below the target
    torch.testing.assert_close(losses["temperature"], -log_alpha * (-torch.stack(entropies).mean() + target_entropy))
    # gradients: the critic loss reaches the observations (an encoder), the actor loss never moves the critics
    losses["actor"].backward(retain_graph=True)
    assert all(p.grad is None for p in critic.parameters()) and data["observations"].grad is None
    assert all(p.grad is not None for p in actor.parameters())
    losses["critic"].backward()
    assert data["observations"].grad.abs().sum() > 0 and all(p.grad is None for p in target_critic.parameters())


def popart_and_plain_networks(space: spaces.Space, mean: float, std: float, beta: float):
    """The SAC networks with PopArt critics at statistics (``mean``, ``std``) and a plain copy whose heads hold the
    same values (W σ, b σ + μ), from the same initialisation."""
    with seeded(0):
        actor, critic, target_critic = actor_critic(6, space, [8], popart_beta=beta)
    with seeded(0):
        plain = actor_critic(6, space, [8])
    for net in (critic, target_critic):
        net.popart.mean.fill_(mean)
        net.popart.mean_square.fill_(mean**2 + std**2)
    with torch.no_grad():
        for p in target_critic.parameters():  # the target critics drift from the critics
            p.add_(0.3 * torch.randn_like(p))
        for source, copy in zip((critic, target_critic), plain[1:]):
            copy.load_state_dict({k: v for k, v in source.state_dict().items() if not k.startswith("popart")})
            for head in copy.heads():
                head.weight.mul_(std)
                head.bias.mul_(std).add_(mean)
    return (actor, critic, target_critic), plain


@pytest.mark.math
@pytest.mark.parametrize("discrete", [False, True])
def test_popart_losses_are_the_plain_losses_over_sigma_and_every_value_is_kept(discrete):
    """PopArt (van Hasselt et al. 2016): the statistics move towards the batch's targets by the EMA, the critics and
    their target copy keep every value, the critic loss is the plain one over σ², the actor loss over σ."""
    space = spaces.Discrete(3) if discrete else spaces.Box(-1.0, 1.0, (2,))
    (actor, critic, target_critic), (_, plain_critic, plain_target) = popart_and_plain_networks(space, 40.0, 5.0, 0.2)
    rows, width = 7, 6 if discrete else 8
    probe = torch.randn(50, width)
    for a, b in ((critic, plain_critic), (target_critic, plain_target)):
        for x, y in zip(a(probe), b(probe)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)  # the same values before
    generator = torch.Generator().manual_seed(3)
    data = {"observations": torch.randn(rows, 6, generator=generator),
            "next_observations": torch.randn(rows, 6, generator=generator),
            "rewards": 10 * torch.randn(rows, generator=generator) - 30,
            "terminated": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])}
    log_alpha, gamma, scale = torch.tensor(math.log(0.3), requires_grad=True), 0.9, 2.0
    if discrete:
        data["actions"] = torch.nn.functional.one_hot(torch.arange(rows) % 3, 3).float()
        plain_losses = discrete_sac_losses(actor, plain_critic, plain_target, data, data["observations"], log_alpha,
                                           gamma, scale, 0.4)
        with torch.no_grad():  # the targets, from the plain copy of the target critics
            next_log_probs = actor(data["next_observations"])
            nq1, nq2 = plain_target(data["next_observations"])
            value = (next_log_probs.exp() * (torch.minimum(nq1, nq2) - 0.3 * next_log_probs)).sum(-1)
            y = scale * data["rewards"] + gamma * (1 - data["terminated"]) * value
        losses = discrete_sac_losses(actor, critic, target_critic, data, data["observations"], log_alpha, gamma,
                                     scale, 0.4)
        pairs = [(losses["critic"], plain_losses["critic"], 2), (losses["actor"], plain_losses["actor"], 1)]
    else:
        data["actions"] = torch.rand(rows, 2, generator=generator) * 2 - 1
        data["next_noise"], data["noise"] = torch.randn(2, rows, 2, generator=generator)
        z = torch.zeros(rows, 0)
        alpha = log_alpha.detach().exp()
        plain_q, _ = conditioned_critic_loss(actor, plain_critic, plain_target, data, z, alpha, gamma, scale)
        plain_pi, _, _ = conditioned_actor_losses(actor, plain_critic, log_alpha, data, z, alpha, -2.0)
        with torch.no_grad():
            next_action, next_log_prob, _, _ = actor.sample(data["next_observations"], noise=data["next_noise"])
            nq1, nq2 = plain_target(torch.cat([data["next_observations"], next_action], -1))
            y = critic_target(data["rewards"], data["terminated"], nq1, nq2, next_log_prob, alpha, gamma, scale)
        q_loss, _ = conditioned_critic_loss(actor, critic, target_critic, data, z, alpha, gamma, scale)
        pi_loss, _, _ = conditioned_actor_losses(actor, critic, log_alpha, data, z, alpha, -2.0)
        pairs = [(q_loss, plain_q, 2), (pi_loss, plain_pi, 1)]
    mean = 0.8 * 40.0 + 0.2 * float(y.mean())
    mean_square = 0.8 * (40.0**2 + 5.0**2) + 0.2 * float((y**2).mean())
    std = math.sqrt(mean_square - mean**2)
    assert float(critic.popart.mean) == pytest.approx(mean, rel=1e-5)
    assert float(critic.popart.std) == pytest.approx(std, rel=1e-4) and abs(std - 5.0) > 1.0
    assert torch.equal(target_critic.popart.mean, critic.popart.mean)
    assert torch.equal(target_critic.popart.mean_square, critic.popart.mean_square)
    for loss, plain_loss, power in pairs:
        assert float(loss.detach()) == pytest.approx(float(plain_loss.detach()) / std**power, rel=1e-4)
    for a, b in ((critic, plain_critic), (target_critic, plain_target)):
        for x, y in zip(a(probe), b(probe)):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-3)  # and the same values after the update
    soft_update_(target_critic, critic, 0.5)  # Polyak averaging of consistently rescaled heads
    soft_update_(plain_target, plain_critic, 0.5)
    for x, y in zip(target_critic(probe), plain_target(probe)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-3)


@pytest.mark.math
def test_popart_statistics_follow_an_ema_of_the_targets_and_plain_critics_are_untouched():
    critic, target = TwinQ(4, [8], popart_beta=0.05), TwinQ(4, [8], popart_beta=0.05)
    target.load_state_dict(critic.state_dict())
    assert float(critic.value_std()) == 1.0 and float(critic.popart.mean) == 0.0
    mean, square = 0.0, 1.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        targets = 300 + 20 * torch.randn(64, generator=generator)
        std = normalize_values_(critic, target, targets)
        mean, square = 0.95 * mean + 0.05 * float(targets.mean()), 0.95 * square + 0.05 * float((targets**2).mean())
    assert float(critic.popart.mean) == pytest.approx(mean, rel=1e-4)
    assert float(std) == pytest.approx(math.sqrt(square - mean**2), rel=1e-2)
    plain = TwinQ(4, [8])
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert normalize_values_(plain, plain, torch.full((3,), 1e3)) == 1.0 and plain.value_std() == 1.0
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


@pytest.mark.math
def test_categorical_actor_samples_its_own_distribution_and_the_mode_when_deterministic():
    with seeded(1):
        actor = CategoricalActor(4, 3, [8])
    inputs = torch.randn(2, 4)
    probs = actor(inputs).exp()
    draws = 20_000
    actions, log_probs = actor.sample(inputs[:, None].expand(-1, draws, -1), generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2, draws) and log_probs.shape == (2, draws, 3)
    frequencies = torch.nn.functional.one_hot(actions, 3).float().mean(1)
    # Gumbel-max draws: each frequency within 4.5 standard errors of its probability
    assert torch.all((frequencies - probs).abs() < 4.5 * (probs * (1 - probs) / draws).sqrt() + 1e-6)
    torch.testing.assert_close(actor.sample(inputs, deterministic=True)[0], probs.argmax(-1))
    noise = actor.noise(2, torch.Generator().manual_seed(3))
    assert torch.equal(actor.sample(inputs, noise=noise)[0], (probs.log() + noise).argmax(-1))


@pytest.mark.api
def test_sac_spaces_and_default_target_entropies():
    assert default_target_entropy(spaces.Box(-1, 1, (3,))) == -3.0
    assert default_target_entropy(spaces.Discrete(4)) == pytest.approx(0.1 * math.log(4))
    box = spaces.Box(0, 1, (2,))
    check_sac_spaces("pearl", "env", box, spaces.Box(-1, 1, (2,)))
    check_sac_spaces("amago", "env", None, spaces.Discrete(3), discrete=True)
    for space, discrete, message in ((spaces.Discrete(3), False, "use rl2 or maml-trpo"),
                                     (spaces.Discrete(1), True, "at least 2 discrete actions"),
                                     (spaces.MultiBinary(3), True, "bounded Box or a Discrete"),
                                     (spaces.Box(-np.inf, np.inf, (2,)), True, "bounded Box or a Discrete")):
        with pytest.raises(ValueError, match=message):
            check_sac_spaces("agent", "env", box, space, discrete=discrete)
    with pytest.raises(ValueError, match="flat Box observation"):
        check_sac_spaces("pearl", "env", spaces.Discrete(3), spaces.Box(-1, 1, (2,)))


@pytest.mark.math
def test_squashed_log_prob_matches_torch_transformed_distribution_and_actions_stay_in_the_box():
    torch.manual_seed(0)
    mean, log_std = torch.randn(50, 3), torch.randn(50, 3).clamp(-2, 1)
    pre_tanh = mean + log_std.exp() * torch.randn(50, 3) * 3  # includes large |u|
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.transforms.TanhTransform()])
    reference = dist.log_prob(torch.tanh(pre_tanh).clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    ours = squashed_gaussian_log_prob(pre_tanh, mean, log_std)
    finite = torch.tanh(pre_tanh).abs().max(-1).values < 0.999  # where the reference's atanh is accurate
    assert torch.allclose(ours[finite], reference[finite], atol=1e-3)
    assert torch.isfinite(squashed_gaussian_log_prob(torch.full((1, 2), 40.0), torch.zeros(1, 2), torch.zeros(1, 2)))

    with seeded(0):
        actor = TanhGaussianActor(4, 2, [8], np.array([-0.1, 0.0]), np.array([0.1, 2.0]))
    inputs = torch.randn(100, 4)
    action, log_prob, mu, _ = actor.sample(inputs, torch.Generator().manual_seed(1))
    assert action.shape == (100, 2) and log_prob.shape == (100,)
    assert (action[:, 0].abs() <= 0.1).all() and (action[:, 1] >= 0).all() and (action[:, 1] <= 2).all()
    again, _, _, _ = actor.sample(inputs, torch.Generator().manual_seed(1))
    assert torch.equal(action, again)
    mode, _, _, _ = actor.sample(inputs, deterministic=True)
    assert torch.allclose(mode, torch.tensor([0.0, 1.0]) + torch.tensor([0.1, 1.0]) * torch.tanh(mu))
    q1, q2 = TwinQ(6, [8])(torch.randn(5, 6))
    assert q1.shape == q2.shape == (5,) and not torch.equal(q1, q2)


# --- replay buffer ---------------------------------------------------------------------------------------------
def fields(values: list[float]) -> dict[str, torch.Tensor]:
    v = torch.tensor(values)
    return {"x": torch.stack([v, -v], 1), "r": v}


@pytest.mark.api
def test_replay_stores_per_task_in_order_and_samples_only_each_tasks_data():
    buffer = TaskReplayBuffer(3, 4, {"x": (2,), "r": ()})
    buffer.add([0, 2, 0, 0], fields([10, 20, 11, 12]))
    assert buffer.sizes.tolist() == [3, 0, 1] and len(buffer) == 4
    assert buffer.storage["r"][0, :3].tolist() == [10, 11, 12] and buffer.storage["r"][2, 0] == 20
    assert buffer.recent(0, 2)["r"].tolist() == [11, 12]
    batch = buffer.sample(torch.tensor([0, 2, 0]), 500, torch.Generator().manual_seed(0))
    assert batch["x"].shape == (3, 500, 2) and batch["r"].shape == (3, 500)
    assert set(batch["r"][0].tolist()) == {10.0, 11.0, 12.0}  # every stored transition reachable, nothing else
    assert set(batch["r"][1].tolist()) == {20.0}
    assert torch.equal(batch["x"][..., 0], batch["r"]) and torch.equal(batch["x"][..., 1], -batch["r"])
    counts = torch.bincount(batch["r"][0].long() - 10)
    assert counts.min() > 500 / 3 * 0.7  # roughly uniform
    same = buffer.sample(torch.tensor([0, 2, 0]), 500, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], same[k]) for k in batch)
    with pytest.raises(ValueError, match="empty task buffers \\[1\\]"):
        buffer.sample(torch.tensor([1]), 4, torch.Generator())


@pytest.mark.api
def test_replay_ring_overwrites_the_oldest_clear_and_checkpoint_round_trip():
    buffer = TaskReplayBuffer(2, 4, {"x": (2,), "r": ()})
    buffer.add([1] * 3, fields([1, 2, 3]))
    buffer.add([1] * 3 + [0], fields([4, 5, 6, 100]))
    assert buffer.sizes.tolist() == [1, 4]
    assert sorted(buffer.storage["r"][1].tolist()) == [3, 4, 5, 6] and buffer.recent(1, 4)["r"].tolist() == [3, 4, 5, 6]
    buffer.add([0] * 7, fields([0, 1, 2, 3, 4, 5, 6]))  # more than the capacity in one call: the last 4 survive
    assert buffer.recent(0, 4)["r"].tolist() == [3, 4, 5, 6]
    blob = io.BytesIO()
    torch.save(buffer.state_dict(), blob)
    blob.seek(0)
    restored = TaskReplayBuffer(2, 4, {"x": (2,), "r": ()})
    restored.load_state_dict(torch.load(blob, weights_only=True))
    for task in (0, 1):
        assert torch.equal(restored.recent(task, 4)["r"], buffer.recent(task, 4)["r"])
    restored.add([1], fields([7]))
    assert restored.recent(1, 4)["r"].tolist() == [4, 5, 6, 7]
    restored.clear([1])
    assert restored.sizes.tolist() == [4, 0]
    with pytest.raises(ValueError, match="capacity"):
        TaskReplayBuffer(2, 8, {"x": (2,), "r": ()}).load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match="fields"):
        buffer.add([0], {"x": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="task ids"):
        buffer.add([5], fields([1]))
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        TaskReplayBuffer(2, 0, {"x": ()})


@pytest.mark.api
def test_collect_transitions_gives_consistent_transitions_and_drops_autoreset_steps():
    envs = TaskVectorEnv("metarl/Navigation2D-v0", 3, max_episode_steps=5)
    tasks = envs.single_task_env.sample_tasks(3, split="train", seed=0)
    rng = np.random.default_rng(0)
    starts: list[list[int]] = []
    data, env_index, returns = collect_transitions(
        envs, tasks, 12, lambda obs: rng.uniform(-0.2, 0.2, size=(len(obs), 2)),
        lambda index: starts.append(index.tolist()), seed=3)
    envs.close()
    assert data["observations"].shape == (36, 2) and env_index.shape == (36,)
    assert np.bincount(env_index).tolist() == [12, 12, 12]
    goals = np.array([[t.goal_x, t.goal_y] for t in tasks])
    step = np.clip(data["actions"], -0.1, 0.1)
    assert np.allclose(data["next_observations"], data["observations"] + step, atol=1e-6)
    assert np.allclose(data["rewards"], -np.linalg.norm(data["next_observations"] - goals[env_index], axis=1),
                       atol=1e-5)
    assert not data["terminated"].any()
    for i in range(3):  # 12 steps of 5-step episodes: episodes start at the origin at rows 0, 5, 10
        rows = data["observations"][env_index == i]
        assert np.all(rows[[0, 5, 10]] == 0) and np.all(np.abs(rows[[1, 6, 11]]).sum(1) > 0)
    assert starts[0] == [0, 1, 2] and starts[1:] == [[0, 1, 2], [0, 1, 2]]  # redraws at the two autoresets
    assert len(returns) == 6
    first = data["rewards"][env_index == 0][:5].sum()
    assert first == pytest.approx(returns[0], abs=1e-5)
