"""qedu.deploy: every real int8/int4 path (torch.ao, torchao, ONNX Runtime) computes what qedu's
fake-quantized reference of the same recipe computes, keeps the digits accuracy, and shrinks the file.

The model is exported to ONNX once for the module (the slowest step: a few seconds) and each path
is deployed once, in a temporary folder. The ONNX Runtime and torchao paths need the ``deploy``
extra: without it their tests skip with that reason (CI sets QEDU_REQUIRE_EXTRAS=1, which turns
the skip into a failure). The torch paths and the reference need torch alone.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from qedu.data import load_digits
from qedu.deploy import (PATHS, RECIPES, TOLERANCE, cpu_features, deploy, ort_saturates, reference,
                         saturating_pair_matmul)
from qedu.models import make_cnn, make_mlp, pretrained

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

REASON = "the 'deploy' extra (pip install -e '.[deploy]': onnx, onnxruntime, onnxscript, torchao) is not installed; CI installs it"
NEEDS = {p: (("onnx", "onnxruntime", "onnxscript") if p.startswith("ort") else ("torchao",) if p.startswith("torchao") else ())
         for p in PATHS}
# accuracy on the 360 test digits may drop by at most this much (in points) against the float model
MARGIN = {p: (2.0 if p == "ort_int4" else 1.0) for p in PATHS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return pretrained("mlp"), load_digits(), tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def onnx_file(setup):
    pytest.importorskip("onnxscript", reason=REASON)
    pytest.importorskip("onnxruntime", reason=REASON)
    from qedu.deploy import export_onnx

    model, data, folder = setup
    model.train()  # a mode export_onnx must leave alone (test_export_leaves_the_model_alone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    file = export_onnx(model, folder / "mlp_fp32.onnx", data.x_calib[:2])
    _EXPORT_LEFT["training"] = model.training
    _EXPORT_LEFT["same_weights"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    return file


_EXPORT_LEFT: dict = {}


def test_export_leaves_the_model_alone(onnx_file):
    assert _EXPORT_LEFT == {"training": True, "same_weights": True}
    assert onnx_file.stat().st_size > 4 * 17_226  # float32 weights and biases


_DEPLOYED: dict = {}


def deployed(path, setup, request):
    """Deploy ``path`` once per module (the ORT paths quantize the one export)."""
    for name in NEEDS[path]:
        pytest.importorskip(name, reason=REASON)
    if path not in _DEPLOYED:
        model, data, folder = setup
        onnx_file = request.getfixturevalue("onnx_file") if path.startswith("ort") else None
        _DEPLOYED[path] = deploy(model, path, folder, x_calib=data.x_calib, onnx_file=onnx_file)
    return _DEPLOYED[path]


def _rel_err(y, y_ref):
    return float((y - y_ref).abs().max() / y_ref.abs().max())


@pytest.mark.parametrize("path", PATHS)
def test_each_path_computes_its_fake_quantized_reference(path, setup, request):
    model, data, _ = setup
    dep = deployed(path, setup, request)
    y = dep(data.x_test)
    y_ref = reference(model, path, data.x_calib)(data.x_test)
    assert y.shape == (len(data.x_test), 10) and y.dtype == torch.float32
    err = _rel_err(y, y_ref)
    assert err <= TOLERANCE[path], f"{path}: max|y - y_ref| / max|y_ref| = {err:.3g} > {TOLERANCE[path]}"
    if RECIPES[path].weight_fmt is not None:  # the reference explains the kernel, not just "close to float"
        with torch.no_grad():
            err_float = _rel_err(y, model(data.x_test))
        assert err_float > 1e-3 and err <= err_float / 100, (path, err, err_float)
    assert bool((y.argmax(1) == y_ref.argmax(1)).all())


@pytest.mark.parametrize("path", PATHS)
def test_each_path_keeps_the_digits_accuracy(path, setup, request):
    model, data, _ = setup
    dep = deployed(path, setup, request)
    with torch.no_grad():
        acc_float = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    acc = float((dep(data.x_test).argmax(1) == data.y_test).float().mean())
    assert acc_float > 0.9
    assert 100 * (acc_float - acc) <= MARGIN[path], f"{path}: {acc:.4f} vs float {acc_float:.4f}"


def test_quantized_files_are_smaller(setup, request):
    paths = [p for p in PATHS if all(_importable(name) for name in NEEDS[p])]
    sizes = {p: deployed(p, setup, request).bytes_on_disk for p in paths}
    for p in paths:
        assert sizes[p] == os.path.getsize(deployed(p, setup, request).file)
    # 17,226 parameters: 69 kB of float32; int8 weights are a quarter of that plus the format's overhead
    for p in ("torch_dynamic", "torchao_w8a8", "torchao_w8", "ort_dynamic", "ort_static"):
        if p in sizes:
            fp32 = sizes["ort_fp32" if p.startswith("ort") else "torch_fp32"]
            assert sizes[p] < 0.45 * fp32, (p, sizes[p], fp32)
    if "ort_int4" in sizes:
        assert sizes["ort_int4"] < sizes["ort_dynamic"] and sizes["ort_int4"] < 0.25 * sizes["ort_fp32"]


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------- what x86 int8 kernels really add
def test_saturating_pair_matmul_hand_cases():
    q_x = torch.tensor([[255, 255, 1, 2], [10, 20, 30, 40]])
    q_w = torch.tensor([[127, 127, 3, 4], [-128, -128, 0, 0]])
    # row 0: pair (255*127 + 255*127 = 64770) clamps to 32767, then + 1*3 + 2*4 = 11; row 1: no pair overflows
    assert saturating_pair_matmul(q_x, q_w).tolist() == [[32767 + 11, -32768], [10 * 127 + 20 * 127 + 90 + 160, -3840]]
    with pytest.raises(TypeError, match="q_x"):
        saturating_pair_matmul(torch.rand(2, 4), q_w)
    with pytest.raises(ValueError, match="even"):
        saturating_pair_matmul(q_x[:, :3], q_w[:, :3])
    small_x, small_w = torch.randint(0, 128, (5, 8)), torch.randint(-127, 128, (3, 8))
    assert torch.equal(saturating_pair_matmul(small_x, small_w), small_x @ small_w.T)  # 127 * 127 * 2 fits int16


def test_onnxruntime_matmulinteger_saturates_exactly_where_predicted():
    """ORT's u8 x s8 MatMulInteger on random full-range codes: the saturating sum on x86 without
    VNNI (ort_saturates()), the exact sum elsewhere; never anything else."""
    ort = pytest.importorskip("onnxruntime", reason=REASON)
    pytest.importorskip("onnx", reason=REASON)
    from onnx import TensorProto, helper, numpy_helper

    g = torch.Generator().manual_seed(0)
    k, n = 64, 32
    a = torch.randint(0, 256, (200, k), generator=g).to(torch.uint8)
    b = torch.randint(-127, 128, (k, n), generator=g).to(torch.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, n])],
        initializer=[numpy_helper.from_array(b.numpy(), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y = torch.from_numpy(session.run(None, {"A": a.numpy()})[0]).long()
    exact, saturated = a.long() @ b.long(), saturating_pair_matmul(a, b.T)
    assert int((exact == saturated).sum()) == 1908  # of 6,400: these codes often overflow int16 pairs (ort_saturates' docstring)
    expected = saturated if ort_saturates() else exact
    assert torch.equal(y, expected), f"ort_saturates()={ort_saturates()} on {cpu_features()}"


def test_ort_dynamic_reference_needs_the_cpus_saturation(setup, request):
    """The exact-sum reference misses ORT's outputs on a CPU that saturates, by far more than the tolerance."""
    model, data, _ = setup
    y = deployed("ort_dynamic", setup, request)(data.x_test)
    err_exact = _rel_err(y, reference(model, "ort_dynamic", saturate_pairs=False)(data.x_test))
    if ort_saturates():
        assert err_exact > 100 * TOLERANCE["ort_dynamic"]
    else:
        assert err_exact <= TOLERANCE["ort_dynamic"]


def test_ort_saturates_follows_the_flags():
    avx2 = {"flags": {"avx2": True}, "int8_dot_product": False}
    assert ort_saturates(avx2)
    assert not ort_saturates({"flags": {"avx2": True}, "int8_dot_product": True})  # VNNI or AMX
    assert not ort_saturates({"flags": {"avx2": False}, "int8_dot_product": True})  # ARM dot product
    assert not ort_saturates({"flags": None, "int8_dot_product": None})  # unknown: no /proc/cpuinfo
    features = cpu_features()
    assert features["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


# ----------------------------------------------------------------------------- the reference, without any extra
def test_reference_recipes_follow_each_librarys_conventions():
    w = torch.tensor([[1.0, -0.5], [0.25, 0.125]])
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.zero_()
    x = torch.tensor([[1.0, 0.0]])
    # torch and torchao: symmetric step max|w| / 127.5, so 1.0 lands on code 127.5 -> 128, clipped to 127
    assert reference(lin, "torchao_w8")(x)[0, 0].item() == pytest.approx(127 / 127.5, abs=1e-7)
    assert reference(lin, "torch_dynamic")(x)[0, 0].item() == pytest.approx(127 / 127.5, abs=1e-7)
    # ONNX Runtime: step max|w| / 127, so 1.0 is a grid point (and x's uint8 grid 0..1 holds 1.0 too)
    assert reference(lin, "ort_dynamic")(x)[0, 0].item() == pytest.approx(1.0, abs=1e-7)


def test_reference_does_not_change_the_model_and_checks_its_input():
    model = make_mlp(seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = reference(model, "torchao_w8a8")
    assert model.training and not ref.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="Flatten / Linear / ReLU"):
        reference(make_cnn(seed=0), "torch_dynamic")
    with pytest.raises(ValueError, match="path"):
        reference(model, "tensorrt")
    with pytest.raises(ValueError, match="x_calib"):
        reference(model, "ort_static")
    with pytest.raises(TypeError, match="saturate_pairs"):
        reference(model, "ort_dynamic", saturate_pairs="yes")
    for path in ("torch_fp32", "torchao_w8"):  # float paths too: NaN is refused, not passed through
        with pytest.raises(ValueError, match="x"):
            reference(model, path)(torch.full((2, 1, 8, 8), float("inf")))


def test_deploy_checks_its_input(tmp_path):
    model = make_mlp(seed=0)
    with pytest.raises(ValueError, match="folder"):
        deploy(model, "torch_dynamic", tmp_path / "missing")
    with pytest.raises(ValueError, match="x_calib"):
        deploy(model, "ort_static", tmp_path)
    with pytest.raises(TypeError, match="Flatten / Linear / ReLU"):
        deploy(make_cnn(seed=0), "torch_dynamic", tmp_path)
    with pytest.raises(ValueError, match="threads"):
        deploy(model, "torch_dynamic", tmp_path, threads=0)
    dep = deploy(model, "torch_dynamic", tmp_path)
    with pytest.raises(ValueError, match="x"):
        dep(torch.full((2, 1, 8, 8), float("nan")))


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"qedu\[deploy\]"):
        deploy(make_mlp(seed=0), "ort_dynamic", tmp_path)


def test_torch_dynamic_runs_on_a_bare_linear(tmp_path):
    """The core install's path (no extra): a single wide layer, as the benchmark times it."""
    lin = nn.Linear(256, 256)
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    dep = deploy(lin, "torch_dynamic", tmp_path)
    y_ref = reference(lin, "torch_dynamic")(x)
    assert _rel_err(dep(x), y_ref) <= TOLERANCE["torch_dynamic"]
    # the same recipe as lesson 08's from-scratch reference of torch's dynamic Linear
    from qedu.evaluation import dynamic_int8, dynamic_int8_reference

    with torch.no_grad():
        assert _rel_err(dynamic_int8_reference(dynamic_int8(nn.Sequential(lin))[0], x), y_ref) <= 1e-5
    assert np.isclose(dep.bytes_on_disk / os.path.getsize(deploy(lin, "torch_fp32", tmp_path).file), 0.25, atol=0.05)


def test_torch_dynamic_runs_on_its_own_engine_whatever_the_caller_chose(tmp_path):
    """A caller (or an earlier test) that switched torch to qnnpack, which ignores reduce_range, must not
    change what the deployed model computes; the caller's choice is put back afterwards."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no qnnpack engine")
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        dep = deploy(lin, "torch_dynamic", tmp_path)
        y = dep(x)
        assert torch.backends.quantized.engine == "qnnpack"
    finally:
        torch.backends.quantized.engine = previous
    assert _rel_err(y, reference(lin, "torch_dynamic")(x)) <= TOLERANCE["torch_dynamic"]
