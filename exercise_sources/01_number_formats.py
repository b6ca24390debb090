# %% [markdown]
# # Exercises 01: number formats
#
# Four small functions that take a number format apart: the range of an integer code, the
# value of a float's bit fields, the largest float a format holds, and rounding to a format.
# Lesson `lessons/01_number_formats.ipynb` explains everything you need. Each check prints
# ○ until you replace `raise NotImplementedError`, ✓ when your function is right, and otherwise
# says what differs (naming the classic mistake when your answers match it on two inputs).

# %%
import torch

import qedu
from qedu import checks

qedu.setup(seed=0)

# %% [markdown]
# ## 1. The range of b-bit integer codes
#
# Write `int_range(bits, signed)` returning `(qmin, qmax)`, the smallest and largest code:
#
# $$\text{unsigned: } 0 \;..\; 2^b - 1 \qquad\qquad \text{signed (two's complement): } -2^{b-1} \;..\; 2^{b-1} - 1$$
#
# Hints: `uint8` is 0..255 and `int8` is -128..127. With one bit, signed codes are -1 and 0.

# %%
def int_range(bits, signed):
    """Return (qmin, qmax) for ``bits``-bit integer codes, as Python ints."""
    ### BEGIN SOLUTION
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
    ### END SOLUTION


# %%
checks.check_int_range(int_range)

# %% [markdown]
# ## 2. The value of a float's bit fields
#
# A float with `E` exponent bits and `M` mantissa bits stores a sign `s`, an exponent field `e`
# and a mantissa field `m`. With `bias = 2**(E-1) - 1`:
#
# $$\text{normal } (e > 0):\; (-1)^s \cdot 2^{\,e - \text{bias}} \cdot \left(1 + \frac{m}{2^M}\right)
# \qquad \text{subnormal } (e = 0):\; (-1)^s \cdot 2^{\,1 - \text{bias}} \cdot \frac{m}{2^M}$$
#
# Write `exmy_value(sign, exponent, mantissa, exp_bits, man_bits)` returning that value as a
# float. Treat every pattern as a number (no inf or NaN here, as in fp4 and fp6).
#
# Hints: fp16 `0 01111 0000000000` is `exmy_value(0, 15, 0, 5, 10) == 1.0`. The leading 1 of a
# normal number is not stored. Subnormals use the exponent `1 - bias`, not `0 - bias`.

# %%
def exmy_value(sign, exponent, mantissa, exp_bits, man_bits):
    """Return the float whose fields are ``sign``, ``exponent`` and ``mantissa`` (all ints)."""
    ### BEGIN SOLUTION
    bias = 2 ** (exp_bits - 1) - 1
    if exponent == 0:
        magnitude = 2.0 ** (1 - bias) * (mantissa / 2**man_bits)
    else:
        magnitude = 2.0 ** (exponent - bias) * (1 + mantissa / 2**man_bits)
    return -magnitude if sign else magnitude
    ### END SOLUTION


# %%
checks.check_exmy_value(exmy_value)

# %% [markdown]
# ## 3. The largest finite value
#
# Which patterns are numbers depends on the format's convention for its all-ones exponent:
#
# * `"ieee"` (fp16, bf16, e5m2): the all-ones exponent is inf/NaN, numbers stop one exponent lower;
# * `"fn"` (e4m3fn): the all-ones exponent holds numbers, except the all-ones mantissa, which is NaN;
# * `"none"` (fp6, fp4): every pattern is a number.
#
# Write `float_max(exp_bits, man_bits, special)`: the largest finite value, using the formula above.
#
# Hints: fp16 gives 65504, e4m3fn 448, e2m1 6. Find the largest exponent field and mantissa
# field that still mean a number, then evaluate them.

# %%
def float_max(exp_bits, man_bits, special):
    """Return the largest finite value of the format, as a float."""
    ### BEGIN SOLUTION
    bias = 2 ** (exp_bits - 1) - 1
    top_exponent, top_mantissa = 2**exp_bits - 1, 2**man_bits - 1
    if special == "ieee":
        top_exponent -= 1  # the all-ones exponent means inf or NaN
    elif special == "fn":
        top_mantissa -= 1  # s.1111.111 is NaN
    return 2.0 ** (top_exponent - bias) * (1 + top_mantissa / 2**man_bits)
    ### END SOLUTION


# %%
checks.check_float_max(float_max)

# %% [markdown]
# ## 4. Round to the nearest value, ties to even
#
# Between $2^e$ and $2^{e+1}$ a format with `M` mantissa bits has $2^M$ evenly spaced values,
# `step = 2**(e - M)` apart. Rounding a normal number is therefore
#
# $$e = \lfloor \log_2 |x| \rfloor, \qquad \hat{x} = \operatorname{round}\!\left(\frac{x}{2^{\,e - M}}\right) \cdot 2^{\,e - M}$$
#
# where a tie goes to the *even* neighbour. Write `round_to_exmy(x, exp_bits, man_bits)` for a
# float32 tensor `x` whose values lie in the format's normal range (no overflow, no subnormals).
#
# Hints: `torch.floor(torch.log2(x.abs()))` gives `e`; `torch.exp2` gives powers of two.
# `torch.round` already rounds ties to even. Return a float32 tensor shaped like `x`.

# %%
def round_to_exmy(x, exp_bits, man_bits):
    """Return ``x`` rounded to the nearest value with ``man_bits`` mantissa bits (ties to even)."""
    ### BEGIN SOLUTION
    e = torch.floor(torch.log2(x.abs()))
    step = torch.exp2(e - man_bits)
    return torch.round(x / step) * step
    ### END SOLUTION


# %%
checks.check_round_to_exmy(round_to_exmy)

# %% [markdown]
# Compare with qedu's `qedu.formats.cast(x, qedu.formats.FloatFormat(exp_bits, man_bits))`, which
# also handles subnormals, overflow, inf and NaN, and matches `x.to(torch.float8_e4m3fn)` and
# friends bit for bit. Then try `checks.check_round_to_exmy(lambda x, E, M: torch.trunc(x))` -
# or your own deliberate mistake - to see how a check names it.
