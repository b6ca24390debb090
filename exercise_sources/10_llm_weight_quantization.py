# %% [markdown]
# # 10 · LLM weight quantization: exercises
#
# Four pieces of lesson 10, each a few lines: group-wise round-to-nearest, the column update at
# the heart of GPTQ, SmoothQuant's scales, and the storage cost of NF4 with double quantization.

# %%
import torch

import qedu
from qedu.checks import llm as checks  # lesson 10's checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Group-wise round-to-nearest
#
# Cut each row of `w` (shape `(C_out, C_in)`) into groups of `group_size` consecutive inputs. Per
# group, widen the range to include 0 (`lo = min(w.min(), 0)`, `hi = max(w.max(), 0)`, as GPTQ's
# `quant.py`), then
#
# $$\text{scale} = \frac{hi - lo}{2^{b} - 1},\quad z = \text{round}(-lo / \text{scale}),\quad
# \hat w = \text{scale}\,(\text{clamp}(\text{round}(w / \text{scale}) + z, 0, 2^b - 1) - z)$$
#
# Hints: `w.reshape(C_out, -1, group_size)` makes the groups; `amin`/`amax(-1, keepdim=True)`.

# %%
def rtn_groupwise(w, bits, group_size):
    """Asymmetric RTN of ``w`` with one grid per group of ``group_size`` inputs; returns ``w_hat``."""
    ### BEGIN SOLUTION
    g = w.reshape(w.shape[0], -1, group_size)  # (C_out, C_in) -> (C_out, n_groups, group_size)
    lo = g.amin(-1, keepdim=True).clamp(max=0)
    hi = g.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2**bits - 1
    scale = (hi - lo).clamp(min=1e-8) / qmax
    zero_point = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zero_point, 0, qmax)
    return (scale * (q - zero_point)).reshape(w.shape)
    ### END SOLUTION


# %%
checks.check_rtn_groupwise(rtn_groupwise)

# %% [markdown]
# ## 2. One GPTQ column update
#
# GPTQ rounds column `i` of `W` to `q` and moves the columns not yet rounded to compensate, using
# row `i` of `U`, the upper Cholesky factor of the inverse Hessian (`H⁻¹ = UᵀU`):
#
# $$e = \frac{W_{:, i} - q}{U_{ii}}, \qquad W_{:, i:} \mathrel{-}= e\, U_{i, i:}$$
#
# Return the updated copy of `W` (do not change the caller's tensor). Column `i` ends exactly on `q`.

# %%
def gptq_column_update(W, U, i, q):
    """``W`` after rounding column ``i`` to ``q`` and spreading the error over columns ``i..``."""
    ### BEGIN SOLUTION
    W = W.clone()
    err = (W[:, i] - q) / U[i, i]  # (C_out,)
    W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return W
    ### END SOLUTION


# %%
checks.check_gptq_column_update(gptq_column_update)

# %% [markdown]
# ## 3. SmoothQuant scales
#
# Per input channel `k`, with the activation maximum `a_k` and the weight maximum `w_k` of that
# input column, and migration strength `α`:
#
# $$s_k = \frac{a_k^{\alpha}}{w_k^{1-\alpha}}$$
#
# Return `s` as float32, clamped below at `1e-5` (clamp `w` at `1e-5` too before dividing).

# %%
def smoothquant_scales(act_absmax, weight_absmax, alpha):
    """SmoothQuant's per-channel scales ``s``."""
    ### BEGIN SOLUTION
    w = weight_absmax.float().clamp(min=1e-5)
    return (act_absmax.float().pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)
    ### END SOLUTION


# %%
checks.check_smoothquant_scales(smoothquant_scales)

# %% [markdown]
# ## 4. Bits per weight of NF4 with double quantization
#
# NF4 stores a 4-bit code per weight and one absmax per block of `block_size` weights. Double
# quantization stores those absmax values in 8 bits, with one float32 scale per `block_size2` of
# them. Return the bits per weight (QLoRA's 64 and 256 give 4.127; without double quantization, 4.5).

# %%
def nf4_bits(block_size, block_size2):
    """Bits per weight of NF4 with double-quantized absmax."""
    ### BEGIN SOLUTION
    return 4 + 8 / block_size + 32 / (block_size * block_size2)
    ### END SOLUTION


# %%
checks.check_nf4_bits_per_parameter(nf4_bits)
