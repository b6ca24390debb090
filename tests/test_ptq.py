"""qedu.ptq: copies only, exact integer weights, BN folding, 8-bit within a point, honest sizes, clear errors."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from qedu.analysis import AblationTable, allocate_bits, layer_sensitivity
from qedu.calibration import clipping_error, kl_range, minmax_range, mse_range, percentile_range, record_activations
from qedu.data import load_digits
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.models import evaluate, make_cnn, make_mlp, pretrained
from qedu.ptq import (
    ActQuant, PTQConfig, QuantLayer, calibrate, convert, fold_batchnorm, fold_bn_params, model_size, prepare,
    quantizable_layers, quantize_model,
)
from qedu.quantizers import dequantize
from qedu.widgets.ptq import calibration_images, with_corrupted_image

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*", "ignore:Please use quant_min and quant_max")


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "qedu-models"  # never the user's cache; shared by this session's modules
    # the lessons' own models (same seed, same training): the claims at the end test what they print
    return {name: pretrained(name, seed=0, cache_dir=cache) for name in ("mlp", "cnn")}


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.05)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [type(m) for m in model.modules()], [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()])


def _assert_unchanged(model, snapshot):
    state, training, types, hooks = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert model.training == training and [type(m) for m in model.modules()] == types
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks


# ----------------------------------------------------------------------------- never mutate
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_nothing_mutates_the_callers_model(models, data, name):
    model = copy.deepcopy(models[name]).train()  # train mode too: BN would update its statistics
    before = _snapshot(model)
    config = PTQConfig(weight_bits=4, act_bits=4, act_method="mse", weight_method="mse")
    prepared = prepare(model, config)
    calibrate(prepared, data.x_calib)
    convert(prepared)
    fold_batchnorm(model)
    quantize_model(model, config, data.x_calib)
    model_size(model, config)
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- integer weights
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerGroup(16)], ids=["tensor", "channel", "group16"])
@pytest.mark.parametrize("bits, symmetric", [(8, True), (4, False), (2, True), (3, False)])
def test_converted_codes_dequantize_exactly_to_the_weights(models, data, granularity, bits, symmetric):
    config = PTQConfig(weight_bits=bits, weight_granularity=granularity, weight_symmetric=symmetric)
    q_model = quantize_model(models["mlp"], config, data.x_calib)
    fmt = IntFormat(bits)
    for name in ("fc1", "fc2", "fc3"):
        layer = q_model.get_submodule(name)
        assert isinstance(layer, QuantLayer) and layer.weight_q.dtype == torch.int32
        assert int(layer.weight_q.min()) >= fmt.qmin and int(layer.weight_q.max()) <= fmt.qmax
        w_hat = dequantize(layer.weight_q, layer.weight_scale, layer.weight_zero_point)
        assert torch.equal(w_hat, layer.layer.weight), name  # atol = 0
        scale = layer.weight_scale
        stored = granularity.compact(scale) if isinstance(granularity, PerGroup) else scale  # per group: repeated
        assert stored.numel() == granularity.num_params(layer.layer.weight.shape)
        if symmetric:
            assert torch.all(layer.weight_zero_point == 0)


def test_per_channel_weights_equal_torch_fake_quantize(models):
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    q_model = quantize_model(models["cnn"], PTQConfig(act_bits=None))
    folded = fold_batchnorm(models["cnn"])
    for name in ("conv1", "conv2", "fc"):
        w = folded.get_submodule(name).weight.detach()
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        obs(w)
        scale, zp = obs.calculate_qparams()
        expected = torch.fake_quantize_per_channel_affine(w, scale, zp.int(), 0, -128, 127)
        assert torch.equal(q_model.get_submodule(name).layer.weight, expected), name


def test_convert_freezes_activation_ranges_and_drops_observers(models, data):
    prepared = prepare(models["mlp"], PTQConfig(act_bits=8))
    acts = [m for m in prepared.modules() if isinstance(m, ActQuant)]
    assert len(acts) == 3 and not any(a.calibrated for a in acts)
    assert calibrate(prepared, data.x_calib) is prepared
    q_model = convert(prepared)
    frozen = [m for m in q_model.modules() if isinstance(m, ActQuant)]
    assert all(a.calibrated and a.observer is None for a in frozen)
    assert not any(p.requires_grad for p in q_model.parameters()) and not q_model.training
    assert frozen[0].zero_point.item() == 0  # pixels are >= 0: the affine grid starts at 0
    x = data.x_test[:50]
    assert torch.equal(q_model(x), prepared(x))  # calibrated prepared model == converted model
    calibrate(prepared, data.x_calib[:10])  # calibrating again starts afresh
    assert prepared.fc1.act.observer.n_batches == 1


def test_weight_only_needs_no_calibration(models, data):
    config = PTQConfig(weight_bits=4, act_bits=None)
    q_model = quantize_model(models["mlp"], config)
    assert not any(isinstance(m, ActQuant) for m in q_model.modules())
    prepared = prepare(models["mlp"], config)
    assert torch.equal(convert(calibrate(prepared, data.x_calib))(data.x_test), q_model(data.x_test))


def test_everything_kept_float_is_the_float_model(models, data):
    layers = ["fc1", "fc2", "fc3"]
    q_model = quantize_model(models["mlp"], PTQConfig(keep_float=layers), data.x_calib)
    assert q_model.qedu_config.keep_float == tuple(layers)
    assert torch.equal(q_model(data.x_test), models["mlp"](data.x_test))


def test_overrides_and_keep_float(models, data):
    config = PTQConfig(weight_bits=2, act_bits=None, overrides={"fc1": {"weight_bits": 8}}, keep_float=["fc3"])
    q_model = quantize_model(models["mlp"], config)
    assert q_model.fc1.weight_q.unique().numel() > 4 and q_model.fc2.weight_q.unique().numel() <= 4
    assert type(q_model.fc3) is nn.Linear and torch.equal(q_model.fc3.weight, models["mlp"].fc3.weight)
    assert config.for_layer("fc3") is None and config.for_layer("fc1").weight_bits == 8
    assert config == PTQConfig(weight_bits=2, act_bits=None, overrides=[("fc1", {"weight_bits": 8})], keep_float=("fc3",))
    assert hash(config) == hash(PTQConfig(weight_bits=2, act_bits=None, overrides={"fc1": {"weight_bits": 8}},
                                          keep_float=["fc3", "fc3"]))


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("act_bits", [None, 8], ids=["W8", "W8A8"])
def test_8_bit_ptq_is_within_one_point_of_float(models, data, name, act_bits):
    model = models[name]
    float_acc = evaluate(model, data.x_test, data.y_test)
    for granularity in (PerTensor(), PerChannel(0)):
        config = PTQConfig(weight_bits=8, weight_granularity=granularity, act_bits=act_bits)
        acc = evaluate(quantize_model(model, config, data.x_calib), data.x_test, data.y_test)
        assert abs(acc - float_acc) <= 0.01, (name, granularity, acc, float_acc)


def test_at_2_bits_mse_clipping_beats_minmax(models, data):
    model = models["mlp"]
    accs = {m: evaluate(quantize_model(model, PTQConfig(weight_bits=2, weight_method=m, act_bits=None)),
                        data.x_test, data.y_test) for m in ("minmax", "mse")}
    assert accs["mse"] > accs["minmax"] + 0.05, accs


# ----------------------------------------------------------------------------- batch-norm folding
def test_fold_batchnorm_gives_the_same_outputs(models, data):
    for model in (models["cnn"], _randomise_bn(make_cnn(seed=1), seed=1)):
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert quantizable_layers(folded) == ["conv1", "conv2", "fc"]
        with torch.no_grad():
            assert torch.allclose(folded(data.x_test), model.eval()(data.x_test), atol=1e-4, rtol=1e-5)


def test_fold_batchnorm_linear_bn1d_with_bias_and_leaves_lonely_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    for bn in (model[1], model[3]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_()
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3], nn.BatchNorm1d)  # after a ReLU: not foldable
    x = torch.randn(9, 5)
    assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_fold_bn_params_is_the_formula():
    w, b = torch.randn(3, 2), torch.randn(3)
    mean, var, gamma, beta = torch.randn(3), torch.rand(3) + 0.1, torch.randn(3), torch.randn(3)
    wf, bf = fold_bn_params(w, b, mean, var, gamma, beta, 1e-5)
    s = gamma / torch.sqrt(var + 1e-5)
    assert torch.allclose(wf, w * s[:, None]) and torch.allclose(bf, beta + (b - mean) * s)


# ----------------------------------------------------------------------------- size
def test_model_size_is_the_arithmetic():
    mlp = make_mlp(seed=0)
    assert model_size(mlp).total_bytes == 17226 * 4
    n_w, n_out = 64 * 128 + 128 * 64 + 64 * 10, 128 + 64 + 10
    w4 = model_size(mlp, PTQConfig(weight_bits=4, act_bits=None))
    assert w4.total_bytes == n_w // 2 + n_out * 4 + n_out * 4  # codes + per-channel scales + float biases
    assert w4.float_bytes == 17226 * 4 and math.isclose(w4.compression, 17226 * 4 / w4.total_bytes)
    affine = model_size(mlp, PTQConfig(weight_bits=3, weight_granularity=PerTensor(), weight_symmetric=False, act_bits=8))
    assert affine.total_bytes == math.ceil(8192 * 3 / 8) * 2 + math.ceil(640 * 3 / 8) + 3 * 8 + n_out * 4 + 3 * 8
    mixed = model_size(mlp, PTQConfig(weight_bits=2, act_bits=None, overrides={"fc1": {"weight_bits": 8}}, keep_float=["fc3"]))
    assert mixed.total_bytes == 8192 + 8192 // 4 + (128 + 64) * 8 + (640 + 10) * 4
    assert "| **total** |" in mixed.to_markdown()


def test_model_size_of_the_cnn_counts_folded_layers():
    cnn = make_cnn(seed=0)
    assert model_size(cnn).total_bytes == 9978 * 4 + (16 + 32) * 2 * 4  # BN running mean and var are stored too
    folded_float = model_size(cnn, PTQConfig(weight_bits=8, act_bits=None, keep_float=["conv1", "conv2", "fc"]))
    assert folded_float.total_bytes == (144 + 16 + 4608 + 32 + 5120 + 10) * 4  # BN gone, conv biases appear
    w8 = model_size(cnn, PTQConfig(weight_bits=8, act_bits=None))
    assert w8.total_bytes == (144 + 4608 + 5120) + (16 + 32 + 10) * 4 * 2


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight_bits=1), ValueError, "weight_bits must be between 2 and 16, got 1"),
    (dict(weight_bits=17), ValueError, "weight_bits must be between 2 and 16"),
    (dict(weight_bits=4.0), TypeError, "pass 4 instead"),
    (dict(act_bits=0), ValueError, "act_bits must be between 2 and 16, got 0"),
    (dict(weight_method="kl"), ValueError, "weight_method='kl' is not one of 'minmax', 'mse', 'percentile'"),
    (dict(act_method="entropy"), ValueError, "act_method='entropy' is not one of"),
    (dict(weight_granularity="per_channel"), TypeError, "weight_granularity must be"),
    (dict(percentile=101), ValueError, "percentile must be a number in"),
    (dict(overrides={"fc1": {"bits": 4}}), ValueError, r"overrides\['fc1'\] sets \['bits'\].*weight_bits"),
    (dict(overrides={"fc1": {"weight_bits": 1}}), ValueError, "weight_bits must be between 2 and 16, got 1"),
    (dict(overrides=["fc1"]), TypeError, "overrides must map layer names"),
    (dict(keep_float=[3]), TypeError, "keep_float must be a list of layer names"),
    (dict(weight_symmetric=1), TypeError, "weight_symmetric must be True or False"),
])
def test_config_errors_name_argument_value_and_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        PTQConfig(**kwargs)


def test_pipeline_errors_name_argument_value_and_fix(data):
    mlp = make_mlp(seed=0)
    with pytest.raises(ValueError, match=r"\['fc9'\].*quantizable layers are \['fc1', 'fc2', 'fc3'\]"):
        prepare(mlp, PTQConfig(keep_float=["fc9"]))
    with pytest.raises(ValueError, match=r"\['conv1'\]"):
        model_size(mlp, PTQConfig(overrides={"conv1": {"weight_bits": 8}}))
    with pytest.raises(TypeError, match="config must be a PTQConfig"):
        prepare(mlp, {"weight_bits": 4})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prepare("mlp")
    prepared = prepare(mlp, PTQConfig())
    with pytest.raises(ValueError, match="already prepared"):
        prepare(prepared)
    with pytest.raises(ValueError, match="x_calib is empty"):
        calibrate(prepared, data.x_calib[:0])
    bad = data.x_calib.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="x_calib contains 1 NaN"):
        calibrate(prepared, bad)
    with pytest.raises(RuntimeError, match=r"calibrate\(prepared, x_calib\) before convert"):
        convert(prepared)
    with pytest.raises(TypeError, match="was not prepared"):
        calibrate(mlp, data.x_calib)
    with pytest.raises(ValueError, match="x_calib is needed to calibrate the 8-bit activations"):
        quantize_model(mlp, PTQConfig())


# ----------------------------------------------------------------------------- what lessons 03-04 say
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
IMAGE = 100 / 360  # one test image, in points


def _acc(model, data, config=None, x_calib=None):
    q = model if config is None else quantize_model(model, config, x_calib)
    return 100 * evaluate(q, data.x_test, data.y_test)


def test_lesson03_one_corrupted_image_and_the_four_rules(models, data):
    mlp = models["mlp"]
    bad = with_corrupted_image(data.x_calib)
    clean_h, bad_h = record_activations(mlp, data.x_calib)["fc2"], record_activations(mlp, bad)["fc2"]
    assert bad_h.max() > 10 * clean_h.max() and bad_h.max() / 15 > 2  # "ten times too wide, a step of about 2.2"
    fmt = IntFormat(4, signed=False)
    test_h = record_activations(mlp, data.x_test)["fc2"]
    base = clipping_error(test_h, *minmax_range(clean_h), fmt)
    for lo, hi in (percentile_range(clean_h, 99.9), mse_range(clean_h, fmt), kl_range(clean_h, fmt)):
        e = clipping_error(test_h, lo, hi, fmt)
        assert hi < 0.8 * clean_h.max() and e.rounding < 0.6 * base.rounding and e.clipped_fraction < 0.005
    assert percentile_range(bad_h, 99.9)[1] > 5 * clean_h.max()  # the bad image is 0.4 % > 0.1 % of the values
    assert mse_range(bad_h, fmt)[1] > 5 * clean_h.max()  # MSE keeps what the calibration data holds
    assert kl_range(bad_h, fmt)[1] < clean_h.max()  # KL clips the outliers away
    accs = {m: [_acc(mlp, data, PTQConfig(weight_bits=8, act_bits=4, act_method=m, percentile=99.9), x)
                for x in (data.x_calib, bad)] for m in ("minmax", "percentile", "mse", "kl")}
    clean = [a[0] for a in accs.values()]
    assert max(clean) - min(clean) <= 2 * IMAGE + 1e-9  # "within a test image or two"
    assert accs["minmax"][0] - accs["minmax"][1] > 15 and accs["kl"][0] - accs["kl"][1] < 1
    assert accs["minmax"][1] < accs["mse"][1] < accs["percentile"][1] < accs["kl"][1]


def test_lesson03_one_image_calibrates_about_as_well_as_256(models, data):
    mlp = models["mlp"]
    accs = {n: _acc(mlp, data, PTQConfig(weight_bits=8, act_bits=3), calibration_images(data, n)) for n in (1, 256)}
    assert accs[1] >= accs[256]
    tops = [record_activations(mlp, calibration_images(data, n))["fc3"].max() for n in (1, 256)]
    assert tops[1] > tops[0]


def test_lesson03_multi_seed_calibration_results():
    results = json.loads((RESULTS / "ptq_calibration.json").read_text())
    samples, outliers = AblationTable.from_dict(results["samples"]), AblationTable.from_dict(results["outliers"])
    assert results["seeds"] == [0, 1, 2]
    for model in ("mlp", "cnn"):
        clean = [r["acc_mean"] for r in samples.where(model=model)]
        assert max(clean) - min(clean) < 1.0  # "barely matter"

        def drop(method):
            rows = {r["outlier"]: r["acc_mean"] for r in outliers.where(model=model, act_bits=4, method=method)}
            return rows["none"] - rows["one corrupted image"]

        assert 15 < drop("minmax") < 25 and 7 < drop("mse") < 13 and 2 < drop("percentile") < 5 and drop("kl") < 0.5


def test_lesson04_bits_granularity_clipping_and_size(models, data):
    mlp = models["mlp"]
    float_acc = _acc(mlp, data)
    w8 = model_size(mlp, PTQConfig(weight_bits=8, act_bits=8))
    assert 0.08 < (w8.total_bytes - sum(r["weight_bytes"] for r in w8.rows)) / w8.total_bytes < 0.10  # "about 9 %"
    cols = {"tensor": (PerTensor(), None, "minmax"), "channel": (PerChannel(0), None, "minmax"),
            "mse": (PerChannel(0), None, "mse"), "wa": (PerChannel(0), "same", "minmax"), "wa_mse": (PerChannel(0), "same", "mse")}

    def row(bits):
        return {k: _acc(mlp, data, PTQConfig(weight_bits=bits, weight_granularity=g, weight_method=m,
                                               act_bits=bits if a else None, act_method=m), data.x_calib)
                for k, (g, a, m) in cols.items()}

    four, three, two = row(4), row(3), row(2)
    assert min(four.values()) >= float_acc - 1.5 and min(three.values()) >= float_acc - 2.5
    assert two["tensor"] < 70 and two["channel"] > two["tensor"] + 10 and two["mse"] >= float_acc - 1.5
    assert three["wa"] <= three["channel"] and three["wa_mse"] <= three["mse"] and abs(four["wa"] - four["channel"]) <= 1


def test_lesson04_batchnorm_folding_claims(models, data):
    cnn = models["cnn"]
    folded = fold_batchnorm(cnn)

    def spread(net):
        m = net.conv1.weight.detach().abs().flatten(1).amax(dim=1)
        return float(m.max() / m.min())

    assert spread(folded) > spread(cnn)
    accs = {(g, f): _acc(cnn, data, PTQConfig(weight_bits=b, weight_granularity=g, act_bits=None, fold_bn=f))
            for b in (3,) for g in (PerTensor(), PerChannel(0)) for f in (True, False)}
    assert accs[PerTensor(), False] > accs[PerTensor(), True]  # "unfolded looks better per tensor"
    for b in (4, 3):
        per_channel = [_acc(cnn, data, PTQConfig(weight_bits=b, act_bits=None, fold_bn=f)) for f in (True, False)]
        assert abs(per_channel[0] - per_channel[1]) <= IMAGE + 1e-9  # "within a test image"


def test_lesson04_sensitivity_and_mixed_precision_claims(models, data):
    mlp = models["mlp"]
    assert evaluate(mlp, data.x_calib, data.y_calib) == 1.0  # "the float model gets all 256 right"
    rows = layer_sensitivity(mlp, PTQConfig(weight_bits=2, act_bits=None), data.x_calib, data.x_calib)
    assert rows[0]["layer"] == "fc3"
    plain, keep = PTQConfig(weight_bits=2, act_bits=None), PTQConfig(weight_bits=2, act_bits=None, overrides={"fc3": {"weight_bits": 8}})
    assert _acc(mlp, data, keep) > _acc(mlp, data, plain) + 5
    assert model_size(mlp, keep).total_bytes < 1.1 * model_size(mlp, plain).total_bytes
    budget = model_size(mlp, PTQConfig(weight_bits=3, act_bits=None)).total_bytes
    a = allocate_bits(mlp, PTQConfig(act_bits=None), data.x_calib, budget, candidate_bits=(8, 4, 3, 2))
    assert _acc(mlp, data, a.config) <= _acc(mlp, data, PTQConfig(weight_bits=3, act_bits=None))  # "does not beat"


def test_lesson04_multi_seed_ablation_results():
    results = json.loads((RESULTS / "ptq_ablation.json").read_text())
    t = AblationTable.from_dict(results["digits"])
    floats = AblationTable.from_dict(results["digits_float"])
    assert results["seeds"] == [0, 1, 2]
    assert max(r["drop_mean"] for r in t.where(bits=8)) < 0.5  # 8 bits nearly free

    def acc(model, bits, granularity, method, scheme="W"):
        return t.get("acc", model=model, scheme=scheme, bits=bits, granularity=granularity, method=method)

    for model in ("mlp", "cnn"):
        float_acc = floats.get("acc", model=model)[0]
        assert acc(model, 2, "per-channel", "minmax")[0] > acc(model, 2, "per-tensor", "minmax")[0]
        assert acc(model, 2, "per-channel", "mse")[0] > acc(model, 2, "per-channel", "minmax")[0] + 5
        for g in ("per-tensor", "per-channel"):
            assert 10 <= float_acc - acc(model, 2, g, "minmax")[0] <= 75  # "lose 10-70 points"
    for bits in (3, 4):  # MLP at 3-4 bits: per-tensor vs per-channel within the seed spread
        a, b = acc("mlp", bits, "per-tensor", "minmax"), acc("mlp", bits, "per-channel", "minmax")
        assert abs(a[0] - b[0]) <= a[1] + b[1]
    assert acc("cnn", 3, "per-channel", "mse")[0] > acc("cnn", 3, "per-channel", "minmax")[0]
    assert floats.get("acc", model="cnn")[0] - acc("cnn", 2, "per-channel", "mse")[0] > 3  # "several points below"
    names = AblationTable.from_dict(results["names"])
    float_bpc = AblationTable.from_dict(results["names_float"]).get("bpc", task="names")[0]

    def bpc(bits, granularity, method):
        return names.get("bpc", scheme="W", bits=bits, granularity=granularity, method=method)[0]

    assert bpc(4, "per-tensor", "minmax") > float_bpc + 0.3 and bpc(4, "per-channel", "minmax") < float_bpc + 0.15
    assert bpc(2, "per-channel", "mse") > float_bpc + 0.5


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
from torch import nn  # noqa: E402

from qedu.memory import TinyGPT  # noqa: E402


def _bn_args(**changes):
    args = dict(weight=torch.ones(2, 3), bias=None, running_mean=torch.zeros(2), running_var=torch.full((2,), 3.0),
                gamma=torch.ones(2), beta=torch.ones(2), eps=1e-5)
    args.update(changes)
    return args


ISSUE20_BAD = {
    "bn-var-nan": (lambda: fold_bn_params(**_bn_args(running_var=torch.tensor([float("nan"), 1.0]))), ValueError, r"running_var holds NaN or inf"),
    "bn-var-negative": (lambda: fold_bn_params(**_bn_args(running_var=torch.tensor([-1.0, 1.0]))), ValueError, r"running_var must be >= 0"),
    "bn-var-zero-eps-zero": (lambda: fold_bn_params(**_bn_args(running_var=torch.zeros(2), eps=0.0)), ValueError, r"running_var \+ eps is 0"),
    "bn-eps-nan": (lambda: fold_bn_params(**_bn_args(eps=float("nan"))), ValueError, r"eps must be a finite number >= 0"),
    "bn-gamma-inf": (lambda: fold_bn_params(**_bn_args(gamma=torch.tensor([1.0, float("inf")]))), ValueError, r"gamma holds NaN or inf"),
    "bn-shape": (lambda: fold_bn_params(**_bn_args(running_mean=torch.zeros(3))), ValueError, r"running_mean must hold one value per output channel, shape \(2,\)"),
    "bn-bias-shape": (lambda: fold_bn_params(**_bn_args(bias=torch.zeros(5))), ValueError, r"bias must hold one value per output channel"),
    "bn-weight-list": (lambda: fold_bn_params(**_bn_args(weight=[[1.0]])), TypeError, r"weight must be a floating-point tensor"),
    "keep-float-int": (lambda: PTQConfig(keep_float=5), TypeError, r"keep_float must be a list of layer names such as \['fc1'\], got int 5"),
    "overrides-int": (lambda: PTQConfig(overrides=5), TypeError, r"overrides must map layer names to dicts.*got int 5"),
    "overrides-value-int": (lambda: PTQConfig(overrides={"fc1": 8}), TypeError, r"overrides\['fc1'\] must be a dict of settings"),
    "bare-linear": (lambda: prepare(nn.Linear(4, 2)), ValueError, r"model is itself a bare Linear.*nn.Sequential\(model\)"),
    "transformer-layer": (lambda: prepare(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)), ValueError,
                          r"layer '\(the model\)' is a torch TransformerEncoderLayer.*Supported: models whose"),
    "attention-inside": (lambda: prepare(nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))), ValueError,
                         r"layer '1' is a torch MultiheadAttention"),
    "quantlayer-not-a-layer": (lambda: QuantLayer(nn.ReLU(), PTQConfig()), TypeError, r"layer must be an nn.Linear"),
    "calib-shape": (lambda: quantize_model(make_mlp(seed=0), PTQConfig(), torch.rand(4, 3)), ValueError,
                    r"cannot run on x_calib of shape \(4, 3\)"),
    "calib-float64-beyond-float32": (lambda: quantize_model(make_mlp(seed=0), PTQConfig(), torch.full((2, 1, 8, 8), 1e39, dtype=torch.float64)),
                                     ValueError, r"x_calib holds 128 finite value"),
    "calib-empty-ids": (lambda: quantize_model(TinyGPT(16, 8, 16, 1, 2), PTQConfig(), torch.zeros(0, 8, dtype=torch.long)),
                        ValueError, r"x_calib is empty"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_quant_layer_copies_the_callers_layer():
    layer = nn.Linear(8, 4)
    before = copy.deepcopy(layer.state_dict())
    q = QuantLayer(layer, PTQConfig(weight_bits=2))
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert q.layer is not layer and q.layer.weight.unique().numel() <= 4 * 4  # 2-bit codes per channel


def test_issue20_calibrate_casts_float64_inputs_to_the_models_dtype():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    q64 = quantize_model(make_mlp(seed=0), PTQConfig(act_bits=8), x.double())
    q32 = quantize_model(make_mlp(seed=0), PTQConfig(act_bits=8), x)
    assert torch.equal(q64(x), q32(x))


def test_issue20_tiny_gpt_with_token_ids_is_quantized():
    model = TinyGPT(vocab_size=16, seq_len=8, hidden=16, n_layers=1, n_heads=2)
    ids = torch.randint(16, (6, 8), generator=torch.Generator().manual_seed(0))
    q = quantize_model(model, PTQConfig(weight_bits=8, act_bits=8), ids)
    assert set(quantizable_layers(model)) <= {n for n, m in q.named_modules() if isinstance(m, QuantLayer)}
    with torch.no_grad():
        ref, out = model(ids), q(ids)
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 1e-3


def test_issue20_transformer_refusal_names_a_fix_that_works():
    """A model holding nn.MultiheadAttention is refused before any work (no partial copy is made)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="qedu.models.TinyGPT"):
        quantize_model(model, PTQConfig(act_bits=None))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
