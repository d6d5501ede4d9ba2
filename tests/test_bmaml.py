"""Bayesian MAML and the SVGD core: SVGD on toy targets and against a hand-written double loop, the batched inner loop
against a loop, one particle against MAML, meta-gradients against finite differences, the model average against an
explicit average, learning with margins, determinism, bad input in one line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metarl.agents import make_learner
from metarl.agents.bmaml import BMAML, BMAMLConfig
from metarl.agents.maml import MAML, MAMLConfig
from metarl.cli import main as cli_main
from metarl.core.adaptation import flatten_params, parameters_of, unflatten_params
from metarl.core.batch import EpisodeBatch
from metarl.core.calibration import task_nll
from metarl.core.learner import single_task_loss
from metarl.core.networks import MLP
from metarl.core.svgd import median_bandwidth, pairwise_squared_distances, stein_direction
from metarl.envs.fewshot import make_source
from metarl.evaluation import evaluate_fewshot

# ----------------------------------------------------------------------------------------------------------------------
# SVGD on explicit targets


def _svgd(log_density, x: torch.Tensor, steps: int, step_size: float, repulsive: bool = True) -> torch.Tensor:
    for _ in range(steps):
        leaf = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(leaf).sum(), leaf)
        x = (x + step_size * stein_direction(x, score, repulsive=repulsive)).detach()
    return x


@pytest.mark.math
def test_svgd_spreads_particles_from_one_point_to_the_gaussian_and_collapses_without_repulsion():
    """Target N((1, −1), 0.5² I); 50 particles start within 1e-3 of the origin. With the repulsive term they spread to
    the target's std (SVGD's fixed point); without it they pile up at the mode."""
    mean, std = torch.tensor([1.0, -1.0], dtype=torch.float64), 0.5

    def log_density(x):
        return -((x - mean) ** 2).sum(-1) / (2 * std ** 2)

    start = 1e-3 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spread = _svgd(log_density, start, 500, 0.05)
    torch.testing.assert_close(spread.mean(0), mean, atol=0.05, rtol=0)
    assert ((spread.std(0) - std).abs() < 0.1 * std).all(), spread.std(0)
    collapsed = _svgd(log_density, start, 500, 0.05, repulsive=False)
    torch.testing.assert_close(collapsed.mean(0), mean, atol=0.05, rtol=0)
    assert (collapsed.std(0) < 0.1 * std).all(), collapsed.std(0)


@pytest.mark.math
def test_svgd_covers_both_modes_of_a_mixture_in_proportion_and_plain_ascent_finds_one():
    """Liu & Wang's 1-D example: target ⅓ N(−2, 1) + ⅔ N(2, 1), 100 particles drawn from N(−10, 1), far left of both
    modes. SVGD ends with about a third of them at the left mode and two thirds at the right one, each group with the
    mode's unit spread; without repulsion all of them stop at the first mode they reach."""

    def log_density(x):
        return torch.logaddexp(-(x + 2) ** 2 / 2 + math.log(1 / 3), -(x - 2) ** 2 / 2 + math.log(2 / 3)).sum(-1)

    start = torch.randn(100, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 10
    x = _svgd(log_density, start, 500, 0.5).squeeze(1)
    left, right = x[x < 0], x[x >= 0]
    assert 0.22 <= left.numel() / 100 <= 0.45, left.numel()
    assert abs(left.mean() + 2) < 0.3 and abs(right.mean() - 2) < 0.3, (left.mean(), right.mean())
    assert 0.7 < left.std() < 1.3 and 0.7 < right.std() < 1.3, (left.std(), right.std())
    ascent = _svgd(log_density, start, 500, 0.5, repulsive=False).squeeze(1)
    assert (ascent < 0).all() and ascent.std() < 0.3


@pytest.mark.math
def test_stein_direction_equals_a_hand_written_double_loop():
    """φ(x_i) = (1/n) Σ_j [k(x_j, x_i) s_j + ∇_{x_j} k(x_j, x_i)], the kernel gradient by autograd, h = med²/log(n + 1)
    with med² the middle of the three pairwise squared distances; batched over two sets of particles."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    score = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    for bandwidth in (None, 0.7):
        got = stein_direction(x, score, bandwidth=bandwidth)
        for b in range(2):
            pairs = sorted(float(((x[b, i] - x[b, j]) ** 2).sum()) for i in range(3) for j in range(i + 1, 3))
            h = pairs[1] / math.log(4) if bandwidth is None else bandwidth
            for i in range(3):
                expected = torch.zeros(4, dtype=torch.float64)
                for j in range(3):
                    xj = x[b, j].clone().requires_grad_(True)
                    k = torch.exp(-((xj - x[b, i]) ** 2).sum() / h)
                    (grad_k,) = torch.autograd.grad(k, xj)
                    expected += k.detach() * score[b, j] + grad_k
                torch.testing.assert_close(got[b, i], expected / 3)
    distances = pairwise_squared_distances(x)
    assert torch.equal(torch.diagonal(distances, dim1=-2, dim2=-1), torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(median_bandwidth(distances[:, :1, :1]), torch.ones(2, dtype=torch.float64))  # one particle


# ----------------------------------------------------------------------------------------------------------------------
# The inner loop


class _TanhNet(nn.Sequential):
    """Not an MLP: the learner takes the vmap path (functional_call per task × particle)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__(nn.Linear(inputs, 5), nn.Tanh(), nn.Linear(5, outputs))


def _mlp(inputs: int, outputs: int) -> MLP:
    return MLP(inputs, [6], outputs)  # the learner runs it with batched matrix products


def _learner(kind: str, particles: int, net=_mlp, seed: int = 0, **fields) -> BMAML:
    """A float64 BMAML on a tiny network: 1 → 1 (regression) or 2 inputs → 3 classes."""
    torch.manual_seed(seed)
    inputs, outputs = (2, 3) if kind == "classification" else (1, 1)
    networks = [net(inputs, outputs) for _ in range(particles)]
    return BMAML(networks, kind, BMAMLConfig(particles=particles, **fields)).double()


def _batch(kind: str, tasks: int = 3, shots: int = 4, queries: int = 5, seed: int = 0) -> EpisodeBatch:
    generator = torch.Generator().manual_seed(seed)
    dim = 2 if kind == "classification" else 1

    def draw(n):
        x = torch.randn(tasks, n, dim, generator=generator, dtype=torch.float64)
        if kind == "classification":
            return x, torch.randint(0, 3, (tasks, n), generator=generator)
        return x, torch.sin(x) * torch.rand(tasks, 1, 1, generator=generator, dtype=torch.float64) * 3

    return EpisodeBatch(*draw(shots), *draw(queries))


@torch.enable_grad()
def _looped_svgd(learner: BMAML, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The inner loop written plainly: per task, per particle an autograd gradient of the log-posterior through
    the module, then the Stein update of that task's particles."""
    config = learner.config
    out = []
    for t in range(x.shape[0]):
        theta = learner.initial_particles.detach().clone()
        targets = y[t].numel()
        weight = targets / (2 * learner.noise_std().detach() ** 2) if learner.kind == "regression" else targets
        for _ in range(steps):
            scores = []
            for m in range(theta.shape[0]):
                leaf = theta[m].clone().requires_grad_(True)
                params = unflatten_params(leaf, learner.shapes, learner.names)
                loss = single_task_loss(functional_call(learner.architecture, params, (x[t],)), y[t], learner.kind)
                log_posterior = -weight * loss
                if config.prior_std is not None:
                    log_posterior = log_posterior - (leaf ** 2).sum() / (2 * config.prior_std ** 2)
                scores.append(torch.autograd.grad(log_posterior, leaf)[0])
            theta = theta + config.inner_lr * theta.shape[0] / weight * stein_direction(theta, torch.stack(scores),
                                                                        bandwidth=config.bandwidth)
        out.append(theta)
    return torch.stack(out)


@pytest.mark.math
@pytest.mark.parametrize("kind, net, fields", [
    ("regression", _mlp, {}),
    ("regression", _TanhNet, {"prior_std": 2.0, "bandwidth": 0.5}),
    ("classification", _mlp, {"inner_lr": 0.3}),
    ("classification", _TanhNet, {"prior_std": 1.0}),
])
def test_the_batched_inner_loop_over_tasks_and_particles_equals_a_loop(kind, net, fields):
    learner = _learner(kind, 4, net, inner_steps=3, **fields)
    assert learner._vectorized == (net is _mlp)
    batch = _batch(kind)
    with torch.no_grad():  # the evaluation path (first order): the same particles
        torch.testing.assert_close(learner.adapt(batch.support_x, batch.support_y),
                                   _looped_svgd(learner, batch.support_x, batch.support_y, 3))
    torch.testing.assert_close(learner.adapt(batch.support_x, batch.support_y),
                               _looped_svgd(learner, batch.support_x, batch.support_y, 3))


@pytest.mark.math
@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_with_one_particle_an_svgd_step_is_maml_s_step(kind):
    """One particle: k = 1 and ∇k = 0, so SVGD is gradient ascent on the log-posterior; with the step per unit of
    mean support loss (inner_lr · M / w) it is MAML's fast weights exactly, step after step."""
    learner = _learner(kind, 1, inner_lr=0.05 if kind == "regression" else 0.5, inner_steps=3, noise_std=0.3)
    torch.manual_seed(0)  # the same initialisation as the particle's
    model = _mlp(*((2, 3) if kind == "classification" else (1, 1))).double()
    torch.testing.assert_close(flatten_params(parameters_of(model), learner.names), learner.initial_particles[0])
    maml = MAML(model, kind, MAMLConfig(inner_lr=learner.config.inner_lr, inner_steps=3))
    batch = _batch(kind)
    particles = learner.adapt(batch.support_x, batch.support_y)
    fast = maml.adapt(batch.support_x, batch.support_y)
    torch.testing.assert_close(particles[:, 0], flatten_params(fast, learner.names, batch_dims=1))
    # the model average of one particle is that network's prediction
    expected = maml.predict(fast, batch.query_x)
    if kind == "classification":
        expected = expected.log_softmax(-1)
    torch.testing.assert_close(learner.predict(particles, batch.query_x), expected)


@pytest.mark.math
@pytest.mark.parametrize("first_order", [False, True])
def test_with_one_particle_the_ensemble_meta_gradient_is_maml_s_scaled(first_order):
    """One particle, fixed σ, the ensemble loss: the query NLL is MSE / (2σ²) + const, so the meta-gradient is
    (FO)MAML's divided by 2σ² — second order, and first order (the scores detached) against FOMAML."""
    learner = _learner("regression", 1, inner_lr=0.05, inner_steps=2, noise_std=0.3, learn_noise=False,
                       outer_loss="ensemble", first_order=first_order)
    torch.manual_seed(0)
    maml = MAML(_mlp(1, 1).double(), "regression", MAMLConfig(inner_lr=0.05, inner_steps=2, first_order=first_order))
    batch = _batch("regression")
    (ours,) = torch.autograd.grad(learner.meta_loss(batch)[0], learner.initial_particles)
    theirs = torch.autograd.grad(maml.meta_loss(batch)[0], list(maml.model.parameters()))
    torch.testing.assert_close(ours[0], torch.cat([g.flatten() for g in theirs]) / (2 * 0.3 ** 2))


# ----------------------------------------------------------------------------------------------------------------------
# Meta-gradients through the inner SVGD steps


def _finite_difference(function, tensor: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(tensor)
    flat = tensor.data.view(-1)
    for index in range(flat.numel()):
        original = float(flat[index])
        flat[index] = original + eps
        plus = float(function())
        flat[index] = original - eps
        minus = float(function())
        flat[index] = original
        grad.view(-1)[index] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.math
@pytest.mark.parametrize("kind, net, fields", [
    ("regression", _mlp, {"outer_loss": "ensemble"}),
    ("regression", _TanhNet, {"outer_loss": "ensemble", "prior_std": 1.5}),
    ("classification", _mlp, {"outer_loss": "ensemble", "inner_lr": 0.3}),
    ("regression", _mlp, {"outer_loss": "chaser", "leader_steps": 2}),
    ("classification", _TanhNet, {"outer_loss": "chaser", "inner_lr": 0.3}),
])
def test_meta_gradient_through_two_svgd_steps_matches_finite_differences(kind, net, fields):
    """float64, 3 particles, 2 tasks, 2 inner steps, the median bandwidth (differentiated too). The chaser loss
    ‖Θ^n(Θ_0) − stopgrad(Θ^{n+s})‖² is checked as the function of Θ_0 with the leader held at its value."""
    learner = _learner(kind, 3, net, inner_steps=2, **fields)
    batch = _batch(kind, tasks=2, shots=3, queries=4)
    loss, _ = learner.meta_loss(batch)
    parameters = [p for p in learner.parameters()]
    grads = torch.autograd.grad(loss, parameters)
    if learner.config.outer_loss == "chaser":
        with torch.no_grad():
            chaser = learner.adapt(batch.support_x, batch.support_y)
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        leader = learner._svgd(chaser, x, y, learner.config.leader_steps, batched=True).detach()

        def function():
            with torch.no_grad():
                return (learner.adapt(batch.support_x, batch.support_y) - leader).pow(2).sum((1, 2)).mean()
    else:
        def function():
            return learner.meta_loss(batch)[0].detach()
    for parameter, grad in zip(parameters, grads):
        if parameter is learner.initial_particles:
            torch.testing.assert_close(grad, _finite_difference(function, parameter), rtol=1e-5, atol=1e-7)
        elif learner.config.outer_loss == "chaser":
            # σ (chaser loss): trained by the query NLL of the model average with the chaser particles held fixed
            def nll():
                return task_nll(learner.predictive(chaser, batch.query_x), batch.query_y).mean().detach()

            torch.testing.assert_close(grad, _finite_difference(nll, parameter), rtol=1e-5, atol=1e-7)
        else:
            torch.testing.assert_close(grad, _finite_difference(function, parameter), rtol=1e-5, atol=1e-7)
    assert len(parameters) == (2 if kind == "regression" else 1)


# ----------------------------------------------------------------------------------------------------------------------
# The Bayesian model average


@pytest.mark.math
def test_the_regression_predictive_is_the_equal_weight_mixture_of_the_particles_normals():
    learner = _learner("regression", 4, noise_std=0.4)
    batch = _batch("regression")
    state = learner.adapt(batch.support_x, batch.support_y)
    dist = learner.predictive(state, batch.query_x)
    assert dist.batch_shape == batch.query_y.shape
    y = batch.query_y
    densities, cdfs, means = [], [], []
    for m in range(4):
        outputs = torch.stack([functional_call(learner.architecture, unflatten_params(
            state[t, m], learner.shapes, learner.names), (batch.query_x[t],)) for t in range(y.shape[0])])
        normal = torch.distributions.Normal(outputs, 0.4)
        densities.append(normal.log_prob(y).exp())
        cdfs.append(normal.cdf(y))
        means.append(outputs)
    torch.testing.assert_close(dist.log_prob(y), torch.stack(densities).mean(0).log())
    torch.testing.assert_close(dist.cdf(y), torch.stack(cdfs).mean(0))
    torch.testing.assert_close(dist.mean, torch.stack(means).mean(0))
    torch.testing.assert_close(learner.predict(state, batch.query_x), torch.stack(means).mean(0))


@pytest.mark.math
def test_the_classification_predictive_averages_the_particles_class_probabilities():
    learner = _learner("classification", 4)
    batch = _batch("classification")
    state = learner.adapt(batch.support_x, batch.support_y)
    dist = learner.predictive(state, batch.query_x)
    assert dist.batch_shape == batch.query_y.shape
    probs = torch.stack([torch.stack([functional_call(learner.architecture, unflatten_params(
        state[t, m], learner.shapes, learner.names), (batch.query_x[t],)).softmax(-1) for t in range(3)])
        for m in range(4)]).mean(0)
    torch.testing.assert_close(dist.probs, probs)
    torch.testing.assert_close(learner.predict(state, batch.query_x).exp(), probs)
    # the model average is not the softmax of averaged logits (the particles disagree)
    logits = learner.particle_outputs(state, batch.query_x).mean(1)
    assert not torch.allclose(logits.softmax(-1), probs)


# ----------------------------------------------------------------------------------------------------------------------
# Learning, determinism, the command line


@pytest.mark.learning
def test_bmaml_on_sinusoid_adapts_well_below_its_unadapted_particles(one_torch_thread):
    """600 meta-iterations of 10 tasks, 3 particles, the chaser loss: 10 SVGD steps on 10 shots cut held-out MSE
    below half the unadapted particles' MSE, lower the NLL of the model average, and its 95% intervals cover most
    held-out targets."""
    source = make_source("sinusoid", shots=10, query_shots=10)
    learner = make_learner("bmaml", source, seed=0, particles=3)
    optimizer = learner.configure_optimizer(1e-3)
    for iteration in range(600):
        learner.outer_step(source.sample(10, split="train", seed=iteration), optimizer)
    result = {row["steps"]: row for row in evaluate_fewshot(learner, source, shots=[10], steps=(0, 10),
                                                            num_tasks=100, seed=7)["results"]}
    assert result[10]["mse"] < 0.5 * result[0]["mse"], result
    assert result[10]["nll"] < result[0]["nll"] - 1.0 and result[10]["coverage95"] > 0.75, result


@pytest.mark.learning
def test_bmaml_on_held_out_omniglot_characters_beats_chance(one_torch_thread, omniglot_dir):
    """30 meta-iterations of 2 tasks, 2 particles, the chaser loss (first order, to fit the time): 5-way 1-shot
    accuracy of the model average on held-out characters well above chance (20%), with a small calibration error."""
    source = make_source("omniglot", root=str(omniglot_dir), ways=5, shots=1, query_shots=5)
    learner = make_learner("bmaml", source, seed=0, particles=2, inner_lr=0.4, first_order=True)
    optimizer = learner.configure_optimizer(1e-3)
    for iteration in range(30):
        learner.outer_step(source.sample(2, split="train", seed=iteration, ways=5, shots=1, query_shots=5), optimizer)
    row = evaluate_fewshot(learner, source, shots=[1], steps=(1,), num_tasks=50, split="test", seed=7)["results"][0]
    assert row["accuracy"] > 0.3, row
    assert 0 <= row["ece"] < 0.2, row


@pytest.mark.determinism
def test_same_seed_same_particles_and_different_seed_differs():
    source = make_source("sinusoid", shots=5, query_shots=5)

    def run(seed):
        learner = make_learner("bmaml", source, seed=seed, particles=3, meta_batch_size=4)
        optimizer = learner.configure_optimizer(1e-3)
        metrics = [learner.outer_step(source.sample(4, split="train", seed=i), optimizer) for i in range(3)]
        return learner.initial_particles.detach().clone(), metrics

    (a, ma), (b, mb), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b) and ma == mb
    assert not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])  # the particles start as independent initialisations


@pytest.mark.api
def test_the_checkpoint_holds_the_particles_not_the_architecture():
    learner = make_learner("bmaml", make_source("sinusoid"), particles=4)
    assert set(learner.state_dict()) == {"initial_particles", "log_noise_std"}
    assert learner.initial_particles.shape == (4, 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1)
    fixed = make_learner("bmaml", make_source("sinusoid"), learn_noise=False)
    assert [name for name, _ in fixed.named_parameters()] == ["initial_particles"]
    with pytest.raises(ValueError, match="without buffers"):
        BMAML([nn.Sequential(nn.Linear(1, 3), nn.BatchNorm1d(3))], "regression", BMAMLConfig(particles=1))


@pytest.mark.api
@pytest.mark.parametrize("argv, message", [
    (["--particles", "0"], "particles must be an integer >= 1"),
    (["--bandwidth", "-1"], "bandwidth must be > 0"),
    (["--bandwidth", "0"], "bandwidth must be > 0"),
    (["--noise-std", "0"], "noise_std must be > 0"),
    (["--prior-std", "-2"], "prior_std must be > 0"),
    (["--inner-steps", "0"], "inner_steps must be an integer >= 1"),
    (["--leader-steps", "0"], "leader_steps must be an integer >= 1"),
    (["--inner-lr", "-0.1"], "inner_lr must be > 0"),
    (["--outer-loss", "chase"], "did you mean 'chaser'?"),
])
def test_bad_bmaml_settings_are_refused_in_one_line(tmp_path, capsys, argv, message):
    assert cli_main(["train", "bmaml", *argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()
