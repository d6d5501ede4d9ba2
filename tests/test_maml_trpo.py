"""MAML-TRPO: the meta-gradient and the Fisher products through the inner loop, the agent contract (determinism,
resume, meta-test), bad input, rejected updates, presets, and a one-minute learning test on 2D navigation."""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import metarl.agents.maml_trpo as maml_trpo
from metarl.agents import rl_agent_classes
from metarl.agents.maml_trpo import MAMLTRPO, MAMLTRPOConfig, inner_loop
from metarl.core.adaptation import adapt, task_chunks
from metarl.core.agent import MetaRLAgent
from metarl.core.maml_rl import TaskBatch, adapt_in_chunks, adapt_policy, inner_loss, meta_fisher, meta_objective
from metarl.core.policies import CategoricalMLPPolicy, GaussianMLPPolicy
from metarl.core.seeding import seeded
from metarl.core.trpo import flatten
from tests.helpers import preset_params

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "presets"
SMALL = dict(meta_batch_size=3, episodes_per_task=2, max_episode_steps=6, hidden_sizes=[8])


# --- the maths through the inner loop (tiny float64 problems) ----------------------------------------------------
def tiny_problem(kind: str, tasks: int = 3, steps: int = 6, seed: int = 0):
    with seeded(seed):
        policy = GaussianMLPPolicy(3, 2, (4,), init_std=0.8) if kind == "gaussian" else CategoricalMLPPolicy(3, 3, (4,))
    policy = policy.double()
    g = torch.Generator().manual_seed(seed)

    def batch() -> TaskBatch:
        obs = torch.randn(tasks, steps, 3, generator=g, dtype=torch.float64)
        if policy.discrete:
            actions = torch.randint(0, 3, (tasks, steps), generator=g)
        else:
            actions = torch.randn(tasks, steps, 2, generator=g, dtype=torch.float64)
        mask = torch.ones(tasks, steps, dtype=torch.float64)
        mask[0, -2:] = 0  # some padding
        return TaskBatch(obs, actions, torch.randn(tasks, steps, generator=g, dtype=torch.float64), mask)

    support, query = batch(), batch()
    return policy, support, query


def unflatten(policy, flat):
    params, offset = {}, 0
    for name, p in policy.named_parameters():
        params[name] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return params


def autograd_and_central_differences(loss_at, x, eps=1e-6):
    """(∇ loss_at(x) by autograd, the same by central differences of step ``eps``), for a float64 vector ``x``."""
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(point), point)
    numeric = torch.stack([(loss_at(x + eps * e) - loss_at(x - eps * e)) / (2 * eps)
                           for e in torch.eye(len(x), dtype=torch.float64)]).detach()
    return grad, numeric


def old_distribution(policy, support, query, config):
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    fast = adapt_policy(policy, theta, support, dataclasses.replace(inner_loop(policy, config), first_order=True))
    return tuple(t.detach() for t in policy.distribution({k: v.detach() for k, v in fast.items()}, query.observations))


@pytest.mark.math
@pytest.mark.parametrize("kind, inner_steps, head_only", [("gaussian", 1, False), ("gaussian", 2, False),
                                                          ("categorical", 1, False), ("gaussian", 1, True)])
def test_meta_gradient_matches_finite_differences(kind, inner_steps, head_only):
    policy, support, query = tiny_problem(kind)
    config = MAMLTRPOConfig(inner_lr=0.1, inner_steps=inner_steps, adapt_head_only=head_only)
    old = old_distribution(policy, support, query, config)
    theta = flatten(list(policy.parameters())).detach()

    def loss_at(flat, cfg=config):
        return meta_objective(policy, unflatten(policy, flat), support, query, old, inner_loop(policy, cfg),
                              differentiable=True)[0]

    point = theta.clone().requires_grad_(True)
    grad, numeric = autograd_and_central_differences(loss_at, theta)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    # the second-order terms matter: the first-order meta-gradient is visibly different
    first_order = dataclasses.replace(config, first_order=True)
    (grad_fo,) = torch.autograd.grad(loss_at(point, first_order), point)
    assert (grad_fo - numeric).norm() > 1e-3 * numeric.norm()


@pytest.mark.math
@pytest.mark.parametrize("head_only", [False, True])
def test_learned_step_sizes_get_the_finite_difference_meta_gradient(head_only):
    """Meta-SGD variant: the meta-gradient wrt the per-parameter step sizes matches finite differences, and step
    sizes all equal to inner_lr give exactly the fixed-step objective."""
    policy, support, query = tiny_problem("gaussian", seed=2)
    config = MAMLTRPOConfig(inner_lr=0.1, learn_inner_lr=True, adapt_head_only=head_only)
    old = old_distribution(policy, support, query, config)
    weights = dict(policy.named_parameters())
    adapted = policy.head_keys if head_only else list(weights)
    sizes = [weights[name].numel() for name in adapted]
    g = torch.Generator().manual_seed(3)
    start = 0.1 * (1 + 0.5 * torch.rand(sum(sizes), generator=g, dtype=torch.float64))

    def loss_at(flat):
        lrs = dict(zip(adapted, (chunk.view_as(weights[name]) for name, chunk in zip(adapted, flat.split(sizes)))))
        return meta_objective(policy, weights, support, query, old, inner_loop(policy, config, lrs))[0]

    grad, numeric = autograd_and_central_differences(loss_at, start)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    assert grad.abs().max() > 1e-4  # the step sizes do get a gradient
    fixed = dataclasses.replace(config, learn_inner_lr=False)
    torch.testing.assert_close(loss_at(torch.full_like(start, 0.1)),
                               meta_objective(policy, weights, support, query, old, inner_loop(policy, fixed))[0])


@pytest.mark.math
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fisher_products_through_the_inner_loop_match_the_explicit_kl_hessian(kind):
    policy, support, query = tiny_problem(kind, seed=1)
    config = MAMLTRPOConfig(inner_lr=0.5, cg_damping=0.01)
    old = old_distribution(policy, support, query, config)
    theta = flatten(list(policy.parameters())).detach()
    kl = lambda flat: meta_objective(policy, unflatten(policy, flat), support, query, old,
                                     inner_loop(policy, config))[1]
    hessian = torch.autograd.functional.hessian(kl, theta)
    assert torch.linalg.eigvalsh(hessian).min() > -1e-10  # a Fisher matrix: positive semi-definite
    v = torch.randn(len(theta), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = dict(policy.named_parameters())
    product = meta_fisher(policy, params, support, query, old, inner_loop(policy, config), list(params.values()),
                          config.cg_damping)(v)
    torch.testing.assert_close(product, hessian @ v + 0.01 * v)


@pytest.mark.math
def test_vectorized_inner_loss_matches_vmap_over_tasks():
    policy, support, _ = tiny_problem("gaussian")
    params = dict(policy.named_parameters())
    config = MAMLTRPOConfig(inner_lr=0.3, inner_steps=2)
    kwargs = dict(steps=2, step_size=0.3)
    vmapped = adapt(lambda p, d: inner_loss(policy, p, d), params, support, vectorized=False, **kwargs)
    vectorized = adapt_policy(policy, params, support, inner_loop(policy, config))
    for name in params:
        torch.testing.assert_close(vmapped[name], vectorized[name])


# --- the agent ----------------------------------------------------------------------------------------------------
def make_agent(env_id: str = "metarl/Navigation2D-v0", **overrides) -> MAMLTRPO:
    return MAMLTRPO(env_id, MAMLTRPOConfig(**{**SMALL, **overrides}))


def parameters(agent: MAMLTRPO) -> torch.Tensor:
    return flatten([p.detach() for p in agent.policy.parameters()]).clone()


def without_times(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not (k.startswith("time/") or k == "charts/SPS")}


@pytest.mark.math
@pytest.mark.parametrize("head_only", [False, True])
def test_chunked_objective_and_iteration_match_the_whole_meta_batch(head_only):
    """task_chunk: the surrogate, KL and meta-gradient over chunks of tasks (3 tasks in chunks of 2 + 1, with and
    without the adaptation handed in) equal those over all tasks at once; so does a whole training iteration."""
    policy, support, query = tiny_problem("gaussian", seed=3)
    whole = MAMLTRPOConfig(inner_lr=0.1, adapt_head_only=head_only, task_chunk=0)
    chunked = dataclasses.replace(whole, task_chunk=2)
    assert task_chunks(3, 2) == [slice(0, 2), slice(2, 3)] and task_chunks(3, 0) == [slice(0, 3)]
    old = old_distribution(policy, support, query, whole)
    params = dict(policy.named_parameters())
    whole_loop, chunked_loop = inner_loop(policy, whole), inner_loop(policy, chunked)
    results = [meta_objective(policy, params, support, query, old, whole_loop),
               meta_objective(policy, params, support, query, old, chunked_loop),
               meta_objective(policy, params, support, query, old, chunked_loop,
                              fast=adapt_in_chunks(policy, params, support, chunked_loop))]
    grads = [flatten(torch.autograd.grad(loss, list(params.values()))) for loss, _ in results]
    for (loss, kl), grad in zip(results[1:], grads[1:]):
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(kl, results[0][1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, grads[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):  # handed-in chunks must match the config's chunking
        meta_objective(policy, params, support, query, old, whole_loop,
                       fast=adapt_in_chunks(policy, params, support, chunked_loop))

    # a training iteration in chunks of 2 + 1 tasks takes the same step: the float32 gradient agrees to rounding,
    # and conjugate gradient on this tiny, ill-conditioned Fisher amplifies rounding to ~1e-3 of the step
    steps, metrics = [], []
    for task_chunk in (0, 2):
        agent = make_agent(adapt_head_only=head_only, task_chunk=task_chunk)
        start = parameters(agent)
        metrics.append(agent.train_iteration(0))
        steps.append(parameters(agent) - start)
        agent.close()
    assert metrics[1]["losses/grad_norm"] == pytest.approx(metrics[0]["losses/grad_norm"], rel=1e-5)
    assert metrics[1]["charts/backtracks"] == metrics[0]["charts/backtracks"]
    assert (steps[1] - steps[0]).norm() < 0.02 * steps[0].norm()


@pytest.mark.math
def test_fisher_step_subsample_draws_seeded_positions_and_uses_them_alike_for_query_and_old_policy():
    """fisher_step_subsample: sorted distinct positions from (seed, iteration, phase); the steps are summed in the
    Fisher, so all steps in another order give the exact step (the query data and the old policy's distributions are
    indexed alike), and half of them a different, still accepted one."""
    agent = make_agent(fisher_step_subsample=0.25)
    steps = agent.fisher_steps(3, 40, "support")
    assert len(steps) == 10 and bool((steps[1:] > steps[:-1]).all()) and 0 <= int(steps[0]) and int(steps[-1]) < 40
    assert torch.equal(steps, agent.fisher_steps(3, 40, "support"))
    assert not torch.equal(steps, agent.fisher_steps(3, 40, "query"))
    assert not torch.equal(steps, agent.fisher_steps(4, 40, "support"))
    agent.close()
    assert make_agent(fisher_step_subsample=1.0).fisher_steps(3, 40, "support") == slice(None)

    def step_of(agent: MAMLTRPO) -> tuple[torch.Tensor, dict]:
        start = parameters(agent)
        metrics = agent.train_iteration(0)
        agent.close()
        return parameters(agent) - start, metrics

    # discrete actions: the Fisher's metric depends on the old policy's probabilities at each step (a Gaussian
    # policy's only on its state-independent std)
    cartpole = dict(env_id="metarl/CartPoleContext-v0", max_episode_steps=20)
    exact, _ = step_of(make_agent(**cartpole))
    reordered = make_agent(**cartpole, fisher_step_subsample=0.5)  # the positions come from the method below
    reordered.fisher_steps = lambda _iteration, num, phase: torch.arange(num).flip(0) if phase == "query" \
        else torch.randperm(num, generator=torch.Generator().manual_seed(1))
    same, _ = step_of(reordered)
    assert (same - exact).norm() < 0.02 * exact.norm()  # CG on the tiny Fisher amplifies float32 rounding
    half, metrics = step_of(make_agent(**cartpole, fisher_step_subsample=0.5))
    assert (half - exact).norm() > 0.05 * exact.norm()
    assert metrics["charts/update_accepted"] == 1 and metrics["losses/kl"] <= MAMLTRPOConfig().max_kl


@pytest.mark.api
def test_agent_contract_and_registry():
    agent_class, config_class = rl_agent_classes("maml-trpo")
    assert agent_class is MAMLTRPO and config_class is MAMLTRPOConfig
    agent = make_agent()
    assert isinstance(agent, MetaRLAgent) and agent.name == "maml-trpo"
    metrics = agent.train_iteration(0)
    assert metrics["env_steps"] == 2 * 3 * 2 * 6
    for key in ("charts/pre_adaptation_return", "charts/post_adaptation_return", "charts/rejected_updates",
                "losses/kl", "time/learner_seconds"):
        assert np.isfinite(metrics[key])
    assert metrics["losses/kl"] <= agent.config.max_kl or not metrics["charts/update_accepted"]
    agent.close()


@pytest.mark.determinism
def test_same_seed_same_training_and_different_seed_differs():
    runs = []
    for seed in (0, 0, 1):
        agent = make_agent(seed=seed)
        metrics = [without_times(agent.train_iteration(i)) for i in range(2)]
        runs.append((parameters(agent), metrics))
        agent.close()
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.determinism
@pytest.mark.parametrize("overrides", [{}, {"learn_inner_lr": True}])
def test_resume_from_a_checkpoint_reproduces_an_uninterrupted_run(overrides):
    straight = make_agent(**overrides)
    for i in range(3):
        last = without_times(straight.train_iteration(i))
    first = make_agent(**overrides)
    first.train_iteration(0)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.close()
    buffer.seek(0)
    resumed = make_agent(**overrides)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.iteration == 1
    for i in range(1, 3):
        resumed_last = without_times(resumed.train_iteration(i))
    assert torch.equal(parameters(straight), parameters(resumed))
    assert resumed_last == last and resumed.total_env_steps == straight.total_env_steps
    for name, lr in straight.inner_lrs.items():
        assert torch.equal(lr, resumed.inner_lrs[name])
        assert not torch.equal(lr, torch.full_like(lr, straight.config.inner_lr))  # TRPO moved the step sizes
    assert bool(straight.inner_lrs) == bool(overrides)
    straight.close()
    resumed.close()


@pytest.mark.api
def test_learned_step_sizes_are_used_at_meta_test_and_checked_on_load():
    agent = make_agent(learn_inner_lr=True, adapt_episodes=2)
    tasks = agent.task_env.sample_tasks(2, split="test", seed=0)
    fixed = agent.meta_test(tasks, 2, seed=0)
    with torch.no_grad():
        for lr in agent.inner_lrs.values():
            lr.mul_(3.0)
    scaled = agent.meta_test(tasks, 2, seed=0)
    assert np.array_equal(fixed[:, 0], scaled[:, 0]) and not np.array_equal(fixed[:, 1], scaled[:, 1])
    plain = make_agent()
    with pytest.raises(ValueError, match="learned step sizes"):
        agent.load_state_dict(plain.state_dict())
    agent.load_weights(plain.state_dict())  # a warm start from a fixed-step run keeps the step sizes
    agent.close()
    plain.close()


@pytest.mark.api
def test_meta_test_shape_determinism_and_no_side_effects():
    agent = make_agent(adapt_episodes=3)
    tasks = agent.task_env.sample_tasks(4, split="test", seed=0)
    before = parameters(agent)
    returns = agent.meta_test(tasks, 3, seed=7)
    assert returns.shape == (4, 3) and np.isfinite(returns).all()
    assert np.array_equal(returns, agent.meta_test(tasks, 3, seed=7))
    assert not np.array_equal(returns, agent.meta_test(tasks, 3, seed=8))
    assert torch.equal(before, parameters(agent))
    # column 0 is the unadapted policy: it does not depend on how many columns follow
    assert np.array_equal(agent.meta_test(tasks, 1, seed=7)[:, 0], returns[:, 0])
    with pytest.raises(ValueError, match="num_episodes"):
        agent.meta_test(tasks, 0, seed=0)
    agent.close()


@pytest.mark.smoke
@pytest.mark.filterwarnings("ignore:fisher_subsample")  # a Fisher from 2 tasks on purpose (the subsampling path)
@pytest.mark.parametrize("env_id, overrides", [
    ("metarl/CartPoleContext-v0", {"max_episode_steps": 20}),  # discrete actions, episodes of varying length
    ("metarl/HalfCheetahVel-v0", {"env_kwargs": {"velocity_range": [0.0, 2.0]}, "max_episode_steps": 5}),
    ("metarl/Navigation2D-v0", {"adapt_head_only": True, "first_order": True, "fisher_subsample": 0.5,
                                "envs_per_task": 1}),
    ("metarl/Navigation2D-v0", {"adapt_head_only": True, "learn_inner_lr": True, "inner_steps": 2}),
])
def test_smoke_other_spaces_and_variants(env_id, overrides):
    agent = make_agent(env_id, **overrides)
    metrics = agent.train_iteration(0)
    assert np.isfinite(metrics["charts/post_adaptation_return"])
    returns = agent.meta_test(agent.task_env.sample_tasks(2, split="test", seed=0), 2, seed=0)
    assert returns.shape == (2, 2) and np.isfinite(returns).all()
    agent.close()


@pytest.mark.api
def test_nan_loss_rejects_the_update_and_counts_it(monkeypatch):
    agent = make_agent()
    before = parameters(agent)
    process = maml_trpo.process_episodes
    calls = []

    def poisoned(episodes, config):
        batch = process(episodes, config)
        calls.append(1)
        if len(calls) == 2:  # the query episodes
            return batch._replace(advantages=batch.advantages * float("nan"))
        return batch

    monkeypatch.setattr(maml_trpo, "process_episodes", poisoned)
    metrics = agent.train_iteration(0)
    assert metrics["charts/rejected_updates"] == 1 and metrics["charts/nonfinite_updates"] == 1
    assert metrics["charts/update_accepted"] == 0
    assert torch.equal(before, parameters(agent))
    monkeypatch.setattr(maml_trpo, "process_episodes", process)
    assert agent.train_iteration(1)["charts/rejected_updates"] == 1  # counted once, training goes on
    assert agent.state_dict()["rejected_updates"] == 1
    agent.close()


class _MultiBinaryTaskEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.MultiBinary(2)

    def sample_tasks(self, n, *, split="train", seed=None):
        return [0] * n

    def set_task(self, task):
        pass

    def get_task(self):
        return 0


@pytest.mark.api
@pytest.mark.parametrize("overrides, message", [
    ({"meta_batch_size": 0}, "meta_batch_size"), ({"episodes_per_task": 1.5}, "episodes_per_task"),
    ({"inner_lr": 0.0}, "inner_lr"), ({"max_kl": -1}, "max_kl"), ({"backtrack_ratio": 1.0}, "backtrack_ratio"),
    ({"gamma": 1.5}, "gamma"), ({"gae_lambda": -0.1}, "gae_lambda"), ({"hidden_sizes": []}, "hidden_sizes"),
    ({"fisher_subsample": 0}, "fisher_subsample"), ({"device": "tpu"}, "device"), ({"cg_damping": -1}, "cg_damping"),
    ({"max_episode_steps": 0}, "max_episode_steps"), ({"env_kwargs": [1]}, "env_kwargs"),
    ({"task_chunk": -1}, "task_chunk"), ({"task_chunk": 2.0}, "task_chunk"),
    ({"fisher_step_subsample": 0}, "fisher_step_subsample"), ({"fisher_step_subsample": 1.5}, "fisher_step_subsample"),
])
def test_bad_config_values_raise_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        MAMLTRPOConfig(**overrides)
    assert "\n" not in str(info.value)


@pytest.mark.api
def test_a_fisher_subsample_leaving_too_few_tasks_warns():
    with pytest.warns(UserWarning, match="leaves 2 task"):
        MAMLTRPOConfig(meta_batch_size=10, fisher_subsample=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MAMLTRPOConfig(meta_batch_size=10, fisher_subsample=1.0)  # all 10 tasks
        MAMLTRPOConfig(meta_batch_size=40, fisher_subsample=0.2)  # the presets: 8 tasks
        MAMLTRPOConfig(meta_batch_size=2, fisher_subsample=1.0)  # a meta-batch smaller than the minimum


@pytest.mark.api
def test_bad_environments_raise_at_construction():
    with pytest.raises(ValueError, match="not a task environment"):
        MAMLTRPO("CartPole-v1", MAMLTRPOConfig(**SMALL))
    with pytest.raises(ValueError, match="cannot make environment"):
        MAMLTRPO("metarl/NoSuchEnv-v0", MAMLTRPOConfig(**SMALL))
    with pytest.raises(ValueError, match="cannot make environment"):
        MAMLTRPO("metarl/Navigation2D-v0", MAMLTRPOConfig(**SMALL, env_kwargs={"no_such_argument": 1}))
    if "test/MultiBinaryTask-v0" not in gym.registry:
        gym.register("test/MultiBinaryTask-v0", entry_point=_MultiBinaryTaskEnv, max_episode_steps=5)
    with pytest.raises(ValueError, match="action space"):
        MAMLTRPO("test/MultiBinaryTask-v0", MAMLTRPOConfig(**SMALL))
    agent = make_agent()
    with pytest.raises(ValueError, match="checkpoint"):
        agent.load_state_dict({"name": "rl2"})
    agent.close()


@pytest.mark.api
@pytest.mark.parametrize("preset", preset_params("maml_trpo_*.yaml"))
def test_presets_load_into_the_config(preset):
    text = preset.read_text()
    config = MAMLTRPOConfig(**yaml.safe_load(text))
    env_id = re.search(r"--env (\S+)", text).group(1)  # the command line in the header comment
    assert env_id in gym.registry
    probe = gym.make(env_id, **config.env_kwargs)  # the env accepts the preset's env_kwargs
    probe.close()


@pytest.mark.learning
def test_learns_to_adapt_on_2d_navigation(one_torch_thread):
    """Post-adaptation return on held-out goals clearly above pre-adaptation after ~30 small meta-iterations."""
    agent = MAMLTRPO("metarl/Navigation2D-v0", MAMLTRPOConfig(meta_batch_size=10, episodes_per_task=10,
                                                              max_episode_steps=20, seed=3))
    tasks = agent.task_env.sample_tasks(20, split="test", seed=123)
    untrained = agent.meta_test(tasks, 2, seed=1).mean(0)
    for i in range(30):
        agent.train_iteration(i)
    trained = agent.meta_test(tasks, 2, seed=1).mean(0)
    pre, post = trained
    assert post > pre + 2.0, (untrained, trained)  # returns are about -8 (pre) and -4 (post)
    assert post > untrained[1] + 2.0, (untrained, trained)
    agent.close()


@pytest.mark.api
def test_warm_start_from_another_run(tmp_path):
    """`metarl train --init-from RUN`: the new run starts from RUN's policy (a different meta-batch here), counts its
    own iterations from zero and records where the weights came from; a run of another architecture is refused."""
    from metarl.runs import RunError, load_checkpoint
    from metarl.training import make_run_config, train

    def run(name: str, iterations: int, **extra) -> Path:
        config = make_run_config("maml-trpo", {**SMALL, **extra.pop("overrides", {})}, env="metarl/Navigation2D-v0",
                                 iterations=iterations, eval_tasks=2, eval_episodes=2, eval_splits=("test",),
                                 progress=False, run_dir=str(tmp_path / name), **extra)
        return train(config)

    source = run("source", 2)
    source_state = load_checkpoint(source / "checkpoints" / "last.pt")
    warm = run("warm", 0, init_from=str(source), overrides={"meta_batch_size": 4})
    warm_state = load_checkpoint(warm / "checkpoints" / "last.pt")
    for key, value in source_state["state"]["policy"].items():
        assert torch.equal(warm_state["state"]["policy"][key], value), key
    assert warm_state["iteration"] == 0
    record = yaml.safe_load((warm / "config.json").read_text())
    assert record["init_from_checkpoint"]["iteration"] == 2 and record["init_from"] == str(source)
    cold = load_checkpoint(run("cold", 0) / "checkpoints" / "last.pt")["state"]["policy"]
    assert any(not torch.equal(cold[key], value) for key, value in source_state["state"]["policy"].items())
    with pytest.raises(RunError, match="weights do not fit"):
        run("other", 0, init_from=str(source), overrides={"hidden_sizes": [7]})
    assert not (tmp_path / "other").exists()
    with pytest.raises(RunError, match="no checkpoint"):
        run("nowhere", 0, init_from=str(tmp_path / "missing"))


@pytest.mark.smoke
def test_iteration_benchmark_counts_learner_flops_and_compares_allocator_settings(capsys):
    """experiments/bench_maml_trpo.py on a tiny config: the learner split, the FLOP count, and the huge-pages and
    heap comparisons in fresh processes (its argv handling strips the flag and its value)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "bench_maml_trpo.py"
    spec = importlib.util.spec_from_file_location("bench_maml_trpo", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["--env", "metarl/Navigation2D-v0", "--preset", str(PRESETS / "maml_trpo_navigation.yaml"),
            "--raw-steps", "5", "--set", "meta_batch_size=2", "fisher_subsample=1.0", "episodes_per_task=2",
            "max_episode_steps=5",
            "hidden_sizes=[8]", "--iterations", "2"]
    result = bench.main([*tiny, "--count-flops"])
    first = result["iterations"][0]
    assert first["of_which_learner_code_seconds"] + first["of_which_sampler_bookkeeping_seconds"] == \
        pytest.approx(first["learner_seconds"], abs=2e-3)
    flops = result["learner_flops"]
    assert flops["learner_flops_per_iteration"] > 0 and flops["bmm_gflop_per_s"] > 0
    for flag, variable in (("--compare-huge-pages", "THP_MEM_ALLOC_ENABLE"),
                           ("--compare-heap", "METARL_KEEP_FREED_MEMORY")):
        compared = bench.main([*tiny[:-2], flag, "1", "--iterations", "1"])
        assert [run[variable] for run in compared["runs"]] == ["0", "1"]
        assert set(compared[f"{variable}=1 over =0"][0]) == {"learner_seconds", "iteration_seconds", "max_rss_mb"}
    capsys.readouterr()


@pytest.mark.smoke
def test_fisher_subsample_quality_experiment_runs_on_a_tiny_config(capsys):
    """experiments/fisher_subsample_quality.py: every subset size is tried on the same data as the all-task step."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "fisher_subsample_quality.py"
    spec = importlib.util.spec_from_file_location("fisher_subsample_quality", path)
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    result = quality.main(["--env", "metarl/Navigation2D-v0", "--preset", str(PRESETS / "maml_trpo_navigation.yaml"),
                           "--set", "meta_batch_size=4", "episodes_per_task=2", "max_episode_steps=5",
                           "hidden_sizes=[8]", "--data-iterations", "2", "--tasks", "1", "2", "--repeats", "2"])
    summary = result["summary"]
    assert set(summary) == {"all", "1", "2"} and summary["all"]["gain_over_all_task_gain"]["mean"] == 1.0
    assert [summary[k]["steps"] for k in ("all", "1", "2")] == [2, 4, 4] and len(result["steps"]) == 10
    with pytest.raises(SystemExit):
        quality.main(["--env", "metarl/Navigation2D-v0", "--preset", str(PRESETS / "maml_trpo_navigation.yaml"),
                      "--set", "meta_batch_size=4", "--tasks", "5"])
    capsys.readouterr()
