"""The checks of lessons 08-09: each passes qedu's reference, says 'not implemented yet' for a stub,
and names every registered classic mistake."""
from __future__ import annotations

import torch

from qedu import checks
from qedu.checks import evaluation as ev
from tests.check_contract import check_contract

SPECS = {
    "disagreement_rate": (ev.DISAGREEMENT, checks.check_disagreement_rate),
    "per_class_deltas": (ev.PER_CLASS_DELTAS, checks.check_per_class_deltas),
    "clip_rate": (ev.CLIP_RATE, checks.check_clip_rate),
    "fgsm": (ev.FGSM, checks.check_fgsm),
}
CONTRACT = {name: (check, spec) for name, (spec, check) in SPECS.items()}
MISTAKES = [(name, m) for name, (_, spec, *_) in CONTRACT.items() for m in spec.mistakes]

test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CONTRACT
)


def test_the_brief_mistakes_are_registered():
    names = " | ".join(m.name for _, m in MISTAKES)
    for fragment in ("labels instead of the float model", "total number of inputs", ">= instead of >",
                     "lower bound", "gradient instead of its sign", "clamp to [0, 1]"):
        assert fragment in names


def test_checks_accept_tensors_numpy_and_other_float_dtypes():
    assert checks.check_disagreement_rate(lambda y, f, q: (q != f).float().mean()).passed  # 0-d float32 tensor
    assert checks.check_per_class_deltas(lambda y, f, q, n: ev.per_class_deltas(y, f, q, n).float()).passed
    assert checks.check_per_class_deltas(lambda y, f, q, n: ev.per_class_deltas(y, f, q, n).numpy()).passed


def test_fgsm_written_with_x_grad_and_a_summed_loss_passes():
    def fgsm(model, x, y, eps):
        x = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        return (x + eps * x.grad.sign()).clamp(0, 1).detach()

    assert checks.check_fgsm(fgsm).passed
