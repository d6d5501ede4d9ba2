"""RL²: trial bookkeeping, PPO math, whole-trial GAE, determinism and resume, bad input, NaN rejection, learning."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarl.agents.rl2 import RL2, RL2Config
from metarl.core import ppo
from metarl.core.agent import MetaRLAgent
from metarl.envs.discrete import random_policy_return, thompson_sampling_return
from tests.helpers import CountingEnv, LengthTask

PRESETS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "presets").glob("rl2_*.yaml"))


# The tiny deterministic task env of tests/helpers.py: episodes of `length` steps, reward = action + 1
gym.register("test_rl2/Counting-v0", entry_point=CountingEnv)


def small_config(**overrides: Any) -> RL2Config:
    options = dict(meta_batch_size=4, episodes_per_trial=3, hidden_size=16, num_minibatches=2, update_epochs=2)
    options.update(overrides)
    return RL2Config(**options)


def parameters(agent: RL2) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# math
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.math
def test_ppo_losses_match_naive_loops():
    g = torch.Generator().manual_seed(0)
    new, old, adv = (torch.randn(3, 7, generator=g) for _ in range(3))
    values, old_values, returns = (torch.randn(3, 7, generator=g) for _ in range(3))
    mask = (torch.rand(3, 7, generator=g) > 0.3).float()
    terms, vterms, kl, clipped, count = [], [], [], [], 0
    for i in range(3):
        for t in range(7):
            if mask[i, t] == 0:
                continue
            count += 1
            ratio = float(np.exp(float(new[i, t] - old[i, t])))
            a = float(adv[i, t])
            terms.append(min(ratio * a, min(max(ratio, 0.8), 1.2) * a))
            v, v_old, r = float(values[i, t]), float(old_values[i, t]), float(returns[i, t])
            v_clip = v_old + min(max(v - v_old, -0.1), 0.1)
            vterms.append(max((v - r) ** 2, (v_clip - r) ** 2))
            kl.append(ratio - 1 - np.log(ratio))
            clipped.append(abs(ratio - 1) > 0.2)
    assert ppo.clipped_surrogate_loss(new, old, adv, 0.2, mask).item() == pytest.approx(-np.mean(terms), rel=1e-5)
    assert ppo.value_loss(values, returns, old_values, 0.1, mask).item() == pytest.approx(0.5 * np.mean(vterms),
                                                                                          rel=1e-5)
    plain = 0.5 * ((values - returns) ** 2 * mask).sum() / mask.sum()
    assert ppo.value_loss(values, returns, mask=mask).item() == pytest.approx(plain.item(), rel=1e-6)
    assert ppo.approx_kl(new, old, mask).item() == pytest.approx(np.mean(kl), rel=1e-5)
    assert ppo.clip_fraction(new, old, 0.2, mask).item() == pytest.approx(np.mean(clipped))
    normalized = ppo.normalize_advantages(adv, mask)
    real = normalized[mask.bool()]
    assert abs(real.mean().item()) < 1e-6 and real.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert torch.all(normalized[~mask.bool()] == 0)


@pytest.fixture(scope="module")
def counting_trials():
    """Two consecutive trials on the counting env (tasks of length 1 and 3), deterministic actions."""
    agent = RL2("test_rl2/Counting-v0", small_config(meta_batch_size=2, num_minibatches=1))
    tasks = [LengthTask(1), LengthTask(3)]
    trials = [agent.collect_trials(agent.envs, tasks, 3, env_seed=0, generator=torch.Generator().manual_seed(0),
                                   deterministic=True, record_hidden=True) for _ in range(2)]
    yield agent, trials
    agent.close()


@pytest.mark.math
def test_gae_runs_over_the_whole_trial_ignoring_episode_ends(counting_trials):
    agent, (batch, _) = counting_trials
    saved = agent.config
    agent.config = dataclasses.replace(saved, gamma=0.9, gae_lambda=0.8)
    try:
        advantages, returns = agent.trial_advantages(batch)
    finally:
        agent.config = saved
    rewards, values, mask = batch["rewards"], batch["values"], batch["mask"]
    assert batch["dones"][1, 2] == 1 and mask[1, 3] == 1  # an episode ends inside trial 1 ...
    for i in range(2):
        steps = int(mask[i].sum())
        running = 0.0
        for t in reversed(range(steps)):  # ... yet the bootstrap runs on to the end of the trial
            next_value = float(values[i, t + 1]) if t + 1 < steps else 0.0
            running = float(rewards[i, t]) + 0.9 * next_value - float(values[i, t]) + 0.9 * 0.8 * running
            assert advantages[i, t].item() == pytest.approx(running, abs=1e-5)
        assert torch.all(advantages[i, steps:] == 0)
    torch.testing.assert_close(returns, advantages + values)


# ----------------------------------------------------------------------------------------------------------------
# trial bookkeeping
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.api
def test_trial_inputs_episodes_and_padding(counting_trials):
    agent, (batch, _) = counting_trials
    inputs, actions, rewards, dones, mask = (batch[k] for k in ("inputs", "actions", "rewards", "dones", "mask"))
    assert inputs.shape == (2, 9, 2 + 2 + 2)  # obs, one-hot previous action, previous reward, done
    assert mask.sum(1).tolist() == [3, 9]  # 3 episodes of 1 step, 3 of 3 steps; trial 0 padded after step 3
    torch.testing.assert_close(dones[1], torch.tensor([0, 0, 1, 0, 0, 1, 0, 0, 1.0]))
    assert torch.all(dones[0, :3] == 1)
    # first step of a trial: the observation and zeros for the previous action, reward and done
    torch.testing.assert_close(inputs[:, 0], torch.tensor([[0, 1, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0.0]]))
    for i in range(2):
        for t in range(1, int(mask[i].sum())):
            step_in_episode = t % (1 if i == 0 else 3)  # SAME_STEP autoreset: after a done, the reset observation
            assert inputs[i, t, 0] == step_in_episode
            torch.testing.assert_close(inputs[i, t, 2:4], torch.nn.functional.one_hot(actions[i, t - 1], 2).float())
            assert inputs[i, t, 4] == rewards[i, t - 1] == actions[i, t - 1] + 1
            assert inputs[i, t, 5] == dones[i, t - 1]
    per_episode = (actions[1, :9] + 1).float().reshape(3, 3).sum(1).numpy()
    np.testing.assert_allclose(batch["episode_returns"][1], per_episode)
    np.testing.assert_allclose(batch["episode_returns"][0], (actions[0, :3] + 1).numpy())
    assert torch.all(rewards[0, 3:] == 0)


@pytest.mark.api
@pytest.mark.parametrize("sequence_model", ["gru", "transformer"])
def test_previous_observation_makes_each_input_a_whole_transition(counting_trials, sequence_model):
    """With previous_observation the input is RL²'s followed by the observation the previous step's action was
    taken in (0 at a trial's first step; across an episode boundary, the ended episode's last one, not the reset)."""
    _, (plain, _) = counting_trials
    agent = RL2("test_rl2/Counting-v0", small_config(meta_batch_size=2, num_minibatches=1, previous_observation=True,
                                                     sequence_model=sequence_model, transformer_d_model=16,
                                                     transformer_context=9))
    try:
        assert agent.inputs.size == 6 + 2
        assert np.isfinite(agent.train_iteration(0)["losses/policy"])  # the policy trains on the wider input
        batch = agent.collect_trials(agent.envs, [LengthTask(1), LengthTask(3)], 3, env_seed=0,
                                     generator=torch.Generator().manual_seed(0), deterministic=True)
    finally:
        agent.close()
    inputs, mask = batch["inputs"], batch["mask"]
    assert inputs.shape == (2, 9, 8)
    assert torch.all(inputs[:, 0, 6:] == 0)
    for i in range(2):
        steps = int(mask[i].sum())
        torch.testing.assert_close(inputs[i, 1:steps, 6:], inputs[i, :steps - 1, :2])
        # the first six entries are RL²'s input: the same as a plain trial's where the actions agree
        same = bool(torch.equal(batch["actions"][i, :steps], plain["actions"][i, :steps]))
        assert not same or torch.equal(inputs[i, :steps, :6], plain["inputs"][i, :steps])
    # after trial 1's first episode ended (step 2), step 3 reads the reset observation 0 and the ended one, 2
    assert inputs[1, 3, 0] == 0 and inputs[1, 3, 6] == 2 and inputs[1, 3, 5] == 1
    final = batch["final_inputs"]
    torch.testing.assert_close(final[1, 6:], inputs[1, 8, :2])


@pytest.mark.api
def test_hidden_state_carried_within_a_trial_and_reset_between_trials(counting_trials):
    agent, (first, second) = counting_trials
    hidden = first["hidden"]
    assert hidden.shape == (2, 9, 16)
    assert torch.all(hidden[:, 0] == 0)
    with torch.no_grad():
        _, _, _, features = agent.policy(first["inputs"])  # one pass over the whole trial from zeros
    torch.testing.assert_close(hidden[:, 1:], features[:, :-1], atol=1e-6, rtol=1e-5)
    # carried across episode ends: the state entering episode 2 of trial 1 (step 3) is not a fresh zero state
    assert first["dones"][1, 2] == 1 and hidden[1, 3].abs().sum() > 1e-3
    # the next trial starts from zeros again: same deterministic env and policy, so the same hidden sequence
    assert torch.all(second["hidden"][:, 0] == 0)
    torch.testing.assert_close(second["hidden"], hidden)
    torch.testing.assert_close(second["inputs"], first["inputs"])


@pytest.mark.api
def test_recomputed_log_probs_match_the_rollout():
    agent = RL2("metarl/BernoulliBandit-v0", small_config(episodes_per_trial=6))
    tasks = agent.task_env.sample_tasks(4, seed=0)
    batch = agent.collect_trials(agent.envs, tasks, 6, env_seed=0, generator=torch.Generator().manual_seed(1))
    head, values, _, _ = agent.policy(batch["inputs"])
    log_probs, _ = agent.policy.log_prob_entropy(head, batch["actions"])
    torch.testing.assert_close(log_probs.detach(), batch["log_probs"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values.detach(), batch["values"], atol=1e-5, rtol=1e-5)
    assert batch["inputs"].shape == (4, 6, 1 + 5 + 2) and batch["env_steps"] == 24
    agent.close()


@pytest.mark.math
def test_running_advantage_scale_divides_by_the_std_of_every_advantage_so_far(monkeypatch):
    agent = RL2("test_rl2/Counting-v0", small_config(**RUNNING_SCALE))
    raw, scaled = [], []
    trial_advantages, ppo_epochs = agent.trial_advantages, agent.ppo_epochs

    def record_raw(batch):
        advantages, returns = trial_advantages(batch)
        raw.append(advantages[batch["mask"].bool()].numpy().copy())
        return advantages, returns

    def record_scaled(data, *args):
        scaled.append(data["advantages"][data["mask"].bool()].numpy().copy())
        return ppo_epochs(data, *args)

    monkeypatch.setattr(agent, "trial_advantages", record_raw)
    monkeypatch.setattr(agent, "ppo_epochs", record_scaled)
    for i in range(3):
        agent.train_iteration(i)
        std = np.concatenate(raw).astype(np.float64).std()  # every real step of every iteration so far
        assert not np.isclose(std, 1.0, rtol=0.05)
        np.testing.assert_allclose(scaled[-1], raw[-1] / std, rtol=1e-5)
    assert agent.advantage_stats.count == sum(len(r) for r in raw)
    agent.close()


@pytest.mark.math
def test_annealed_step_size_falls_linearly_and_the_schedule_ends(monkeypatch):
    agent = RL2("test_rl2/Counting-v0", small_config(learning_rate=1e-3, anneal_lr_iterations=4))
    used = []
    ppo_epochs = agent.ppo_epochs

    def record_lr(data, iteration, *args):
        used.append(agent.optimizer.param_groups[0]["lr"])
        return ppo_epochs(data, iteration, *args)

    monkeypatch.setattr(agent, "ppo_epochs", record_lr)
    for i in range(4):
        agent.train_iteration(i)
    np.testing.assert_allclose(used, [1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="past anneal_lr_iterations"):
        agent.train_iteration(4)
    agent.close()


# ----------------------------------------------------------------------------------------------------------------
# smoke, determinism, resume
# ----------------------------------------------------------------------------------------------------------------
ENV_CASES = [
    ("metarl/BernoulliBandit-v0", {}),
    ("metarl/TabularMDP-v0", {"episodes_per_trial": 2}),
    ("metarl/Navigation2D-v0", {"episodes_per_trial": 2, "max_episode_steps": 5}),
]
RUNNING_SCALE = {"normalize_advantages": False, "running_advantage_scale": True}


@pytest.mark.smoke
@pytest.mark.parametrize("env_id,overrides", ENV_CASES)
def test_smoke_train_and_meta_test(env_id, overrides):
    agent = RL2(env_id, small_config(**overrides))
    assert isinstance(agent, MetaRLAgent)
    metrics = agent.train_iteration(0)
    assert metrics["env_steps"] > 0 and np.isfinite(metrics["losses/value"])
    assert metrics["charts/rejected_updates"] == 0
    tasks = agent.task_env.sample_tasks(3, split="test", seed=0)
    returns = agent.meta_test(tasks, 4, seed=0)
    assert returns.shape == (3, 4) and np.all(np.isfinite(returns))
    agent.close()


@pytest.mark.smoke
def test_continuous_previous_action_is_the_clipped_env_action():
    agent = RL2("metarl/Navigation2D-v0", small_config(episodes_per_trial=2, max_episode_steps=4, init_log_std=2.0))
    batch = agent.collect_trials(agent.envs, agent.task_env.sample_tasks(4, seed=0), 2, 0, torch.Generator())
    low, high = agent.envs.single_action_space.low, agent.envs.single_action_space.high
    previous = batch["inputs"][:, 1:, 2:4]
    torch.testing.assert_close(previous, batch["actions"][:, :-1].clamp(torch.tensor(low), torch.tensor(high)))
    assert (batch["actions"].abs() > torch.tensor(high)).any()  # wide policy: some sampled actions were clipped
    agent.close()


@pytest.mark.determinism
@pytest.mark.parametrize("env_id,overrides", [
    *ENV_CASES[::2], ("metarl/BernoulliBandit-v0", {**RUNNING_SCALE, "anneal_lr_iterations": 5})])
def test_same_seed_same_run_and_resume_is_exact(env_id, overrides):
    def fresh() -> RL2:
        return RL2(env_id, small_config(**overrides))

    straight = fresh()
    straight_metrics = [straight.train_iteration(i) for i in range(3)]
    resumed = fresh()
    resumed.train_iteration(0)
    buffer = io.BytesIO()
    torch.save(resumed.state_dict(), buffer)
    resumed.close()
    buffer.seek(0)
    reloaded = fresh()
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    reloaded_metrics = [reloaded.train_iteration(i) for i in (1, 2)]
    for key, value in parameters(straight).items():
        torch.testing.assert_close(parameters(reloaded)[key], value, rtol=0, atol=0)
    for key in ("charts/trial_return", "losses/policy", "losses/value"):
        assert reloaded_metrics[-1][key] == straight_metrics[-1][key]
    assert reloaded.total_env_steps == straight.total_env_steps and reloaded.iterations_done == 3
    tasks = straight.task_env.sample_tasks(3, split="test", seed=5)
    np.testing.assert_array_equal(straight.meta_test(tasks, 2, seed=7), reloaded.meta_test(tasks, 2, seed=7))
    other = RL2(env_id, small_config(seed=1, **overrides))
    other.train_iteration(0)
    assert any(not torch.equal(v, parameters(straight)[k]) for k, v in parameters(other).items())
    for agent in (straight, reloaded, other):
        agent.close()


# ----------------------------------------------------------------------------------------------------------------
# bad input, NaN
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.parametrize("env_id,kwargs,match", [
    ("test_rl2/Counting-v0", {"observation": "dict"}, "observation space"),
    ("test_rl2/Counting-v0", {"action": "multi"}, "action space"),
    ("CartPole-v1", {}, "not a task environment"),
    ("metarl/NoSuchEnv-v0", {}, "cannot make environment"),
])
def test_bad_environments_are_rejected(env_id, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RL2(env_id, small_config(env_kwargs=kwargs))


@pytest.mark.api
@pytest.mark.parametrize("field,value", [
    ("meta_batch_size", 0), ("episodes_per_trial", 0), ("num_minibatches", 5), ("gamma", 1.5), ("clip_coef", 0),
    ("learning_rate", -1.0), ("entropy_coef", -0.1), ("device", "tpu"), ("max_episode_steps", 0), ("value_clip", 0),
    ("torch_threads", 0), ("hidden_size", 2.5),
    ("running_advantage_scale", True),  # with the default normalize_advantages: one of the two
    ("anneal_lr_iterations", 0),
])
def test_bad_config_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        small_config(**{field: value})


@pytest.mark.api
def test_bad_calls_are_rejected():
    agent = RL2("metarl/BernoulliBandit-v0", small_config())
    tasks = agent.task_env.sample_tasks(2, seed=0)
    with pytest.raises(ValueError, match="num_episodes"):
        agent.meta_test(tasks, 0, seed=0)
    with pytest.raises(ValueError, match="at least one task"):
        agent.meta_test([], 3, seed=0)
    with pytest.raises(ValueError, match="agent"):
        agent.load_state_dict({"name": "maml-trpo"})
    agent.close()


@pytest.mark.api
def test_nan_loss_rejects_the_update():
    agent = RL2("metarl/BernoulliBandit-v0", small_config())
    with torch.no_grad():
        agent.policy.value_head.bias.fill_(float("nan"))
    before = parameters(agent)
    metrics = agent.train_iteration(0)
    assert metrics["charts/rejected_updates"] == 2 * 2 and agent.rejected_updates == 4
    for key, value in parameters(agent).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    assert agent.state_dict()["rejected_updates"] == 4
    agent.close()


@pytest.mark.api
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_load_into_the_config(path):
    config = RL2Config(**yaml.safe_load(path.read_text()))
    assert config.meta_batch_size >= config.num_minibatches


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"rl2_bandit5", "rl2_tabular_mdp", "rl2_cheetah_vel"}


# ----------------------------------------------------------------------------------------------------------------
# learning
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.learning
def test_learns_to_explore_a_five_armed_bandit():
    """10 pulls of a 5-armed Bernoulli bandit: RL² must close at least half the gap from random to Thompson."""
    pulls = 10
    config = RL2Config(meta_batch_size=64, episodes_per_trial=pulls, hidden_size=128, learning_rate=3e-3,
                       gamma=1.0, gae_lambda=0.3, seed=0)
    agent = RL2("metarl/BernoulliBandit-v0", config)
    for iteration in range(150):  # seeds 0-2 pass by ~60 iterations; 150 keeps a margin
        agent.train_iteration(iteration)
    tasks = agent.task_env.sample_tasks(300, split="test", seed=2024)
    rl2 = agent.meta_test(tasks, pulls, seed=0).sum(axis=1).mean()
    rng = np.random.default_rng(0)
    random = np.mean([random_policy_return(t.means, pulls, rng, runs=200) for t in tasks])
    thompson = np.mean([thompson_sampling_return(t.means, pulls, rng, runs=200) for t in tasks])
    agent.close()
    assert thompson > random + 0.4
    assert rl2 >= random + 0.5 * (thompson - random), (rl2, random, thompson)


@pytest.mark.math
@pytest.mark.parametrize("discrete", [True, False])
def test_log_prob_and_entropy_match_torch_distributions(discrete):
    from metarl.core.recurrent import RecurrentPolicy

    policy = RecurrentPolicy(3, 8, 4, discrete, init_log_std=-0.3)
    g = torch.Generator().manual_seed(0)
    head = torch.randn(2, 5, 4, generator=g)
    if discrete:
        actions = torch.randint(0, 4, (2, 5), generator=g)
        dist = torch.distributions.Categorical(logits=head)
        expected = dist.log_prob(actions), dist.entropy()
    else:
        actions = torch.randn(2, 5, 4, generator=g)
        dist = torch.distributions.Normal(head, policy.log_std.exp())
        expected = dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
    for got, want in zip(policy.log_prob_entropy(head, actions), expected):
        torch.testing.assert_close(got, want.detach())


@pytest.mark.math
def test_running_mean_std_merges_batches_exactly():
    stats = ppo.RunningMeanStd()
    torch.testing.assert_close(stats.normalize(torch.tensor([3.0])), torch.tensor([3.0]))  # identity before data
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 5 + 40 for n in (7, 1, 30)]
    for chunk in chunks:
        stats.update(chunk)
    every = torch.cat(chunks).double()
    assert stats.count == 38 and stats.mean == pytest.approx(every.mean().item())
    assert stats.std == pytest.approx(every.std(unbiased=False).item())
    x = torch.tensor([1.0, 50.0])
    torch.testing.assert_close(stats.denormalize(stats.normalize(x)), x)
    clone = ppo.RunningMeanStd()
    clone.load_state_dict(stats.state_dict())
    assert clone.state_dict() == stats.state_dict()
