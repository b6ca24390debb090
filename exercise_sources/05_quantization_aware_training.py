# %% [markdown]
# # 05 · Quantization-aware training: exercises
#
# Three pieces of lesson 05's machinery: rounding that lets gradients through (the
# straight-through estimator), a Linear layer that trains through its fake-quantized weights
# with a learnable step (LSQ), and LSQ's gradient scale.
#
# The first two checks run your function **forward and backward**: they compare the values *and*
# the gradients that reach the inputs with qedu's reference (`qedu.qat`, `qedu.lsq`). A gradient
# that never arrives is reported as `None`, a flat one as zeros.

# %%
import math

import torch

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Round, and let the gradient through
#
# `torch.round` is flat between its jumps, so its gradient is 0 everywhere: a model whose weights
# pass through it cannot learn. The **straight-through estimator** (STE) keeps the rounded value
# in the forward pass and pretends, in the backward pass, that rounding was the identity:
#
# $$\text{forward: } y = \text{round}(v) \qquad \text{backward: } \frac{\partial y}{\partial v} := 1$$
#
# Round half to even, like `torch.round` (2.5 → 2, 3.5 → 4).
#
# Hints: `t.detach()` is `t` with no gradient; `v + (something - v).detach()` has the value of
# `something` and the gradient of `v`. (A `torch.autograd.Function` works too.)

# %%
def round_ste(v):
    """``torch.round(v)`` in the forward pass, gradient 1 in the backward pass."""
    ### BEGIN SOLUTION
    return v + (torch.round(v) - v).detach()
    ### END SOLUTION


# %%
checks.check_round_ste(round_ste)

# %% [markdown]
# ## 2. A Linear layer that trains through its quantized weights
#
# Write the forward pass of a Linear layer whose weight is fake-quantized with signed, symmetric
# `bits`-bit codes (`qmin = -2**(bits-1)`, `qmax = 2**(bits-1) - 1`, zero point 0) and **one
# learnable step per output channel**, `scale` of shape `(C_out, 1)`:
#
# $$v = w \cdot \tfrac{1}{\text{scale}} \qquad q = \text{round\_ste}\big(\text{clamp}(v, q_{min}, q_{max})\big)
# \qquad \hat{w} = q \cdot \text{scale} \qquad y = x \hat{w}^\top + b$$
#
# Clamp first, then round: the values are the same either way, but the gradient is decided by the
# unrounded code, as in the LSQ paper. Autograd then gives `weight` the clipped STE (1 inside the
# range, 0 outside) and `scale` LSQ's step gradient `round(v) - v` inside, `qmin` or `qmax` outside.
#
# Hints: multiply by `1 / scale` (torch's kernels do; near ties `w / scale` rounds differently);
# keep `scale` in the graph (no `.detach()`, no `.item()`); use your `round_ste`.

# %%
def fake_quant_linear(x, weight, bias, scale, bits):
    """``x @ w_hat.T + bias`` with ``w_hat`` the fake-quantized ``weight`` (step ``scale`` per row)."""
    ### BEGIN SOLUTION
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = round_ste(torch.clamp(weight * (1 / scale), qmin, qmax))
    return x @ (codes * scale).T + bias
    ### END SOLUTION


# %%
checks.check_fake_quant_linear(fake_quant_linear)

# %% [markdown]
# ## 3. LSQ's gradient scale
#
# The step's gradient is a sum over every value that shares it, so it grows with their number
# `n`; with more levels each step matters less. LSQ (Esser et al. 2020) multiplies it by
#
# $$g = \frac{1}{\sqrt{n \cdot Q_p}}$$
#
# where `Qp` is the largest positive code: `2**(bits-1) - 1` for signed codes, `2**bits - 1` for
# unsigned ones. Return `g` as a float.
#
# Hint: `n` weights per output channel for a per-channel weight step, `n` features per sample
# for an activation step.

# %%
def lsq_grad_scale(n, bits, signed):
    """LSQ's gradient scale for a step shared by ``n`` values with ``bits``-bit codes."""
    ### BEGIN SOLUTION
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return 1 / math.sqrt(n * qp)
    ### END SOLUTION


# %%
checks.check_lsq_grad_scale(lsq_grad_scale)

# %% [markdown]
# Together these are `qedu.lsq.LSQQuantizer`: `qedu.qat.prepare_qat(model, QATConfig(method="lsq"))`
# puts one in front of every layer's weight, and lesson 05 trains the digits MLP with them down to
# ternary weights.
