"""Relation Networks, Siamese networks and Matching Networks' full-context embeddings: the math against hand
computations and plain loops, the pairing rules, bad settings refused in one line, and learning with margins."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from metarl.agents import make_learner
from metarl.agents.matching import MatchingConfig, MatchingNetwork
from metarl.agents.relation import RelationConfig, RelationNetwork
from metarl.agents.siamese import SiameseNetwork, verification_pairs
from metarl.cli import main as cli_main
from metarl.core.config import ConfigError
from metarl.core.networks import Conv4
from metarl.envs.fewshot import make_source
from metarl.evaluation import evaluate_fewshot


def _images(tasks: int, n: int, seed: int, side: int = 28) -> torch.Tensor:
    return torch.rand(tasks, n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _labels(tasks: int, ways: int, shots: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)


def _warm_batch_norm(learner, x: torch.Tensor, y: torch.Tensor) -> None:
    """A few training-mode forwards so the running statistics are not the initial ones, then evaluation mode."""
    learner.train()
    with torch.no_grad():
        for _ in range(3):
            learner.predict(learner.adapt(x, y), x)
    learner.eval()


# ----------------------------------------------------------------------------------------------------------------------
# Relation Networks


def _relation(seed: int = 0, **fields) -> RelationNetwork:
    torch.manual_seed(seed)
    return RelationNetwork((1, 28, 28), RelationConfig(**fields))


@pytest.mark.math
def test_relation_feature_maps_are_64x7x7_and_the_k_shot_class_map_is_the_sum_of_its_support_maps():
    learner = _relation()
    support_x, support_y = _images(2, 9, 0), _labels(2, 3, 3)
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        classes = learner.adapt(support_x, support_y)
        assert classes.shape == (2, 3, 64, 7, 7)
        for t in range(2):
            for k in range(3):
                by_hand = sum(learner.embedding(support_x[t, i:i + 1])[0] for i in range(9) if support_y[t, i] == k)
                torch.testing.assert_close(classes[t, k], by_hand, rtol=1e-5, atol=1e-5)
        mean = _relation(support_pooling="mean")
        mean.load_state_dict(learner.state_dict())
        mean.eval()
        torch.testing.assert_close(mean.adapt(support_x, support_y), classes / 3)


@pytest.mark.math
def test_relation_predict_equals_the_relation_module_on_each_pair_and_the_loss_is_the_mse_to_one_hot_targets():
    learner = _relation(1)
    support_x, support_y = _images(2, 3, 1), _labels(2, 3, 1)
    query_x, query_y = _images(2, 4, 2), torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        classes = learner.adapt(support_x, support_y)
        logits = learner.predict(classes, query_x)
        assert logits.shape == (2, 4, 3)
        for t in range(2):
            for j in range(4):
                query = learner.embedding(query_x[t, j:j + 1])[0]
                for k in range(3):
                    pair = torch.cat([classes[t, k], query], dim=0)[None]  # class channels first, then the query's
                    torch.testing.assert_close(logits[t, j, k], learner.relation(pair)[0], rtol=1e-5, atol=1e-5)
    # the loss in training mode: the same adapt/predict, then (σ(logit) − 1[y = k])² averaged over all pairs
    learner.train()
    torch.manual_seed(0)
    batch = SimpleNamespace(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)
    loss, metrics = learner.meta_loss(batch)
    with torch.no_grad():
        logits = learner.predict(learner.adapt(support_x, support_y), query_x)
    total = 0.0
    for t in range(2):
        for j in range(4):
            for k in range(3):
                target = 1.0 if int(query_y[t, j]) == k else 0.0
                total += (1.0 / (1.0 + torch.exp(-logits[t, j, k])) - target) ** 2
    torch.testing.assert_close(loss.detach(), total / 24, rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == query_y).float().mean()))
    loss.backward()
    assert all(p.grad is not None for p in learner.parameters())


@pytest.mark.math
def test_a_relation_score_depends_on_both_members_of_its_pair_only():
    learner = _relation(2)
    support_x, support_y, query_x = _images(1, 3, 3), _labels(1, 3, 1), _images(1, 4, 4)
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        base = learner.predict(learner.adapt(support_x, support_y), query_x)
        moved_query = query_x.clone()
        moved_query[0, 1] = _images(1, 1, 5)[0, 0]
        after = learner.predict(learner.adapt(support_x, support_y), moved_query)
        assert (after[0, 1] - base[0, 1]).abs().min() > 1e-6  # every score of the perturbed query changes
        torch.testing.assert_close(after[0, [0, 2, 3]], base[0, [0, 2, 3]])  # the other queries' do not
        moved_support = support_x.clone()
        moved_support[0, 2] = _images(1, 1, 6)[0, 0]  # class 2's only shot
        after = learner.predict(learner.adapt(moved_support, support_y), query_x)
        assert (after[0, :, 2] - base[0, :, 2]).abs().min() > 1e-6
        torch.testing.assert_close(after[0, :, :2], base[0, :, :2])


@pytest.mark.api
def test_relation_refuses_vector_inputs_and_small_images_with_one_line():
    vectors = SimpleNamespace(kind="classification", input_shape=(5,))
    with pytest.raises(ValueError, match="needs images of at least 16x16") as err:
        RelationNetwork.from_source(vectors, RelationConfig(), outputs=3)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="needs a classification task source"):
        RelationNetwork.from_source(SimpleNamespace(kind="regression", input_shape=(1,)), RelationConfig(), outputs=1)


# ----------------------------------------------------------------------------------------------------------------------
# Siamese networks


def _siamese(seed: int = 0) -> SiameseNetwork:
    torch.manual_seed(seed)
    return SiameseNetwork(Conv4(running_stats=True), "classification")


@pytest.mark.math
def test_siamese_pairs_are_balanced_correctly_labelled_never_self_pairs_and_deterministic():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 0, 1, 2, 2], [3, 1, 1, 0, 0, 2, 2, 3, 1, 0]])
    partners, same = verification_pairs(labels, torch.Generator().manual_seed(0))
    n = labels.shape[1]
    assert partners.shape == same.shape == (2, 2 * n)
    assert same.sum(dim=1).tolist() == [n, n]  # exactly half of each task's pairs are same-class
    for t in range(2):
        for p in range(2 * n):
            i, j = p % n, int(partners[t, p])
            assert i != j  # never an image with itself
            assert bool(same[t, p]) == bool(labels[t, i] == labels[t, j])  # label 1 ⇔ same class
    again, _ = verification_pairs(labels, torch.Generator().manual_seed(0))
    other, _ = verification_pairs(labels, torch.Generator().manual_seed(1))
    assert torch.equal(partners, again) and not torch.equal(partners, other)
    with pytest.raises(ValueError, match="another image of its class"):
        verification_pairs(torch.tensor([[0, 1, 1]]), torch.Generator())


@pytest.mark.math
def test_siamese_loss_is_the_same_for_the_same_batch_without_the_global_random_state():
    learner = _siamese()
    batch = SimpleNamespace(support_x=_images(2, 3, 0), support_y=_labels(2, 3, 1), query_x=_images(2, 6, 1),
                            query_y=_labels(2, 3, 2))
    torch.manual_seed(0)
    first, _ = learner.meta_loss(batch)
    torch.manual_seed(123)
    second, _ = learner.meta_loss(batch)
    assert torch.equal(first, second)
    changed = SimpleNamespace(**{**vars(batch), "query_x": _images(2, 6, 2)})
    assert not torch.equal(first, learner.meta_loss(changed)[0])


@pytest.mark.math
def test_siamese_verification_is_symmetric_and_the_class_score_is_the_mean_log_odds_of_its_shots():
    learner = _siamese(1)
    support_x, support_y, query_x = _images(1, 6, 3), _labels(1, 3, 2), _images(1, 2, 4)
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        a, b = learner.embedding(support_x[0]), learner.embedding(query_x[0])
        pairwise = learner.verification_logits(a[:, None], b[None])
        torch.testing.assert_close(pairwise, learner.verification_logits(b[None], a[:, None]))
        alpha, bias = learner.verification.weight[0], learner.verification.bias[0]
        by_hand = (alpha * (a[0] - b[1]).abs()).sum() + bias  # log-odds of P(same) = σ(Σ α_j |h1_j − h2_j| + b)
        torch.testing.assert_close(pairwise[0, 1], by_hand, rtol=1e-5, atol=1e-5)
        scores = learner.predict(learner.adapt(support_x, support_y), query_x)
        for j in range(2):
            for k in range(3):
                shots = [pairwise[i, j] for i in range(6) if support_y[0, i] == k]
                torch.testing.assert_close(scores[0, j, k], sum(shots) / len(shots), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Matching Networks: full-context embeddings


def _matching(full_context: bool, seed: int = 0, **fields) -> MatchingNetwork:
    torch.manual_seed(seed)
    embedding = Conv4(running_stats=True)
    return MatchingNetwork(embedding, "classification", MatchingConfig(full_context=full_context, **fields))


@pytest.mark.math
def test_matching_without_full_context_is_the_learner_as_it_was():
    learner = _matching(False)
    assert set(learner.state_dict()) == {"log_temperature"} | {f"embedding.{k}" for k in
                                                               learner.embedding.state_dict()}
    support_x, support_y, query_x = _images(2, 6, 0), _labels(2, 3, 2), _images(2, 4, 1)
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        out = learner.predict(learner.adapt(support_x, support_y), query_x)
        # the formula of the learner before full-context embeddings, written out
        keys = F.normalize(learner.embedding(support_x.flatten(0, 1)).view(2, 6, -1), dim=-1)
        queries = F.normalize(learner.embedding(query_x.flatten(0, 1)).view(2, 4, -1), dim=-1)
        attention = torch.softmax(10.0 * queries @ keys.transpose(1, 2), dim=-1)
        expected = (attention @ F.one_hot(support_y, 3).float()).clamp_min(1e-12).log()
    assert torch.equal(out, expected)


def _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.math
def test_full_context_embeddings_equal_the_papers_equations_written_as_loops():
    learner = _matching(True, fce_steps=3)
    support_x, support_y, query_x = _images(2, 4, 0), _labels(2, 2, 2), _images(2, 3, 1)
    _warm_batch_norm(learner, support_x, support_y)
    context, dim = learner.context, 64
    lstm = context.support_lstm
    with torch.no_grad():
        keys, _, support = learner.adapt(support_x, support_y)
        out = learner.predict((keys, _, support), query_x)
        for t in range(2):
            embedded = learner.embedding(support_x[t])  # g'(x_i)
            h, c = torch.zeros(dim), torch.zeros(dim)
            forward = []
            for i in range(4):
                h, c = _lstm_step(embedded[i], h, c, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                                  lstm.bias_hh_l0)
                forward.append(h)
            h, c = torch.zeros(dim), torch.zeros(dim)
            backward = [None] * 4
            for i in reversed(range(4)):
                h, c = _lstm_step(embedded[i], h, c, lstm.weight_ih_l0_reverse, lstm.weight_hh_l0_reverse,
                                  lstm.bias_ih_l0_reverse, lstm.bias_hh_l0_reverse)
                backward[i] = h
            g = torch.stack([forward[i] + backward[i] + embedded[i] for i in range(4)])
            torch.testing.assert_close(support[t], g, rtol=1e-4, atol=1e-5)
            cell = context.query_cell
            w_x, w_r = cell.weight_ih[:, :dim], cell.weight_ih[:, dim:]  # the LSTM's weights on f'(x̂) and on r
            for j in range(3):
                f_prime = learner.embedding(query_x[t, j:j + 1])[0]
                h, c, r = torch.zeros(dim), torch.zeros(dim), torch.zeros(dim)
                for _ in range(3):  # state [h, r]: gates = W_x f' + W_hh h + W_r r + biases
                    h_hat, c = _lstm_step(torch.cat([f_prime, r]), h, c, torch.cat([w_x, w_r], 1), cell.weight_hh,
                                          cell.bias_ih, cell.bias_hh)
                    h = h_hat + f_prime
                    r = torch.softmax(g @ h, dim=0) @ g
                logits = learner.log_temperature.exp() * F.normalize(g, dim=-1) @ F.normalize(h, dim=0)
                expected = (torch.softmax(logits, 0) @ F.one_hot(support_y[t], 2).float()).log()
                torch.testing.assert_close(out[t, j], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.math
def test_with_full_context_a_query_depends_on_the_support_set_and_not_on_other_queries():
    learner = _matching(True)
    support_x, support_y, query_x = _images(1, 6, 0), _labels(1, 3, 2), _images(1, 4, 1)
    _warm_batch_norm(learner, support_x, support_y)
    with torch.no_grad():
        base_state = learner.adapt(support_x, support_y)
        base = learner.context.query(learner.embedding(query_x[0])[None], base_state[2])
        moved = support_x.clone()
        moved[0, 5] = _images(1, 1, 7)[0, 0]  # one support image of class 2
        state = learner.adapt(moved, support_y)
        after = learner.context.query(learner.embedding(query_x[0])[None], state[2])
        assert (after - base).abs().amax(dim=-1).min() > 1e-6  # every query's embedding changes
        assert (state[2][0, :5] - base_state[2][0, :5]).abs().amax() > 1e-6  # the LSTM spreads the change
        other = query_x.clone()
        other[0, 0] = _images(1, 1, 8)[0, 0]
        outputs = learner.predict(base_state, other)
        torch.testing.assert_close(outputs[0, 1:], learner.predict(base_state, query_x)[0, 1:])
        assert not torch.allclose(outputs[0, 0], learner.predict(base_state, query_x)[0, 0])


@pytest.mark.api
def test_fce_steps_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, "3"):
        with pytest.raises(ConfigError, match="fce_steps"):
            MatchingConfig(full_context=True, fce_steps=bad)


# ----------------------------------------------------------------------------------------------------------------------
# The command line: bad settings are refused in one line before any work


@pytest.mark.api
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "relation"], "needs a classification task source"),
        (["train", "relation", "--source", "omniglot", "--support-pooling", "max"], "support_pooling must be one of"),
        (["train", "relation", "--source", "omniglot", "--hidden", "0"], "hidden must be"),
        (["train", "relation", "--source", "omniglot", "--relation-hidden", "-2"], "relation_hidden must be"),
        (["train", "siamese"], "needs a classification task source"),
        (["train", "siamese", "--source", "omniglot", "--ways", "1"], "episodes need ways >= 2"),
        (["train", "siamese", "--source", "omniglot", "--train-ways", "1"], "siamese cannot train on these episodes"),
        (["train", "matching", "--source", "omniglot", "--full-context", "--fce-steps", "0"], "fce_steps must be"),
        (["train", "matching", "--source", "omniglot", "--fce-steps", "-3"], "fce_steps must be"),
        (["train", "film", "--encoder-width", "0"], "encoder_width must be"),
        (["train", "film", "--context-dim", "-1"], "context_dim must be"),
        (["train", "film", "--source", "omniglot", "--encoder-width", "0"], "encoder_width must be"),
        (["train", "film", "--source", "omniglot", "--head", "cosine"], "head must be one of"),
    ],
)
def test_bad_metric_learner_settings_are_refused_in_one_line(tmp_path, capsys, omniglot_dir, argv, message):
    argv = [*argv, "--data-root", str(omniglot_dir)] if "omniglot" in argv else argv
    assert cli_main([*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Learning: short training on Omniglot, scored on held-out characters (5-way 1-shot, chance 20%)


def _train_and_score(omniglot_dir, name: str, iterations: int, **fields) -> float:
    source = make_source("omniglot", root=str(omniglot_dir), ways=5, shots=1, query_shots=5)
    learner = make_learner(name, source, seed=0, **fields)
    optimizer = learner.configure_optimizer(1e-3)
    learner.train()
    for iteration in range(iterations):
        learner.outer_step(source.sample(2, split="train", seed=iteration, ways=5, shots=1, query_shots=5), optimizer)
    result = evaluate_fewshot(learner, source, shots=[1], num_tasks=100, split="test", seed=7)
    return result["results"][0]["accuracy"]


@pytest.mark.learning
@pytest.mark.parametrize("name, iterations, fields, margin", [
    ("relation", 60, {}, 0.50),
    ("siamese", 100, {}, 0.50),
    ("matching", 40, {"full_context": True}, 0.65),
])
def test_metric_learners_beat_chance_on_held_out_omniglot_characters(one_torch_thread, omniglot_dir, name,
                                                                     iterations, fields, margin):
    accuracy = _train_and_score(omniglot_dir, name, iterations, **fields)
    assert accuracy > margin, f"{name} {fields}: 5-way 1-shot held-out accuracy {accuracy:.3f} (chance 0.20)"


@pytest.mark.smoke
def test_matching_with_full_context_trains_and_evaluates_from_the_command_line(tmp_path, omniglot_dir):
    from metarl.training import load_session

    run_dir = tmp_path / "fce"
    assert cli_main(["train", "matching", "--full-context", "--fce-steps", "2", "--source", "omniglot", "--data-root",
                     str(omniglot_dir), "--ways", "3", "--shots", "1", "--query-shots", "1", "--iterations", "2",
                     "--meta-batch-size", "2", "--eval-tasks", "2", "--threads", "1", "--no-progress",
                     "--run-dir", str(run_dir)]) == 0
    assert cli_main(["evaluate", str(run_dir), "--threads", "1"]) == 0
    learner = load_session(run_dir).learner
    assert learner.context is not None and learner.context.steps == 2
