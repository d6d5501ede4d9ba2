"""SAC maths (metarl.core.sac) against hand computations, and the per-task replay buffer (metarl.core.replay):
storage order, ring overwrite, batched sampling, clearing, checkpoints, and transition collection from a vector env."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from metarl.core.replay import TaskReplayBuffer, collect_transitions
from metarl.core.sac import (
    TanhGaussianActor,
    TwinQ,
    actor_loss,
    critic_loss,
    critic_target,
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
