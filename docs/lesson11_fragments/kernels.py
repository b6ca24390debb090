# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# ## Real kernels and honest speed
#
# Everything so far ran integers we wrote ourselves. A deployed model runs on kernels someone
# else wrote, picked through a library. `qedu.deploy` takes the digits MLP through the int8 paths
# a user would pick, and for each one builds, from qedu's own quantizers, the **reference**: the
# fake-quantized model with the same recipe (`qedu.deploy.RECIPES`):
#
# | path | what it calls | weights | activations |
# |---|---|---|---|
# | `torch_dynamic` | `torch.ao.quantization.quantize_dynamic` | int8 per tensor, step max\|w\|/127.5 | uint8 **0..127**, range of each batch |
# | `torchao_w8a8` | torchao `quantize_(m, Int8DynamicActivationInt8WeightConfig())` | int8 per output channel | int8 per row (token), symmetric |
# | `torchao_w8` | torchao `Int8WeightOnlyConfig()` | int8 per output channel | float |
# | `ort_dynamic` | `torch.onnx.export(..., dynamo=True)`, then ONNX Runtime `quantize_dynamic` | int8 per tensor, step max\|w\|/127 | uint8 0..255, range of each batch |
# | `ort_static` | `quantize_static`, QDQ format, calibrated on the 256 calibration digits | int8 per output channel | uint8, fixed ranges (the logits too) |
# | `ort_int4` | `MatMulNBitsQuantizer`, blocks of 32 | uint4 + zero point per block | float |
#
# Note the two symmetric steps: torch and torchao divide max|w| by 127.5 (the top value clips by
# half a step, qedu's default `symmetric_rule="half_range"`), ONNX Runtime by 127 (`"no_clip"`).
# `tests/test_deploy.py` runs every path and checks that its logits agree with its reference to
# within 1e-5 of the logits' range (the static path, whose logits are themselves rounded to 8 bits,
# within 5e-3) and that its accuracy stays within one point of the float model's (two for int4).
#
# ONNX Runtime and torchao are the optional `deploy` extra (`pip install "qedu[deploy]"`); this
# lesson does not need them. `torch.ao` dynamic quantization is part of torch itself, so we run
# that one live. It is deprecated (torchao replaces it) but it is still the path of the most-cited
# tutorial; `deploy` silences its deprecation warning.

# %%
# (these imports belong in the lesson's first code cell)
import tempfile

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from qedu.data import load_digits
from qedu.deploy import cpu_features, deploy, reference, saturating_pair_matmul
from qedu.models import pretrained
from qedu.results import load_results, results_markdown

# %%
cpu = cpu_features()
flags = [name for name, present in (cpu["flags"] or {}).items() if present]
print(f"this CPU: {cpu['model_name']}; int8-relevant flags: {flags or 'none found'}; "
      f"torch uses {cpu['torch_cpu_capability']}; int8 dot product (VNNI/AMX): {cpu['int8_dot_product']}")

# %%
model, data = pretrained("mlp"), load_digits()
folder = tempfile.mkdtemp()
fp32 = deploy(model, "torch_fp32", folder)
int8 = deploy(model, "torch_dynamic", folder)  # a quantized copy; `model` is unchanged
y_float, y_int8 = fp32(data.x_test), int8(data.x_test)
y_ref = reference(model, "torch_dynamic")(data.x_test)  # qedu's quantizers, same recipe


def gap(y, y_ref):  # the largest difference, as a share of the reference's largest logit
    return float((y - y_ref).abs().max() / y_ref.abs().max())


def accuracy(y):
    return float((y.argmax(1) == data.y_test).float().mean())


print(f"torch.ao int8 vs its qedu reference: {gap(y_int8, y_ref):.1e} of the logits' range; vs float: {gap(y_int8, y_float):.1e}")
print(f"accuracy: float {accuracy(y_float):.4f}, int8 {accuracy(y_int8):.4f}")
print(f"on disk: float {fp32.bytes_on_disk:,} bytes, int8 {int8.bytes_on_disk:,} bytes")

# %% [markdown]
# The int8 kernel and the reference differ only by float rounding: the reference *explains* the
# kernel, down to its odd choice of **7-bit activations** (0..127). Why 7? Without the VNNI
# instruction, an x86 CPU multiplies uint8 by int8 with `vpmaddubsw`, which adds two adjacent
# products in a *saturating* 16-bit integer: 255 · 127 · 2 = 64,770 does not fit in 32,767.
# torch keeps one bit spare so that no pair can overflow. ONNX Runtime uses all 8 bits, and on
# such a CPU its sums really do saturate: `qedu.deploy.saturating_pair_matmul` reproduces its
# `MatMulInteger` bit for bit, and the reference of `ort_dynamic` / `ort_static` includes it
# where `qedu.deploy.ort_saturates()` says this CPU does it.

# %%
q_x, q_w = torch.tensor([[255, 255, 10, 20]]), torch.tensor([[127, 127, 3, -4]])
print("exact int32 sum:", int(q_x @ q_w.T), "   pairs saturated to int16:", int(saturating_pair_matmul(q_x, q_w)))

# %% [markdown]
# ### Is int8 faster? The committed table
#
# `benchmarks/deployment.py` times float32 against every path, for the digits MLP and for single
# square layers from 128 to 4096 wide, at batch sizes 1, 16 and 256. Threads are pinned (one for
# torch, one intra-op thread for ONNX Runtime). After a warm-up, each round runs a block of calls
# of every path, in a rotated order, so that load from other programs falls on all of them alike;
# each call is timed by the CPU time of the calling thread (what one free core would take). The
# table gives the median over rounds, and the ratio to float32 **of the same framework**
# (ONNX Runtime's int8 against ONNX Runtime's float), computed round by round: its median and
# interquartile range. Below 1 means faster. Read the header: which CPU, which instruction sets,
# how loaded the machine was.

# %%
table = load_results("deployment")
print(f"measured {table['machine']['date']} on {table['cpu']['model_name']}, "
      f"int8 dot product: {table['cpu']['int8_dot_product']}, load average {table['load_average']}")
display(Markdown(results_markdown("deployment")))

# %%
rows = table["latency"]
fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
for path in [p for p in table["paths"] if not p.endswith("fp32")]:
    ax.plot(range(len(rows)), [r["paths"][path][table["clock"]]["ratio_to_fp32"] for r in rows], "o-", label=path)
ax.axhline(1, color="black", linewidth=0.8)  # above: slower than float32; below: faster
ax.set_yscale("log")
ax.set_xticks(range(len(rows)), [f"{r['model'].replace('linear_', 'width ')}\nbatch {r['batch']}" for r in rows], fontsize=7)
ax.set_ylabel("time / float32 time")
ax.set_title("int8 and int4 paths against float32 of the same framework (committed run)")
ax.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.22))
plt.show()

# %% [markdown]
# What the committed run says (on a CPU **without** VNNI; `tests/test_lesson11_kernels_claims.py`
# holds each sentence to the table):
#
# * **Small is slow.** On the digits MLP (17,226 parameters) at batch 1, no int8 path is faster
#   than float (every ratio is 0.9 or more, most are above 1): quantizing the activations and
#   dequantizing the outputs costs as much as the arithmetic it saves, or more. The same holds for
#   a 128-wide layer at batch 1.
# * **Wide is fast, even without VNNI.** For layers 1024 and 4096 wide, torch.ao's and ONNX
#   Runtime's int8 paths take at most 0.65 of the float time at every batch size. At batch 1 a
#   wide layer is memory-bound (each weight is used once per call), and int8 weights are a
#   quarter of the bytes to read.
# * **A library path is not a speed-up by itself.** torchao runs eagerly here (without
#   `torch.compile`): its W8A8 path is several times slower than float at every shape (its int8
#   matrix product, `torch._int_mm`, is a slow generic kernel on this CPU, see the probe under the
#   table), and its weight-only path converts the weights back to float at each call.
# * **int4 saves bytes, not time** here: `MatMulNBits` (with its default `accuracy_level`) keeps
#   float activations and unpacks 4-bit blocks; its file is about a sixth of float's for a
#   1024-wide layer, but from 512 wide up it is no faster than float (every ratio 0.9 or more).
# * **Bytes on disk** shrink about 4x with int8 for the wide layers, but only about 3x for the
#   digits MLP, whose file is small enough for the format's own overhead to show.
# * **On that CPU, ONNX Runtime's int8 results are not exact int8 arithmetic**: the saturating
#   pairs change most of the digits MLP's logits (by up to about 2% of their range), and its
#   accuracy still equals the float model's. A CPU with VNNI (`vpdpbusd`: four products added
#   straight into 32 bits) computes them exactly, and is expected to gain more from int8 (see
#   pytorch#62804 and onnxruntime#6695 on int8 speed without VNNI); run
#   `python benchmarks/deployment.py` on yours and compare.
