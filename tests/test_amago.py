"""The AMAGO-style off-policy in-context agent: all-timestep TD targets against a per-step loop, cached acting,
gradient routing, determinism and resume, bad input, learning on a tiny in-context task."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from metarl.agents.amago import AMAGO, AMAGOConfig
from metarl.cli import main as cli_main
from metarl.core.agent import MetaRLAgent
from metarl.core.sac import critic_target
from metarl.envs.base import TaskEnvMixin, task_to_dict
from tests.helpers import kill_and_resume, preset_params, resume_from_state_dict

NAVIGATION = "metarl/Navigation2D-v0"


# A tiny continuous in-context task: a hidden sign s = ±1, one-step episodes with reward s · a for a in [-1, 1].
# Episode 0 can only explore (any fixed action earns 0 in expectation over s); a policy that reads its previous action
# and reward earns 1 in every later episode, a policy without memory still 0.
@dataclasses.dataclass(frozen=True)
class SignTask:
    sign: int


class SignEnv(TaskEnvMixin, gym.Env):
    task_type = SignTask
    episode_step_limit = 1

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._init_task(SignTask(1))

    def _sample_task_list(self, n: int, split: str, rng: np.random.Generator) -> list[SignTask]:
        return [SignTask(int(s)) for s in rng.choice([-1, 1], size=n)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._apply_pending_task()
        return np.zeros(1, np.float32), {"task": task_to_dict(self._task)}

    def step(self, action):
        return np.zeros(1, np.float32), float(self._task.sign * np.clip(action[0], -1, 1)), True, False, {}


gym.register("test_amago/Sign-v0", entry_point=SignEnv)


class ArmEnv(SignEnv):
    """The sign task with two discrete actions: pulling arm (1 + s) / 2 earns 1, the other −1."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = spaces.Discrete(2)

    def step(self, action):
        return np.zeros(1, np.float32), 1.0 if int(action) == (1 + self._task.sign) // 2 else -1.0, True, False, {}


gym.register("test_amago/Arm-v0", entry_point=ArmEnv)


def small_config(**overrides: Any) -> AMAGOConfig:
    options = dict(meta_batch_size=4, episodes_per_trial=2, max_episode_steps=4, transformer_layers=1,
                   transformer_heads=2, transformer_d_model=16, hidden_size=16, hidden_sizes=[16], batch_size=3,
                   gradient_steps=3, replay_capacity=10)
    options.update(overrides)
    return AMAGOConfig(**options)


def parameters(agent: AMAGO) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name in ("encoder", "actor", "critic", "target_critic",
                                                           "temperature", "extra_heads")
            for k, v in getattr(agent, name).state_dict().items()}


@pytest.fixture(scope="module")
def navigation_agent():
    agent = AMAGO(NAVIGATION, small_config(gamma=0.9, reward_scale=2.0))
    agent.train_iteration(0)  # the target critics drift from the critics
    yield agent
    agent.close()


# ----------------------------------------------------------------------------------------------------------------
# math
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.math
def test_all_timestep_td_loss_matches_a_per_timestep_loop(navigation_agent):
    agent = navigation_agent
    trials = {k: v[0] for k, v in agent.replay.sample([0], 3, torch.Generator().manual_seed(0)).items()}
    # trial 1 ends after 5 of its 8 steps (a shorter trial padded in the replay), trial 2 after 1
    for i, length in ((1, 5), (2, 1)):
        for key in trials:
            trials[key][i, length:] = 0
    _, _, _, features = agent.encoder(trials["inputs"])
    data = agent.transitions(features, trials)
    rows = len(data["rewards"])
    assert rows == 8 + 5 + 1
    loss = agent.head_losses(*agent.heads[0], data, data["observations"], torch.Generator().manual_seed(1))["critic"]
    data["next_noise"] = torch.randn(2, rows, agent.action_size, generator=torch.Generator().manual_seed(1))[0]
    alpha = agent.log_alpha.detach().exp()

    # the loop: for each real step its own uncached encoder pass over the trial's prefix, then SAC's target
    cfg, row, squared = agent.config, 0, []
    with torch.no_grad():
        for i in range(3):
            steps = int(trials["mask"][i].sum())
            for t in range(steps):
                h_t = agent.encoder(trials["inputs"][i:i + 1, :t + 1])[3][0, -1]
                torch.testing.assert_close(data["observations"][row], h_t, atol=1e-5, rtol=1e-5)
                terminal = float(t == steps - 1)
                assert data["terminated"][row] == terminal
                if terminal:
                    h_next = torch.zeros_like(h_t)
                else:
                    h_next = agent.encoder(trials["inputs"][i:i + 1, :t + 2])[3][0, -1]
                next_action, next_log_prob, _, _ = agent.actor.sample(h_next[None],
                                                                      noise=data["next_noise"][row:row + 1])
                next_q1, next_q2 = agent.target_critic(torch.cat([h_next[None], next_action], -1))
                y = critic_target(trials["rewards"][i, t:t + 1], torch.tensor([terminal]), next_q1, next_q2,
                                  next_log_prob, alpha, cfg.gamma, cfg.reward_scale)
                q1, q2 = agent.critic(torch.cat([h_t, trials["actions"][i, t]])[None])
                squared.append(((q1 - y) ** 2 + (q2 - y) ** 2).item())
                row += 1
    assert row == rows
    assert loss.item() == pytest.approx(float(np.mean(squared)), rel=1e-5, abs=1e-7)


@pytest.mark.math
@pytest.mark.parametrize("actor_trains_encoder", [True, False])
def test_the_actor_loss_never_moves_the_critics_and_reaches_the_encoder_only_through_the_actor(actor_trains_encoder):
    agent = AMAGO(NAVIGATION, small_config(critic_loss_weight=0.0, learn_temperature=False,
                                           actor_trains_encoder=actor_trains_encoder))
    agent.sample_trials(0)
    batch = agent.sample_trials(0)
    trials = agent.padded(batch)
    before = parameters(agent)
    agent.gradient_step(trials, torch.Generator().manual_seed(0))
    after = parameters(agent)
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    # the target critics follow the (unchanged) critics, so they stay too
    assert changed == ({"actor", "encoder"} if actor_trains_encoder else {"actor"})
    agent.close()


@pytest.mark.math
def test_each_extra_discount_is_sac_at_that_discount_and_trains_the_encoder_but_never_acts():
    """Multi-gamma: gamma's heads and the encoder start as a one-discount agent's and act alike; each extra head's
    losses are a one-discount agent's at its discount with its weights; the extra losses reach the encoder."""
    multi = AMAGO(NAVIGATION, small_config(gamma=0.9, extra_gammas=[0.5, 0.0]))
    single = AMAGO(NAVIGATION, small_config(gamma=0.9))
    for name in ("encoder", "actor", "critic", "target_critic"):
        for key, value in getattr(single, name).state_dict().items():
            assert torch.equal(getattr(multi, name).state_dict()[key], value), (name, key)
    first = multi.sample_trials(0)
    assert torch.equal(first["actions"], single.sample_trials(0)["actions"])
    multi.train_iteration(0)  # every head moves on its own loss
    trials = {k: v[0] for k, v in multi.replay.sample([0], 3, torch.Generator().manual_seed(0)).items()}
    data = multi.transitions(multi.encoder(trials["inputs"])[3], trials)
    for (actor, critic, target_critic, gamma), head in zip(multi.heads[1:], multi.extra_heads):
        assert actor is head["actor"] and not torch.equal(actor.net[0].weight, multi.actor.net[0].weight)
        at_gamma = AMAGO(NAVIGATION, small_config(gamma=gamma))
        for name, module in (("actor", actor), ("critic", critic), ("target_critic", target_critic)):
            getattr(at_gamma, name).load_state_dict(module.state_dict())
        at_gamma.log_alpha.data.copy_(multi.log_alpha.data)
        ours = multi.head_losses(actor, critic, target_critic, gamma, data, data["observations"],
                                 torch.Generator().manual_seed(3))
        theirs = at_gamma.head_losses(*at_gamma.heads[0], data, data["observations"],
                                      torch.Generator().manual_seed(3))
        for key in ("critic", "actor", "temperature"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
        at_gamma.close()
    # the combined step: the extra heads' losses add to the encoder's gradient
    gradients = []
    for agent in (multi, single):
        single.encoder.load_state_dict(multi.encoder.state_dict())
        for name in ("actor", "critic", "target_critic", "temperature"):
            getattr(single, name).load_state_dict(getattr(multi, name).state_dict())
        agent.optimizer.param_groups[0]["lr"] = 0.0  # read the gradient, keep the weights
        agent.gradient_step(trials, torch.Generator().manual_seed(0))
        gradients.append(torch.cat([p.grad.flatten() for p in agent.encoder.parameters() if p.grad is not None]))
    assert not torch.allclose(gradients[0], gradients[1])
    with pytest.raises(ValueError, match="must differ"):
        small_config(gamma=0.9, extra_gammas=[0.9])
    multi.close()
    single.close()


# ----------------------------------------------------------------------------------------------------------------
# acting, smoke
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.parametrize("model, shortcut, previous", [("transformer", False, False), ("gru", False, False),
                                                       ("transformer", True, False), ("gru", True, False),
                                                       ("transformer", False, True), ("gru", True, True)])
def test_cached_acting_matches_one_uncached_pass(model, shortcut, previous):
    agent = AMAGO(NAVIGATION, small_config(sequence_model=model, episodes_per_trial=3, input_shortcut=shortcut,
                                           previous_observation=previous))
    size = 2 + 2 + 2 + 2 * previous  # observation, previous action, reward, done (and previous observation)
    assert agent.actor.net[0].in_features == 16 + size * shortcut  # the heads see h_t (and the step's input)
    tasks = agent.task_env.sample_tasks(4, seed=0)
    batch = agent.collect_trials(agent.envs, tasks, 3, env_seed=0, generator=torch.Generator(), deterministic=True)
    assert batch["inputs"].shape == (4, 12, size) and batch["mask"].all()
    if previous:  # the observation each previous action was taken in
        torch.testing.assert_close(batch["inputs"][:, 1:, 6:], batch["inputs"][:, :-1, :2])
    with torch.no_grad():
        features = agent.head_features(agent.encoder(batch["inputs"])[3], batch["inputs"])
        actions = agent.actor.sample(features, deterministic=True)[0]
    torch.testing.assert_close(actions, batch["actions"], atol=1e-5, rtol=1e-5)
    # the previous action in the next step's input is the action taken; episode boundaries flagged
    torch.testing.assert_close(batch["inputs"][:, 1:, 2:4], batch["actions"][:, :-1])
    assert batch["inputs"][:, 4, 5].eq(1).all() and batch["inputs"][:, 3, 5].eq(0).all()
    assert np.isfinite(agent.train_iteration(0)["losses/critic"])  # the replay and the update take the input size
    agent.close()


@pytest.mark.api
@pytest.mark.parametrize("model", ["transformer", "gru"])
def test_discrete_actions_cached_acting_matches_one_uncached_pass_and_the_replay_keeps_them_one_hot(model):
    agent = AMAGO("metarl/BernoulliBandit-v0", small_config(sequence_model=model, env_kwargs={"k": 3},
                                                            episodes_per_trial=6, max_episode_steps=None))
    assert agent.discrete and agent.target_entropy == pytest.approx(0.1 * np.log(3))
    tasks = agent.task_env.sample_tasks(4, seed=0)
    batch = agent.collect_trials(agent.envs, tasks, 6, env_seed=0, generator=torch.Generator(), deterministic=True)
    assert batch["actions"].shape == (4, 6) and batch["actions"].dtype == torch.long
    with torch.no_grad():
        features = agent.encoder(batch["inputs"])[3]
    assert torch.equal(agent.actor.sample(features, deterministic=True)[0], batch["actions"])
    stored = agent.padded(batch)["actions"]
    assert stored.shape == (4, 6, 3) and torch.equal(stored.argmax(-1), batch["actions"])
    torch.testing.assert_close(batch["inputs"][:, 1:, 1:4], stored[:, :-1])  # the previous action, one-hot
    metrics = agent.train_iteration(0)
    assert np.isfinite(metrics["losses/critic"]) and 0 < metrics["charts/entropy"] <= np.log(3) + 1e-6
    agent.close()


@pytest.mark.smoke
def test_smoke_train_and_meta_test():
    agent = AMAGO(NAVIGATION, small_config())
    assert isinstance(agent, MetaRLAgent) and agent.episodes_per_stage == 1
    metrics = [agent.train_iteration(i) for i in range(2)]
    assert metrics[-1]["env_steps"] == 4 * 2 * 4 and agent.replay.sizes[0] == 8
    assert np.isfinite(metrics[-1]["losses/critic"]) and metrics[-1]["charts/transitions_per_step"] == 3 * 8
    returns = agent.meta_test(agent.task_env.sample_tasks(3, split="test", seed=0), 2, seed=0)
    assert returns.shape == (3, 2) and np.all(np.isfinite(returns))
    agent.close()


# ----------------------------------------------------------------------------------------------------------------
# determinism, resume
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.determinism
@pytest.mark.parametrize("model, popart_beta, extra_gammas", [("transformer", None, []), ("gru", None, []),
                                                             ("transformer", 0.05, []), ("gru", 0.05, [0.5])])
def test_same_seed_same_run_and_resume_is_exact(model, popart_beta, extra_gammas):
    def fresh(seed: int = 0) -> AMAGO:
        return AMAGO(NAVIGATION, small_config(sequence_model=model, seed=seed, popart_beta=popart_beta,
                                              extra_gammas=extra_gammas))

    straight, reloaded, straight_metrics, reloaded_metrics = resume_from_state_dict(fresh, parameters)
    timing = ("charts/rollout_seconds", "charts/gradient_steps_per_s")
    for key, value in straight_metrics[-1].items():
        assert key in timing or reloaded_metrics[-1][key] == value, key
    assert reloaded.total_gradient_steps == straight.total_gradient_steps == 9 and reloaded.iterations_done == 3
    if popart_beta is not None:  # the statistics are part of the critics' state and have moved
        assert straight.critic.popart.mean != 0 and torch.equal(reloaded.critic.popart.mean_square,
                                                                straight.critic.popart.mean_square)
    tasks = straight.task_env.sample_tasks(3, split="test", seed=5)
    np.testing.assert_array_equal(straight.meta_test(tasks, 2, seed=7), reloaded.meta_test(tasks, 2, seed=7))
    other = fresh(seed=1)
    other.train_iteration(0)
    assert any(not torch.equal(v, parameters(straight)[k]) for k, v in parameters(other).items())
    for agent in (straight, reloaded, other):
        agent.close()


@pytest.mark.determinism
def test_a_run_killed_and_resumed_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    from metarl.training import make_run_config

    overrides = {k: v for k, v in dataclasses.asdict(small_config()).items()
                 if k in ("meta_batch_size", "episodes_per_trial", "max_episode_steps", "transformer_layers",
                          "transformer_heads", "transformer_d_model", "hidden_sizes", "batch_size",
                          "gradient_steps", "replay_capacity")}

    def run(name: str):
        return make_run_config("amago", overrides, env=NAVIGATION, iterations=5, checkpoint_every=2, eval_tasks=3,
                               eval_episodes=2, progress=False, run_dir=str(tmp_path / name))

    a, b = kill_and_resume(monkeypatch, AMAGO, run, kill_at=3, checkpointed=2)
    for part in ("encoder", "actor", "critic", "target_critic", "temperature"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert torch.equal(a["replay"]["storage"]["inputs"], b["replay"]["storage"]["inputs"])
    import json

    evaluations = [json.loads((d / "evaluation.json").read_text()) for d in (tmp_path / "full", tmp_path / "killed")]
    assert evaluations[0]["splits"]["test"]["per_task_returns"] == evaluations[1]["splits"]["test"]["per_task_returns"]


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.api
@pytest.mark.parametrize("env, argv, message", [
    (NAVIGATION, ["--transformer-d-model", "30", "--transformer-heads", "4"],
     "transformer_d_model (30) must be divisible by transformer_heads (4)"),
    (NAVIGATION, ["--transformer-context", "50", "--episodes-per-trial", "3", "--max-episode-steps", "20"],
     "transformer_context (50) must be >= the trial's steps (60"),
    (NAVIGATION, ["--meta-batch-size", "8", "--replay-capacity", "4"],
     "replay_capacity (4) must hold one iteration's trials (meta_batch_size 8)"),
    (NAVIGATION, ["--episodes-per-trial", "0"], "episodes_per_trial must be an integer >= 1"),
    (NAVIGATION, ["--sequence-model", "lstm"], "sequence_model must be one of gru, transformer"),
    (NAVIGATION, ["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (NAVIGATION, ["--tau", "0"], "tau must be"),
    (NAVIGATION, ["--popart-beta", "0"], "popart_beta must be"),
    (NAVIGATION, ["--extra-gammas", "0.5", "1.5"], "each of extra_gammas must be in [0, 1], got 1.5"),
    (NAVIGATION, ["--extra-gammas", "0.99"], "extra_gammas [0.99] must differ from each other and from gamma"),
    (NAVIGATION, ["--extra-gammas", "0.5", "0.5"], "extra_gammas [0.5, 0.5] must differ from each other"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, capsys, env, argv, message):
    argv = ["train", "amago", "--env", env, *argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.api
@pytest.mark.parametrize("preset", preset_params("amago_*.yaml"))
def test_presets_make_a_run_config_and_an_agent(preset):
    from metarl.training import make_run_config

    config = make_run_config("amago", preset=preset, iterations=1, progress=False)
    learner = dataclasses.replace(config.learner, meta_batch_size=2)
    if "TMaze" in config.task.env:
        learner = dataclasses.replace(learner, env_kwargs={"corridor_length": 3})
    agent = AMAGO(config.task.env, learner)
    env = gym.make(config.task.env, **learner.env_kwargs)
    assert agent.discrete == isinstance(env.action_space, gym.spaces.Discrete)  # discrete SAC where actions are
    env.close()
    agent.close()


@pytest.mark.api
def test_the_cross_agent_tables_meta_test_trials_fit_the_presets_transformer_context():
    """Every amago row of experiments/meta_rl_table.py meta-tests a trial of ``eval_episodes`` episodes: the preset's
    Transformer must attend over all of it (a context sized for the training trial fails only after training)."""
    import yaml

    from experiments.meta_rl_table import PLANS
    from tests.helpers import PRESET_DIR

    rows = [(plan, row) for plan in PLANS.values() for name, row in plan["agents"].items()
            if row.get("agent", name) == "amago"]
    assert len(rows) >= 3
    for plan, row in rows:
        preset = yaml.safe_load((PRESET_DIR / row["preset"]).read_text())
        steps = plan["eval_episodes"] * preset["max_episode_steps"]
        context = preset.get("transformer_context") or preset["episodes_per_trial"] * preset["max_episode_steps"]
        assert context >= steps, (row["preset"], context, steps)


@pytest.mark.api
def test_bad_calls_are_rejected():
    agent = AMAGO(NAVIGATION, small_config())
    with pytest.raises(ValueError, match="num_episodes"):
        agent.meta_test(agent.task_env.sample_tasks(2, seed=0), 0, seed=0)
    with pytest.raises(ValueError, match="agent"):
        agent.load_state_dict({"name": "pearl"})
    with pytest.raises(ValueError, match="context is 8"):  # a meta-test trial longer than the Transformer's context
        agent.meta_test(agent.task_env.sample_tasks(2, seed=0), 3, seed=0)
    agent.close()


@pytest.mark.api
def test_nan_loss_rejects_the_update():
    agent = AMAGO(NAVIGATION, small_config())
    with torch.no_grad():
        agent.critic.q1[-1].bias.fill_(float("nan"))
    before = parameters(agent)
    metrics = agent.train_iteration(0)
    assert metrics["charts/rejected_updates"] == 3 and agent.rejected_updates == 3 and "losses/critic" not in metrics
    for key, value in parameters(agent).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    agent.close()


# ----------------------------------------------------------------------------------------------------------------
# learning
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.learning
@pytest.mark.parametrize("model", ["transformer", "gru"])
def test_learns_the_hidden_sign_from_its_first_episode(model, one_torch_thread):
    """4 one-step episodes of the sign task: without memory every episode earns 0 in expectation; AMAGO must earn
    more than 0.6 per episode after the first (optimum 1), well above its first episode."""
    config = AMAGOConfig(meta_batch_size=16, episodes_per_trial=4, sequence_model=model, transformer_layers=1,
                         transformer_d_model=32, hidden_size=32, hidden_sizes=[64, 64], batch_size=32,
                         gradient_steps=20, learning_rate=1e-3, gamma=0.9, seed=0, deterministic_test=True)
    agent = AMAGO("test_amago/Sign-v0", config)
    for iteration in range(25):  # every one of seeds 0-2 and both models is above 0.85 by 20
        agent.train_iteration(iteration)
    returns = agent.meta_test(agent.task_env.sample_tasks(100, split="test", seed=2024), 4, seed=0)
    agent.close()
    later = returns[:, 1:].mean()
    assert later > 0.6 and later > returns[:, 0].mean() + 0.5, returns.mean(0)


@pytest.mark.learning
@pytest.mark.parametrize("extra_gammas", [[], [0.0]])
def test_discrete_actions_learn_the_hidden_arm_from_the_first_pull(one_torch_thread, extra_gammas):
    """The sign task with two arms (+1 for the good one, −1 for the other): memoryless 0 per episode in expectation;
    discrete-action AMAGO must earn more than 0.6 per pull after the first, well above its first. With a γ = 0 head
    beside (multi-gamma) its critics must predict each arm's reward after the first pull (±1; 0 before it)."""
    config = AMAGOConfig(meta_batch_size=16, episodes_per_trial=4, sequence_model="gru", hidden_size=32,
                         hidden_sizes=[64, 64], batch_size=32, gradient_steps=20, learning_rate=1e-3, gamma=0.9,
                         seed=0, deterministic_test=True, extra_gammas=extra_gammas)
    agent = AMAGO("test_amago/Arm-v0", config)
    for iteration in range(25):
        agent.train_iteration(iteration)
    tasks = agent.task_env.sample_tasks(100, split="test", seed=2024)
    returns = agent.meta_test(tasks, 4, seed=0)
    later = returns[:, 1:].mean()
    assert later > 0.6 and later > returns[:, 0].mean() + 0.5, returns.mean(0)
    if extra_gammas:
        tasks = tasks[:agent.envs.num_envs]
        batch = agent.collect_trials(agent.envs, tasks, 4, env_seed=1, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            q1, q2 = agent.extra_heads[0]["critic"](agent.encoder(batch["inputs"])[3])
        good = torch.tensor([(1 + task.sign) // 2 for task in tasks])
        assert torch.minimum(q1, q2)[:, 0].abs().mean() < 0.4  # before the first pull either arm earns 0 on average
        q = torch.minimum(q1, q2)[:, 1:]  # [tasks, pulls after the first, arm]
        index = good[:, None, None].expand(-1, 3, 1)
        predicted_good, predicted_bad = q.gather(-1, index).mean(), q.gather(-1, 1 - index).mean()
        assert predicted_good > 0.6 and predicted_bad < -0.6, (predicted_good, predicted_bad)
    agent.close()


@pytest.mark.learning
def test_recalls_the_cue_in_a_five_step_tmaze_with_the_presets_entropy_recipe(one_torch_thread):
    """The passive T-Maze at H = 5 (envs/memory.py) with experiments/presets/amago_tmaze.yaml's recipe (rewards
    times H, a fixed α 0.5 below the scaled penalty of a step behind, PopArt critics): sampled actions must stand on
    the cued side in at least 80% of 100 held-out episodes (a memoryless policy: 50%; one that never reaches the
    junction: 0)."""
    config = AMAGOConfig(meta_batch_size=16, episodes_per_trial=1, transformer_layers=1, transformer_heads=2,
                         transformer_d_model=32, hidden_sizes=[64, 64], batch_size=16, gradient_steps=20,
                         learning_rate=1e-3, reward_scale=5.0, init_temperature=0.5, learn_temperature=False,
                         popart_beta=5e-4, seed=0, env_kwargs={"corridor_length": 5})
    agent = AMAGO("metarl/PassiveTMaze-v0", config)
    for iteration in range(40):
        agent.train_iteration(iteration)
    returns = agent.meta_test(agent.task_env.sample_tasks(100, split="test", seed=2024), 1, seed=0)
    agent.close()
    assert (returns[:, 0] > 0).mean() >= 0.8, returns[:, 0]
