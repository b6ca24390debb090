"""Real int8 (and int4) kernels: the same model through the paths a user would pick.

Fake quantization (``qedu.ptq``) simulates a grid in float to measure accuracy. To *run* a
quantized model, people reach for a library. :func:`deploy` takes the kit's digits MLP (any
``Flatten / Linear / ReLU`` stack) through each of these, and :func:`reference` builds the
fake-quantized model, from qedu's own quantizers, that computes what that path computes:

* ``torch_fp32`` / ``ort_fp32``: the float model in torch, and in ONNX Runtime after
  ``torch.onnx.export(..., dynamo=True)``: the baselines.
* ``torch_dynamic``: ``torch.ao.quantization.quantize_dynamic``. Weights int8 per tensor, step
  ``max|w| / 127.5``; activations uint8 **0..127**, from each batch's min/max.
* ``torchao_w8a8``: torchao ``quantize_(m, Int8DynamicActivationInt8WeightConfig())``. Weights
  int8 per output channel, ``max|w| / 127.5``; activations int8 per row (token), symmetric.
* ``torchao_w8``: torchao ``Int8WeightOnlyConfig()``. Weights as above; float activations.
* ``ort_dynamic``: ``onnxruntime.quantization.quantize_dynamic``. Weights int8 per tensor, step
  ``max|w| / 127``; activations uint8 0..255 from each batch's min/max.
* ``ort_static``: ``quantize_static`` in QDQ format, MinMax calibration. Weights int8 per output
  channel, ``max|w| / 127``, bias int32 at ``s_x s_w``; activations uint8 with ranges fixed by
  the calibration images, the logits included.
* ``ort_int4``: ``MatMulNBitsQuantizer``, blocks of 32: weights uint4 with a zero point per
  block of 32 inputs (step ``(max - min) / 15``); float activations.

Two conventions for a symmetric int8 step hide in that list: torch and torchao use
``max|w| / 127.5`` (the 256 codes span ``2 max|w|``, the top value clips by half a step; qedu's
default ``symmetric_rule="half_range"``); ONNX Runtime uses ``max|w| / 127`` (codes -127..127,
``symmetric_rule="no_clip"``). torch's dynamic path keeps activations to 7 bits (0..127) so that
x86's ``vpmaddubsw``, which adds two u8 x s8 products in a saturating int16, cannot overflow
(see :mod:`qedu.integer`). ONNX Runtime uses all 8 bits, and on an x86 CPU without VNNI its sums
really saturate: the reference reproduces that (:func:`saturating_pair_matmul`,
:func:`ort_saturates`), so it matches ONNX Runtime there too.

Each deployed model is a :class:`Deployed`: call it on a float batch ``(N, 1, 8, 8)`` to get
float logits, read ``bytes_on_disk`` for the file it wrote. ``tests/test_deploy.py`` checks that
every path agrees with its reference within :data:`TOLERANCE` (``max|y - y_ref| / max|y_ref|``
over the digits test set) and keeps the float model's accuracy within a stated margin.
``benchmarks/deployment.py`` times them (``benchmarks/results/deployment.md``).

The libraries are the optional ``deploy`` extra (``pip install "qedu[deploy]"``: onnx,
onnxruntime, onnxscript, torchao) and are imported only inside :func:`deploy` and
:func:`export_onnx`. :func:`reference`, :func:`cpu_features` and the ``torch_*`` paths need torch alone.

>>> RECIPES["ort_dynamic"].weight_rule, RECIPES["torch_dynamic"].weight_rule
('no_clip', 'half_range')
"""
from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float_tensor, check_choice, check_int, check_module
from qedu.formats import INT8, UINT4, UINT8, IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.quantizers import choose_qparams, choose_qparams_from_minmax, fake_quantize, quantize

__all__ = ["PATHS", "RECIPES", "TOLERANCE", "Recipe", "Deployed", "cpu_features", "ort_saturates", "saturating_pair_matmul",
           "reference", "deploy", "export_onnx"]

PATHS = ("torch_fp32", "torch_dynamic", "torchao_w8a8", "torchao_w8", "ort_fp32", "ort_dynamic", "ort_static", "ort_int4")
INSTALL_HINT = 'pip install "qedu[deploy]" (onnx, onnxruntime, onnxscript, torchao)'


@dataclass(frozen=True)
class Recipe:
    """What a path does to each ``Linear``, in qedu's vocabulary (the fake-quantized reference's recipe).

    ``weight_fmt=None`` keeps float weights. ``act`` is ``"float"``, ``"dynamic_tensor"`` (one
    scale per batch from its min/max), ``"dynamic_row"`` (one symmetric scale per row: per token)
    or ``"static"`` (scales fixed by calibration images, the logits quantized too).
    """

    weight_fmt: IntFormat | None = None
    weight_granularity: object = PerTensor()
    weight_symmetric: bool = True
    weight_rule: str = "half_range"
    act: str = "float"
    act_fmt: IntFormat | None = None
    act_symmetric: bool = False
    bias_int32: bool = False  # the bias rounded to the accumulator's grid, scale s_x * s_w


RECIPES = MappingProxyType({  # read-only
    "torch_fp32": Recipe(),
    "torch_dynamic": Recipe(INT8, PerTensor(), act="dynamic_tensor", act_fmt=IntFormat(7, signed=False)),
    "torchao_w8a8": Recipe(INT8, PerChannel(0), act="dynamic_row", act_fmt=INT8, act_symmetric=True),
    "torchao_w8": Recipe(INT8, PerChannel(0)),
    "ort_fp32": Recipe(),
    "ort_dynamic": Recipe(INT8, PerTensor(), weight_rule="no_clip", act="dynamic_tensor", act_fmt=UINT8),
    "ort_static": Recipe(INT8, PerChannel(0), weight_rule="no_clip", act="static", act_fmt=UINT8, bias_int32=True),
    "ort_int4": Recipe(UINT4, PerGroup(32), weight_symmetric=False),
})

# max|y - y_ref| / max|y_ref| over the digits test set that tests/test_deploy.py allows, per path.
# Kernel and reference compute the same integer products (measured: at most 4e-7 apart, float
# rounding in a different order). ort_static also rounds the logits to a uint8 grid: a tie broken
# the other way moves one logit by a step, 1/255 of their range, so it is allowed 5e-3.
TOLERANCE = MappingProxyType({p: 1e-5 for p in PATHS} | {"ort_static": 5e-3})


@dataclass(frozen=True)
class Deployed:
    """One deployed model: call it on a float batch to get float logits; ``file`` holds it on disk.

    Calling checks the batch (not empty, finite: NaN/inf raise ``ValueError``); ``run`` is the
    bare kernel call, without the check (what ``benchmarks/deployment.py`` times).
    """

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    file: Path
    bytes_on_disk: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(as_float_tensor(x, "x"))


# ----------------------------------------------------------------------------- the machine
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm")


def cpu_features() -> dict:
    """The CPU's int8-relevant instruction sets (from ``/proc/cpuinfo``) and torch's capability.

    ``avx512_vnni`` / ``avx_vnni`` add a u8 x s8 dot product that accumulates into int32 in one
    instruction (``vpdpbusd``); without them (plain ``avx2``) int8 kernels need two
    (``vpmaddubsw`` + ``vpmaddwd``) and a saturating int16 step (see pytorch#62804 and
    onnxruntime#6695 on int8 speed without VNNI; ``benchmarks/results/deployment.md`` measures it). ``amx_int8`` adds int8 matrix tiles; ``asimddp`` / ``i8mm`` are ARM's int8 dot
    products. ``int8_dot_product`` is ``None`` on a machine without ``/proc/cpuinfo``.

    >>> sorted(cpu_features())[:2]
    ['flags', 'int8_dot_product']
    """
    flags = None
    try:
        text = Path("/proc/cpuinfo").read_text()
        line = re.search(r"^(flags|Features)\s*:(.*)$", text, re.M)
        have = set(line.group(2).split()) if line else set()
        flags = {f: f in have for f in _FLAGS}
        model = re.search(r"^model name\s*:(.*)$", text, re.M)
    except OSError:
        model = None
    dot = None if flags is None else any(flags[f] for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))
    return {"flags": flags, "int8_dot_product": dot, "model_name": model.group(1).strip() if model else None,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


# ----------------------------------------------------------------------------- the fake-quantized reference
def _layers(model: nn.Module) -> list[nn.Module]:
    """The model as a flat list of Flatten / Linear / ReLU, or a TypeError naming the fix."""
    check_module(model)
    mods = [model] if isinstance(model, nn.Linear) else list(model.children()) if isinstance(model, nn.Sequential) else None
    if not mods or not all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in mods) or not any(isinstance(m, nn.Linear) for m in mods):
        raise TypeError("model must be an nn.Linear or an nn.Sequential of Flatten / Linear / ReLU layers (qedu.models.make_mlp), "
                        f"got {type(model).__name__}; convolutions are not covered by these paths' references.")
    return mods


def _qparams_act(h: torch.Tensor, r: Recipe, lo_hi=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation ``(scale, zero_point)`` for a batch ``(N, K)``: per batch, per row, or a fixed range."""
    if r.act == "dynamic_row":
        return choose_qparams(h, r.act_fmt, PerChannel(0), r.act_symmetric)  # (N, 1): one scale per row
    if r.act == "dynamic_tensor":
        return choose_qparams(h, r.act_fmt, PerTensor(), r.act_symmetric)
    return choose_qparams_from_minmax(lo_hi[0], lo_hi[1], r.act_fmt, r.act_symmetric)  # static: calibration range


def saturating_pair_matmul(q_x: torch.Tensor, q_w: torch.Tensor) -> torch.Tensor:
    """``sum_k q_x[n, k] q_w[o, k]`` as x86's ``vpmaddubsw`` adds it: adjacent pairs clamped to int16.

    Without VNNI, a u8 x s8 kernel multiplies pairs of adjacent ``k`` and adds each pair in a
    *saturating* int16 (``-32768..32767``) before widening to int32; ``255 * 127 * 2 = 64770`` does
    not fit, so full-range uint8 activations can give wrong sums (:mod:`qedu.integer` explains it).

    >>> saturating_pair_matmul(torch.tensor([[255, 255]]), torch.tensor([[127, 127]])).item()
    32767
    """
    for name, q in (("q_x", q_x), ("q_w", q_w)):
        if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.ndim != 2:
            raise TypeError(f"{name} must be a 2-D tensor of integer codes, got "
                            f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}; quantize first.")
    if q_x.shape[1] != q_w.shape[1] or q_x.shape[1] % 2:
        raise ValueError(f"q_x {tuple(q_x.shape)} and q_w {tuple(q_w.shape)} must share an even inner size K "
                         "(products are added in adjacent pairs); pad K with a zero column.")
    prod = q_x.long()[:, None, :] * q_w.long()[None, :, :]  # (N, C_out, K)
    pairs = prod.reshape(*prod.shape[:2], -1, 2).sum(-1).clamp(-(2**15), 2**15 - 1)  # (N, C_out, K/2), int16
    return pairs.sum(-1)  # (N, C_out)


def ort_saturates(features: dict | None = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels saturate pairs on this CPU: x86 without VNNI or AMX.

    Measured on an AVX2-only CPU: ``MatMulInteger`` matched :func:`saturating_pair_matmul` on
    6,400 of 6,400 random outputs and the exact sum on 1,908. VNNI's ``vpdpbusd`` adds four
    products into int32 directly (no saturation); ARM kernels widen first.
    """
    features = cpu_features() if features is None else features
    flags = features["flags"]
    return bool(flags and flags["avx2"] and not features["int8_dot_product"])


class _Reference(nn.Module):
    """A Flatten / Linear / ReLU stack computed on qedu's quantizers, in integer codes.

    Each ``Linear``: ``q_w = quantize(w)``; with quantized activations ``q_x = quantize(x)`` and
    ``y = s_x s_w (sum_k (q_x - z_x) q_w) + b`` (the sum exact, or saturating in pairs); with
    float activations ``y = x @ dequantize(q_w)^T + b``.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, x_calib: torch.Tensor | None, saturate_pairs: bool):
        super().__init__()
        self.recipe, self.mods, self.saturate_pairs = recipe, copy.deepcopy(_layers(model)), saturate_pairs
        self.ranges = None
        if recipe.act == "static":  # min and max of each Linear's input and of the logits, over x_calib
            with torch.no_grad():
                acts, h = [], x_calib
                for m in self.mods:
                    acts += [h] if isinstance(m, nn.Linear) else []
                    h = m(h)
            self.ranges = [(a.min(), a.max()) for a in acts + [h]]

    def _linear(self, h: torch.Tensor, m: nn.Linear, i: int) -> torch.Tensor:
        r, w, b = self.recipe, m.weight, m.bias
        if r.weight_fmt is None:
            return F.linear(h, w, b)
        s_w, z_w = choose_qparams(w, r.weight_fmt, r.weight_granularity, r.weight_symmetric, symmetric_rule=r.weight_rule)
        if r.act == "float":  # weight-only: dequantized weights, float matmul
            return F.linear(h, fake_quantize(w, s_w, z_w, r.weight_fmt), b)
        s_x, z_x = _qparams_act(h, r, self.ranges[i] if self.ranges else None)
        q_x, q_w = quantize(h, s_x, z_x, r.act_fmt), quantize(w, s_w, z_w, r.weight_fmt)  # (N, K), (C_out, K)
        if self.saturate_pairs:
            acc = saturating_pair_matmul(q_x, q_w) - z_x.long().reshape(-1, 1) * q_w.long().sum(1)  # z_w = 0
        else:
            acc = (q_x.long() - z_x.long()) @ (q_w.long() - z_w.long()).T  # int8 x int8 -> int32 (int64 here)
        step = s_x.reshape(-1, 1) * s_w.reshape(1, -1)  # (N or 1, C_out or 1): s_x s_w
        if b is not None and r.bias_int32:
            b = torch.round(b / step) * step  # the bias on the accumulator's grid
        return acc.float() * step + (0 if b is None else b)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, i = as_float_tensor(x, "x"), 0  # NaN, inf or an empty batch raise here
        for m in self.mods:
            if isinstance(m, nn.Linear):
                h, i = self._linear(h, m, i), i + 1
            else:
                h = m(h)
        if self.recipe.act == "static":  # the logits are quantized too
            s, z = _qparams_act(h, self.recipe, self.ranges[-1])
            h = fake_quantize(h, s, z, self.recipe.act_fmt)
        return h


def reference(model: nn.Module, path: str, x_calib: torch.Tensor | None = None, *, saturate_pairs: bool | None = None) -> nn.Module:
    """The model computed as ``deploy(model, path)`` computes it, from qedu's quantizers only.

    Every ``Linear`` weight is quantized with the path's format, granularity and symmetric rule
    (:data:`RECIPES`); activations are quantized per batch, per row, or (``ort_static``) with
    ranges from ``x_calib``; the integer products are summed exactly, or in saturating int16
    pairs where ONNX Runtime does so on this CPU. ``model`` is copied, never changed.

    Args:
        model: ``nn.Linear`` or ``nn.Sequential`` of ``Flatten / Linear / ReLU`` (the digits MLP).
        path: one of :data:`PATHS`.
        x_calib: calibration inputs, needed by ``"ort_static"`` only.
        saturate_pairs: sum u8 x s8 products in saturating pairs (:func:`saturating_pair_matmul`).
            ``None``: as ONNX Runtime does on this CPU for ``ort_dynamic`` / ``ort_static``
            (:func:`ort_saturates`), never for the torch paths (7-bit or int8 activations fit).

    Returns:
        An ``nn.Module`` in eval mode (no gradients) mapping the model's input to float outputs.

    Raises:
        TypeError / ValueError: another kind of model, an unknown path, or missing / bad ``x_calib``.

    >>> from qedu.models import make_mlp
    >>> x = torch.linspace(0, 1, 256).reshape(4, 1, 8, 8)
    >>> float((reference(make_mlp(), "torch_fp32")(x) - make_mlp()(x).detach()).abs().max())
    0.0
    """
    path = check_choice(path, "path", PATHS)
    _layers(model)
    recipe = RECIPES[path]
    if recipe.act == "static":
        if x_calib is None:
            raise ValueError(f"path={path!r} fixes activation ranges from calibration inputs: pass x_calib, e.g. load_digits().x_calib.")
        x_calib = as_float_tensor(x_calib, "x_calib")
    if saturate_pairs is None:
        saturate_pairs = path in ("ort_dynamic", "ort_static") and ort_saturates()
    elif not isinstance(saturate_pairs, bool):
        raise TypeError(f"saturate_pairs must be True, False or None (this CPU's behaviour), got {saturate_pairs!r}.")
    return _Reference(model, recipe, x_calib, saturate_pairs).eval()


# ----------------------------------------------------------------------------- the real paths
def _require(name: str):
    """Import an optional library, or raise ImportError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{name} is not installed; this deployment path needs it: {INSTALL_HINT}.") from err


@contextmanager
def _quiet():
    """Silence the libraries' chatter (deprecations, 'consider pre-processing', exporter notes) for one call."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "onnxruntime.quantization.matmul_nbits_quantizer", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, file, example: torch.Tensor) -> Path:
    """``torch.onnx.export(model, (example,), dynamo=True)`` with a dynamic batch size, saved to ``file``.

    Each 2-D ``Linear`` becomes a ``Gemm`` node (``y = x W^T + b`` in one op). ``model`` is copied,
    never changed. Returns the file's path.
    """
    _require("onnxscript")  # torch.onnx's dynamo exporter builds the graph with it
    onnx = _require("onnx")
    model = copy.deepcopy(model).eval()
    file = Path(file)
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    onnx.save(program.model_proto, str(file))
    return file


def _gemm_to_matmul(proto, onnx) -> None:
    """Rewrite ``Gemm(A, B, C, transB=1)`` as ``MatMul(A, B^T) + C`` in place (weights transposed once)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 \
                or node.input[1] not in inits:  # only y = x W^T + b is rewritten
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])  # (out, in) with transB=1
        if attrs.get("transB", 0):
            w = w.T.copy()  # (out, in) -> (in, out): MatMul's B
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
        mm_out = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name + "_matmul"))
        if len(node.input) > 2:
            nodes.append(onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_add"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]  # stale shapes (the transposed weights); shape inference recomputes them


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol: one dict of inputs per call, then None."""

    def __init__(self, name: str, x: torch.Tensor, batch_size: int = 64):
        self._batches = iter([{name: x[i:i + batch_size].numpy()} for i in range(0, len(x), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def _ort_session(file: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().float().contiguous().numpy()})[0])
    return run


def deploy(model: nn.Module, path: str, folder, *, x_calib: torch.Tensor | None = None, example: torch.Tensor | None = None,
           onnx_file=None, threads: int = 1) -> Deployed:
    """``model`` through one real deployment path (:data:`PATHS`), saved in ``folder``.

    * ``torch_*`` / ``torchao_*``: a quantized copy of the model, saved with ``torch.save(state_dict)``
      as ``folder/<path>.pt``. ``torch.ao.quantization`` is deprecated in favour of torchao and
      warns so; it still works and is the path most tutorials show, so its warnings are silenced
      here. torchao's ``set_inductor_config`` is turned off (it would change torch's global
      compiler settings); both run eagerly, without ``torch.compile``.
    * ``ort_*``: the model exported to ONNX (:func:`export_onnx`; pass ``onnx_file`` to reuse an
      export), quantized by ONNX Runtime's tools into ``folder/<path>.onnx``, and run by an
      ``InferenceSession`` with ``threads`` intra-op threads on the CPU (``ort_fp32`` runs the
      export itself).

    Args:
        model: ``nn.Linear`` or ``nn.Sequential`` of ``Flatten / Linear / ReLU``; copied, never changed.
        path: one of :data:`PATHS`.
        folder: an existing folder for the files.
        x_calib: calibration inputs (``"ort_static"`` only), e.g. ``load_digits().x_calib``.
        example: one input batch for the ONNX export (default: ``x_calib[:2]``, else zeros shaped
            ``(2, 1, 8, 8)`` for a model that starts with ``Flatten`` or ``(2, in_features)``).
        onnx_file: an existing export of ``model`` to quantize instead of exporting again.
        threads: ONNX Runtime's intra-op threads (torch's are the caller's ``torch.set_num_threads``).

    Returns:
        A :class:`Deployed`: callable on a float batch, with ``bytes_on_disk`` of its file.

    Raises:
        TypeError / ValueError: a model other than a Linear stack, an unknown path, a missing
            folder, or missing ``x_calib`` for ``"ort_static"``.
        ImportError: the path's library is absent (the message says ``pip install "qedu[deploy]"``).
    """
    path = check_choice(path, "path", PATHS)
    _layers(model)
    threads = check_int(threads, "threads", 1)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a folder: create it first (e.g. tempfile.mkdtemp()).")
    if path == "ort_static" and x_calib is None:
        raise ValueError("path='ort_static' calibrates activation ranges: pass x_calib, e.g. load_digits().x_calib.")
    model = copy.deepcopy(model).eval()
    if path.startswith("torch"):
        return _deploy_torch(model, path, folder)
    onnx = _require("onnx")
    if onnx_file is None:
        if example is None and x_calib is not None:
            example = x_calib[:2]
        elif example is None:  # the digits' (N, 1, 8, 8) for a model that flattens first, else (N, in_features)
            layers = _layers(model)
            example = torch.zeros(2, 1, 8, 8) if isinstance(layers[0], nn.Flatten) else torch.zeros(2, layers[0].in_features)
        onnx_file = export_onnx(model, folder / "model_fp32.onnx", example)
    onnx_file, out = Path(onnx_file), folder / f"{path}.onnx"
    quant = _require("onnxruntime.quantization")
    with _quiet():
        if path == "ort_fp32":
            out = onnx_file
        elif path == "ort_dynamic":
            quant.quantize_dynamic(str(onnx_file), str(out), weight_type=quant.QuantType.QInt8)
        elif path == "ort_static":
            name = onnx.load(str(onnx_file)).graph.input[0].name
            quant.quantize_static(str(onnx_file), str(out), _CalibrationReader(name, as_float_tensor(x_calib, "x_calib")),
                                  quant_format=quant.QuantFormat.QDQ, activation_type=quant.QuantType.QUInt8,
                                  weight_type=quant.QuantType.QInt8, per_channel=True)
        else:  # ort_int4
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            proto = onnx.load(str(onnx_file))
            _gemm_to_matmul(proto, onnx)  # MatMulNBitsQuantizer quantizes MatMul nodes only, not Gemm
            quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=32, is_symmetric=False)
            quantizer.process()
            quantizer.model.save_model_to_file(str(out))
    return Deployed(path, _ort_session(out, threads), out, os.path.getsize(out))


def _torch_engine() -> str:
    """The quantized engine ``torch_dynamic`` runs on: x86 (or its predecessor fbgemm) where this torch
    build has it. Its recipe (7-bit activations, reduce_range) is x86's; qnnpack ignores reduce_range."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), torch.backends.quantized.engine)


@contextmanager
def _quantized_engine(name: str):
    """Run on torch's quantized engine ``name``, then put back whatever the caller had chosen."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _deploy_torch(model: nn.Module, path: str, folder: Path) -> Deployed:
    if isinstance(model, nn.Linear):
        model = nn.Sequential(model)  # both libraries swap a model's children, never the model itself
    engine = _torch_engine()
    if path == "torch_dynamic":
        with warnings.catch_warnings(), _quantized_engine(engine):  # deprecated in favour of torchao; still works
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    elif path.startswith("torchao"):
        _require("torchao")
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        config = (Int8DynamicActivationInt8WeightConfig(set_inductor_config=False) if path == "torchao_w8a8"
                  else Int8WeightOnlyConfig(set_inductor_config=False))
        quantize_(model, config)
    file = folder / f"{path}.pt"
    torch.save(model.state_dict(), file)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        with _quantized_engine(engine):  # the engine the weights were packed for, whatever the caller set since
            return model(x.float())
    return Deployed(path, run, file, os.path.getsize(file))
