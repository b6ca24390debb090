# %% [markdown]
# # 02 · Uniform quantization: exercises
#
# You will write the six pieces of an integer quantizer that lesson 02 uses from `qedu`: the
# scale and zero point, quantize, dequantize, per-channel scales, stochastic rounding and 4-bit
# packing. Codes are **signed** `bits`-bit integers: `qmin = -2**(bits-1)`,
# `qmax = 2**(bits-1) - 1` (int8: -128..127). Work in float32 torch tensors, as torch does.

# %%
import torch

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Scale and zero point
#
# Map the range of `x` onto the codes. First widen the range to include 0
# (`lo = min(x.min(), 0)`, `hi = max(x.max(), 0)`), so a real 0 gets an exact code. Then
#
# * affine: $\text{scale} = \dfrac{hi - lo}{q_{max} - q_{min}}$, $\;\text{zero\_point} = q_{min} - \text{round}(lo / \text{scale})$ (clamped to the codes);
# * symmetric: $\text{scale} = \dfrac{\max(-lo,\ hi)}{(q_{max} - q_{min})/2}$, $\;\text{zero\_point} = 0$.
#
# Both: `scale = max(scale, 1.1920929e-07)` so an all-zero `x` still gets a grid. Return a Python
# `float` and an `int`.
#
# Hints: int8's 256 codes span `2 * max|x|`, so the symmetric step is `max|x| / 127.5` (torch's rule);
# `torch.round` rounds ties to even; `.item()` turns a 0-d tensor into a number.

# %%
def qparams(x, bits, symmetric):
    """Return ``(scale, zero_point)`` for signed ``bits``-bit codes covering ``x`` (and 0)."""
    ### BEGIN SOLUTION
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=1.1920929e-07)
        return scale.item(), 0
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=1.1920929e-07)
    zero_point = int(qmin - torch.round(lo / scale))
    return scale.item(), min(max(zero_point, qmin), qmax)
    ### END SOLUTION


# %%
checks.check_qparams(qparams)

# %% [markdown]
# ## 2. Quantize
#
# $$q = \text{clamp}\big(\text{round}(x \cdot (1/\text{scale})) + \text{zero\_point},\ q_{min},\ q_{max}\big)$$
#
# Return integer codes (e.g. `torch.int32`).
#
# Hints: compute `inv_scale = 1.0 / torch.tensor(scale, dtype=torch.float32)` once and multiply, as
# torch does: `-12.15 / 0.1` and `-12.15 * (1 / 0.1)` round to different codes in float32. Clamp
# last, after adding the zero point.

# %%
def quantize(x, scale, zero_point, bits):
    """Integer codes of ``x`` on the grid ``scale * (q - zero_point)``, signed ``bits``-bit."""
    ### BEGIN SOLUTION
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inv_scale = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(x * inv_scale) + zero_point, qmin, qmax).to(torch.int32)
    ### END SOLUTION


# %%
checks.check_quantize(quantize)

# %% [markdown]
# ## 3. Dequantize
#
# $$\hat{x} = (q - \text{zero\_point}) \cdot \text{scale}$$
#
# Return a float tensor. Hint: subtract in integers, then convert with `.float()` and multiply.

# %%
def dequantize(q, scale, zero_point):
    """Real values of the codes ``q``."""
    ### BEGIN SOLUTION
    return (q - zero_point).float() * scale
    ### END SOLUTION


# %%
checks.check_dequantize(dequantize)

# %% [markdown]
# ## 4. One scale per output channel
#
# A Linear weight `w` has shape `(C_out, C_in)`. Give each **row** its own symmetric scale and
# return the fake-quantized weight:
#
# $$\text{scale}_i = \max\Big(\frac{\max_j |w_{ij}|}{(q_{max} - q_{min})/2},\ 1.1920929\cdot 10^{-7}\Big), \qquad
# \hat{w}_{ij} = \text{clamp}\big(\text{round}(w_{ij} \cdot (1/\text{scale}_i)),\ q_{min},\ q_{max}\big) \cdot \text{scale}_i$$
#
# Hints: `w.abs().amax(dim=1, keepdim=True)` has shape `(C_out, 1)` and broadcasts over the
# columns; without `keepdim` a `(C_out,)` tensor lines up with the *columns*. Multiply by
# `1 / scale` as in task 2.

# %%
def per_channel(w, bits):
    """Symmetric fake quantization of ``w`` with one scale per row."""
    ### BEGIN SOLUTION
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), min=1.1920929e-07)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale
    ### END SOLUTION


# %%
checks.check_per_channel(per_channel)

# %% [markdown]
# ## 5. Stochastic rounding
#
# Round each value down or up **at random**, up with probability equal to its fractional part, so
# that on average nothing is lost: $\mathbb{E}[\text{round}(v)] = v$.
#
# $$\text{round}(v) = \lfloor v \rfloor + [\,u < v - \lfloor v \rfloor\,], \qquad u \sim U[0, 1)$$
#
# Hints: draw `u = torch.rand(v.shape, generator=generator)` so the result is reproducible;
# `torch.floor(v + u)` is the same thing in one line. The check compares round-up frequencies,
# not exact values.

# %%
def stochastic_round(v, generator):
    """Unbiased random rounding of ``v`` to integers (a float tensor)."""
    ### BEGIN SOLUTION
    u = torch.rand(v.shape, generator=generator)
    return torch.floor(v + u)
    ### END SOLUTION


# %%
checks.check_stochastic_round(stochastic_round)

# %% [markdown]
# ## 6. Two 4-bit codes per byte
#
# torch has no 4-bit dtype: pack pairs of codes `0..15` into `torch.uint8` bytes, the first
# code of each pair in the **low** nibble:
#
# $$\text{byte}_k = q_{2k} \;|\; (q_{2k+1} \ll 4)$$
#
# Hints: pad an odd-length `q` with one 0 code; `q[0::2]` and `q[1::2]` are the two halves of
# every pair; finish with `.to(torch.uint8)`.

# %%
def pack4(q):
    """Pack 1-D codes in 0..15 into ceil(len(q) / 2) bytes, first code in the low nibble."""
    ### BEGIN SOLUTION
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    return (q[0::2] | (q[1::2] << 4)).to(torch.uint8)
    ### END SOLUTION


# %%
checks.check_pack4(pack4)

# %% [markdown]
# All six pass? Compare with `qedu.quantizers` and `qedu.packing`: the library versions add
# input checks, per-group scales and other rounding modes, and its tests prove they match torch
# exactly.
