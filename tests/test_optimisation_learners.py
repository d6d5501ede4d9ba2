"""The optimisation-based learners: the meta-learner LSTM (Ravi & Larochelle 2017) and the learned optimiser
(Andrychowicz et al. 2016). Math against hand computations and finite differences, weight sharing across
coordinates, learning with margins, resume, and bad input through the command line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metarl.agents import make_learner
from metarl.agents.l2o import LearnedOptimiser, lstm_step, meta_train_step, preprocess_gradient
from metarl.agents.meta_lstm import MetaLearnerLSTM, MetaLSTMCell, MetaLSTMConfig
from metarl.cli import main as cli_main
from metarl.core.adaptation import flatten_params, unflatten_params
from metarl.core.networks import MLP, Conv4
from metarl.envs.fewshot import make_source

# ----------------------------------------------------------------------------------------------------------------------
# shared pieces


def _preprocess_by_hand(x: float, p: float = 10.0) -> tuple[float, float]:
    if abs(x) >= math.exp(-p):
        return math.log(abs(x)) / p, math.copysign(1.0, x)
    return -1.0, math.exp(p) * x


@pytest.mark.math
def test_preprocessing_and_the_written_out_lstm_step_match_their_definitions():
    values = torch.tensor([3.0, -0.5, 1e-6, -2e-5, 0.0], dtype=torch.float64)
    expected = torch.tensor([_preprocess_by_hand(float(v)) for v in values], dtype=torch.float64)
    torch.testing.assert_close(preprocess_gradient(values), expected)
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 5)
    x, h, c = torch.randn(7, 3), torch.randn(7, 5), torch.randn(7, 5)
    for mine, theirs in zip(lstm_step(cell, x, (h, c)), cell(x, (h, c))):
        torch.testing.assert_close(mine, theirs)
    params = {"a": torch.randn(2, 3, 4), "b": torch.randn(2, 5)}
    flat = flatten_params(params, ["a", "b"], batch_dims=1)
    assert flat.shape == (2, 17)
    back = unflatten_params(flat, {"a": torch.zeros(3, 4), "b": torch.zeros(5)}, ["a", "b"])
    assert all(torch.equal(back[k], params[k]) for k in params)


# ----------------------------------------------------------------------------------------------------------------------
# meta-learner LSTM


@pytest.mark.math
def test_meta_lstm_cell_is_the_gated_update_for_hand_set_weights():
    """θ_t = f ⊙ θ − i ⊙ ∇ with i = σ(W_I·[x, θ, i_prev] + b_I), f = σ(W_F·[x, θ, f_prev] + b_F), by hand."""
    cell = MetaLSTMCell(2)
    with torch.no_grad():
        cell.input_weight.copy_(torch.tensor([0.5, -1.0, 0.25, 2.0]))
        cell.forget_weight.copy_(torch.tensor([-0.3, 0.7, 1.5, -0.5]))
        cell.input_bias.fill_(-1.0)
        cell.forget_bias.fill_(2.0)
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.1]])
    gradient, theta = torch.tensor([0.4, -3.0]), torch.tensor([1.2, -0.7])
    i_prev, f_prev = torch.tensor([0.1, 0.9]), torch.tensor([0.8, 0.2])
    with torch.no_grad():
        new_theta, i, f = cell(x, gradient, theta, i_prev, f_prev)

    def sigmoid(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    for k, (x1, x2) in enumerate([(1.0, 2.0), (-0.5, 0.1)]):
        th, g = float(theta[k]), float(gradient[k])
        i_hand = sigmoid(0.5 * x1 - 1.0 * x2 + 0.25 * th + 2.0 * float(i_prev[k]) - 1.0)
        f_hand = sigmoid(-0.3 * x1 + 0.7 * x2 + 1.5 * th - 0.5 * float(f_prev[k]) + 2.0)
        assert float(i[k]) == pytest.approx(i_hand, rel=1e-6)
        assert float(f[k]) == pytest.approx(f_hand, rel=1e-6)
        assert float(new_theta[k]) == pytest.approx(f_hand * th - i_hand * g, rel=1e-6)


@pytest.mark.math
def test_meta_lstm_adaptation_equals_a_per_task_hand_computation():
    """Two updates of a linear model y = w x + b for two tasks at once against a plain per-task loop: the closed-form
    MSE gradient, the preprocessing by hand, the first layer as torch's LSTMCell, the gates written out."""
    torch.manual_seed(1)
    model = MLP(1, [], 1)
    learner = MetaLearnerLSTM(model, "regression", MetaLSTMConfig(inner_steps=2, hidden=3))
    with torch.no_grad():  # gates that visibly depend on every input
        learner.cell.input_weight.copy_(torch.tensor([0.3, -0.2, 0.5, 0.4, 1.0]))
        learner.cell.forget_weight.copy_(torch.tensor([-0.1, 0.2, 0.3, 0.6, -0.8]))
        learner.cell.input_bias.fill_(-1.0)
        learner.cell.forget_bias.fill_(1.5)
    x = torch.randn(2, 4, 1)
    y = torch.randn(2, 4, 1)
    adapted = learner.adapt(x, y)
    w0, b0 = model[0].weight.item(), model[0].bias.item()
    sigmoid = torch.sigmoid
    for task in range(2):
        xs, ys = x[task, :, 0].tolist(), y[task, :, 0].tolist()
        theta = [w0, b0]
        h, c = torch.zeros(2, 3), torch.zeros(2, 3)
        i_prev, f_prev = [0.0, 0.0], [0.0, 0.0]
        for _ in range(2):
            w, b = theta
            residuals = [w * xi + b - yi for xi, yi in zip(xs, ys)]
            loss = sum(r * r for r in residuals) / len(xs)
            grad = [2 * sum(r * xi for r, xi in zip(residuals, xs)) / len(xs), 2 * sum(residuals) / len(xs)]
            inputs = torch.tensor([[*_preprocess_by_hand(g), *_preprocess_by_hand(loss)] for g in grad])
            h, c = learner.first_layer(inputs, (h, c))
            wi, wf = learner.cell.input_weight.tolist(), learner.cell.forget_weight.tolist()
            new_theta, new_i, new_f = [], [], []
            for k in range(2):
                hk = h[k].tolist()
                i = float(sigmoid(torch.tensor(sum(a * z for a, z in zip(wi[:3], hk)) + wi[3] * theta[k]
                                               + wi[4] * i_prev[k] - 1.0)))
                f = float(sigmoid(torch.tensor(sum(a * z for a, z in zip(wf[:3], hk)) + wf[3] * theta[k]
                                               + wf[4] * f_prev[k] + 1.5)))
                new_theta.append(f * theta[k] - i * grad[k])
                new_i.append(i)
                new_f.append(f)
            theta, i_prev, f_prev = new_theta, new_i, new_f
        assert adapted["0.weight"][task].item() == pytest.approx(theta[0], rel=1e-5, abs=1e-6)
        assert adapted["0.bias"][task].item() == pytest.approx(theta[1], rel=1e-5, abs=1e-6)


@pytest.mark.math
def test_meta_lstm_parameters_are_shared_by_coordinates_and_the_initial_gates_as_the_paper_suggests():
    small = MetaLearnerLSTM(MLP(1, [5], 1), "regression")
    large = MetaLearnerLSTM(Conv4(1, hidden=32, out_features=5), "classification")
    count = [sum(p.numel() for p in learner.meta_parameters()) for learner in (small, large)]
    hidden = MetaLSTMConfig().hidden
    assert count[0] == count[1] == 4 * hidden * (4 + hidden) + 8 * hidden + 2 * (hidden + 2) + 2
    sizes = [sum(p.numel() for p in learner.model.parameters()) for learner in (small, large)]
    assert sizes[1] > 1000 * sizes[0]  # 16 weights against about 28,000
    forget, input_ = float(small.cell.forget_bias.detach()), float(small.cell.input_bias.detach())
    assert 4.0 <= forget <= 6.0 and -5.0 <= input_ <= -4.0


@pytest.mark.math
def test_meta_lstm_drops_the_second_derivatives_unless_asked():
    """On a quadratic support loss the Hessian is not zero, so keeping the terms through ∇ changes the
    meta-gradient; on a loss linear in the weights (zero Hessian) both are the same."""
    torch.manual_seed(2)
    source = make_source("sinusoid")
    batch = source.sample(3, split="train", seed=0)
    grads = {}
    for second_order in (False, True):
        torch.manual_seed(3)
        learner = MetaLearnerLSTM(MLP(1, [8], 1), "regression", MetaLSTMConfig(inner_steps=2,
                                                                                 second_order=second_order))
        loss, _ = learner.meta_loss(batch)
        grads[second_order] = torch.autograd.grad(loss, learner.cell.input_bias)[0]
    assert not torch.allclose(grads[False], grads[True], rtol=1e-3)


@pytest.mark.learning
def test_meta_lstm_learns_on_sinusoid_well_below_its_untrained_self():
    source = make_source("sinusoid")
    learner = make_learner("meta-lstm", source, seed=0, meta_batch_size=10, outer_lr=1e-2)
    held_out = source.sample(100, split="test", seed=123)
    before = float(learner.evaluate(held_out)["score"].mean())
    optimizer = learner.configure_optimizer(learner.config.outer_lr)
    for iteration in range(150):
        learner.outer_step(source.sample(10, split="train", seed=iteration), optimizer)
    after = float(learner.evaluate(held_out)["score"].mean())
    unadapted = float(learner.evaluate(held_out, steps=0)["score"].mean())
    assert after < 0.7 * before and after < 0.8 * unadapted, (before, after, unadapted)


# ----------------------------------------------------------------------------------------------------------------------
# learned optimiser


@pytest.mark.math
def test_learned_optimiser_is_coordinatewise_permutation_equivariant_and_size_free():
    torch.manual_seed(0)
    optimiser = LearnedOptimiser()
    gradients = [torch.randn(13) for _ in range(3)]
    permutation = torch.randperm(13)
    state, state_p = optimiser.initial_state(gradients[0]), optimiser.initial_state(gradients[0])
    for g in gradients:
        update, state = optimiser.step(g, state)
        update_p, state_p = optimiser.step(g[permutation], state_p)
        torch.testing.assert_close(update_p, update[permutation])
    # the same weights optimise a vector of another size; a coordinate's update depends on its own history only
    longer = [torch.cat([g, torch.randn(20)]) for g in gradients]
    state_l = optimiser.initial_state(longer[0])
    state = optimiser.initial_state(gradients[0])
    for g, gl in zip(gradients, longer):
        update, state = optimiser.step(g, state)
        update_l, state_l = optimiser.step(gl, state_l)
        torch.testing.assert_close(update_l[:13], update)
    assert sum(p.numel() for p in optimiser.parameters()) == 4 * 20 * (2 + 20) + 4 * 20 * (20 + 20) + 16 * 20 + 21


def _quadratics(n: int, seed: int, dim: int = 10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, dim, dim, generator=g, dtype=dtype)
    y = torch.randn(n, dim, generator=g, dtype=dtype)
    theta = torch.randn(n, dim, generator=g, dtype=dtype)
    return (lambda t: ((torch.einsum("nij,nj->ni", w, t) - y) ** 2).sum(-1)), theta


@pytest.mark.math
@pytest.mark.parametrize("preprocess", [True, False])
def test_unrolled_meta_gradient_matches_finite_differences_with_second_derivatives_kept(preprocess):
    torch.manual_seed(0)
    optimiser = LearnedOptimiser(hidden=4, preprocess=preprocess).double()
    loss_fn, theta = _quadratics(2, 0, dim=3, dtype=torch.float64)
    theta = 0.3 * theta
    params = list(optimiser.parameters())

    def objective(second_order: bool, fn=loss_fn) -> torch.Tensor:
        return optimiser.unroll(fn, theta, 4, weights=[0.5, 1.0, 1.0, 2.0], second_order=second_order)[0]

    exact = torch.autograd.grad(objective(True), params)
    g = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    eps = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
            values.append(float(objective(True)))
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    finite_difference = (values[0] - values[1]) / (2 * eps)
    analytic = float(sum((e * d).sum() for e, d in zip(exact, direction)))
    assert analytic == pytest.approx(finite_difference, rel=1e-6)
    # the default drops the terms through ∇f: the same gradient where the Hessian is zero (a linear function) ...
    a = torch.randn(2, 3, dtype=torch.float64, generator=g)
    linear = {so: torch.autograd.grad(objective(so, lambda t: (a * t).sum(-1)), params) for so in (False, True)}
    for x, y in zip(linear[False], linear[True]):
        torch.testing.assert_close(x, y)
    # ... and a different one on the quadratic: not the derivative of the unrolled objective (small here: the output
    # scale and the log-magnitude preprocessing damp the terms through ∇f, and its sign has none; far beyond rounding)
    dropped = torch.autograd.grad(objective(False), params)
    difference = torch.cat([(x - y).flatten() for x, y in zip(dropped, exact)]).norm()
    assert difference > 1e-6 * torch.cat([e.flatten() for e in exact]).norm()
    assert float(sum((e * d).sum() for e, d in zip(dropped, direction))) != pytest.approx(finite_difference, rel=1e-6)


def _run_sgd(loss_fn, theta: torch.Tensor, steps: int, lr: float) -> float:
    theta = theta.clone().requires_grad_(True)
    for _ in range(steps):
        (gradient,) = torch.autograd.grad(loss_fn(theta).sum(), theta)
        theta = (theta - lr * gradient).detach().requires_grad_(True)
    value = float(loss_fn(theta).detach().mean())
    return value if math.isfinite(value) else math.inf


@pytest.mark.learning
def test_trained_optimiser_beats_its_untrained_self_and_tuned_sgd_on_held_out_quadratics():
    torch.manual_seed(0)
    optimiser = LearnedOptimiser()
    horizon = 40
    held_out, theta = _quadratics(100, 10_000)
    with torch.no_grad():
        untrained = optimiser.unroll(held_out, theta, horizon)[3][-1] / 100
    meta_optimizer = torch.optim.Adam(optimiser.parameters(), lr=1e-2)
    for iteration in range(60):
        meta_train_step(optimiser, meta_optimizer, *_quadratics(32, iteration), horizon, truncation=20)
    with torch.no_grad():
        trained = optimiser.unroll(held_out, theta, horizon)[3][-1] / 100
    # SGD's learning rate tuned on training functions, then scored on the held-out ones
    train_fn, train_theta = _quadratics(100, 20_000)
    best_lr = min((0.001, 0.003, 0.01, 0.02), key=lambda lr: _run_sgd(train_fn, train_theta, horizon, lr))
    sgd = _run_sgd(held_out, theta, horizon, best_lr)
    assert trained < 0.2 * untrained and trained < 0.7 * sgd, (untrained, trained, sgd, best_lr)


# ----------------------------------------------------------------------------------------------------------------------
# both learners through the run loop and the command line


@pytest.mark.determinism
@pytest.mark.parametrize("learner", ["meta-lstm", "l2o"])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, omniglot_dir, learner):
    # both also regress, so the generic resume test (classification-only learners) does not list them
    from tests import test_fewshot as generic

    generic.test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, omniglot_dir, learner)


@pytest.mark.api
@pytest.mark.parametrize("argv, message", [
    (["train", "meta-lstm", "--hidden", "0"], "hidden"),
    (["train", "meta-lstm", "--grad-clip", "-1"], "grad_clip"),
    (["train", "l2o", "--output-scale", "0"], "output_scale"),
    (["train", "l2o", "--inner-steps", "0"], "inner_steps"),
])
def test_bad_settings_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    argv = [*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.api
def test_l2o_init_is_a_fixed_draw_unless_learned():
    source = make_source("sinusoid")
    fixed, learned = (make_learner("l2o", source, seed=0, learn_init=flag) for flag in (False, True))
    assert not any(p.requires_grad for p in fixed.model.parameters())
    assert all(p.requires_grad for p in learned.model.parameters())
    batch = source.sample(2, split="train", seed=0)
    for learner in (fixed, learned):
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        assert all(p.grad is not None for p in learner.optimiser.parameters())
    assert all(p.grad is None for p in fixed.model.parameters())
    assert all(p.grad is not None for p in learned.model.parameters())
