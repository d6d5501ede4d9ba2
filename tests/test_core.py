"""The shared inner loop: exact meta-gradients, first order, batching vs loops, Meta-SGD/ANIL, Reptile."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metarl.core.adaptation import adapt, batched_forward, batched_task_loss, parameters_of, reptile_pseudo_gradient
from metarl.core.learner import single_task_loss, task_losses
from metarl.core.networks import MLP, Conv4, FiLM
from metarl.core.seeding import derive_seed, seeded


def _mlp(dtype=torch.float64, hidden=(5,)):
    with seeded(0):
        return MLP(1, list(hidden), 1).to(dtype)


def _data(tasks=3, n=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, n, 1, generator=g, dtype=dtype)
    y = torch.sin(x) * torch.randn(tasks, 1, 1, generator=g, dtype=dtype)
    return x, y


def _meta_loss(model, params, support, query, steps, lr, first_order=False, adapt_keys=None, vectorized=False):
    def loss_fn(p, data):
        x, y = data
        return single_task_loss(functional_call(model, p, (x,)), y, "regression")

    def vec_loss(p, data):
        x, y = data
        return task_losses(model.batched(p, x), y, "regression")

    fast = adapt(vec_loss if vectorized else loss_fn, params, support, steps=steps, step_size=lr,
                 first_order=first_order, adapt_keys=adapt_keys, vectorized=vectorized)
    keys = set(adapt_keys) if adapt_keys else set(params)
    return batched_task_loss(vec_loss if vectorized else loss_fn, fast, keys, query, vectorized).mean()


@pytest.mark.math
@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(vectorized, steps):
    model = _mlp()
    support, query = _data(seed=1), _data(seed=2)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in parameters_of(model).items()}
    loss = _meta_loss(model, params, support, query, steps, 0.3, vectorized=vectorized)
    grads = torch.autograd.grad(loss, list(params.values()))
    eps = 1e-6
    for (name, value), grad in zip(params.items(), grads):
        numeric = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {k: v.detach().clone() for k, v in params.items()}
            minus = {k: v.detach().clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            f_plus = _meta_loss(model, plus, support, query, steps, 0.3, vectorized=vectorized)
            f_minus = _meta_loss(model, minus, support, query, steps, 0.3, vectorized=vectorized)
            numeric.view(-1)[i] = (f_plus - f_minus) / (2 * eps)
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7, msg=f"meta-gradient of {name}")


@pytest.mark.math
def test_first_order_gradient_equals_query_gradient_at_adapted_weights():
    """FOMAML: d meta-loss / d θ = mean over tasks of ∇L_query evaluated at θ'_i (the inner gradient detached)."""
    model = _mlp()
    support, query = _data(seed=3), _data(seed=4)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in parameters_of(model).items()}
    loss = _meta_loss(model, params, support, query, 1, 0.3, first_order=True)
    first_order = torch.autograd.grad(loss, list(params.values()))
    # the detached version, task by task with plain autograd
    expected = [torch.zeros_like(p) for p in params.values()]
    tasks = support[0].shape[0]
    for t in range(tasks):
        p0 = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        inner = single_task_loss(functional_call(model, p0, (support[0][t],)), support[1][t], "regression")
        g = torch.autograd.grad(inner, list(p0.values()))
        adapted = {k: (v - 0.3 * gi).detach().requires_grad_(True) for (k, v), gi in zip(p0.items(), g)}
        outer = single_task_loss(functional_call(model, adapted, (query[0][t],)), query[1][t], "regression")
        for acc, gq in zip(expected, torch.autograd.grad(outer, list(adapted.values()))):
            acc += gq / tasks
    for a, b in zip(first_order, expected):
        torch.testing.assert_close(a, b)
    # and it really differs from the second-order gradient
    second = torch.autograd.grad(_meta_loss(model, params, support, query, 1, 0.3), list(params.values()))
    assert max((a - b).abs().max().item() for a, b in zip(first_order, second)) > 1e-6


def _loop_adapt(model, params, support, steps, step_size, adapt_keys=None):
    """Reference: each task adapted alone with plain autograd."""
    keys = list(params) if adapt_keys is None else list(adapt_keys)
    out = []
    for t in range(support[0].shape[0]):
        p = {k: v.detach().clone().requires_grad_(k in keys) for k, v in params.items()}
        for _ in range(steps):
            loss = single_task_loss(functional_call(model, p, (support[0][t],)), support[1][t], "regression")
            grads = torch.autograd.grad(loss, [p[k] for k in keys])
            for k, g in zip(keys, grads):
                lr = step_size[k] if isinstance(step_size, dict) else step_size
                p[k] = (p[k] - lr * g).detach().requires_grad_(True)
        out.append(p)
    return out


@pytest.mark.math
@pytest.mark.parametrize("mode", ["maml", "anil", "meta-sgd"])
@pytest.mark.parametrize("vectorized", [False, True])
def test_batched_adaptation_equals_a_loop_over_tasks(mode, vectorized):
    model = _mlp(hidden=(8, 8))
    params = parameters_of(model)
    support = _data(tasks=5, n=6, seed=5)
    adapt_keys = ["4.weight", "4.bias"] if mode == "anil" else None
    step_size = {k: torch.rand_like(v) * 0.1 for k, v in params.items()} if mode == "meta-sgd" else 0.05
    expected = _loop_adapt(model, params, support, 3, step_size, adapt_keys)

    def loss_fn(p, data):
        return single_task_loss(functional_call(model, p, (data[0],)), data[1], "regression")

    def vec_loss(p, data):
        return task_losses(model.batched(p, data[0]), data[1], "regression")

    fast = adapt(vec_loss if vectorized else loss_fn, params, support, steps=3, step_size=step_size,
                 adapt_keys=adapt_keys, vectorized=vectorized)
    for t, exp in enumerate(expected):
        for k in params:
            got = fast[k][t] if (adapt_keys is None or k in adapt_keys) else fast[k]
            torch.testing.assert_close(got, exp[k], msg=f"task {t} parameter {k}")
    # batched predictions equal per-task functional calls
    query_x = _data(tasks=5, n=3, seed=6)[0]
    predicted = model.batched(fast, query_x) if vectorized else batched_forward(model, fast, query_x, adapt_keys)
    for t, exp in enumerate(expected):
        torch.testing.assert_close(predicted[t], functional_call(model, exp, (query_x[t],)))


@pytest.mark.math
@pytest.mark.parametrize("mode", ["maml", "anil", "meta-sgd", "first-order"])
@pytest.mark.parametrize("vectorized", [False, True])
def test_continuing_from_batched_fast_weights_equals_one_adapt_call(mode, vectorized):
    """``adapt(adapt(θ, 2 steps), 1 step, batched_params=True)`` = ``adapt(θ, 3 steps)`` = a per-task loop, for the
    fast weights and (second order) the meta-gradient; detached fast weights continue as well."""
    model = _mlp(hidden=(8, 8))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in parameters_of(model).items()}
    support, query = _data(tasks=4, n=6, seed=7), _data(tasks=4, n=5, seed=8)
    adapt_keys = ["4.weight", "4.bias"] if mode == "anil" else None
    keys = set(adapt_keys or params)
    step_size = {k: torch.rand_like(v) * 0.1 for k, v in params.items()} if mode == "meta-sgd" else 0.05

    def loss_fn(p, data):
        return single_task_loss(functional_call(model, p, (data[0],)), data[1], "regression")

    def vec_loss(p, data):
        return task_losses(model.batched(p, data[0]), data[1], "regression")

    task_loss = vec_loss if vectorized else loss_fn
    options = dict(step_size=step_size, adapt_keys=adapt_keys, vectorized=vectorized, first_order=mode == "first-order")
    at_once = adapt(task_loss, params, support, steps=3, **options)
    first = adapt(task_loss, params, support, steps=2, **options)
    continued = adapt(task_loss, first, support, steps=1, batched_params=True, **options)
    detached = adapt(task_loss, {k: v.detach() for k, v in first.items()}, support, steps=1, batched_params=True,
                     **options)
    expected = _loop_adapt(model, params, support, 3, step_size, adapt_keys)
    for k in params:
        torch.testing.assert_close(continued[k], at_once[k], msg=f"parameter {k}")
        torch.testing.assert_close(detached[k], at_once[k], msg=f"parameter {k}, detached")
        for t, exp in enumerate(expected):
            torch.testing.assert_close(continued[k][t] if k in keys else continued[k], exp[k], msg=f"task {t} {k}")
    # the meta-gradient flows through the earlier steps of a continued adaptation
    grads = [torch.autograd.grad(batched_task_loss(task_loss, fast, keys, query, vectorized).mean(),
                                 list(params.values())) for fast in (at_once, continued)]
    for name, a, b in zip(params, *grads):
        torch.testing.assert_close(a, b, msg=f"meta-gradient of {name}")
    with pytest.raises(ValueError, match="task dimension"):
        adapt(task_loss, params, support, steps=1, batched_params=True, **options)


@pytest.mark.math
def test_vmap_adaptation_of_a_conv_net_equals_a_loop():
    with seeded(0):
        model = Conv4(hidden=8, out_features=3).double()
    params = parameters_of(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 6), generator=g)

    def loss_fn(p, data):
        return single_task_loss(functional_call(model, p, (data[0],)), data[1], "classification")

    fast = adapt(loss_fn, params, (x, y), steps=2, step_size=0.1)
    for t in range(2):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        for _ in range(2):
            grads = torch.autograd.grad(loss_fn(p, (x[t], y[t])), list(p.values()))
            p = {k: (v - 0.1 * gi).detach().requires_grad_(True) for (k, v), gi in zip(p.items(), grads)}
        for k in params:
            torch.testing.assert_close(fast[k][t], p[k])


@pytest.mark.math
def test_reptile_pseudo_gradient_is_init_minus_mean_adapted():
    params = {"w": torch.tensor([1.0, 2.0])}
    adapted = {"w": torch.tensor([[0.0, 2.0], [1.0, 4.0]])}
    torch.testing.assert_close(reptile_pseudo_gradient(params, adapted)["w"], torch.tensor([0.5, -1.0]))


@pytest.mark.math
def test_zero_steps_returns_the_initialisation_and_bad_arguments_raise():
    model = _mlp()
    params = parameters_of(model)
    support = _data()

    def loss_fn(p, data):
        return single_task_loss(functional_call(model, p, (data[0],)), data[1], "regression")

    fast = adapt(loss_fn, params, support, steps=0, step_size=0.1)
    for k, v in params.items():
        torch.testing.assert_close(fast[k][1], v.detach())
    with pytest.raises(ValueError, match="steps"):
        adapt(loss_fn, params, support, steps=-1, step_size=0.1)
    with pytest.raises(ValueError, match="adapt_keys"):
        adapt(loss_fn, params, support, steps=1, step_size=0.1, adapt_keys=["nope"])
    with pytest.raises(ValueError, match="step sizes"):
        adapt(loss_fn, params, support, steps=1, step_size={"0.weight": torch.ones(5, 1)})


@pytest.mark.determinism
def test_seeding_is_explicit_and_reproducible():
    state = torch.random.get_rng_state()
    with seeded(3):
        a = torch.nn.Linear(3, 3).weight.detach().clone()
    with seeded(3):
        b = torch.nn.Linear(3, 3).weight.detach().clone()
    torch.testing.assert_close(a, b)
    assert torch.equal(state, torch.random.get_rng_state()), "seeded() must restore the global generator"
    assert derive_seed(0, "train", 1) == derive_seed(0, "train", 1) != derive_seed(0, "train", 2)


@pytest.mark.determinism
def test_derive_seed_uses_every_character_of_every_stream_name():
    """Streams that share a prefix, differ in case or punctuation, or differ only in type give distinct seeds."""
    pairs = [("video",), ("video-rollouts",), ("train",), ("train_tasks",), ("reset",), ("resets",),
             ("meta-test",), ("meta_test",), ("tasks",), ("task_sampler",), ("eval", 1), ("eval", "1"),
             ("eval", 1, 2), ("eval", 12), ("a", "bc"), ("ab", "c"), ("abcd",), ("abcde",), ()]
    seeds = [derive_seed(0, *stream) for stream in pairs]
    assert len(set(seeds)) == len(seeds)
    assert derive_seed(0, "video") != derive_seed(1, "video")
    many = {derive_seed(7, "stream", i) for i in range(2000)} | {derive_seed(7, f"stream{i}") for i in range(2000)}
    assert len(many) == 4000
    assert all(0 <= s < 2**63 for s in seeds)


def test_film_with_zero_context_is_the_plain_layer_and_otherwise_scales_and_shifts_each_channel():
    torch.manual_seed(0)
    film = FiLM(context_dim=3, channels=4)
    maps, vectors = torch.randn(2, 4, 5, 5), torch.randn(2, 4)
    assert torch.equal(film(maps, torch.zeros(2, 3)), maps)
    assert torch.equal(film(vectors, torch.zeros(3)), vectors)
    context = torch.randn(2, 3)
    gamma, beta = (context @ film.generator.weight.t()).chunk(2, dim=-1)
    for b in range(2):
        for c in range(4):
            expected = (1 + gamma[b, c]) * maps[b, c] + beta[b, c]
            assert torch.allclose(film(maps, context)[b, c], expected)
    shared = torch.randn(3)  # one context for the batch
    assert torch.allclose(film(vectors, shared), film(vectors, shared.expand(2, 3)))
    with pytest.raises(ValueError, match="context_dim"):
        FiLM(0, 4)


def test_merge_values_merges_mappings_key_by_key_and_an_empty_mapping_clears():
    from metarl.core.config import merge_values

    base = {"env_kwargs": {"velocity_range": [0.0, 2.0], "other": 1}, "seed": 0}
    assert merge_values(base, {"env_kwargs": {"other": 2}}) == {"env_kwargs": {"velocity_range": [0.0, 2.0],
                                                                               "other": 2}, "seed": 0}
    assert merge_values(base, {"env_kwargs": {}}) == {"env_kwargs": {}, "seed": 0}
    assert base["env_kwargs"] == {"velocity_range": [0.0, 2.0], "other": 1}  # the base is not changed
