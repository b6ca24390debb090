"""qedu.adaround: learned rounding stays within one step of RTN and reconstructs the output better."""
import pytest
import torch

from qedu.adaround import adaround_layer, adaround_model, rectified_sigmoid, rtn_model
from qedu.formats import IntFormat
from qedu.granularity import PerChannel
from qedu.models import make_cnn, pretrained
from qedu.ptq import PTQConfig, fold_batchnorm, quantize_model
from qedu.quantizers import choose_qparams, quantize


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")


@pytest.fixture(scope="module")
def x_calib():
    from qedu.data import load_digits

    return load_digits(seed=0).x_calib


def test_rectified_sigmoid_reaches_0_and_1():
    h = rectified_sigmoid(torch.linspace(-20, 20, 101))
    assert h.min() == 0 and h.max() == 1 and torch.all(h[1:] >= h[:-1])


def test_rtn_model_equals_the_ptq_pipeline_weights(mlp):
    rtn = rtn_model(mlp, 3)
    ptq = quantize_model(mlp, PTQConfig(weight_bits=3, act_bits=None))
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(rtn.get_submodule(name).weight, ptq.get_submodule(name).layer.weight)


@pytest.mark.parametrize("bits", [4, 3])
def test_adaround_codes_stay_within_one_step_and_the_error_is_no_larger(mlp, x_calib, bits):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    rounded, results = adaround_model(mlp, bits, x_calib, iters=300)
    fmt = IntFormat(bits)
    for name, r in results.items():
        w = fold_batchnorm(mlp).get_submodule(name).weight.detach()
        assert torch.equal(r.q_rtn, quantize(w, *choose_qparams(w, fmt, PerChannel(0)), fmt))  # RTN on the same grid
        assert (r.q - r.q_rtn).abs().max().item() <= 1  # never more than one step from RTN
        assert int(r.q.min()) >= fmt.qmin and int(r.q.max()) <= fmt.qmax
        assert (r.q != r.q_rtn).any()  # it did learn something
        assert r.error <= r.error_rtn, name  # on the calibration batch, with the same inputs
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # caller's model untouched
    with torch.no_grad():  # the whole model's output error on the calibration batch is smaller too
        y = mlp(x_calib)
        err = {label: ((m(x_calib) - y) ** 2).sum().item() for label, m in (("ada", rounded), ("rtn", rtn_model(mlp, bits)))}
    assert err["ada"] < err["rtn"]


def test_adaround_layer_on_a_conv_and_seeded():
    cnn = fold_batchnorm(make_cnn(seed=0))
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = cnn.conv1(x)
    fmt = IntFormat(3)
    scale, zero_point = choose_qparams(cnn.conv1.weight.detach(), fmt, PerChannel(0))
    r = adaround_layer(cnn.conv1, x, target, scale, zero_point, fmt, iters=100)
    assert r.q.shape == cnn.conv1.weight.shape and (r.q - r.q_rtn).abs().max() <= 1 and r.error <= r.error_rtn
    state = torch.random.get_rng_state()
    a, b = (adaround_model(make_cnn(seed=0), 3, x, iters=20, seed=1)[1] for _ in range(2))
    assert all(torch.equal(a[n].q, b[n].q) for n in a)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was


def test_bad_input():
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        rtn_model(make_cnn(seed=0), 1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        adaround_model(None, 4, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="iters must be between 1"):
        adaround_model(make_cnn(seed=0), 4, torch.zeros(2, 1, 8, 8), iters=0)
