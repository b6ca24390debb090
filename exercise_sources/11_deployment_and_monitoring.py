# %% [markdown]
# # 11 · Deployment and monitoring: exercises
#
# Three pieces of lesson 11, each a few lines: the fixed-point multiplier that replaces a float
# scale on an integer machine, the int32 accumulator of a linear layer whose codes have zero
# points, and the population stability index that watches a deployed model's activations.

# %%
import math

import torch

import qedu
from qedu.checks import deploy as checks  # lesson 11's checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. The fixed-point multiplier
#
# Requantizing an int32 accumulator multiplies it by a real number `M = s_x s_w / s_y`. An integer
# machine stores `M` as an int32 `M0` and a shift (TensorFlow Lite's `QuantizeMultiplier`):
#
# $$M = M_0 \cdot 2^{\,\text{shift} - 31}, \qquad 2^{30} \le M_0 < 2^{31}$$
#
# Hints: `frac, shift = math.frexp(M)` splits `M = frac · 2^shift` with `frac` in [0.5, 1);
# `M0 = floor(frac · 2^31 + 0.5)` (ties away from zero, as C's `round`); if that rounds up to
# `2^31`, halve it and add 1 to the shift. Return two Python ints.

# %%
def quantize_multiplier(real):
    """``(M0, shift)`` with ``real = M0 * 2**(shift - 31)`` and ``M0`` in ``[2**30, 2**31)``; ``real > 0``."""
    ### BEGIN SOLUTION
    frac, shift = math.frexp(real)
    m0 = math.floor(frac * 2**31 + 0.5)
    if m0 == 2**31:  # the fraction rounded up to 1.0
        m0 //= 2
        shift += 1
    return m0, shift
    ### END SOLUTION


# %%
checks.check_quantize_multiplier(quantize_multiplier)

# %% [markdown]
# ## 2. An integer linear layer with zero points
#
# Input codes `q_x` (uint8, zero point `z_x`), weight codes `q_w` (int8, shape `(C_out, K)`, zero
# point `z_w`) and an int32 bias `bias_q` (already at scale `s_x s_w`). Return the int32
# accumulator, shape `(N, C_out)`:
#
# $$\text{acc}[n, o] = \sum_k (q_x[n, k] - z_x)\,(q_w[o, k] - z_w) + \text{bias}_q[o]$$
#
# Hints: uint8 and int8 tensors overflow if you multiply them as they are: cast first. Expanding
# the product gives `Σ q_x q_w − z_w Σ q_x − z_x Σ q_w + K z_x z_w`: the third and fourth terms
# depend on the weights only, so a deployed kernel precomputes them.

# %%
def integer_linear(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    """The int32 accumulator of ``(q_x - z_x) @ (q_w - z_w).T + bias_q``."""
    ### BEGIN SOLUTION
    acc = (q_x.to(torch.int64) - zero_point_x) @ (q_w.to(torch.int64) - zero_point_w).T  # (N, K) @ (K, C_out)
    return (acc + bias_q.to(torch.int64)).to(torch.int32)
    ### END SOLUTION


# %%
checks.check_integer_linear(integer_linear)

# %% [markdown]
# ## 3. The population stability index
#
# A monitor compares the histogram of a layer's codes on live traffic (`actual`) with the one seen
# at calibration (`expected`). Turn both into shares, floor each share at `floor` (an empty bin
# would make the log infinite), then
#
# $$\text{PSI} = \sum_i (a_i - e_i)\,\ln\frac{a_i}{e_i}$$
#
# Below 0.1 reads as stable, above 0.25 as a major shift. Return a Python float.

# %%
def psi(expected, actual, floor=1e-4):
    """Population stability index between two histograms of counts."""
    ### BEGIN SOLUTION
    e = (expected.double() / expected.sum()).clamp(min=floor)
    a = (actual.double() / actual.sum()).clamp(min=floor)
    return float(((a - e) * torch.log(a / e)).sum())
    ### END SOLUTION


# %%
checks.check_psi(psi)
