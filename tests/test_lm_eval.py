"""Tests for qedu.lm_eval: perplexity, KL divergence and top-1 flips of language models."""
import copy
import math

import pytest
import torch

from qedu.lm_eval import LMEvaluator, kl_divergence, log_probs, nll_from_log_probs, perplexity, top1_flips
from qedu.models import TinyGPT


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=16, seq_len=8, hidden=32, n_layers=2, n_heads=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # far from the near-uniform initial distribution
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 16, (5, 8), generator=g)
    y = torch.randint(0, 16, (5, 8), generator=g)
    return model, x, y


def test_perplexity_is_exp_of_mean_nll_by_hand(setup):
    model, x, y = setup
    with torch.no_grad():
        logits = model.eval()(x)
    probs = torch.softmax(logits.double(), dim=-1)
    nll = [-math.log(float(probs[i, t, y[i, t]])) for i in range(x.shape[0]) for t in range(x.shape[1])]
    assert perplexity(model, x, y) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
    assert perplexity(model, x, y, batch_size=2) == pytest.approx(perplexity(model, x, y), rel=1e-6)


def test_identical_models_have_zero_kl_and_no_flips(setup):
    model, x, y = setup
    ev = LMEvaluator(model, x, y)
    scores = ev.score(copy.deepcopy(model))
    assert scores.kl == 0.0 and scores.flips == 0.0
    assert scores.perplexity == pytest.approx(ev.reference.perplexity, rel=1e-12)


def test_a_changed_model_has_positive_kl(setup):
    model, x, y = setup
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[0].fc1.weight.mul_(-1.0)
    scores = LMEvaluator(model, x, y).score(other)
    assert scores.kl > 0 and 0 <= scores.flips <= 1
    ref, lp = log_probs(model, x), log_probs(other, x)
    by_hand = (ref.double().exp() * (ref.double() - lp.double())).sum(-1).mean()
    assert scores.kl == pytest.approx(float(by_hand), rel=1e-9)
    assert scores.flips == float((ref.argmax(-1) != lp.argmax(-1)).double().mean())


def test_kl_is_nonnegative_on_random_distributions():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.randn(3, 7, 11, generator=g).mul(3).log_softmax(-1)
        q = torch.randn(3, 7, 11, generator=g).mul(3).log_softmax(-1)
        assert kl_divergence(p, q) >= 0
        assert kl_divergence(p, p) == 0.0


def test_kl_ignores_zero_probability_tokens():
    p = torch.tensor([[1.0, 0.0]]).log()  # log 0 = -inf
    q = torch.tensor([[0.5, 0.5]]).log()
    assert kl_divergence(p, q) == pytest.approx(math.log(2))


def test_the_evaluator_keeps_its_own_copy_of_the_batch(setup):
    model, x, y = setup
    x2 = x.clone()
    ev = LMEvaluator(model, x2, y)
    x2.zero_()
    assert torch.equal(ev.inputs, x)


def test_scoring_leaves_the_model_mode(setup):
    model, x, y = setup
    model.train()
    log_probs(model, x)
    assert model.training
    model.eval()


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, y: perplexity(m, x.float(), y), TypeError, "inputs must be a 2-D integer"),
    (lambda m, x, y: perplexity(m, x, y[:, :4]), ValueError, "must match"),
    (lambda m, x, y: perplexity(m, x, y + 100), ValueError, "outside the vocabulary"),
    (lambda m, x, y: perplexity("model", x, y), TypeError, "torch.nn.Module"),
    (lambda m, x, y: kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "same inputs"),
    (lambda m, x, y: top1_flips(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), TypeError, "log-probabilities"),
    (lambda m, x, y: LMEvaluator(m, x, y[:2]), ValueError, "same shape"),
    (lambda m, x, y: log_probs(m, x, batch_size=0), ValueError, "batch_size"),
    (lambda m, x, y: nll_from_log_probs(torch.zeros(0, 4), torch.zeros(0, 1, dtype=torch.long)), ValueError, "empty"),
], ids=["float-inputs", "shape", "vocab", "not-a-model", "kl-shape", "int-log-probs", "evaluator-shape", "batch", "empty"])
def test_bad_input(setup, call, error, match):
    model, x, y = setup
    with pytest.raises(error, match=match):
        call(model, x, y)
