"""Stochastic rounding, and the "swamping" it cures.

Round-to-nearest sends ``x`` to the closest value of a format, always the same way. Added up
many times, that bias can stop a sum dead: in bf16, ``1.0 + 0.001`` rounds back to ``1.0``
(bf16 steps are 2**-7 = 0.0078 near 1), so adding 0.001 ten thousand times leaves 1.0. This
is *swamping*, and it is what happens to a weight stored in bf16 when its updates are small.

*Stochastic rounding* rounds up or down at random, with probabilities that make the result
right on average (``E[round(x)] = x``), so the small terms survive in expectation. It is not in
torch core (pytorch#120376); :func:`stochastic_round` builds it from the same binade/step
arithmetic as :func:`qedu.floats.cast`.

>>> swamping(BF16).item(), swamping(FP16).item()   # 1.0 + 10,000 x 0.001 should be 11
(1.0, 4.0)
"""
from __future__ import annotations

import numpy as np
import torch

from qedu._validation import as_float_tensor, check_fits_format, check_int, check_real
from qedu.floats import BF16, FP16, FP32, FloatFormat, cast

__all__ = ["stochastic_round", "swamping", "ROUNDINGS"]

ROUNDINGS = ("nearest", "stochastic")


def _check_fmt(fmt) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat such as qedu.formats.BF16, got {fmt!r}.")
    return fmt



def stochastic_round(x, fmt: FloatFormat, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round each value of ``x`` to one of its two neighbours in ``fmt``, at random, without bias.

    With ``lo <= |x| < hi`` the neighbours (``hi - lo`` is the step of ``|x|``'s binade, as
    in :func:`~qedu.floats.cast`)::

        |x| -> hi  with probability (|x| - lo) / (hi - lo),   else lo       so E[result] = x

    Values already in ``fmt`` stay put; beyond ``fmt.max``, inf and NaN follow ``cast``'s overflow
    rule. float64 input keeps its precision (no detour through float32).

    Args:
        x: tensor, array or number. fmt: the target format. generator: a seeded
            ``torch.Generator`` for repeatable draws (None: torch's global generator).

    Returns:
        float32 tensor shaped like ``x``, every value in ``fmt``.

    >>> g = torch.Generator().manual_seed(0)
    >>> x_hat = stochastic_round(torch.full((10000,), 1.2), FloatFormat(2, 1, "none"), g)  # 1 or 1.5
    >>> x_hat.unique().tolist(), round(x_hat.mean().item(), 2)
    ([1.0, 1.5], 1.2)
    """
    fmt = _check_fmt(fmt)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}.")
    x = as_float_tensor(x, "x", allow_empty=True, allow_nonfinite=True)
    a = x.double().abs()
    in_range = torch.isfinite(a) & (a <= fmt.max)
    a = torch.where(in_range, a, 0.0)
    e = (torch.frexp(a).exponent - 1).clamp(min=fmt.min_exp)  # binade; subnormals share the lowest
    step = torch.exp2((e - fmt.man_bits).double())  # hi - lo
    lo = torch.floor(a / step) * step  # the neighbour towards zero
    p_up = (a - lo) / step  # in [0, 1); 0 when |x| is already in fmt
    u = torch.rand(a.shape, generator=generator, dtype=torch.float64)
    y = torch.copysign(lo + step * (u < p_up), x.double()).float()
    return torch.where(in_range, y, cast(x, fmt))


def swamping(fmt: FloatFormat, rounding: str = "nearest", n_steps: int = 10_000, increment: float = 1e-3,
             start: float = 1.0, n_runs: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add ``increment`` to ``start`` ``n_steps`` times, keeping the running sum in ``fmt``.

    ``total = round(total + increment)`` with ``increment`` itself in ``fmt``. The sum of two
    such values is exact in float64, so with ``rounding="nearest"`` this is exactly the
    format's own addition (the tests compare with torch's fp16/bf16/fp32 adds). Once
    ``increment`` is smaller than half the step between ``total`` and its neighbour, every
    addition rounds back to ``total``: the small term is *swamped*. ``"stochastic"`` rounding
    rounds up often enough to be right on average.

    10,000 additions one after another are too many for torch's per-call overhead, so the
    loop rounds with numpy, using the same steps as :func:`~qedu.floats.cast` and
    :func:`stochastic_round` (and the same random numbers, drawn from ``generator`` up front);
    the tests prove the results equal theirs.

    A sum that grows beyond ``fmt.max`` overflows as the format's own addition does (inf or
    ``fmt.max``, see :func:`~qedu.floats.cast`).

    Returns:
        float32 tensor of ``n_runs`` final sums (independent random draws for "stochastic").

    Raises:
        TypeError / ValueError: ``increment`` or ``start`` not a finite number ``fmt`` can hold, ``n_steps < 0``,
            ``n_runs < 1``, an unknown ``rounding``, ``fmt`` not a FloatFormat.

    >>> round(swamping(FP32).item(), 4)   # the true sum is 11
    11.0008
    """
    fmt = _check_fmt(fmt)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
    n_steps = check_int(n_steps, "n_steps", 0)
    n_runs = check_int(n_runs, "n_runs", 1)
    increment = check_fits_format(check_real(increment, "increment", example="1e-3"), "increment", fmt)
    start = check_fits_format(check_real(start, "start", example="1.0"), "start", fmt)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}.")
    inc = float(cast(float(increment), fmt))
    total = cast(torch.full((n_runs,), float(start)), fmt).double().numpy()
    u = None
    if rounding == "stochastic":  # row i = the draws stochastic_round makes at step i
        u = torch.rand((n_steps, n_runs), generator=generator, dtype=torch.float64).numpy()
    for i in range(n_steps):
        exact = total + inc
        a = np.abs(exact)
        e = np.maximum(np.frexp(a)[1] - 1, fmt.min_exp)  # the binade, as in cast
        step = np.ldexp(1.0, e - fmt.man_bits)
        if u is None:
            a = np.round(a / step) * step  # ties to even
        else:
            lo = np.floor(a / step) * step
            a = lo + step * (u[i] < (a - lo) / step)
        if not np.all(a <= fmt.max):  # overflow (or inf/NaN): let cast apply the format's rule
            a = cast(torch.from_numpy(np.abs(exact)), fmt).double().numpy()
        total = np.copysign(a, exact)
    return torch.from_numpy(total).float()
