# %% [markdown]
# # 08 · Evaluating quantized models: exercises
#
# Two measurements that see what top-line accuracy hides: the share of inputs whose prediction
# changed, and the change of each class's accuracy. Then you use them on the digits MLP.

# %%
import torch

import qedu
from qedu import checks
from qedu.data import load_digits
from qedu.granularity import PerTensor
from qedu.models import predict, pretrained
from qedu.ptq import PTQConfig, quantize_model

qedu.setup(seed=0)

# %% [markdown]
# ## 1. Disagreement rate
#
# Write `disagreement_rate(y, float_pred, quant_pred)`: the fraction of inputs where the
# quantized model's prediction differs from the **float model's** prediction (a Python float in
# [0, 1]). All three arguments are 1-D integer tensors of the same length; `y` holds the true
# labels.
#
# $$\text{disagreement} = \frac{1}{N} \sum_{i=1}^{N} [\,\text{quant\_pred}_i \neq \text{float\_pred}_i\,]$$
#
# Hints: the labels `y` are *not* needed (they are there to tempt you); `(a != b)` is a boolean
# tensor, `.float().mean().item()` turns it into a fraction.

# %%
def disagreement_rate(y, float_pred, quant_pred):
    """Return the share of inputs whose prediction changed (a float in [0, 1])."""
    ### BEGIN SOLUTION
    return (quant_pred != float_pred).float().mean().item()
    ### END SOLUTION


# %%
checks.check_disagreement_rate(disagreement_rate)

# %% [markdown]
# ## 2. Per-class accuracy change
#
# Write `per_class_deltas(y, float_pred, quant_pred, n_classes)`: a float tensor of shape
# `(n_classes,)` whose entry `c` is the quantized model's accuracy on class `c` minus the float
# model's. The accuracy of a model on class `c` looks only at the inputs whose **true** label is
# `c`:
#
# $$\text{acc}_c = \frac{\#\{i : \text{pred}_i = y_i = c\}}{\#\{i : y_i = c\}} \qquad \Delta_c = \text{acc}_c(\text{quant}) - \text{acc}_c(\text{float})$$
#
# A class with no input has no accuracy: its entry must be `nan` (0 / 0 in floating point).
#
# Hints: `torch.bincount(y, minlength=n_classes)` counts the inputs of each class;
# `torch.bincount(y[pred == y], minlength=n_classes)` counts the correct ones; divide as floats.

# %%
def per_class_deltas(y, float_pred, quant_pred, n_classes):
    """Return quantized minus float accuracy per true class, shape (n_classes,), nan for empty classes."""
    ### BEGIN SOLUTION
    total = torch.bincount(y, minlength=n_classes).double()

    def accuracy(pred):
        return torch.bincount(y[pred == y], minlength=n_classes).double() / total

    return accuracy(quant_pred) - accuracy(float_pred)
    ### END SOLUTION


# %%
checks.check_per_class_deltas(per_class_deltas)

# %% [markdown]
# ## 3. Use them
#
# The MLP at 4 bits with one scale per tensor, as in the lesson. Run the cell: it uses your two
# functions (it prints nothing useful until both are written).

# %%
data = load_digits(seed=0)
mlp = pretrained("mlp", seed=0)
w4a4 = quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4, weight_granularity=PerTensor()), data.x_calib)
float_pred, quant_pred = predict(mlp, data.x_test), predict(w4a4, data.x_test)
try:
    deltas = per_class_deltas(data.y_test, float_pred, quant_pred, 10)
    print(f"disagreement: {100 * disagreement_rate(data.y_test, float_pred, quant_pred):.1f} %")
    print("per-class change (points):", [round(100 * d, 1) for d in deltas.tolist()])
except NotImplementedError:
    print("write the two functions above first")

# %% [markdown]
# Compare with the lesson's `compare_models` report (`qedu.evaluation`). Which class lost the
# most, and how many images is that? A class has about 36 test images here: one image is 2.8
# points of its class.
