# %% [markdown]
# # Warm-up: how exercises work
#
# Every exercise in qedu looks like this one: a short explanation, a function for you to
# write, and a one-line **check** below it. Run the check at any time:
#
# * ○ "not implemented yet" - you have not replaced the `raise NotImplementedError` line;
# * ✓ "all ... cases match" - done;
# * ✗ a `CheckFailed` error - it shows the input, what was expected and what you returned, then
#   what differs: the classic mistake you made, when your answers match it on two different
#   inputs, or otherwise where your answers go wrong ("only at exact ties", "only for negative
#   inputs", "right values, but float64", "your function changed its input", ...).

# %%
import numpy as np

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## Snap each value to its nearest level
#
# Quantization, at heart, replaces a real number `x` by the closest value on a short list of
# allowed **levels**. Write `snap_to_levels(x, levels)`:
#
# $$\hat{x}_i = \arg\min_{\ell \in \text{levels}} |x_i - \ell|$$
#
# When `x` is exactly halfway between two levels, pick the **lower** one. The levels may come in
# any order.
#
# Hints: `np.abs(x[:, None] - levels[None, :])` is a table of distances, one row per value;
# `np.argmin(..., axis=1)` finds the closest column (the first one on a tie).

# %%
def snap_to_levels(x, levels):
    """Return an array like ``x`` where each value is replaced by its nearest level."""
    ### BEGIN SOLUTION
    levels = np.sort(np.asarray(levels, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    distances = np.abs(x[:, None] - levels[None, :])  # (n_values, n_levels)
    return levels[np.argmin(distances, axis=1)]
    ### END SOLUTION


# %%
checks.check_snap_to_levels(snap_to_levels)

# %% [markdown]
# Well done. Try breaking it on purpose (e.g. send ties to the upper level, or forget to sort the
# levels) and re-run the check to see what it tells you. Then head to `lessons/01_number_formats.ipynb`.
