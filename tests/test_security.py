"""qedu.security: FGSM/PGD against the math, poisoning against min/max, the monitor's rule, lesson 09's claims."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qedu.calibration import clipping_error
from qedu.data import load_digits
from qedu.formats import IntFormat
from qedu.models import evaluate, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.robustness import corrupt
from qedu.security import (
    RangeMonitor, attack_table, calibration_report, clip_rate, fgsm, pgd, poison_calibration, straight_through,
)

UINT4 = IntFormat(4, signed=False)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")  # trained once per session


@pytest.fixture(scope="module")
def w4a4(mlp, digits):
    return quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4), digits.x_calib)


def _linear():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 4, generator=g))
        model[1].bias.copy_(torch.randn(3, generator=g))
    return model


# ----------------------------------------------------------------------------- FGSM and PGD
def test_fgsm_on_a_linear_model_is_the_analytic_sign_of_the_gradient():
    model = _linear()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w, b = model[1].weight.detach(), model[1].bias.detach()
    p = F.softmax(x.flatten(1) @ w.T + b, dim=1)  # (N, 3)
    grad = (p - F.one_hot(y, 3)) @ w / len(x)  # d mean-CE / d x = W^T (softmax - onehot) / N, (N, 4)
    expected = (x + 0.1 * grad.sign().reshape(x.shape)).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, 0.1), expected)


def test_fgsm_spends_eps_per_pixel_stays_in_0_1_and_leaves_the_model_alone(mlp, digits):
    x, y = digits.x_test[:50], digits.y_test[:50]
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in mlp.parameters()]
    x_adv = fgsm(mlp, x, y, 0.1)
    moved = (x_adv - x).abs()
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and moved.max() <= 0.1 + 1e-6
    inside = (x > 0.1) & (x < 0.9)  # away from the clamp every pixel moves by exactly eps (or 0 where grad is 0)
    assert torch.allclose(moved[inside & (moved > 0)], torch.tensor(0.1), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, mlp.parameters()))
    assert torch.equal(fgsm(mlp, x, y, 0.0), x)


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_pgd_stays_in_the_eps_ball_and_in_0_1(mlp, digits, eps):
    x, y = digits.x_test[:40], digits.y_test[:40]
    x_adv = pgd(mlp, x, y, eps, steps=5, seed=0)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv, pgd(mlp, x, y, eps, steps=5, seed=0))


def test_pgd_is_at_least_as_strong_as_fgsm(mlp, digits):
    x, y = digits.x_test, digits.y_test
    assert evaluate(mlp, pgd(mlp, x, y, 0.1), y) <= evaluate(mlp, fgsm(mlp, x, y, 0.1), y) < evaluate(mlp, x, y) - 0.3


def test_fake_quant_masks_gradients_and_straight_through_restores_them(mlp, w4a4, digits):
    x, y = digits.x_test[:100], digits.y_test[:100]
    assert torch.equal(fgsm(w4a4, x, y, 0.1), x)  # round() has zero gradient: the attack moves nothing
    ste = straight_through(w4a4)
    assert torch.equal(ste(x), w4a4(x))  # same outputs ...
    assert evaluate(w4a4, fgsm(ste, x, y, 0.1), y) < evaluate(w4a4, x, y) - 0.3  # ... and a working attack
    with pytest.raises(TypeError, match="quantize_model"):
        straight_through(mlp)


def test_attack_table_rows(mlp, w4a4, digits):
    rows = attack_table({"float": mlp}, {"float": mlp, "W4A4": w4a4}, digits.x_test[:30], digits.y_test[:30], [0.0, 0.1])
    assert [(r["eps"], r["target"]) for r in rows] == [(0.0, "float"), (0.0, "W4A4"), (0.1, "float"), (0.1, "W4A4")]
    with pytest.raises(ValueError, match="'fgsm' or 'pgd'"):
        attack_table({"f": mlp}, {"f": mlp}, digits.x_test[:2], digits.y_test[:2], [0.1], attack="cw")


@pytest.mark.parametrize("call, error, fragment", [
    (lambda m, x, y: fgsm(m, x, y, -0.1), ValueError, "eps must be"),
    (lambda m, x, y: fgsm(m, x, y, float("nan")), ValueError, "eps must be"),
    (lambda m, x, y: fgsm(m, x, y[:2], 0.1), ValueError, "one label per image"),
    (lambda m, x, y: fgsm(m, x, y.float(), 0.1), ValueError, "integer"),
    (lambda m, x, y: fgsm("model", x, y, 0.1), TypeError, "nn.Module"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=0), ValueError, "steps"),
    (lambda m, x, y: pgd(m, x, y, 0.1, step_size=-1.0), ValueError, "step_size"),
    (lambda m, x, y: fgsm(m, x * float("nan"), y, 0.1), ValueError, "NaN"),
], ids=["eps-negative", "eps-nan", "lengths", "float-labels", "not-a-model", "steps", "step-size", "nan-images"])
def test_attack_bad_input(call, error, fragment):
    model, x, y = _linear(), torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2])
    with pytest.raises(error, match=fragment):
        call(model, x, y)


# ----------------------------------------------------------------------------- calibration poisoning
def test_poisoning_copies_and_scales_the_chosen_images():
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = poison_calibration(x, 0.05, factor=20.0, seed=1)
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(x, before) and int(changed.sum()) == 5
    assert torch.allclose(out[changed], 20 * x[changed])
    assert torch.equal(poison_calibration(x, 0.0), x) and torch.equal(poison_calibration(x, n=0), x)
    assert int((poison_calibration(x, 1e-9) != x).flatten(1).any(1).sum()) == 1  # a positive fraction: >= 1 image
    assert int((poison_calibration(x, n=3) != x).flatten(1).any(1).sum()) == 3
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            poison_calibration(x, bad)
    with pytest.raises(ValueError, match="exactly one"):
        poison_calibration(x)
    with pytest.raises(ValueError, match="exactly one"):
        poison_calibration(x, 0.1, n=1)
    with pytest.raises(ValueError, match="n must be between 0 and 100"):
        poison_calibration(x, n=101)
    with pytest.raises(ValueError, match="factor"):
        poison_calibration(x, 0.1, factor=float("inf"))


def test_one_poisoned_image_inflates_the_minmax_scale_by_the_expected_factor(mlp, digits):
    config = PTQConfig(weight_bits=8, act_bits=4)
    clean = calibration_report(mlp, config, digits.x_calib, digits.x_test, digits.y_test)
    poisoned_x = poison_calibration(digits.x_calib, n=1, factor=20.0, seed=0)  # one image
    poisoned = calibration_report(mlp, config, poisoned_x, digits.x_test, digits.y_test)
    expected = 20.0 * float(poisoned_x.max() / 20.0) / float(digits.x_calib.max())  # its max vs the clean max
    assert poisoned.scales["fc1"] / clean.scales["fc1"] == pytest.approx(expected, rel=1e-6)
    assert all(poisoned.scales[n] > 5 * clean.scales[n] for n in clean.scales)  # every layer downstream too
    # lesson 09: at 4-bit activations one image in 256 costs more than 15 points; percentile calibration cuts the loss
    assert poisoned.accuracy < clean.accuracy - 0.15
    pct = PTQConfig(weight_bits=8, act_bits=4, act_method="percentile", percentile=99.9)
    assert calibration_report(mlp, pct, poisoned_x, digits.x_test, digits.y_test).accuracy > poisoned.accuracy + 0.05


def test_faded_calibration_shrinks_the_scale_and_clean_pixels_clip(mlp, digits):
    config = PTQConfig(weight_bits=8, act_bits=8)
    faded = calibration_report(mlp, config, corrupt(digits.x_calib, "contrast", 3), digits.x_test, digits.y_test)
    clean = calibration_report(mlp, config, digits.x_calib, digits.x_test, digits.y_test)
    assert faded.scales["fc1"] < 0.75 * clean.scales["fc1"] and faded.clip_rates["fc1"] > 0.2
    assert clean.clip_rates == {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}


# ----------------------------------------------------------------------------- clip rate and the monitor
def test_clip_rate_exact_cases_and_both_bounds():
    x = torch.tensor([-0.12, 0.0, 0.7, 1.5, 1.52, 1.64])  # codes -1, 0, 7, 15, 15, 16 on a uint4 grid of step 0.1
    assert clip_rate(x, 0.1, 0, UINT4) == pytest.approx(2 / 6)
    assert clip_rate(torch.tensor([1.549]), 0.1, 0, UINT4) == 0.0  # rounds onto qmax: represented, not clipped
    assert clip_rate(torch.tensor([1.551]), 0.1, 0, UINT4) == 1.0
    assert clip_rate(torch.tensor([-0.8, 0.2, 0.74]), 0.1, 3, IntFormat(4)) == pytest.approx(1 / 3)  # codes -5, 5, 10
    with pytest.raises(ValueError, match="scale must be positive"):
        clip_rate(x, 0.0, 0, UINT4)
    with pytest.raises(TypeError, match="IntFormat"):
        clip_rate(x, 0.1, 0, "uint4")


def test_clip_rate_agrees_with_calibrations_clipped_fraction():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 3
    fmt = IntFormat(4, signed=False)
    from qedu.quantizers import choose_qparams_from_minmax

    scale, zero_point = choose_qparams_from_minmax(torch.tensor(-1.0), torch.tensor(2.0), fmt, False)
    assert clip_rate(x, scale, zero_point, fmt) == pytest.approx(clipping_error(x, -1.0, 2.0, fmt).clipped_fraction)


def test_monitor_alarms_on_a_shifted_stream_not_on_the_calibration_stream(w4a4, digits):
    monitor = RangeMonitor(w4a4, digits.x_calib)
    calm = monitor.check(digits.x_calib)
    assert not calm.alarm and calm.rates == calm.baseline == {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}
    assert "ok" in calm.summary()
    for batch in digits.x_test.split(60):  # clean test batches: no false alarm
        assert not monitor.check(batch).alarm
    brighter = monitor.check(digits.x_test * 1.5)  # a sensor gain change
    assert brighter.alarm and "fc1" in brighter.clipping_alarms and brighter.rates["fc1"] > 0.2
    assert brighter.summary().startswith("ALARM")
    dim = monitor.check(digits.x_test * 0.2)  # inputs faded to a fifth: most levels unused
    assert dim.underuse_alarms and not dim.clipping_alarms


def test_monitor_bad_input(mlp, w4a4, digits):
    with pytest.raises(TypeError, match="quantize_model"):
        RangeMonitor(quantize_model(mlp, PTQConfig(act_bits=None)), digits.x_calib)
    with pytest.raises(ValueError, match="tolerance"):
        RangeMonitor(w4a4, digits.x_calib, tolerance=1.5)
    with pytest.raises(ValueError, match="underuse"):
        RangeMonitor(w4a4, digits.x_calib, underuse=-0.1)


# ----------------------------------------------------------------------------- lesson 09's claims
def test_lesson_09_calibration_set_claims(mlp, digits):
    from qedu.widgets.evaluation import calibration_sets

    config = PTQConfig(weight_bits=8, act_bits=4)
    sets = calibration_sets(digits, seed=0)
    report = {name: calibration_report(mlp, config, x, digits.x_test, digits.y_test) for name, x in sets.items()}
    clean = report["balanced, 256 images"]
    assert report["1 image"].clip_rates["fc3"] > 0.01  # "a few percent of the last layer's inputs clip"
    assert 0.18 < report["faded (contrast 3)"].clip_rates["fc1"] < 0.25  # "about a fifth"
    assert report["faded (contrast 3)"].accuracy == min(r.accuracy for r in report.values()) < clean.accuracy - 0.01
    assert abs(report["noisy (gaussian_noise 3)"].accuracy - clean.accuracy) <= 1 / 360 + 1e-9  # "barely matter"


def test_lesson_09_poisoning_defence_and_monitor_claims(mlp, digits):
    config = PTQConfig(weight_bits=8, act_bits=4)
    poisoned = poison_calibration(digits.x_calib, n=1, factor=20.0, seed=0)
    clean = calibration_report(mlp, config, digits.x_calib, digits.x_test, digits.y_test)
    fixed = calibration_report(mlp, config, poisoned.clamp(0, 1), digits.x_test, digits.y_test)
    assert fixed.scales == clean.scales and fixed.accuracy == clean.accuracy  # "restores min/max exactly"
    assert 64 / (256 * 64) > 0.001  # one image is more than the 0.1 % a 99.9th percentile discards
    monitor = RangeMonitor(fixed.quantized, digits.x_calib)
    x, y = digits.x_test, digits.y_test
    assert monitor.check(x * 16).clipping_alarms and monitor.check(x * 0.2).underuse_alarms
    for silent in (corrupt(x, "gaussian_noise", 3), corrupt(x, "contrast", 4)):  # blind spots, and they cost
        assert not monitor.check(silent).alarm and evaluate(fixed.quantized, silent, y) < clean.accuracy - 0.14
    bad_monitor = RangeMonitor(calibration_report(mlp, config, poisoned, x, y).quantized, poisoned)
    assert bad_monitor.check(x).underuse_alarms  # a poisoned calibration shows up on clean data


def test_lesson_09_attack_claims(mlp, w4a4, digits):
    x, y = digits.x_test, digits.y_test
    targets = {"float32": mlp, "W4A4": w4a4}
    rows = attack_table({"float32": mlp}, targets, x, y, [0.05, 0.2])
    rows += attack_table({"float32": mlp}, targets, x, y, [0.05, 0.2], attack="pgd")
    acc = {(r["attack"], r["target"], r["eps"]): r["accuracy"] for r in rows}
    for target in targets:
        assert acc["pgd", target, 0.05] <= acc["fgsm", target, 0.05] + 1 / 360  # PGD at least as strong
        assert acc["fgsm", target, 0.2] < 0.05  # "every version falls"
    through = evaluate(w4a4, fgsm(straight_through(w4a4), x, y, 0.1), y)
    transfer = evaluate(w4a4, fgsm(mlp, x, y, 0.1), y)
    assert abs(through - transfer) < 0.05  # "works as well as the transferred one"


def test_lesson_09_shift_versus_quantization_loss(mlp, digits):
    deployed = quantize_model(mlp, PTQConfig(weight_bits=8, act_bits=4), digits.x_calib)
    x, y = digits.x_test, digits.y_test
    clean = evaluate(mlp, x, y)

    def split(stream):  # (lost to the shift, lost to quantization on top), in points
        f, q = evaluate(mlp, stream, y), evaluate(deployed, stream, y)
        return 100 * (clean - f), 100 * (f - q)

    noisy, faded = split(corrupt(x, "gaussian_noise", 3)), split(corrupt(x, "contrast", 4))
    for shift, quant in (noisy, faded):  # "almost all of it is the shift: the float model loses as much"
        assert shift > 15 and abs(quant) < 0.15 * shift
    assert noisy[1] < 0  # "on the noisy stream the W8A4 model is even slightly better"
    shift, quant = split(x * 16)  # "the float model loses under a point ... about 15 points go to quantization"
    assert shift < 1 and 14 <= quant <= 16


def test_lesson_09_drift_test_claims(mlp, digits):
    from qedu.drift import DriftMonitor, false_alarm_rate

    deployed = quantize_model(mlp, PTQConfig(weight_bits=8, act_bits=4), digits.x_calib)
    monitor, drift = RangeMonitor(deployed, digits.x_calib), DriftMonitor(deployed, digits.x_calib, threshold=0.1)
    x = digits.x_test
    noisy, faded = corrupt(x, "gaussian_noise", 3), corrupt(x, "contrast", 4)
    for stream in (noisy, faded):  # "the drift test sees both streams the range monitor missed"
        assert drift.check(stream).alarm and not monitor.check(stream).alarm
    assert round(max(drift.check(noisy).psi.values()), 2) == 0.19 and round(max(drift.check(faded).psi.values()), 1) == 7.5
    for stream in (x * 1.5, x * 16, x * 0.2):
        assert drift.check(stream).alarm and monitor.check(stream).alarm
    for m in (monitor, drift):  # "neither monitor alarmed on any of the 200 batches"
        assert false_alarm_rate(m, x, batch_size=32, n_batches=200, seed=0) == 0.0
    assert round(1 - 0.05 ** (1 / 200), 3) == 0.015  # rule of three: "about 3 / n, here 1.5 %"
    mild = corrupt(x, "contrast", 1)  # "a PSI above 6, while the float model loses a single image"
    assert max(drift.check(mild).psi.values()) > 6
    assert round((evaluate(mlp, x, digits.y_test) - evaluate(mlp, mild, digits.y_test)) * 360) == 1


def test_lesson_09_bpda_claims(mlp, w4a4, digits):
    from qedu.models import predict

    x, y = digits.x_test, digits.y_test
    assert round(100 * evaluate(w4a4, fgsm(mlp, x, y, 0.1), y), 1) == 50.8  # "leaves W4A4 at 50.8 %"
    assert round(100 * evaluate(mlp, fgsm(mlp, x, y, 0.1), y), 1) == 38.9  # "the float model keeps 38.9 %"
    through = straight_through(w4a4)
    table = {}
    for eps in (0.05, 0.1, 0.15, 0.2):
        on_float = [fgsm(mlp, x, y, eps), pgd(mlp, x, y, eps, steps=10)]
        bpda = pgd(through, x, y, eps, steps=10)
        table[eps] = (100 * float(torch.stack([predict(mlp, a) == y for a in on_float]).all(0).double().mean()),
                      100 * evaluate(w4a4, bpda, y),
                      100 * float(torch.stack([predict(w4a4, a) == y for a in on_float + [bpda]]).all(0).double().mean()))
        assert evaluate(w4a4, bpda, y) >= evaluate(w4a4, on_float[1], y) - 0.02  # "gets no further than the transferred"
    assert (round(table[0.1][2], 1), round(table[0.1][0], 1)) == (43.6, 34.7)
    assert all(table[eps][1] - table[eps][2] < 3 for eps in table)  # "the worst case over all three changes little"
    assert (round(table[0.05][2], 1), round(table[0.05][0], 1)) == (71.7, 80.0)  # "the less robust one"
    assert all(v < 7 for eps in (0.15, 0.2) for v in (table[eps][0], table[eps][2]))  # "from eps 0.15 both below 7 %"
    from qedu.evaluation import dynamic_int8, int8_support

    targets = {"float32": mlp, "W8A8": quantize_model(mlp, PTQConfig(), digits.x_calib), "W4A4": w4a4}
    targets.update({"int8": dynamic_int8(mlp)} if int8_support()[0] else {})
    for attack, ceiling in (("pgd", 0.01), ("fgsm", 0.03)):  # "at eps 0.2 PGD leaves every one below 1 % (FGSM below 3 %)"
        assert all(r["accuracy"] < ceiling for r in attack_table({"float32": mlp}, targets, x, y, [0.2], attack=attack))
    assert abs(float(w4a4.fc1.act.scale) - 1 / 15) < 1e-6  # "a step of 1/15"


def test_lesson_09_membership_claims(mlp, digits):
    from qedu.evaluation import dynamic_int8, int8_support
    from qedu.membership import loss_threshold_attack

    members = torch.randperm(len(digits.x_train), generator=torch.Generator().manual_seed(0))[:360]
    targets = [mlp, quantize_model(mlp, PTQConfig(), digits.x_calib),
               quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4), digits.x_calib)]
    targets += [dynamic_int8(mlp)] if int8_support()[0] else []
    results = [loss_threshold_attack(m, digits.x_train[members], digits.y_train[members], digits.x_test, digits.y_test)
               for m in targets]
    f = results[0]
    assert (round(f.member_loss, 3), round(f.nonmember_loss, 3)) == (0.023, 0.121)
    assert round(100 * f.tpr) == 85 and round(100 * f.fpr) == 81 and round(f.auc, 2) == 0.53
    assert all(0.027 <= r.advantage <= 0.04 and 0.532 <= r.auc <= 0.536 for r in results)  # "2.8 to 3.9", "0.533 to 0.535"
    se = (f.tpr * (1 - f.tpr) / 360 + f.fpr * (1 - f.fpr) / 360) ** 0.5
    assert 0.025 < se < 0.03 and max(r.advantage for r in results) - min(r.advantage for r in results) < se


def test_lesson_09_bit_flip_claims(mlp, digits):
    from qedu.bitflip import bit_flip_attack

    x_attack, y_attack = digits.x_train[:128], digits.y_train[:128]
    runs = {}
    for bits, config in ((8, PTQConfig()), (4, PTQConfig(weight_bits=4, act_bits=8))):
        runs[bits] = bit_flip_attack(quantize_model(mlp, config, digits.x_calib), x_attack, y_attack, n_flips=10,
                                     top_k=20, x_eval=digits.x_test, y_eval=digits.y_test)
    n_weights = sum(p.numel() for n, p in mlp.named_parameters() if n.endswith("weight"))
    assert (n_weights, n_weights * 8) == (17_024, 136_192)  # "ten flipped bits out of 136,192"
    eight, four = runs[8], runs[4]
    assert round(100 * eight.accuracies[0]) == 97 and round(100 * eight.accuracies[-1]) == 37  # "from 97 % to 37 %"
    first = eight.flips[0]  # "the first is a sign bit: code -1 becomes +127"
    assert (first.bit, first.old_code, first.new_code) == (7, -1, 127)
    assert sum(f.bit == 7 for f in eight.flips) == 9  # "nine of the ten are sign bits"
    assert all(f.layer == "fc3" for f in eight.flips)  # "all ten sit in the last layer"
    assert round(100 * four.accuracies[-1]) == 36  # "falls just as fast (36 % after ten flips)"
    assert all(a >= b for a, b in zip(eight.accuracies, eight.accuracies[1:]))  # each flip does more damage


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
import math  # noqa: E402

from torch import nn  # noqa: E402

_TINY = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
_X, _Y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
ISSUE20_BAD = {
    "fgsm-pixels-0-16": (lambda: fgsm(_TINY, _X * 16, _Y, 0.1), ValueError, r"x must hold pixels in \[0, 1\].*x = pixel / 16"),
    "fgsm-negative-pixels": (lambda: fgsm(_TINY, _X - 1, _Y, 0.1), ValueError, r"x must hold pixels in \[0, 1\]"),
    "pgd-pixels-0-16": (lambda: pgd(_TINY, _X * 16, _Y, 0.1), ValueError, r"x must hold pixels in \[0, 1\]"),
    "pgd-step-nan": (lambda: pgd(_TINY, _X, _Y, 0.1, step_size=math.nan), ValueError, r"step_size must be a finite number"),
    "pgd-step-inf": (lambda: pgd(_TINY, _X, _Y, 0.1, step_size=math.inf), ValueError, r"step_size must be a finite number"),
    "pgd-step-str": (lambda: pgd(_TINY, _X, _Y, 0.1, step_size="0.01"), TypeError, r"step_size must be a number"),
    "fgsm-shape": (lambda: fgsm(_TINY, torch.full((2, 1, 3, 3), 0.5), _Y, 0.1), ValueError, r"cannot run on x of shape \(2, 1, 3, 3\)"),
    "clip-rate-zp-nan": (lambda: clip_rate(torch.ones(3), 0.1, math.nan, UINT4), TypeError, r"zero_point must be an integer"),
    "clip-rate-zp-fraction": (lambda: clip_rate(torch.ones(3), 0.1, 1.5, UINT4), TypeError, r"zero_point must be an integer"),
    "clip-rate-zp-range": (lambda: clip_rate(torch.ones(3), 0.1, 16, UINT4), ValueError, r"zero_point must lie in \[qmin, qmax\]"),
    "clip-rate-scale-shape": (lambda: clip_rate(torch.ones(3), torch.full((4,), 0.1), 0, UINT4), ValueError, r"scale has shape \(4,\)"),
    "clip-rate-scale-nan": (lambda: clip_rate(torch.ones(3), math.nan, 0, UINT4), ValueError, r"scale must be positive and finite"),
    "clip-rate-x-nan": (lambda: clip_rate(torch.tensor([math.nan]), 0.1, 0, UINT4), ValueError, r"x contains 1 NaN"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_attacks_take_float64_images_and_move_each_pixel_by_eps():
    x_adv = fgsm(_TINY, _X.double(), _Y, 0.1)
    assert x_adv.dtype == torch.float32
    assert torch.allclose((x_adv - _X).abs(), torch.full_like(_X, 0.1))
    assert float((pgd(_TINY, _X.double(), _Y, 0.1) - _X).abs().max()) <= 0.1 + 1e-6
