"""VariBAD: the ELBO by hand, the belief tightening along a trial, learning on bandits, determinism and resume,
bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from metarl.agents.varibad import VariBAD, VariBADConfig, subsample
from metarl.cli import main as cli_main
from metarl.core.agent import MetaRLAgent
from metarl.core.context import kl_between_gaussians, kl_to_unit_gaussian
from metarl.envs.discrete import random_policy_return, thompson_sampling_return
from tests.helpers import CountingEnv, LengthTask, kill_and_resume, resume_from_state_dict

BANDIT = "metarl/BernoulliBandit-v0"
PRESETS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "presets").glob("varibad_*.yaml"))


# The tiny task env of tests/helpers.py: trials of different lengths share a batch, so the ELBO must handle padding
gym.register("test_varibad/Steps-v0", entry_point=CountingEnv)


def small_config(**overrides: Any) -> VariBADConfig:
    options = dict(meta_batch_size=4, episodes_per_trial=3, num_minibatches=2, encoder_hidden_size=8,
                   decoder_hidden_sizes=[8], policy_hidden_sizes=[8], latent_dim=3, vae_updates=2)
    options.update(overrides)
    return VariBADConfig(**options)


def parameters(agent: VariBAD) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.detach().clone() for part in ("vae", "policy")
            for k, v in getattr(agent, part).state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# math: the ELBO's pieces by hand
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.math
def test_kl_between_diagonal_gaussians_against_closed_forms():
    # one dimension by hand: KL(N(1, 4) || N(0, 1)) = ½(4 + 1 − 1 − ln 4), KL(N(0, 1) || N(1, 4)) = ½(ln 4 + 2/4 − 1)
    one, four, zero = torch.tensor([[1.0]]), torch.tensor([[4.0]]), torch.tensor([[0.0]])
    assert kl_between_gaussians(one, four, zero, torch.ones(1, 1)).item() == pytest.approx(2 - math.log(2), rel=1e-6)
    assert kl_between_gaussians(zero, torch.ones(1, 1), one, four).item() == pytest.approx(
        0.5 * (math.log(4) + 0.5 - 1), rel=1e-6)
    assert kl_between_gaussians(one, four, one, four).item() == 0
    g = torch.Generator().manual_seed(0)
    mean, other_mean = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    var, other_var = torch.rand(3, 4, 5, generator=g) + 0.1, torch.rand(3, 4, 5, generator=g) + 0.1
    normal = torch.distributions.Normal
    expected = torch.distributions.kl_divergence(normal(mean, var.sqrt()), normal(other_mean, other_var.sqrt()))
    torch.testing.assert_close(kl_between_gaussians(mean, var, other_mean, other_var), expected.sum(-1))
    torch.testing.assert_close(kl_between_gaussians(mean, var, torch.zeros(5), torch.ones(5)),
                               kl_to_unit_gaussian(mean, var))


@pytest.fixture(scope="module")
def padded_trials():
    """One training batch on the steps env (trials of 3, 6 and 9 steps: padded), transitions decoded too."""
    agent = VariBAD("test_varibad/Steps-v0", small_config(meta_batch_size=3, num_minibatches=1,
                                                          decode_transitions=True, kl_weight=0.7))
    tasks = [LengthTask(1), LengthTask(3), LengthTask(2)]
    batch = agent.collect_trials(agent.envs, tasks, 3, env_seed=0, generator=torch.Generator().manual_seed(0))
    yield agent, tasks, batch
    agent.close()


def _belief_by_hand(agent: VariBAD, sequence: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Means and variances of the prior and after each input, stepping the GRU cell one input at a time."""
    gru = agent.encoder.gru
    hidden = torch.zeros(1, 1, gru.hidden_size)
    means, variances = [], []
    for x in [None, *sequence]:
        if x is not None:
            _, hidden = gru(x.view(1, 1, -1), hidden)
        mean, logvar = agent.encoder.belief(hidden[0, 0]).chunk(2)
        means.append(mean)
        variances.append(logvar.exp())
    return means, variances


@pytest.mark.math
def test_elbo_reconstructs_every_step_of_the_trial_for_every_belief_time(padded_trials):
    agent, tasks, batch = padded_trials
    data = agent.trial_tensors(batch)
    n, k, d = data["belief_mask"].shape[0], data["belief_mask"].shape[1], agent.config.latent_dim
    noise = torch.randn(n, k, d, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, stats = agent.elbo(data, noise)
    inputs, actions, rewards, mask = batch["inputs"], batch["actions"], batch["rewards"], batch["mask"]
    assert mask.sum(1).tolist() == [3, 9, 6]
    totals = []
    with torch.no_grad():
        for i, task in enumerate(tasks):
            steps = int(mask[i].sum())
            # what the encoder reads: the trial's inputs, then the input after its last step (reset observation,
            # last action and reward, done): belief times 0 (prior) ... steps + 1
            last = torch.tensor([0.0, task.length, *torch.nn.functional.one_hot(actions[i, steps - 1], 2).float(),
                                 float(actions[i, steps - 1] + 1), 1.0])
            means, variances = _belief_by_hand(agent, [*inputs[i, :steps], last])
            assert len(means) == steps + 2
            total = 0.0
            for belief in range(steps + 2):
                previous = (torch.zeros(d), torch.ones(d)) if belief == 0 else (means[belief - 1],
                                                                                variances[belief - 1])
                kl = sum(0.5 * (math.log(previous[1][c] / variances[belief][c])
                                + (variances[belief][c] + (means[belief][c] - previous[0][c]) ** 2) / previous[1][c]
                                - 1) for c in range(d))
                z = means[belief] + variances[belief].sqrt() * noise[i, belief]
                reconstruction = 0.0
                for j in range(steps):  # every step, before and after the belief time
                    s = inputs[i, j, :2]
                    assert s[0] == j % task.length
                    s_next = torch.tensor([j % task.length + 1.0, task.length])  # the episode's own last observation
                    a = torch.nn.functional.one_hot(actions[i, j], 2).float()
                    predicted = agent.reward_decoder(torch.cat([s, a, s_next, z]))[0]
                    reconstruction += float(predicted - rewards[i, j]) ** 2
                    assert rewards[i, j] == actions[i, j] + 1
                    predicted_next = agent.vae["transition_decoder"](torch.cat([s, a, z]))
                    reconstruction += float(((predicted_next - s_next) ** 2).sum())
                total += reconstruction + 0.7 * float(kl)
            totals.append(total)
    assert loss.item() == pytest.approx(np.mean(totals), rel=1e-5)
    assert stats["losses/elbo"].item() == pytest.approx(np.mean(totals), rel=1e-5)


@pytest.mark.math
def test_subsampled_elbo_is_an_unbiased_estimate_of_the_full_one(padded_trials):
    agent, _, batch = padded_trials
    data = agent.trial_tensors(batch)
    noise = torch.randn(*data["belief_mask"].shape, agent.config.latent_dim, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        full = agent.elbo(data, noise)[0].item()
        index, selected, scale = subsample(data["mask"], 2, generator)
        assert index.shape == (3, 2) and torch.all(selected == 1)  # only real steps are drawn
        estimates = [agent.elbo(data, noise, subsample(data["belief_mask"], 3, generator),
                                subsample(data["mask"], 2, generator))[0].item() for _ in range(1500)]
    assert np.mean(estimates) == pytest.approx(full, rel=0.03)
    assert np.std(estimates) > 0.05 * full  # the subsets really differ


# ----------------------------------------------------------------------------------------------------------------
# learning on 2-armed Bernoulli bandits, trials of 10 pulls: the belief tightens, the policy beats random
# ----------------------------------------------------------------------------------------------------------------
PULLS = 10
SEED = 0


@pytest.fixture(scope="module")
def bandit_run():
    """Train on 2-armed bandits (seeds 0-3 pass both tests with margins at these budgets), record the belief
    trials after 40 iterations and the meta-test returns after 60, on 300 held-out bandits."""
    config = VariBADConfig(env_kwargs={"k": 2}, episodes_per_trial=PULLS, meta_batch_size=32, update_epochs=4,
                           encoder_hidden_size=32, decoder_hidden_sizes=[32], policy_hidden_sizes=[32],
                           latent_dim=2, learning_rate=3e-3, clip_coef=0.2, gamma=1.0, gae_lambda=0.95,
                           vae_learning_rate=1e-2, vae_updates=10, seed=SEED)
    agent = VariBAD(BANDIT, config)
    tasks = agent.task_env.sample_tasks(300, split="test", seed=2024)
    for iteration in range(40):
        agent.train_iteration(iteration)
    beliefs = agent.belief_trials(tasks, PULLS, seed=1)
    for iteration in range(40, 60):
        agent.train_iteration(iteration)
    returns = agent.meta_test(tasks, PULLS, seed=0)
    agent.close()
    return tasks, beliefs, returns


@pytest.mark.learning
def test_the_belief_tightens_as_the_trial_goes_on(bandit_run):
    tasks, beliefs, _ = bandit_run
    assert torch.all(beliefs["belief_mask"] == 1) and beliefs["belief_std"].shape == (300, PULLS + 2, 2)
    variance = (beliefs["belief_std"] ** 2).mean(-1)  # [tasks, belief times]
    first, last = variance[:, 1].mean().item(), variance[:, -1].mean().item()  # the first action's vs after pull 10
    assert last < 0.7 * first, (first, last)
    # the reward each belief predicts for the pulled arms, against the task's true arm means
    means = torch.tensor([t.means for t in tasks])
    expected = means.gather(1, beliefs["actions"].argmax(-1))  # [tasks, pulls]
    error = ((beliefs["reward_predictions"] - expected[:, None]) ** 2).mean(-1)  # [tasks, belief times]
    early, late = error[:, 1].mean().item(), error[:, -1].mean().item()
    assert late < 0.7 * early, (early, late)


@pytest.mark.learning
def test_beats_random_on_held_out_two_armed_bandits(bandit_run):
    """Random 4.8 per trial, Thompson sampling 5.5: VariBAD must close 70% of the gap (seeds 0-3 reach 5.6-5.7)."""
    tasks, _, returns = bandit_run
    assert returns.shape == (300, PULLS)
    rng = np.random.default_rng(0)
    random = np.mean([random_policy_return(t.means, PULLS, rng, runs=100) for t in tasks])
    thompson = np.mean([thompson_sampling_return(t.means, PULLS, rng, runs=100) for t in tasks])
    varibad = returns.sum(axis=1).mean()
    assert thompson > random + 0.4
    assert varibad >= random + 0.7 * (thompson - random), (varibad, random, thompson)


# ----------------------------------------------------------------------------------------------------------------
# smoke, determinism, resume
# ----------------------------------------------------------------------------------------------------------------
ENV_CASES = [
    (BANDIT, {"episodes_per_trial": 4}),
    ("metarl/TabularMDP-v0", {"episodes_per_trial": 2}),  # Discrete observations
    ("metarl/Navigation2D-v0", {"episodes_per_trial": 2, "max_episode_steps": 5, "decode_transitions": True,
                                "elbo_subsample": 4, "decode_subsample": 3}),
]


@pytest.mark.smoke
@pytest.mark.parametrize("env_id,overrides", ENV_CASES)
def test_smoke_train_meta_test_and_beliefs(env_id, overrides):
    agent = VariBAD(env_id, small_config(**overrides))
    assert isinstance(agent, MetaRLAgent) and agent.episodes_per_stage == 1
    metrics = agent.train_iteration(0)
    assert metrics["env_steps"] > 0 and metrics["charts/rejected_updates"] == 0
    assert all(np.isfinite(metrics[k]) for k in ("losses/value", "losses/elbo", "losses/kl"))
    tasks = agent.task_env.sample_tasks(3, split="test", seed=0)
    returns = agent.meta_test(tasks, 3, seed=0)
    assert returns.shape == (3, 3) and np.all(np.isfinite(returns))
    beliefs = agent.belief_trials(tasks, 3, seed=0)
    steps = beliefs["rewards"].shape[1]
    assert beliefs["belief_mean"].shape == (3, steps + 2, 3) and beliefs["reward_predictions"].shape == (3, steps + 2,
                                                                                                          steps)
    np.testing.assert_array_equal(beliefs["episode_returns"], returns)  # the trials meta_test runs
    agent.close()


@pytest.mark.api
def test_the_policy_acts_on_the_belief_of_what_it_has_seen():
    """The stored policy features are (s_t, μ, σ) of the belief after input t: recomputing the encoder over the
    trial gives them back, and the recomputed PPO log-probabilities match the rollout's."""
    agent = VariBAD("metarl/Navigation2D-v0", small_config(episodes_per_trial=2, max_episode_steps=4))
    batch = agent.collect_trials(agent.envs, agent.task_env.sample_tasks(4, seed=0), 2, 0, torch.Generator())
    with torch.no_grad():
        mean, logvar = agent.encoder.beliefs(agent.trial_tensors(batch)["encoder_inputs"])
        expected = torch.cat([batch["inputs"][..., :2], mean[:, 1:-1], (0.5 * logvar[:, 1:-1]).exp()], dim=-1)
        torch.testing.assert_close(batch["features"], expected, atol=1e-6, rtol=1e-5)
        dist = agent.actor(batch["features"])
        torch.testing.assert_close(agent.actor.log_prob(dist, batch["actions"]), batch["log_probs"])
    assert batch["features"].shape == (4, 8, 2 + 2 * 3)
    agent.close()


def _fresh(**overrides: Any) -> VariBAD:
    return VariBAD("metarl/Navigation2D-v0", small_config(episodes_per_trial=2, max_episode_steps=5,
                                                          decode_transitions=True, elbo_subsample=5,
                                                          decode_subsample=4, **overrides))


@pytest.mark.determinism
def test_same_seed_same_run_and_resume_from_a_state_dict_is_exact():
    straight, reloaded, straight_metrics, reloaded_metrics = resume_from_state_dict(_fresh, parameters)
    for key in ("charts/trial_return", "losses/policy", "losses/value", "losses/elbo"):
        assert reloaded_metrics[-1][key] == straight_metrics[-1][key]
    assert reloaded.total_env_steps == straight.total_env_steps and reloaded.iterations_done == 3
    tasks = straight.task_env.sample_tasks(3, split="test", seed=5)
    np.testing.assert_array_equal(straight.meta_test(tasks, 2, seed=7), reloaded.meta_test(tasks, 2, seed=7))
    other = _fresh(seed=1)
    other.train_iteration(0)
    assert any(not torch.equal(v, parameters(straight)[k]) for k, v in parameters(other).items())
    for agent in (straight, reloaded, other):
        agent.close()


@pytest.mark.determinism
def test_a_run_killed_and_resumed_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    from metarl.training import make_run_config

    def run(name: str):
        return make_run_config("varibad", dict(meta_batch_size=4, num_minibatches=2, encoder_hidden_size=8,
                                               decoder_hidden_sizes=[8], policy_hidden_sizes=[8], latent_dim=3,
                                               vae_updates=2, max_episode_steps=5, decode_subsample=3),
                               env="metarl/Navigation2D-v0", iterations=5, checkpoint_every=2, eval_tasks=3,
                               eval_episodes=2, progress=False, run_dir=str(tmp_path / name))

    a, b = kill_and_resume(monkeypatch, VariBAD, run, kill_at=3, checkpointed=2)
    for part in ("vae", "policy"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    import json

    evaluations = [json.loads((d / "evaluation.json").read_text()) for d in (tmp_path / "full", tmp_path / "killed")]
    assert evaluations[0]["splits"]["test"]["per_task_returns"] == evaluations[1]["splits"]["test"]["per_task_returns"]


# ----------------------------------------------------------------------------------------------------------------
# bad input, NaN, presets
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.parametrize("argv, message", [
    (["--latent-dim", "0"], "latent_dim must be an integer >= 1"),
    (["--encoder-hidden-size", "0"], "encoder_hidden_size must be an integer >= 1"),
    (["--set", "decoder_hidden_sizes=[]"], "decoder_hidden_sizes must be a non-empty list"),
    (["--set", "policy_hidden_sizes=[32, 0]"], "policy_hidden_sizes must be a non-empty list"),
    (["--kl-weight", "-1"], "kl_weight must be >= 0"),
    (["--decode-subsample", "0"], "decode_subsample must be an integer >= 1"),
    (["--elbo-subsample", "0"], "elbo_subsample must be an integer >= 1"),
    (["--vae-updates", "0"], "vae_updates must be an integer >= 1"),
    (["--vae-learning-rate", "0"], "vae_learning_rate must be > 0"),
    (["--num-minibatches", "17"], "num_minibatches (17) must be <= meta_batch_size (16)"),
])
def test_bad_varibad_settings_are_refused_in_one_line(tmp_path, capsys, argv, message):
    argv = ["train", "varibad", "--env", BANDIT, *argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.api
def test_bad_environments_and_calls_are_rejected():
    with pytest.raises(ValueError, match="not a task environment"):
        VariBAD("CartPole-v1", small_config())
    agent = VariBAD(BANDIT, small_config())
    tasks = agent.task_env.sample_tasks(2, seed=0)
    with pytest.raises(ValueError, match="num_episodes"):
        agent.meta_test(tasks, 0, seed=0)
    with pytest.raises(ValueError, match="at least one task"):
        agent.belief_trials([], 3, seed=0)
    with pytest.raises(ValueError, match="agent"):
        agent.load_state_dict({"name": "rl2"})
    agent.close()


@pytest.mark.api
def test_a_nan_elbo_rejects_the_vae_steps_and_trains_nothing_through_it():
    agent = VariBAD(BANDIT, small_config())
    with torch.no_grad():
        agent.reward_decoder[-1].bias.fill_(float("nan"))
    before = parameters(agent)
    metrics = agent.train_iteration(0)
    assert metrics["charts/rejected_updates"] == 2 and agent.rejected_updates == 2  # the two VAE steps
    for key, value in parameters(agent).items():
        if key.startswith("vae."):
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    assert any(not torch.equal(v, before[k]) for k, v in parameters(agent).items() if k.startswith("policy."))
    agent.close()


@pytest.mark.api
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_load_into_the_config(path):
    values = yaml.safe_load(path.read_text())
    values.pop("env", None)
    config = VariBADConfig(**values)
    assert config.meta_batch_size >= config.num_minibatches


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"varibad_navigation", "varibad_sparse_navigation", "varibad_cheetah_vel",
                                         "varibad_walker_params"}
