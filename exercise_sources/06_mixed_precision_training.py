# %% [markdown]
# # 06 · Mixed-precision training: exercises
#
# Two pieces of mixed-precision training that lesson 06 uses from `qedu`: the update rule of a
# **dynamic loss scaler** (what `torch.amp.GradScaler.update()` does) and **stochastic rounding**
# of float32 to bfloat16, written on the bit pattern as fast kernels do it.

# %%
import torch

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. The dynamic loss scaler's update
#
# After each step the scaler sees whether any gradient was inf or NaN (`found_inf`) and updates
# its scale `S` and its count of clean steps in a row:
#
# * overflow: $S \leftarrow S \cdot \text{backoff\_factor}$ and the count restarts at 0;
# * clean step: count it; when the count reaches `growth_interval`,
#   $S \leftarrow S \cdot \text{growth\_factor}$ and the count restarts at 0.
#
# Return `(new_scale, new_clean_steps)`.
#
# Hints: with `growth_interval=2000` the 2000th clean step in a row grows the scale (`clean_steps`
# comes in as 1999). `backoff_factor` is 0.5: multiply by it.

# %%
def update_loss_scale(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    """The scale and clean-step count after one step of a dynamic loss scaler."""
    ### BEGIN SOLUTION
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps
    ### END SOLUTION


# %%
checks.check_update_loss_scale(update_loss_scale)

# %% [markdown]
# ## 2. Stochastic rounding to bfloat16, on the bits
#
# A bfloat16 number is the **top 16 bits** of a float32. Rounding *down* (towards zero) just
# clears the low 16 bits. Stochastic rounding first adds 16 random bits `r` (uniform in
# 0..65535) to those low bits: if they are `low`, the sum carries into the kept bits, rounding
# the magnitude up, exactly when `low + r >= 2**16`, which happens with probability
# `low / 2**16`: the distance to the lower neighbour, as a fraction of the step.
#
# $$\text{bits} = (\text{bits}(x) + r)\ \&\ \texttt{0xFFFF0000}$$
#
# Return a float32 tensor (its values are bfloat16 values).
#
# Hints: `x.view(torch.int32)` reinterprets the bits (no conversion); in int32,
# `0xFFFF0000` is `-65536`; `.view(torch.float32)` turns the bits back into numbers.

# %%
def stochastic_round_bf16(x, r):
    """Round float32 ``x`` to bfloat16 stochastically with random bits ``r`` (int32, 0..65535)."""
    ### BEGIN SOLUTION
    bits = x.contiguous().view(torch.int32)
    return ((bits + r) & -65536).view(torch.float32)
    ### END SOLUTION


# %%
checks.check_stochastic_round_bf16(stochastic_round_bf16)

# %% [markdown]
# Try it: add 0.001 to 1.0 ten thousand times in bfloat16 with round-to-nearest (it stays 1.0)
# and with your `stochastic_round_bf16` (close to 11 on average). Lesson 07 uses the same idea to
# train with bfloat16 weights and no fp32 copy.
