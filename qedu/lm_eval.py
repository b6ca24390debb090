"""Evaluating a quantized language model: perplexity, KL divergence from the float model, top-1 flips.

A language model predicts, at every position ``t`` of a text, a distribution ``p(. | x_<t)``
over the next token. Three numbers say how much quantization changed it::

    NLL        = -mean_t log q(x_t | x_<t)                   # on held-out text
    perplexity = exp(NLL)                                     # the model is "as unsure as" a uniform choice among this many tokens
    KL         =  mean_t sum_v p(v | x_<t) * (log p(v | x_<t) - log q(v | x_<t))   # p: float model, q: quantized
    flips      =  mean_t [argmax_v p(v | x_<t) != argmax_v q(v | x_<t)]

Perplexity compares each model with the text; KL and flips compare the quantized model with
the float one, token by token. Dutta et al. 2024 ("Accuracy is not all you need") show that
averages such as perplexity or accuracy can hide many changed answers that cancel out; KL and
flips see them. KL is >= 0, and 0 exactly when the two distributions agree everywhere.

:class:`LMEvaluator` computes the float model's log-probabilities on a fixed evaluation batch
once and keeps them, so scoring a quantized model costs one forward pass (a widget can
re-score in well under a second and cache what it scored).

>>> ref = torch.log_softmax(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), dim=-1)   # (1 row, 2 positions, 2 tokens)
>>> kl_divergence(ref, ref), top1_flips(ref, ref.flip(-1))
(0.0, 1.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from qedu._validation import check_int, check_module, check_token_ids, run_model

__all__ = ["generate", "log_probs", "nll_from_log_probs", "perplexity", "kl_divergence", "top1_flips", "LMScores", "LMEvaluator"]


def _check_log_probs(lp, name: str) -> torch.Tensor:
    """Log-probabilities: no NaN, nothing above 0, each position's probabilities summing to 1 (not raw logits)."""
    if not isinstance(lp, torch.Tensor) or not lp.is_floating_point() or lp.ndim < 2:
        raise TypeError(f"{name} must be a float tensor of log-probabilities (..., vocab) from log_probs(), "
                        f"got {type(lp).__name__} {tuple(getattr(lp, 'shape', ()))}.")
    if lp.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(lp.shape)}).")
    total = lp.double().logsumexp(dim=-1)  # log sum_v p_v: 0 for log-probabilities
    if bool(torch.isnan(lp).any()) or not bool((total.abs() < 1e-2).all()):
        raise ValueError(f"{name} must hold log-probabilities (no NaN, each position's exp summing to 1), but "
                         f"log sum exp ranges over {float(total.min()):.4g}..{float(total.max()):.4g}; "
                         f"pass log_probs(model, inputs) or logits.log_softmax(dim=-1), not raw logits.")
    return lp


def _exp(nll: float) -> float:
    """``exp(nll)``, and ``inf`` once it overflows (NLL above 709.78 nats: some target had probability ~0)."""
    return math.exp(nll) if nll < math.log(torch.finfo(torch.float64).max) else math.inf


def log_probs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``log_softmax(model(inputs))`` as float32 of shape ``(rows, seq_len, vocab)``, in batches.

    Eval mode, no gradients; the model's train/eval mode is restored.

    Raises:
        TypeError / ValueError: ``model`` not a module; ``inputs`` not a non-empty 2-D integer
            tensor of ids the model can read; ``batch_size < 1``; NaN in the model's outputs.

    >>> from qedu.models import TinyGPT
    >>> log_probs(TinyGPT(8, 4, 16, 1, 2), torch.zeros(3, 4, dtype=torch.long)).shape
    torch.Size([3, 4, 8])
    """
    model = check_module(model)
    inputs = check_token_ids(inputs, "inputs", model)
    batch_size = check_int(batch_size, "batch_size", 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [run_model(model, inputs[i : i + batch_size], "inputs").float().log_softmax(dim=-1)
                   for i in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    lp = torch.cat(out)
    if bool(torch.isnan(lp).any()):
        raise ValueError(f"model's outputs give {int(torch.isnan(lp).sum())} NaN log-probabilities (NaN or inf in its "
                         "outputs); check the model's weights, e.g. a quantizer that produced NaN.")
    return lp


def nll_from_log_probs(lp: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood ``-mean_t lp[t, targets[t]]`` in nats.

    ``inf`` when some target has probability 0 (``lp = -inf`` there): the model rules out a
    token the text has.

    >>> lp = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    >>> round(nll_from_log_probs(lp, torch.tensor([[0, 1]])), 4)   # -(log 0.5 + log 0.75) / 2
    0.4904
    """
    lp = _check_log_probs(lp, "lp")
    targets = check_token_ids(targets, "targets")
    if tuple(lp.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"lp has positions {tuple(lp.shape[:-1])} but targets has shape {tuple(targets.shape)}; "
                         "they must match (log_probs(model, inputs) with the targets of the same windows).")
    if int(targets.min()) < 0 or int(targets.max()) >= lp.shape[-1]:
        raise ValueError(f"targets hold ids {int(targets.min())}..{int(targets.max())}, outside the vocabulary 0..{lp.shape[-1] - 1}.")
    picked = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (rows, seq_len)
    return float(-picked.double().mean())


def perplexity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 64) -> float:
    """``exp(mean NLL)`` of ``model`` predicting ``targets`` from ``inputs``.

    A model that gives every one of ``V`` tokens the same probability has perplexity ``V``.
    The result is ``inf`` when the mean NLL exceeds 709.78 nats (``exp`` overflows float64),
    which needs a target with probability (almost) 0.

    >>> from qedu.models import TinyGPT
    >>> flat = TinyGPT(8, 4, 16, 1, 2); _ = [p.data.zero_() for p in flat.parameters()]
    >>> round(perplexity(flat, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)), 4)
    8.0
    """
    return _exp(nll_from_log_probs(log_probs(model, inputs, batch_size), targets))


def _check_pair(ref: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("ref", ref), ("lp", lp)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a float tensor of log-probabilities (..., vocab) from log_probs(), got {type(t).__name__}.")
    if ref.shape != lp.shape:
        raise ValueError(f"ref has shape {tuple(ref.shape)} but lp has {tuple(lp.shape)}; score both models on the same inputs.")
    return _check_log_probs(ref, "ref"), _check_log_probs(lp, "lp")


def kl_divergence(ref: torch.Tensor, lp: torch.Tensor) -> float:
    """Mean over positions of ``KL(p || q) = sum_v p_v (log p_v - log q_v)``, in nats.

    ``ref`` holds the float model's log-probabilities ``log p``, ``lp`` the quantized model's
    ``log q`` (same shape ``(..., vocab)``). Tokens with ``p_v = 0`` add nothing; the result is
    ``inf`` when ``q_v = 0`` for a token with ``p_v > 0`` (the quantized model rules out what the
    float model expects).

    >>> p = torch.log(torch.tensor([[0.5, 0.5]])); q = torch.log(torch.tensor([[0.25, 0.75]]))
    >>> round(kl_divergence(p, q), 4)   # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)
    0.1438
    """
    ref, lp = _check_pair(ref, lp)
    p = ref.double().exp()
    terms = torch.where(p > 0, p * (ref.double() - lp.double()), torch.zeros((), dtype=torch.float64))
    return max(float(terms.sum(-1).mean()), 0.0)  # >= 0 in exact arithmetic; clip rounding below 0


def top1_flips(ref: torch.Tensor, lp: torch.Tensor) -> float:
    """Fraction of positions whose most likely next token differs between ``ref`` and ``lp``.

    >>> top1_flips(torch.tensor([[0.9, 0.1], [0.2, 0.8]]).log(), torch.tensor([[0.6, 0.4], [0.7, 0.3]]).log())
    0.5
    """
    ref, lp = _check_pair(ref, lp)
    return float((ref.argmax(-1) != lp.argmax(-1)).double().mean())


@dataclass(frozen=True)
class LMScores:
    """Perplexity on held-out text, and KL (nats per token) and top-1 flips (fraction) against the float model."""

    perplexity: float
    kl: float
    flips: float

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "kl": self.kl, "flips": self.flips}


class LMEvaluator:
    """Scores models against a float reference on one fixed batch of windows, computing the reference once.

    Args:
        reference: the float model. inputs, targets: ``(rows, seq_len)`` token ids (e.g.
            ``qedu.text.windows(load_text().test, 128, 16)``). batch_size: rows per forward pass.

    >>> from qedu.models import TinyGPT
    >>> torch.manual_seed(0); model = TinyGPT(8, 4, 16, 1, 2); x = torch.randint(0, 8, (2, 4))
    <torch._C.Generator object at ...>
    >>> scores = LMEvaluator(model, x, x).score(model)
    >>> scores.kl, scores.flips
    (0.0, 0.0)
    """

    def __init__(self, reference: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 64):
        self.inputs = check_token_ids(inputs, "inputs").clone()
        self.targets = check_token_ids(targets, "targets").clone()
        if self.inputs.shape != self.targets.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the same shape.")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.reference_log_probs = log_probs(reference, self.inputs, self.batch_size)  # (rows, s, V), computed once
        self.reference = LMScores(_exp(nll_from_log_probs(self.reference_log_probs, self.targets)), 0.0, 0.0)

    def score(self, model: nn.Module) -> LMScores:
        """Perplexity, KL from the reference and top-1 flips of ``model`` on the stored batch."""
        lp = log_probs(model, self.inputs, self.batch_size)
        return LMScores(
            perplexity=_exp(nll_from_log_probs(lp, self.targets)),
            kl=kl_divergence(self.reference_log_probs, lp),
            flips=top1_flips(self.reference_log_probs, lp),
        )


def generate(model: nn.Module, prompt: torch.Tensor, n_new: int = 80) -> torch.Tensor:
    """Greedy continuation: append ``argmax p(. | context)`` ``n_new`` times (the context is the last
    ``seq_len`` tokens the model accepts). Deterministic, so two models' texts can be compared.

    Args:
        model: a language model ``(1, s) -> (1, s, vocab)`` with a ``pos`` embedding (e.g. TinyGPT).
        prompt: 1-D int tensor of token ids. n_new: tokens to add.

    Returns:
        1-D int64 tensor: the prompt followed by ``n_new`` tokens.

    >>> from qedu.models import TinyGPT
    >>> generate(TinyGPT(8, 4, 16, 1, 2), torch.tensor([1, 2]), n_new=3).shape
    torch.Size([5])
    """
    model = check_module(model)
    if not isinstance(prompt, torch.Tensor) or prompt.ndim != 1 or prompt.is_floating_point() or prompt.numel() == 0:
        raise TypeError(f"prompt must be a non-empty 1-D integer tensor (e.g. qedu.text.encode('def ')), got {type(prompt).__name__}.")
    n_new = check_int(n_new, "n_new", 0)
    seq_len = model.pos.num_embeddings if hasattr(model, "pos") else prompt.numel() + n_new
    check_token_ids(prompt[None, -seq_len:], "prompt", model)  # (1, <= seq_len)
    tokens = prompt.to(torch.int64).clone()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(n_new):
                logits = run_model(model, tokens[-seq_len:].unsqueeze(0), "prompt")  # (1, s, vocab)
                tokens = torch.cat([tokens, logits[0, -1].argmax().reshape(1)])
    finally:
        model.train(was_training)
    return tokens
