# %% [markdown]
# # 12 · Training at the frontier: exercises
#
# Four pieces of lesson 12: the **shared exponent** of an MX block (stored as an E8M0 number),
# the **forward pass of a LoRA layer**, the **amax history** of delayed FP8 scaling, and a whole
# **MXFP4 block**.

# %%
import math

import torch

import qedu
from qedu import checks
from qedu.mx import mx_dequantize, mx_quantize

qedu.setup(seed=0)

# %% [markdown]
# ## 1. The E8M0 shared exponent of an MX block
#
# The OCP MX spec gives a block of values one scale $X = 2^e$ with
#
# $$e = \lfloor \log_2 \max_i |x_i| \rfloor - e_{\max,\text{elem}}$$
#
# where $e_{\max,\text{elem}}$ is the element format's largest power of two (2 for fp4 E2M1,
# 8 for fp8 E4M3). E8M0 stores $e + 127$, so clamp $e$ to $[-127, 127]$; an all-zero block
# gets $-127$. Return `e` as a Python int.
#
# Hints: `math.floor(math.log2(amax))`; the largest *magnitude* is `block.abs().max()`.

# %%
def e8m0_exponent(block, emax_elem):
    """The MX shared exponent of ``block`` for an element format whose largest power of two is 2**emax_elem."""
    ### BEGIN SOLUTION
    amax = float(block.abs().max())
    if amax == 0:
        return -127
    return int(min(max(math.floor(math.log2(amax)) - emax_elem, -127), 127))
    ### END SOLUTION


# %%
checks.check_e8m0_exponent(e8m0_exponent)

# %% [markdown]
# Compare with `qedu.mx`: quantize a block of 32 to MXFP4 and read its scale code (`e + 127`).

# %%
block = torch.randn(1, 32) * 0.02
try:
    print("your e:", e8m0_exponent(block, 2), "| qedu's E8M0 code - 127:", mx_quantize(block, "fp4_e2m1", 32).scale_code.item() - 127)
except NotImplementedError:
    print("Write e8m0_exponent above first.")

# %% [markdown]
# ## 2. A LoRA forward pass
#
# A LoRA layer keeps the frozen weight $W$ ($C_{out} \times C_{in}$) and bias $b$, and adds a
# low-rank update with $A$ ($r \times C_{in}$) and $B$ ($C_{out} \times r$):
#
# $$y = x W^\top + b + \frac{\alpha}{r} \, (x A^\top) B^\top$$
#
# Return `y` for a batch `x` of shape $(n, C_{in})$.
#
# Hints: `r = lora_A.shape[0]`; `x @ lora_A.T` is $(n, r)$.

# %%
def lora_forward(x, weight, bias, lora_A, lora_B, alpha):
    """The output of a LoRA layer."""
    ### BEGIN SOLUTION
    r = lora_A.shape[0]
    return x @ weight.t() + bias + (alpha / r) * ((x @ lora_A.t()) @ lora_B.t())
    ### END SOLUTION


# %%
checks.check_lora_forward(lora_forward)

# %% [markdown]
# ## 3. Delayed scaling's amax history
#
# Delayed scaling (Transformer Engine's `DelayedScaling`, `amax_compute_algo="max"`) casts this
# step's tensor with a scale decided from earlier steps, then records the tensor's amax. Write
# one update: append `amax` to `history`, keep the newest `history_len` values, and return
# `(new_history, scale)` with
#
# $$\text{scale} = \frac{\text{fp8\_max}}{\max(\text{new\_history})}$$
#
# (1.0 while the history holds only zeros). `history` is a list of floats: do not change it.
#
# Hints: `(list(history) + [amax])[-history_len:]`.

# %%
def delayed_scale(history, amax, history_len, fp8_max=448.0):
    """The amax history after one more step, and the scale for the next step."""
    ### BEGIN SOLUTION
    new = (list(history) + [float(amax)])[-history_len:]
    top = max(new)
    return new, (fp8_max / top if top > 0 else 1.0)
    ### END SOLUTION


# %%
checks.check_delayed_scale(delayed_scale)

# %% [markdown]
# A spike of 100 at step 3: how long does each history length remember it?

# %%
try:
    for length in (1, 4):
        history, scales = [], []
        for amax in [1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0]:
            history, scale = delayed_scale(history, amax, length)
            scales.append(round(scale, 2))
        print(f"history_len={length}: scales {scales}")
except NotImplementedError:
    print("Write delayed_scale above first.")

# %% [markdown]
# ## 4. One MXFP4 block
#
# Put exercise 1 to work: quantize one block to MXFP4. With $e$ from the floor rule
# ($e_{\max} = 2$ for fp4), return `(scale_code, elements)`: `scale_code = e + 127` (an int),
# and `elements` = $x / 2^e$ rounded to the nearest fp4 value in
# $\pm\{0, 0.5, 1, 1.5, 2, 3, 4, 6\}$ (ties to the even mantissa: 2.5 → 2, 5 → 4, 0.25 → 0),
# saturating at ±6.
#
# Hints: `torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])` holds the magnitudes; for ties, the grid
# points with an even mantissa are 0, 1, 2 and 4 (0.5, 1.5, 3 and 6 have mantissa bit 1).

# %%
def mxfp4_block(block):
    """The E8M0 scale code and the fp4 elements of one MXFP4 block."""
    ### BEGIN SOLUTION
    amax = float(block.abs().max())
    e = -127 if amax == 0 else int(min(max(math.floor(math.log2(amax)) - 2, -127), 127))
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    even = torch.tensor([True, False, True, False, True, False, True, False])  # 0, 1, 2, 4 have an even mantissa
    a = (block.float() / 2.0**e).abs().clamp(max=6.0)
    d = (a[:, None] - grid).abs()
    best = d.min(dim=1, keepdim=True).values
    tied = d == best
    idx = torch.where(tied.sum(dim=1) > 1, (tied & even).float().argmax(dim=1), d.argmin(dim=1))
    return e + 127, torch.sign(block.float()) * grid[idx]
    ### END SOLUTION


# %%
checks.check_mxfp4_block(mxfp4_block)
