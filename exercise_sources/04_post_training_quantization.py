# %% [markdown]
# # 04 · Post-training quantization: exercises
#
# Two pieces of lesson 04's pipeline: folding a BatchNorm into the layer before it, and the
# one-layer-at-a-time sensitivity loop that tells you which layers to keep at more bits.

# %%
import torch

import qedu
from qedu import checks
from qedu.models import evaluate
from qedu.ptq import PTQConfig, quantizable_layers, quantize_model

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Fold a BatchNorm into the layer before it
#
# In eval mode a BatchNorm is an affine map per channel, so it can be merged into the Linear or
# Conv layer in front of it (weight `W` of shape `(C_out, ...)`, bias `b`, which may be `None`):
#
# $$s = \frac{\gamma}{\sqrt{\text{var} + \varepsilon}} \qquad W' = W \cdot s \;\text{(per output channel, axis 0)}
# \qquad b' = \beta + (b - \text{mean}) \cdot s$$
#
# Return `(W', b')` as tensors.
#
# Hints: `s.reshape(-1, *[1] * (w.ndim - 1))` lines `s` up with axis 0; a missing bias is
# `torch.zeros_like(mean)`.

# %%
def fold_bn(w, b, mean, var, gamma, beta, eps):
    """Return ``(w_fold, b_fold)`` so that ``layer'(x) == BatchNorm(layer(x))`` in eval mode."""
    ### BEGIN SOLUTION
    s = gamma / torch.sqrt(var + eps)
    b = torch.zeros_like(mean) if b is None else b
    w_fold = w * s.reshape(-1, *[1] * (w.ndim - 1))
    return w_fold, beta + (b - mean) * s
    ### END SOLUTION


# %%
checks.check_fold_bn(fold_bn)

# %% [markdown]
# ## 2. Which layer is most sensitive?
#
# For each layer in `quantizable_layers(model)`, quantize **only that layer's weights** to
# `bits` bits (weights only: `act_bits=None`; every other layer in `keep_float`) with
# `quantize_model`, and measure the accuracy **drop** (float accuracy minus quantized accuracy,
# fractions) on the **calibration images** `data.x_calib`, `data.y_calib`. Return
# `{layer name: drop}`.
#
# Why not the test set? Choosing which layers to protect by their test accuracy lets the test
# set decide the model: the final test number would no longer be an honest estimate.
#
# Hints: `PTQConfig(weight_bits=bits, act_bits=None, keep_float=[...])`; `evaluate(model, x, y)`
# returns a fraction; `quantize_model` returns a copy, the model you get stays as it is.

# %%
def sensitivity(model, data, bits):
    """Return ``{layer: accuracy drop}`` with one layer's weights at ``bits`` bits at a time."""
    ### BEGIN SOLUTION
    layers = quantizable_layers(model)
    base = evaluate(model, data.x_calib, data.y_calib)
    drops = {}
    for name in layers:
        config = PTQConfig(weight_bits=bits, act_bits=None, keep_float=[n for n in layers if n != name])
        drops[name] = base - evaluate(quantize_model(model, config), data.x_calib, data.y_calib)
    return drops
    ### END SOLUTION


# %%
checks.check_sensitivity(sensitivity)

# %% [markdown]
# Lesson 04 ranks the layers by the relative error of the model's outputs instead
# (`qedu.analysis.layer_sensitivity`): at 2 bits both measures put `fc3` first, but at 4 bits
# every accuracy drop on the calibration images is 0 and only the output error still ranks the
# layers. It then keeps the most sensitive ones at 8 bits and spends a byte budget greedily
# (`qedu.analysis.allocate_bits`).
