"""qedu.robustness: corruptions are seeded, stay images, get worse with severity; bad calls are refused."""
from __future__ import annotations

import pytest
import torch

from qedu.data import load_digits
from qedu.evaluation import compare_models
from qedu.models import make_mlp, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.robustness import CORRUPTIONS, LEVELS, corrupt, robustness_table

RANDOM = ("gaussian_noise", "shift", "occlusion")
DETERMINISTIC = ("blur", "contrast")
assert set(RANDOM + DETERMINISTIC) == set(CORRUPTIONS)


@pytest.fixture(scope="module")
def x():
    return load_digits(seed=0).x_test[:64]


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shape_dtype_range_and_input_untouched(x, name, severity):
    before = x.clone()
    out = corrupt(x, name, severity, seed=0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before) and not torch.equal(out, x)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_tensor(x, name):
    assert torch.equal(corrupt(x, name, 3, seed=7), corrupt(x, name, 3, seed=7))


@pytest.mark.parametrize("name", RANDOM)
def test_different_seed_different_tensor(x, name):
    assert not torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=1))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_ignore_the_seed(x, name):
    assert torch.equal(corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=1))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_a_copy_and_damage_grows_with_severity(x, name):
    clean = corrupt(x, name, 0)
    assert torch.equal(clean, x) and clean is not x
    damage = [float((corrupt(x, name, s, seed=0) - x).abs().mean()) for s in range(1, 6)]
    assert damage == sorted(damage) and damage[0] > 0


def test_noise_has_the_stated_sigma():
    x = torch.full((200, 1, 8, 8), 0.5)
    for severity, sigma in enumerate(LEVELS["gaussian_noise"], 1):
        within = ((corrupt(x, "gaussian_noise", severity) - x).abs() < sigma).double().mean().item()
        assert within == pytest.approx(0.6827, abs=0.02)  # one sigma of a normal (the clamp at 0 and 1 is farther)


def test_contrast_keeps_each_image_mean_and_scales_deviations():
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = corrupt(x, "contrast", 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean(dim=(1, 2, 3), keepdim=True), mean, atol=1e-6)
    assert torch.allclose(out - mean, LEVELS["contrast"][1] * (x - mean), atol=1e-6)


def test_blur_keeps_a_constant_interior():
    out = corrupt(torch.full((1, 1, 8, 8), 0.5), "blur", 5)
    assert torch.allclose(out[0, 0, 2:6, 2:6], torch.tensor(0.5), atol=1e-6)  # zero padding darkens only the border
    assert out[0, 0, 0, 0] < 0.5


@pytest.mark.parametrize("severity", [1, 5])
def test_occlusion_erases_one_k_by_k_patch(severity):
    k = LEVELS["occlusion"][severity - 1]
    out = corrupt(torch.ones(20, 1, 8, 8), "occlusion", severity, seed=3)
    assert (out.sum(dim=(1, 2, 3)) == 64 - k * k).all()


def test_shift_moves_the_centre_of_mass_by_the_stated_distance():
    x = torch.zeros(50, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0  # a blob in the middle: nothing leaves the image
    out = corrupt(x, "shift", 5, seed=0)
    grid = torch.arange(8.0)

    def centre(img):
        m = img[:, 0]
        return torch.stack([(m.sum(2) * grid).sum(1), (m.sum(1) * grid).sum(1)], 1) / m.sum((1, 2))[:, None]

    distance = (centre(out) - centre(x)).norm(dim=1)
    assert torch.allclose(distance, torch.tensor(LEVELS["shift"][4]), atol=1e-4)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda x: corrupt(x, "fog", 1), ValueError, "'gaussian_noise', 'blur', 'shift', 'contrast', 'occlusion'"),
    (lambda x: corrupt(x, "blur", 6), ValueError, "severity must be between 0 and 5"),
    (lambda x: corrupt(x, "blur", -1), ValueError, "severity"),
    (lambda x: corrupt(x, "blur", 2.0), TypeError, "pass 2 instead"),
    (lambda x: corrupt(x[0], "blur", 1), ValueError, r"\(N, C, H, W\)"),
    (lambda x: corrupt(x * 16, "blur", 1), ValueError, "pixels in \\[0, 1\\]"),
    (lambda x: corrupt(x.fill_(float("nan")), "blur", 1), ValueError, "NaN"),
    (lambda x: corrupt(x[:0], "blur", 1), ValueError, "empty"),
    (lambda x: corrupt(x, "blur", 1, seed=-1), ValueError, "seed"),
], ids=["unknown-lists-valid", "severity-6", "severity-neg", "severity-float", "3-d", "not-0-1", "nan", "empty", "seed"])
def test_bad_input_is_a_clear_error(x, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(x.clone())


def test_robustness_table_same_images_for_every_model(x):
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    model = make_mlp(seed=0)
    t = robustness_table({"a": model, "b": make_mlp(seed=0)}, x, y, corruptions=["gaussian_noise", "shift"])
    assert len(t.rows) == 2 * 6 * 2
    assert all(r["gap"] == 0 for r in t.rows)  # identical models on identical images
    assert len(t.curve("b", "shift")) == 6 and t.curve("a", "shift", "gap") == [0.0] * 6
    assert "gaussian_noise" in t.to_markdown(3) and "(+0.0)" in t.to_markdown(3)
    with pytest.raises(ValueError, match="reference"):
        robustness_table({"a": model}, x, y, reference="float")
    with pytest.raises(ValueError, match="no rows"):
        t.curve("c", "shift")


def test_lesson_08_cnn_claims(tmp_path_factory):
    data = load_digits(seed=0)
    cnn = pretrained("cnn", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")  # ~3 s, once
    variants = {"float32": cnn, "W8A8": quantize_model(cnn, PTQConfig(), data.x_calib),
                "W4A4": quantize_model(cnn, PTQConfig(weight_bits=4, act_bits=4), data.x_calib)}
    t = robustness_table(variants, data.x_test, data.y_test, corruptions=["blur", "shift", "contrast"], severities=[0, 3])
    gap = {(r["model"], r["corruption"], r["severity"]): r["gap"] for r in t.rows}
    assert all(gap["W4A4", c, 0] >= -1 / 360 for c in ("blur", "shift", "contrast"))  # as good as float when clean
    assert all(gap["W4A4", c, 3] <= -0.03 for c in ("blur", "shift", "contrast"))  # several points worse corrupted
    assert all(abs(gap["W8A8", c, s]) <= 0.01 for c in ("blur", "shift", "contrast") for s in (0, 3))
    percentile = PTQConfig(weight_bits=4, act_bits=4, act_method="percentile", percentile=99.9)
    r = compare_models(cnn, quantize_model(cnn, percentile, data.x_calib), data.x_test, data.y_test)
    kinds = sorted(f["kind"] for f in r.flips.rows())
    assert r.accuracy_change == 0 and kinds == ["broken", "fixed"]  # same accuracy, two changed answers
