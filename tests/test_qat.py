"""qedu.qat: the STE's gradients, fake_quantize_ste == fake_quantize, copies only, exact conversion,
QAT reproduces 8-bit predictions and beats 2-bit PTQ, clear errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qedu.data import load_digits
from qedu.formats import INT8, IntFormat
from qedu.granularity import PerChannel, PerTensor
from qedu.models import evaluate, make_cnn, make_mlp, predict, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.qat import (
    QATConfig, QATLayer, QuantizedLayer, TrainingProgress, convert, fake_quantize_ste, prepare_qat, round_clip_ste,
    round_ste, train_qat,
)
from qedu.quantizers import choose_qparams, dequantize, fake_quantize

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*")


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.mktemp("qedu-cache"))  # never the user's cache


# ----------------------------------------------------------------------------- the straight-through estimator
def test_round_ste_forward_is_round_and_backward_is_identity():
    v = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.3, -0.7, 3.49], requires_grad=True)
    upstream = torch.arange(1.0, 10.0)
    y = round_ste(v)
    assert torch.equal(y, torch.round(v.detach()))  # ties to even, like torch.round
    y.backward(upstream)
    assert torch.equal(v.grad, upstream)  # d round_ste / d v = 1: the upstream gradient passes unchanged


def test_plain_round_has_no_useful_gradient_and_the_ste_is_not_the_true_gradient():
    v = torch.tensor([0.2, 0.7, 1.4], dtype=torch.float64, requires_grad=True)
    torch.round(v).sum().backward()
    assert torch.equal(v.grad, torch.zeros(3, dtype=torch.float64))  # round is flat: gradient 0 everywhere
    # finite differences see the flat steps (derivative 0), the STE claims 1: gradcheck must disagree
    assert not torch.autograd.gradcheck(round_ste, (v.detach().requires_grad_(),), raise_exception=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=30), st.integers(-8, 0), st.integers(1, 8))
def test_round_clip_ste_gradient_is_one_inside_and_zero_outside(values, lo, hi):
    v = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    y = round_clip_ste(v, lo, hi)
    y.sum().backward()
    inside = (v.detach() >= lo) & (v.detach() <= hi)
    assert torch.equal(y, torch.clamp(torch.round(v.detach()), lo, hi))
    assert torch.equal(v.grad, inside.float())


def test_round_clip_ste_takes_tensor_bounds():
    v = torch.tensor([[-3.0, 0.4], [2.6, 0.9]], requires_grad=True)
    round_clip_ste(v, torch.tensor([[-2.0], [0.0]]), torch.tensor([[1.0], [2.0]])).sum().backward()
    assert v.grad.tolist() == [[0.0, 1.0], [0.0, 1.0]]


# ----------------------------------------------------------------------------- fake_quantize_ste
def _near_ties(scale: float, n: int = 2000) -> torch.Tensor:
    """Values at and one float32 step around every half-step boundary, plus random ones."""
    k = torch.arange(-n // 2, n // 2, dtype=torch.float32)
    ties = (k + 0.5) * scale
    return torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1),
                      torch.randn(n, generator=torch.Generator().manual_seed(0)) * scale * 100])


@pytest.mark.parametrize("fmt", [INT8, IntFormat(4), IntFormat(2), IntFormat(2, narrow_range=True),
                                 IntFormat(8, signed=False)], ids=str)
@pytest.mark.parametrize("scale, zero_point", [(0.1, 0), (0.0371, 3), (1.7, -1)], ids=["s0.1", "s0.0371-zp3", "s1.7-zp-1"])
def test_fake_quantize_ste_forward_equals_fake_quantize_exactly(fmt, scale, zero_point):
    zero_point = min(max(zero_point, fmt.qmin), fmt.qmax)
    x = _near_ties(scale)
    assert torch.equal(fake_quantize_ste(x, scale, zero_point, fmt), fake_quantize(x, scale, zero_point, fmt))


def test_fake_quantize_ste_per_channel_equals_fake_quantize_and_torch():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    scale, zero_point = choose_qparams(w, IntFormat(3), PerChannel(0), symmetric=False)
    ours = fake_quantize_ste(w, scale, zero_point, IntFormat(3))
    assert torch.equal(ours, fake_quantize(w, scale, zero_point, IntFormat(3)))
    torchs = torch.fake_quantize_per_channel_affine(w, scale.flatten(), zero_point.flatten(), 0, -4, 3)
    assert torch.equal(ours, torchs)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=40),
       st.floats(0.0009765625, 10.0, width=32), st.sampled_from([2, 3, 4, 8]))
def test_fake_quantize_ste_property_equal_forward_and_masked_gradient(values, scale, bits):
    fmt = IntFormat(bits)
    x = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    x_hat = fake_quantize_ste(x, scale, 0, fmt)
    assert torch.equal(x_hat, fake_quantize(x.detach(), scale, 0, fmt))
    x_hat.sum().backward()
    v = x.detach() * (1.0 / torch.tensor(scale))
    inside = ((v >= fmt.qmin) & (v <= fmt.qmax)).float()  # clipped STE, decided by the unrounded code
    torch.testing.assert_close(x.grad, inside, rtol=1e-6, atol=0)  # scale * (1/scale) is 1 up to an ulp


def test_fake_quantize_ste_gradient_matches_torch_except_in_the_half_step_band():
    # torch's fake-quant tests the *rounded* code against [qmin, qmax]; qedu (and the LSQ paper) the unrounded
    # one. They agree everywhere except within half a step outside the range.
    x = torch.linspace(-3.0, 3.0, 6001, requires_grad=True)
    fake_quantize_ste(x, 0.5, 0, IntFormat(3)).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    torch.fake_quantize_per_tensor_affine(x, 0.5, 0, -4, 3).sum().backward()
    v = x.detach() / 0.5
    band = ((v > 3) & (v < 3.5)) | ((v < -4) & (v >= -4.5))
    assert torch.equal(ours[~band], x.grad[~band])
    assert bool((ours[band] == 0).all() & (x.grad[band] == 1).all()) and int(band.sum()) > 0


def test_fake_quantize_ste_keeps_float64_and_is_the_true_gradient_where_everything_clips():
    # outside the range x_hat = s * qmax (or s * qmin): there the STE/LSQ gradients are the true ones
    x = torch.tensor([-9.0, -5.0, 4.0, 7.5], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert fake_quantize_ste(x, s, 0, IntFormat(3)).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x, s: fake_quantize_ste(x, s, 0, IntFormat(3)), (x, s))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(x=torch.tensor([1, 2])), TypeError, "x must be a floating-point"),
        (dict(x=[1.0, 2.0]), TypeError, "x must be a floating-point"),
        (dict(x=torch.tensor([])), ValueError, "x is empty"),
        (dict(x=torch.tensor([float("nan")])), ValueError, "x holds NaN"),
        (dict(scale=0.0), ValueError, "scale must be positive"),
        (dict(scale=torch.tensor([0.1, 0.2, 0.3])), ValueError, "scale has shape"),
        (dict(scale="0.1"), TypeError, "scale must be a float"),
        (dict(zero_point=0.5), TypeError, "zero_point must be an integer"),
        (dict(zero_point=300), ValueError, "zero_point must lie in"),
        (dict(fmt="int8"), TypeError, "fmt must be an IntFormat"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_fake_quantize_ste_bad_input_names_the_argument(kwargs, error, fragment):
    args = dict(x=torch.tensor([0.1, 0.2]), scale=0.1, zero_point=0, fmt=INT8) | kwargs
    with pytest.raises(error, match=fragment):
        fake_quantize_ste(**args)


def test_round_ste_bad_input():
    with pytest.raises(TypeError, match="v must be a floating-point"):
        round_ste(torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(weight_bits=1), ValueError, "weight_bits must be between 2 and 16"),
        (dict(weight_bits=2.0), TypeError, "pass 2 instead"),
        (dict(method="ste"), ValueError, "method='ste' is not one of"),
        (dict(scale_init="max"), ValueError, "scale_init='max'"),
        (dict(act_method="relu6"), ValueError, "act_method='relu6'"),
        (dict(act_bits=0), ValueError, "act_bits must be between"),
        (dict(weight_granularity="per-channel"), TypeError, "weight_granularity must be"),
        (dict(fold_bn=1), TypeError, "fold_bn must be True or False"),
        (dict(keep_float=[1]), TypeError, "keep_float must be a list of layer names"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_config_bad_values_are_named(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        QATConfig(**kwargs)


def test_config_names():
    assert QATConfig(weight_bits=2, method="minmax", weight_granularity=PerTensor()).name == "W2 minmax per-tensor"
    assert QATConfig(weight_bits=3, act_bits=4, act_method="pact").name == "W3A4 lsq/pact per-channel"
    assert QATConfig(weight_bits=2, weight_narrow_range=True).weight_format().levels == 3  # ternary
    assert QATConfig(keep_float="fc1").keep_float == ("fc1",)


# ----------------------------------------------------------------------------- prepare / convert
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()], model.training


def _assert_same(model, snapshot):
    state, types, training = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert [type(m) for m in model.modules()] == types and model.training == training


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_prepare_train_convert_never_touch_the_callers_model(make, data):
    model = make(seed=0).train()
    snapshot = _state(model)
    config = QATConfig(weight_bits=4, act_bits=4)
    prepared = prepare_qat(model, config, data.x_calib[:64])
    _assert_same(model, snapshot)
    train_qat(prepared, data, epochs=1, progress=False, batch_size=256)  # trains the copy only
    _assert_same(model, snapshot)
    prepared_snapshot = _state(prepared)
    convert(prepared)
    _assert_same(prepared, prepared_snapshot)


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_zero_epochs_of_minmax_qat_is_ptq(make, bits):
    """Before training, QAT-minmax computes what qedu.ptq's weight-only min/max PTQ computes, exactly
    (and LSQ started from the MSE range what PTQ with MSE clipping computes)."""
    model = make(seed=0)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for method, init, weight_method in (("minmax", "mse", "minmax"), ("lsq", "mse", "mse")):
        qat = prepare_qat(model, QATConfig(weight_bits=bits, method=method, scale_init=init)).eval()
        ptq = quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None, weight_method=weight_method))
        with torch.no_grad():
            assert torch.equal(qat(x), ptq(x)), (method, bits)


def test_prepare_wraps_every_layer_except_keep_float_and_folds_bn():
    prepared = prepare_qat(make_cnn(seed=0), QATConfig(weight_bits=4, keep_float=["fc"]))
    assert isinstance(prepared.conv1, QATLayer) and isinstance(prepared.conv2, QATLayer)
    assert type(prepared.fc) is nn.Linear and type(prepared.bn1) is nn.Identity
    assert prepared.training


@pytest.mark.parametrize("config", [QATConfig(weight_bits=2, method="minmax"), QATConfig(weight_bits=3),
                                    QATConfig(weight_bits=4, weight_granularity=PerTensor(), act_bits=4),
                                    QATConfig(weight_bits=2, weight_narrow_range=True, act_bits=3, act_method="pact")],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_convert_stores_integers_that_dequantize_exactly_to_the_fake_quant_weights(config, make, data):
    prepared = prepare_qat(make(seed=0), config, data.x_calib)
    train_qat(prepared, data, epochs=1, progress=False, batch_size=128)  # move weights and learned steps
    converted = convert(prepared)
    fmt = config.weight_format()
    for name, layer in prepared.named_modules():
        if not isinstance(layer, QATLayer):
            continue
        q = converted.get_submodule(name)
        assert isinstance(q, QuantizedLayer) and q.weight_q.dtype == torch.int32
        assert int(q.weight_q.min()) >= fmt.qmin and int(q.weight_q.max()) <= fmt.qmax
        w_hat = dequantize(q.weight_q, q.weight_scale, q.weight_zero_point)
        assert torch.equal(w_hat, layer.quantized_weight())
        assert torch.equal(q.layer.weight, w_hat)
    with torch.no_grad():
        assert torch.equal(converted(data.x_test), prepared.eval()(data.x_test))
    assert not converted.training and not any(p.requires_grad for p in converted.parameters())


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda m: prepare_qat("mlp"), TypeError, "model must be a torch.nn.Module"),
        (lambda m: prepare_qat(m, PTQConfig()), TypeError, "config must be a QATConfig"),
        (lambda m: prepare_qat(m, QATConfig(keep_float=["fc9"])), ValueError, r"keep_float names \['fc9'\]"),
        (lambda m: prepare_qat(m, QATConfig(act_bits=4)), ValueError, "x_calib is needed"),
        (lambda m: prepare_qat(prepare_qat(m)), ValueError, "already prepared"),
        (lambda m: convert(m), TypeError, "must be the model prepare_qat"),
        (lambda m: train_qat(m, load_digits()), TypeError, "must come from prepare_qat"),
        (lambda m: train_qat(prepare_qat(m), load_digits(), callback=3), TypeError, "callback must be a function"),
        (lambda m: train_qat(prepare_qat(m), load_digits(), progress="yes"), TypeError, "progress must be True or False"),
        (lambda m: train_qat(prepare_qat(m), load_digits(), epochs=0), ValueError, "epochs must be between 1"),
        (lambda m: train_qat(prepare_qat(m), load_digits(), lr=-1.0), ValueError, "lr"),
        (lambda m: train_qat(prepare_qat(m), "digits"), TypeError, "data"),
    ],
    ids=["model", "config", "keep_float", "x_calib", "twice", "convert-float", "train-float", "callback", "progress",
         "epochs", "lr", "data"],
)
def test_bad_calls_name_the_argument_and_the_fix(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(make_mlp(seed=0))


def test_pact_on_negative_inputs_is_refused_with_a_fix():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3))  # no ReLU: fc2 sees negatives
    with pytest.raises(ValueError, match="act_method='lsq'"):
        prepare_qat(model, QATConfig(act_bits=4, act_method="pact"), torch.randn(16, 1, 8, 8))
    prepared = prepare_qat(model, QATConfig(act_bits=4, act_method="lsq"), torch.randn(16, 1, 8, 8))
    assert prepared[2].act.fmt.signed and prepared[1].act.fmt.signed  # signed codes where inputs go below 0


# ----------------------------------------------------------------------------- training
def test_train_qat_calls_back_each_epoch_and_prints_a_text_progress_bar(data, capsys):
    prepared = prepare_qat(make_mlp(seed=0), QATConfig(weight_bits=4))
    seen = []
    history = train_qat(prepared, data, epochs=2, callback=lambda e, m: seen.append((e, sorted(m))), batch_size=256)
    assert seen == [(1, ["seconds", "test_acc", "train_loss"]), (2, ["seconds", "test_acc", "train_loss"])]
    assert len(history.test_acc) == 2 and history.train_loss[1] < history.train_loss[0]
    out = capsys.readouterr().out
    assert "QAT [##########..........] epoch 1/2" in out and "epoch 2/2" in out and out.endswith("\n")


def test_progress_widget_mode_builds_a_bar():
    bar = TrainingProgress(3, mode="widget")
    bar.update(2, {"train_loss": 0.5, "test_acc": 0.9, "seconds": 0.1})
    assert bar.bar.value == 2 and bar.bar.max == 3 and "90.0 %" in bar.label.value
    with pytest.raises(ValueError, match="mode='fast'"):
        TrainingProgress(3, mode="fast")


def test_qat_at_8_bits_reproduces_the_float_models_predictions(mlp, data):
    prepared = prepare_qat(mlp, QATConfig(weight_bits=8, act_bits=8), data.x_calib)
    train_qat(prepared, data, epochs=1, progress=False)  # the default lr: the weights really move
    same = (predict(convert(prepared), data.x_test) == predict(mlp, data.x_test)).double().mean().item()
    assert same >= 0.97, f"8-bit QAT agrees with float on only {100 * same:.1f} % of test images"


def test_qat_at_2_bits_beats_2_bit_ptq_by_a_clear_margin(mlp, data):
    # REFERENCE: 2-bit min/max PTQ of the MLP collapses (31-66 % per tensor, 83-89 % per channel here);
    # one epoch of QAT brings it back to ~95 %.
    ptq = evaluate(quantize_model(mlp, PTQConfig(weight_bits=2, act_bits=None)), data.x_test, data.y_test)
    results = {}
    for method in ("minmax", "lsq"):
        prepared = prepare_qat(mlp, QATConfig(weight_bits=2, method=method, scale_init="minmax"))
        history = train_qat(prepared, data, epochs=3, seed=0, progress=False)
        results[method] = history.test_acc[-1]  # after the third epoch, not the best one
        assert evaluate(convert(prepared), data.x_test, data.y_test) == history.test_acc[-1]
    assert min(results.values()) >= 0.93 and min(results.values()) >= ptq + 0.05, (ptq, results)


def test_ternary_qat_moves_few_codes_farther_from_the_float_weights_yet_recovers(mlp, data):
    """Lesson 05's claims: ternary min/max PTQ collapses; 3 epochs of QAT recover most of it while changing
    only a few percent of the codes, and its weights are *farther* from the float weights than PTQ's."""
    ternary = QATConfig(weight_bits=2, weight_narrow_range=True, method="minmax")
    ptq = convert(prepare_qat(mlp, ternary))
    qat = prepare_qat(mlp, ternary)
    train_qat(qat, data, epochs=3, progress=False)
    qat = convert(qat)
    acc_ptq, acc_qat = (evaluate(m, data.x_test, data.y_test) for m in (ptq, qat))
    assert acc_ptq < 0.8 and acc_qat > 0.93 and acc_qat > acc_ptq + 0.2, (acc_ptq, acc_qat)
    for name in ("fc1", "fc2", "fc3"):
        w = mlp.get_submodule(name).weight.detach()
        a, b = ptq.get_submodule(name), qat.get_submodule(name)
        assert (a.weight_q != b.weight_q).double().mean() < 0.1
        assert ((b.layer.weight - w) ** 2).mean() > ((a.layer.weight - w) ** 2).mean()


def test_lsq_starts_matter_at_epoch_0_and_w2a2_qat_beats_w2a2_ptq(mlp, data):
    starts = {init: evaluate(prepare_qat(mlp, QATConfig(weight_bits=2, weight_narrow_range=True, scale_init=init)),
                             data.x_test, data.y_test) for init in ("minmax", "mse", "lsq")}
    assert min(starts["mse"], starts["lsq"]) > starts["minmax"] + 0.15, starts
    ptq = evaluate(quantize_model(mlp, PTQConfig(weight_bits=2, act_bits=2), data.x_calib), data.x_test, data.y_test)
    w2a2 = prepare_qat(mlp, QATConfig(weight_bits=2, act_bits=2, act_method="pact"), data.x_calib)
    train_qat(w2a2, data, epochs=3, progress=False)
    assert evaluate(convert(w2a2), data.x_test, data.y_test) > ptq + 0.05


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
import copy  # noqa: E402

from torch import nn  # noqa: E402


def test_issue20_quantized_layer_copies_the_callers_layer():
    layer = nn.Linear(4, 2)
    before = copy.deepcopy(layer.state_dict())
    w = layer.weight.detach()
    scale, zero_point = choose_qparams(w, INT8, PerChannel(0))
    from qedu.quantizers import quantize

    q = QuantizedLayer(layer, quantize(w, scale, zero_point, INT8), scale, zero_point, None)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad  # not replaced
    assert torch.equal(q.layer.weight, dequantize(q.weight_q, scale, zero_point))


ISSUE20_BAD = {
    "ste-scale-1/scale-inf": (lambda: fake_quantize_ste(torch.ones(2), 1e-40, 0, INT8), ValueError, r"1 / scale overflows"),
    "ste-grid-overflow": (lambda: fake_quantize_ste(torch.ones(2), 3e38, 0, INT8), ValueError, r"too large for int8"),
    "ste-nan": (lambda: fake_quantize_ste(torch.tensor([float("nan")]), 0.1, 0, INT8), ValueError, r"x holds NaN or inf"),
    "quantized-layer-not-module": (lambda: QuantizedLayer("fc1", torch.zeros(1), torch.ones(1), torch.zeros(1), None),
                                   TypeError, r"layer must be a torch.nn.Module"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
