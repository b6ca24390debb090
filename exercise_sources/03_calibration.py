# %% [markdown]
# # 03 · Calibration: exercises
#
# You will write the three range rules that lesson 03 uses from `qedu.calibration`: a min/max
# observer, a percentile range and an MSE clipping search. Work with float32 torch tensors (or
# numpy arrays, where a hint says so).

# %%
import numpy as np
import torch

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. A min/max observer
#
# An observer sees the calibration data one batch at a time. Keep the running minimum and
# maximum over **all** batches, widen the range to include 0 (`lo = min(lo, 0)`,
# `hi = max(hi, 0)`, so a real 0 gets an exact code), then map it onto **unsigned affine**
# `bits`-bit codes `0 .. 2**bits - 1`:
#
# $$\text{scale} = \max\Big(\frac{hi - lo}{q_{max} - q_{min}},\ \varepsilon\Big) \qquad
# \text{zero\_point} = \text{clamp}\big(q_{min} - \text{round}(lo / \text{scale}),\ q_{min},\ q_{max}\big)$$
#
# with $\varepsilon$ = `1.1920929e-07` (float32's eps, torch's floor). Return a Python `float` and an `int`.
#
# Hints: `float(x.min())` gives a number; `round()` on a float rounds ties to even, like `torch.round`.

# %%
def minmax_observer(batches, bits):
    """Return ``(scale, zero_point)`` for unsigned ``bits``-bit codes covering every batch (and 0)."""
    ### BEGIN SOLUTION
    lo = min(min(float(x.min()) for x in batches), 0.0)
    hi = max(max(float(x.max()) for x in batches), 0.0)
    qmin, qmax = 0, 2**bits - 1
    scale = float(torch.clamp(torch.tensor((hi - lo) / (qmax - qmin), dtype=torch.float32), min=1.1920929e-07))
    zero_point = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return scale, zero_point
    ### END SOLUTION


# %%
checks.check_minmax_observer(minmax_observer)

# %% [markdown]
# ## 2. A percentile range
#
# Clip the rarest values. For a percentile `p` (e.g. 99.9):
#
# * asymmetric (`symmetric=False`): `lo` = the `(100 - p)`-th percentile of `x`, `hi` = the `p`-th;
# * symmetric: `hi` = the `p`-th percentile of `|x|`, `lo = -hi` (one magnitude for both sides).
#
# Return two Python floats.
#
# Hints: `np.percentile(x.numpy(), p)` takes percent, `torch.quantile(x, p / 100)` a fraction;
# both interpolate linearly between neighbouring values (keep that default).

# %%
def percentile_range(x, percentile, symmetric):
    """Return ``(lo, hi)``: the clipping range that keeps ``percentile`` percent of ``x``."""
    ### BEGIN SOLUTION
    values = x.double().numpy()
    if symmetric:
        hi = float(np.percentile(np.abs(values), percentile))
        return -hi, hi
    return float(np.percentile(values, 100 - percentile)), float(np.percentile(values, percentile))
    ### END SOLUTION


# %%
checks.check_percentile_range(percentile_range)

# %% [markdown]
# ## 3. Search the clipping range with the smallest error
#
# A symmetric signed grid with `bits` bits has codes `qmin = -2**(bits-1)` .. `qmax = 2**(bits-1) - 1`.
# Clip at a fraction `alpha` of the largest magnitude: `scale = alpha * max|x| / qmax`. Try
# `alpha = k / n_grid` for `k = 1 .. n_grid` and return the `alpha` with the smallest
#
# $$\text{MSE}(\alpha) = \text{mean}\big((x - \hat{x})^2\big), \qquad
# \hat{x} = \text{clamp}\big(\text{round}(x / \text{scale}),\ q_{min},\ q_{max}\big) \cdot \text{scale}$$
#
# (the smallest `alpha` if two tie). Small `alpha`: a fine grid, but many values clip. `alpha = 1`:
# nothing clips, but the grid is coarse.
#
# Hints: clamp *after* rounding; the clipped values must stay in the mean; `np.argmin` returns
# the first minimum.

# %%
def mse_clip(x, bits, n_grid):
    """Return the clipping ratio ``alpha`` in ``{1/n_grid, ..., 1}`` with the smallest quantization MSE."""
    ### BEGIN SOLUTION
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    largest = float(x.abs().max())
    errors = []
    for k in range(1, n_grid + 1):
        scale = k / n_grid * largest / qmax
        x_hat = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
        errors.append(float(((x - x_hat) ** 2).mean()))
    return (int(np.argmin(errors)) + 1) / n_grid
    ### END SOLUTION


# %%
checks.check_mse_clip(mse_clip)

# %% [markdown]
# Lesson 03 runs the same search per tensor and per channel (`qedu.calibration.mse_range`), and
# compares it with min/max, percentiles and KL. Next: `04_post_training_quantization`.
