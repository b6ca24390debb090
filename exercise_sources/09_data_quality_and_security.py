# %% [markdown]
# # 09 · Data quality and security: exercises
#
# Two tools from lesson 09: the measurement behind the saturation monitor (how many values does
# the quantization grid clip?), and the fast gradient sign method, the simplest adversarial
# attack.

# %%
import torch
import torch.nn.functional as F

import qedu
from qedu import checks
from qedu.data import load_digits
from qedu.models import evaluate, pretrained

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Clip rate: what the monitor measures
#
# A quantizer with step `scale`, zero point `zero_point` and codes `qmin..qmax` turns `x` into
# `clamp(round(x * (1 / scale)) + zero_point, qmin, qmax)` (multiplying by `1 / scale`, as
# torch's quantizers do). A value is **clipped** when the clamp changes its code: its code would
# lie *below* `qmin` or *above* `qmax`. Write
# `clip_rate(x, scale, zero_point, qmin, qmax)`: the fraction of the values of `x` that clip (a
# Python float).
#
# $$\text{code} = \text{round}(x \cdot (1/\text{scale})) + \text{zero\_point} \qquad
# \text{clip rate} = \frac{1}{N}\,\#\{\text{code} < q_{min} \;\text{or}\; \text{code} > q_{max}\}$$
#
# Hints: round first, then compare: a value half a step beyond the last level rounds onto it. A
# code equal to `qmax` is on the grid. `torch.round` rounds half to even, like the quantizers.

# %%
def clip_rate(x, scale, zero_point, qmin, qmax):
    """Return the share of ``x`` whose code falls outside ``[qmin, qmax]``."""
    ### BEGIN SOLUTION
    codes = torch.round(x * (1 / scale)) + zero_point
    return ((codes < qmin) | (codes > qmax)).float().mean().item()
    ### END SOLUTION


# %%
checks.check_clip_rate(clip_rate)

# %% [markdown]
# ## 2. The fast gradient sign method (FGSM)
#
# Write `fgsm(model, x, y, eps)`: move every pixel by `eps` in the direction that increases the
# model's loss, then keep the images valid (pixels in [0, 1]):
#
# $$x_{adv} = \text{clamp}\big(x + \varepsilon \cdot \text{sign}(\nabla_x\, \text{cross\_entropy}(\text{model}(x), y)),\; 0,\; 1\big)$$
#
# Hints: `x = x.clone().requires_grad_(True)`; `grad, = torch.autograd.grad(loss, x)`;
# `grad.sign()`. Return a tensor that does not require gradients (`.detach()`).

# %%
def fgsm(model, x, y, eps):
    """Return adversarial images within ``eps`` of ``x`` (per pixel), in [0, 1]."""
    ### BEGIN SOLUTION
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()
    ### END SOLUTION


# %%
checks.check_fgsm(fgsm)

# %% [markdown]
# ## 3. Attack the MLP
#
# Run the cell: your `fgsm` against the trained MLP at a few budgets (a pixel is 0..1, one grey
# level of the original images is 1/16 = 0.0625).

# %%
data = load_digits(seed=0)
mlp = pretrained("mlp", seed=0)
try:
    for eps in (0.0, 0.05, 0.1, 0.2):
        x_adv = fgsm(mlp, data.x_test, data.y_test, eps)
        print(f"eps {eps:.2f}: accuracy {100 * evaluate(mlp, x_adv, data.y_test):.1f} %")
except NotImplementedError:
    print("write fgsm above first")

# %% [markdown]
# Lesson 09 transfers these images to the quantized models, and shows why attacking a
# fake-quantized model directly seems to fail (and why that is not robustness).
