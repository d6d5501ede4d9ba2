"""The FiLM set-conditioned learner (agents/film.py): the conditioned backbone against hand-written forwards and the
plain backbone, permutation invariance of the set encoder, batched over tasks equals a loop, the Gaussian predictive
contract, learning with margins (Omniglot; sinusoid against the same network without conditioning), determinism and
bad settings refused in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from metarl.agents import make_learner
from metarl.agents.film import MIN_STD, FiLMConfig, FiLMLearner
from metarl.agents.protonet import PrototypicalNetwork
from metarl.core.config import ConfigError
from metarl.envs.fewshot import make_source
from metarl.evaluation import evaluate_fewshot
from tests.test_metric_learners import _train_and_score

IMAGES = SimpleNamespace(kind="classification", input_shape=(1, 28, 28))
VECTORS = SimpleNamespace(kind="regression", input_shape=(1,))


def _learner(source, seed: int = 0, **fields) -> FiLMLearner:
    torch.manual_seed(seed)
    return FiLMLearner.from_source(source, FiLMConfig(**fields), outputs=1 if source.kind == "regression" else 3)


def _images(tasks: int, n: int, seed: int) -> torch.Tensor:
    return torch.rand(tasks, n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _labels(tasks: int, ways: int, shots: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)


def _points(tasks: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, n, 1, generator=g) * 10 - 5
    return x, torch.randn(tasks, 1, 1, generator=g) * torch.sin(x - torch.rand(tasks, 1, 1, generator=g))


def _evaluation_mode(learner: FiLMLearner, x: torch.Tensor, y: torch.Tensor) -> FiLMLearner:
    """A few training-mode passes so batch-norm running statistics are not the initial ones, then evaluation mode
    (where a prediction does not depend on the other examples of the batch)."""
    learner.train()
    with torch.no_grad():
        for _ in range(3):
            learner.predict(learner.adapt(x, y), x)
    return learner.eval()


def _zero_generators(learner: FiLMLearner) -> None:
    for film in learner.network.films:
        film.generator.weight.data.zero_()
        film.generator.weight.requires_grad_(False)


def _modulated(h: torch.Tensor, film, z: torch.Tensor) -> torch.Tensor:
    gamma, beta = (z @ film.generator.weight.t()).chunk(2, dim=-1)
    shape = (h.shape[0], -1) + (1,) * (h.dim() - 2)
    return (1 + gamma.reshape(shape)) * h + beta.reshape(shape)


# ----------------------------------------------------------------------------------------------------------------------
# The conditioned backbone


@pytest.mark.math
def test_the_conditioned_conv4_and_mlp_equal_hand_written_forwards_with_film_after_each_norm_or_hidden_layer():
    learner = _learner(IMAGES)
    x, y = _images(2, 3, 0), _labels(2, 3, 1)
    _evaluation_mode(learner, x, y)
    z = torch.randn(2, 64)
    with torch.no_grad():
        h = x.flatten(0, 1)
        for block, film in zip(learner.network.backbone.features[:4], learner.network.films):
            conv, norm, relu, pool = block
            h = pool(relu(_modulated(norm(conv(h)), film, z.repeat_interleave(3, 0))))
        torch.testing.assert_close(learner.features(x, z), h.reshape(2, 3, -1), rtol=1e-5, atol=1e-5)
    regressor = _learner(VECTORS, 1)
    x, _ = _points(2, 4, 1)
    z = torch.randn(2, 64)
    with torch.no_grad():
        mlp, films, per_example = regressor.network.backbone, regressor.network.films, z.repeat_interleave(4, 0)
        h = torch.relu(_modulated(mlp[0](x.flatten(0, 1)), films[0], per_example))
        h = mlp[4](torch.relu(_modulated(mlp[2](h), films[1], per_example)))
        torch.testing.assert_close(regressor.features(x, z), h.reshape(2, 4, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.math
def test_a_zero_representation_or_zeroed_generators_leave_exactly_the_plain_backbone():
    learner = _learner(IMAGES)
    support_x, support_y, query_x = _images(2, 6, 0), _labels(2, 3, 2), _images(2, 4, 1)
    _evaluation_mode(learner, support_x, support_y)
    backbone = learner.network.backbone
    with torch.no_grad():
        plain = backbone(query_x.flatten(0, 1)).view(2, 4, -1)
        assert torch.equal(learner.features(query_x, torch.zeros(2, 64)), plain)
        conditioned = learner.predict(learner.adapt(support_x, support_y), query_x)
        _zero_generators(learner)
        protonet = PrototypicalNetwork(backbone).eval()  # the same Conv-4, unconditioned
        expected = protonet.predict(protonet.adapt(support_x, support_y), query_x)
        assert torch.equal(learner.predict(learner.adapt(support_x, support_y), query_x), expected)
        assert (conditioned - expected).abs().max() > 1e-3  # the generators did modulate before
    regressor = _learner(VECTORS, 1)
    x, y = _points(2, 5, 0)
    query, _ = _points(2, 7, 1)
    with torch.no_grad():
        out = regressor.network.backbone(query)  # [tasks, queries, 2]: mean and raw standard deviation
        assert torch.equal(regressor.features(query, torch.zeros(2, 64)), out)
        before = regressor.predict(regressor.adapt(x, y), query)
        _zero_generators(regressor)
        dist = regressor.predictive(regressor.adapt(x, y), query)
        assert torch.equal(dist.mean, out[..., :1])
        assert torch.equal(dist.stddev, MIN_STD + torch.nn.functional.softplus(out[..., 1:]))
        assert (before - out[..., :1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# The set encoder: permutation invariant, and the support set conditions the queries' features


@pytest.mark.math
def test_the_set_encoder_is_permutation_invariant_and_the_support_set_changes_the_query_features():
    learner = _learner(IMAGES)
    support_x, support_y, query_x = _images(2, 6, 0), _labels(2, 3, 2), _images(2, 4, 1)
    _evaluation_mode(learner, support_x, support_y)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    with torch.no_grad():
        z = learner.task_representation(support_x, support_y)
        torch.testing.assert_close(learner.task_representation(support_x[:, order], support_y[:, order]), z)
        state = learner.adapt(support_x, support_y)
        shuffled = learner.adapt(support_x[:, order], support_y[:, order])
        torch.testing.assert_close(learner.predict(shuffled, query_x), learner.predict(state, query_x))
        moved = support_x.clone()
        moved[0, 2] = _images(1, 1, 9)[0, 0]  # one support image of the first task
        after = learner.task_representation(moved, support_y)
        assert (after[0] - z[0]).abs().max() > 1e-4
        torch.testing.assert_close(after[1], z[1])  # the other task's representation is its own
        features = learner.features(query_x, after) - learner.features(query_x, z)
        assert features[0].abs().amax(dim=-1).min() > 1e-5  # every query of the task is embedded differently
    regressor = _learner(VECTORS, 1)
    x, y = _points(2, 5, 0)
    query, _ = _points(2, 7, 1)
    order = torch.tensor([3, 0, 4, 2, 1])
    with torch.no_grad():
        z = regressor.adapt(x, y)
        torch.testing.assert_close(regressor.adapt(x[:, order], y[:, order]), z)
        changed = regressor.predict(regressor.adapt(x, y.flip(0)), query) - regressor.predict(z, query)
        assert changed.abs().amax(dim=(1, 2)).min() > 1e-4  # other targets, other predictions (both tasks)


@pytest.mark.math
def test_a_batch_of_tasks_gives_what_a_loop_over_the_tasks_gives():
    for source, head in ((IMAGES, "distance"), (IMAGES, "linear"), (VECTORS, "distance")):
        learner = _learner(source, head=head)
        if source is IMAGES:
            support_x, support_y, query_x = _images(3, 6, 0), _labels(3, 3, 2), _images(3, 4, 1)
        else:
            (support_x, support_y), (query_x, _) = _points(3, 5, 0), _points(3, 7, 1)
        _evaluation_mode(learner, support_x, support_y)
        with torch.no_grad():
            batched = learner.predict(learner.adapt(support_x, support_y), query_x)
            looped = torch.cat([learner.predict(learner.adapt(support_x[t:t + 1], support_y[t:t + 1]),
                                                query_x[t:t + 1]) for t in range(3)])
        torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Heads and the predictive contract


@pytest.mark.math
def test_the_linear_head_is_the_generated_classifier_on_the_adapted_features():
    learner = _learner(IMAGES, head="linear")
    support_x, support_y, query_x = _images(2, 6, 0), _labels(2, 3, 2), _images(2, 4, 1)
    _evaluation_mode(learner, support_x, support_y)
    with torch.no_grad():
        z, weights, biases = learner.adapt(support_x, support_y)
        logits = learner.predict((z, weights, biases), query_x)
        support, queries = learner.features(support_x, z), learner.features(query_x, z)
        for t in range(2):
            for k in range(3):
                mean = support[t, 2 * k:2 * k + 2].mean(dim=0)  # class k's two shots
                generated = learner.classifier(mean)
                torch.testing.assert_close(logits[t, :, k], queries[t] @ generated[:-1] + generated[-1],
                                           rtol=1e-5, atol=1e-5)


@pytest.mark.math
def test_regression_predicts_a_normal_trained_by_its_nll_or_a_point_trained_by_mse():
    regressor = _learner(VECTORS)
    assert regressor.probabilistic
    x, y = _points(2, 5, 0)
    query_x, query_y = _points(2, 7, 1)
    batch = SimpleNamespace(support_x=x, support_y=y, query_x=query_x, query_y=query_y)
    dist = regressor.predictive(regressor.adapt(x, y), query_x)
    assert isinstance(dist, torch.distributions.Normal) and dist.batch_shape == (2, 7, 1)
    assert bool((dist.stddev > MIN_STD).all())
    mean, std = dist.mean.detach(), dist.stddev.detach()
    nll = (0.5 * ((query_y - mean) / std) ** 2 + std.log() + 0.5 * torch.log(torch.tensor(2 * torch.pi))).mean()
    loss, metrics = regressor.meta_loss(batch)
    torch.testing.assert_close(loss.detach(), nll)
    assert metrics["mse"] == pytest.approx(float(((query_y - mean) ** 2).mean()), rel=1e-5)
    point = _learner(VECTORS, gaussian=False)
    assert not point.probabilistic and point.network.backbone[-1].out_features == 1
    outputs = point.predict(point.adapt(x, y), query_x)
    torch.testing.assert_close(point.meta_loss(batch)[0].detach(), ((outputs.detach() - query_y) ** 2).mean())
    with pytest.raises(NotImplementedError):
        point.predictive(point.adapt(x, y), query_x)


# ----------------------------------------------------------------------------------------------------------------------
# Learning with margins, and determinism


@pytest.mark.learning
@pytest.mark.parametrize("head, margin", [("distance", 0.55), ("linear", 0.33)])
def test_film_beats_chance_on_held_out_omniglot_characters(one_torch_thread, omniglot_dir, head, margin):
    accuracy = _train_and_score(omniglot_dir, "film", 40, head=head)
    assert accuracy > margin, f"film head={head}: 5-way 1-shot held-out accuracy {accuracy:.3f} (chance 0.20)"


def _sinusoid_mse(conditioned: bool, iterations: int) -> dict:
    source = make_source("sinusoid", shots=5, query_shots=10)
    learner = make_learner("film", source, seed=0)
    if not conditioned:  # the same network, its FiLM generators zeroed and frozen: the plain MLP
        _zero_generators(learner)
    optimizer = learner.configure_optimizer(1e-3)
    learner.train()
    for iteration in range(iterations):
        learner.outer_step(source.sample(25, split="train", seed=iteration), optimizer)
    return evaluate_fewshot(learner, source, shots=[5], num_tasks=200, split="test", seed=7)["results"][0]


@pytest.mark.learning
def test_film_on_5_shot_sinusoid_beats_the_same_network_without_conditioning(one_torch_thread):
    film, plain = _sinusoid_mse(True, 1200), _sinusoid_mse(False, 1200)
    assert film["mse"] < 0.4 * plain["mse"], (film["mse"], plain["mse"])
    assert film["nll"] < plain["nll"] - 0.5, (film["nll"], plain["nll"])
    assert film["coverage95"] > 0.8, film["coverage95"]


@pytest.mark.determinism
def test_same_seed_same_weights_on_omniglot_and_another_seed_differs(omniglot_dir):
    source = make_source("omniglot", root=str(omniglot_dir), ways=3, shots=1, query_shots=2)

    def trained(seed: int) -> dict:
        learner = make_learner("film", source, seed=seed)
        optimizer = learner.configure_optimizer(1e-3)
        for iteration in range(2):
            learner.outer_step(source.sample(2, split="train", seed=iteration), optimizer)
        return learner.state_dict()

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


# ----------------------------------------------------------------------------------------------------------------------
# Bad settings (through the command line: tests/test_metric_learners.py::test_bad_metric_learner_settings_...)


@pytest.mark.api
def test_config_refuses_impossible_sizes_and_heads():
    for fields, message in [({"encoder_width": 0}, "encoder_width"), ({"context_dim": -3}, "context_dim"),
                            ({"encoder_width": 2.5}, "encoder_width"), ({"head": "cosine"}, "head must be one of")]:
        with pytest.raises(ConfigError, match=message):
            FiLMConfig(**fields)
    with pytest.raises(ValueError, match="film classifies images"):
        FiLMLearner.from_source(SimpleNamespace(kind="classification", input_shape=(5,)), FiLMConfig(), outputs=3)
