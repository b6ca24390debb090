# %% [markdown]
# # 07 · Low-bit optimizers and memory: exercises
#
# Two pieces of lesson 07: the block-wise absmax quantization that stores Adam's states in 8 bits,
# and a memory calculator for the training recipes.

# %%
import math

import torch

import qedu
from qedu import checks
from qedu.optim import dynamic_map

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Block-wise absmax quantization of an optimizer state
#
# Flatten the state `x`, cut it into blocks of `block_size` consecutive values (pad the last
# block with zeros), and per block:
#
# $$\text{absmax} = \max |x_{\text{block}}|, \qquad q = \arg\min_j \left| \frac{x}{\text{absmax}} - \text{levels}_j \right|$$
#
# Return `(q, absmax)`: `q` as `torch.uint8` codes with the shape of `x` (drop the padding), and
# `absmax` as a float32 tensor with one value per block. A tie goes to the lower level (what
# `torch.argmin` does); an all-zero block has absmax 0 and the code of the level 0.
#
# Hints: `torch.nn.functional.pad(flat, (0, n_pad))` pads; `.reshape(n_blocks, block_size)` makes
# the blocks; divide by `torch.where(absmax > 0, absmax, 1.0)[:, None]`.

# %%
def blockwise_absmax(x, levels, block_size):
    """uint8 codes of ``x`` against ``levels`` (sorted, in [-1, 1]) and the absmax of each block."""
    ### BEGIN SOLUTION
    flat = x.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    blocks = torch.nn.functional.pad(flat, (0, n_blocks * block_size - flat.numel())).reshape(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    normalized = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]
    q = torch.argmin((normalized[..., None] - levels).abs(), dim=-1)
    return q.reshape(-1)[: flat.numel()].reshape(x.shape).to(torch.uint8), absmax
    ### END SOLUTION


# %%
checks.check_blockwise_absmax(blockwise_absmax)

# %% [markdown]
# Use it on something that looks like Adam's second moment: squared gradients spread over six
# decades. How many entries become 0 with 256 evenly spaced levels, and with the dynamic map?

# %%
v = torch.exp2(torch.empty(4096).uniform_(-20, 0))
try:
    for name, levels in [("linear", torch.arange(256) / 255.0), ("dynamic", dynamic_map(signed=False))]:
        q, absmax = blockwise_absmax(v, levels, 256)
        v_hat = levels[q.long()] * absmax.repeat_interleave(256)
        print(f"{name:8s}: {100 * (v_hat == 0).float().mean():.1f} % of v flushed to zero")
except NotImplementedError:
    print("Write blockwise_absmax above first.")

# %% [markdown]
# ## 2. A memory calculator
#
# Bytes per parameter for Adam training (weights + gradients + fp32 master copy + Adam's two states):
#
# | recipe | weights | grads | master | m and v |
# |---|---|---|---|---|
# | `fp32` | 4 | 4 | - | 4 + 4 |
# | `mixed` | 2 | 2 | 4 | 4 + 4 |
# | `mixed_adam8bit` | 2 | 2 | 4 | 8-bit m and v, plus one float32 absmax per block for each |
# | `bf16_pure` | 2 | 2 | - | 2 + 2 |
#
# Return the total bytes for `n_params` parameters as a float (no activations).
#
# Hints: the 8-bit states cost `2 + 2 * 4 / block_size` bytes per parameter.

# %%
def training_bytes(n_params, recipe, block_size=256):
    """Bytes of weights, gradients, master weights and Adam states for ``recipe``."""
    ### BEGIN SOLUTION
    per_param = {"fp32": 4 + 4 + 8, "mixed": 2 + 2 + 4 + 8, "mixed_adam8bit": 2 + 2 + 4 + 2 + 8 / block_size,
                 "bf16_pure": 2 + 2 + 4}[recipe]
    return float(n_params * per_param)
    ### END SOLUTION


# %%
checks.check_training_bytes(training_bytes)

# %% [markdown]
# For a 7-billion-parameter model: how many 80 GiB GPUs does each recipe need just for these
# tensors, before a single activation is stored?

# %%
try:
    for recipe in ["fp32", "mixed", "mixed_adam8bit", "bf16_pure"]:
        gib = training_bytes(7e9, recipe) / 2**30
        print(f"{recipe:15s} {gib:6.0f} GiB = {math.ceil(gib / 80)} x 80 GiB")
except NotImplementedError:
    print("Write training_bytes above first.")
