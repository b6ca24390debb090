"""Accumulation: why mixed precision adds up its products in fp32, and Kahan summation.

The third ingredient of mixed-precision training (Micikevicius et al. 2018) is **fp32
accumulation**: the inputs of a dot product are fp16, but its products are added into an fp32
sum, which is rounded to fp16 only when it is written out; large reductions (sums, norms,
softmax denominators) run in fp32 too. Tensor cores work that way. The reason is swamping
(:func:`qedu.rounding.swamping`): a running sum grows, the gap between its neighbours in the
format grows with it, and once a term is smaller than half that gap it is rounded away::

    total = round_acc(total + x_i)          i = 1..n, one rounding per addition

With 8 significant bits (bf16), a sum of terms near 0.5 stops growing at a few hundred; with
11 (fp16), at a few thousand; with fp32's 24 it is fine for millions. :func:`sequential_sum`
and :func:`dot` compute sums and dot products that way in any accumulator format.

**Kahan (compensated) summation** keeps a second number ``c``, what the roundings have lost so
far, and adds it back with the next term (Kahan 1965)::

    y = x_i + c                  the term plus what was lost before
    t = round_acc(total + y)     the new sum
    c = round_acc(y - (t - total))   what this rounding lost (t - total is exact)
    total = t

The same trick lets *weights* live in bf16 without an fp32 master copy: ``c`` is a bf16
buffer per weight that carries the part of each update that rounding dropped
(:func:`kahan_add`; Zamirai et al. 2020, "Revisiting BFloat16 Training").

Every rounding here uses torch's own arithmetic in the format's dtype, which forms the sum in
float32 and rounds it to the format (the tests prove it equals :func:`qedu.floats.cast` of the
float32 sum, addition by addition).

>>> x = torch.full((1000,), 0.01)
>>> round(sequential_sum(x, FP32).item(), 3), sequential_sum(x, BF16).item(), round(kahan_sum(x, BF16).item(), 1)
(10.0, 4.0, 10.0)
"""
from __future__ import annotations

import torch

from qedu._validation import as_float32, as_float_tensor, check_int
from qedu.floats import BF16, FP16, FP32, FloatFormat

__all__ = ["sequential_sum", "kahan_sum", "dot", "kahan_add", "relative_error", "summation_errors", "SUM_METHODS"]


def _dtype(fmt) -> torch.dtype:
    """The torch dtype of an accumulator format (FP32, FP16, BF16...); None means FP32."""
    if fmt is None:
        return torch.float32
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat such as qedu.floats.FP16 (or None for fp32), got {fmt!r}.")
    if fmt.torch_dtype is None or fmt.torch_dtype.itemsize < 2:
        raise ValueError(f"fmt must be a 16- or 32-bit format torch computes in (FP32, FP16, BF16), got {fmt.name}.")
    return fmt.torch_dtype


def _terms(x, name: str = "x") -> torch.Tensor:
    x = as_float32(as_float_tensor(x, name), name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the terms to add along the last one), got a scalar.")
    return x


def sequential_sum(x, fmt: FloatFormat | None = FP32) -> torch.Tensor:
    """Sum the last dimension of ``x`` term by term, rounding the running sum to ``fmt`` each time.

    ``total = round(total + x_i)``, left to right, starting from 0; the terms are used as given
    (float32). This is what an accumulator of format ``fmt`` does; torch's own ``sum`` is more
    accurate than any one-by-one loop (it adds in blocks), so it is not the reference here.

    Args:
        x: tensor (..., n); every row is summed on its own.
        fmt: the accumulator format: FP32 (or None), FP16 or BF16.

    Returns:
        float32 tensor (...) of sums, each a value of ``fmt``. A running sum beyond ``fmt``'s
        largest value becomes +-inf, as in the hardware (fp16 overflows at 65520): the only way
        finite terms give a non-finite sum.

    >>> sequential_sum(torch.ones(300), BF16).item()  # bf16 cannot hold 257: 256 + 1 rounds to 256
    256.0
    """
    x, dtype = _terms(x), _dtype(fmt)
    total = torch.zeros(x.shape[:-1])  # float32 holding values of fmt
    for term in x.unbind(-1):
        total = (total + term).to(dtype).float()  # float32 sum, rounded to the accumulator
    return total


def kahan_sum(x, fmt: FloatFormat | None = FP32) -> torch.Tensor:
    """Sum the last dimension of ``x`` with Kahan's compensation, sum and compensation kept in ``fmt``.

    See the module docstring for the four lines. The error no longer grows with the number of
    terms: it stays about one rounding of ``fmt``, whatever ``n`` is.

    Args:
        x: tensor (..., n). fmt: the format of the running sum and of the compensation.

    Returns:
        float32 tensor (...) of sums. As in :func:`sequential_sum`, a running sum beyond ``fmt``'s
        largest value becomes +-inf (and stays so: the compensation is then dropped, since
        ``inf - inf`` would make it NaN).

    >>> kahan_sum(torch.ones(300), BF16).item()  # 300 is a bf16 number; the plain sum stops at 256
    300.0
    """
    x, dtype = _terms(x), _dtype(fmt)
    total = torch.zeros(x.shape[:-1])  # float32 tensors holding values of fmt
    c = torch.zeros(x.shape[:-1])  # what rounding has lost so far
    for term in x.unbind(-1):
        y = term + c
        t = (total + y).to(dtype).float()
        c = (y - (t - total)).to(dtype).float()
        c = torch.where(torch.isfinite(t), c, 0.0)  # after an overflow there is nothing left to compensate
        total = t
    return total


def dot(a, b, inputs: FloatFormat | None = BF16, accumulate: FloatFormat | None = FP32) -> torch.Tensor:
    """Dot products along the last dimension with inputs in ``inputs`` and the sum in ``accumulate``.

    ``round_in(a) * round_in(b)`` is exact in float32 for fp16 and bf16 inputs (11 + 11 and
    8 + 8 significant bits fit in float32's 24), as in a fused multiply-add; the products are
    then added with :func:`sequential_sum` in ``accumulate``.

    Args:
        a, b: tensors (..., n) of the same shape. inputs: format the inputs are rounded to
            (None keeps float32). accumulate: the accumulator's format.

    Returns:
        float32 tensor (...) of dot products (+-inf only where the running sum overflows
        ``accumulate``, as in :func:`sequential_sum`).

    Raises:
        TypeError / ValueError: bad or differently shaped ``a``/``b``; values beyond ``inputs``'
        range; products beyond float32's.

    >>> dot(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]), accumulate=FP32).item()
    6.0
    """
    a, b = _terms(a, "a"), _terms(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    in_dtype = _dtype(inputs)
    a_in, b_in = a.to(in_dtype).float(), b.to(in_dtype).float()
    for name, t in (("a", a_in), ("b", b_in)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds values beyond the largest value of inputs={inputs.name} ({inputs.max:g}); "
                             f"scale {name} down or pick a wider inputs format.")
    products = a_in * b_in  # exact for 16-bit inputs
    if not bool(torch.isfinite(products).all()):
        raise ValueError("a * b overflows float32 for some terms (|a_i * b_i| > 3.4e38); scale a or b down.")
    return sequential_sum(products, accumulate)


def kahan_add(w: torch.Tensor, c: torch.Tensor, update: torch.Tensor, fmt: FloatFormat = BF16
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Add ``update`` to weights ``w`` stored in ``fmt``, carrying what rounding drops in ``c``.

    ``y = update + c;  w_new = round(w + y);  c_new = round(y - (w_new - w))``. Without ``c``
    (plain ``round(w + update)``) an update below half the gap between ``w`` and its neighbour
    is lost every time; with it, the lost parts pile up in ``c`` until they are large enough to
    move ``w``. Costs one extra ``fmt`` number per weight (2 bytes in bf16 instead of an fp32
    master copy's 4).

    Args:
        w: weights, values of ``fmt`` (float32 tensor). c: the compensation, same shape
            (start with zeros). update: the optimizer's step, float32. fmt: FP16 or BF16.

    Returns:
        ``(w_new, c_new)``, float32 tensors holding values of ``fmt``.

    Raises:
        TypeError / ValueError: non-tensors, shapes that differ, NaN/inf (an optimizer should
        skip such a step), or an update that moves ``w`` beyond ``fmt``'s largest value.

    >>> w, c = torch.ones(1), torch.zeros(1)
    >>> for _ in range(1000): w, c = kahan_add(w, c, torch.full((1,), 1e-3))
    >>> round(w.item() + c.item(), 2)  # the true sum is 2
    2.0
    """
    dtype = _dtype(fmt)
    for name, t in (("w", w), ("c", c), ("update", update)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if not (w.shape == c.shape == update.shape):
        raise ValueError(f"w, c and update must have the same shape, got {tuple(w.shape)}, {tuple(c.shape)}, "
                         f"{tuple(update.shape)}.")
    w, c, update = (as_float32(as_float_tensor(t, name, allow_empty=True), name)
                    for name, t in (("w", w), ("c", c), ("update", update)))
    y = update + c
    w_new = (w + y).to(dtype).float()
    if not bool(torch.isfinite(w_new).all()):
        raise ValueError(f"w + update overflows {fmt.name} (beyond its largest value {fmt.max:g}); the update is far "
                         "too large for these weights: lower the learning rate.")
    c_new = (y - (w_new - w)).to(dtype).float()
    if not bool(torch.isfinite(c_new).all()):
        raise ValueError(f"the compensation overflows {fmt.name}: c must hold what rounding lost (start with zeros), "
                         f"not values near the format's largest ({fmt.max:g}).")
    return w_new, c_new


def relative_error(approx, exact) -> torch.Tensor:
    """``|approx - exact| / |exact|`` elementwise, in float64 (``exact`` must be nonzero).

    >>> relative_error(torch.tensor([9.0]), torch.tensor([10.0])).item()
    0.1

    Raises:
        TypeError / ValueError: non-numeric, empty, NaN/inf or differently shaped inputs; a zero in
        ``exact``; an error too large for float64 (``exact`` within ~1e-308 of 0, or huge values).
    """
    approx, exact = as_float_tensor(approx, "approx").double(), as_float_tensor(exact, "exact").double()
    if approx.shape != exact.shape:
        raise ValueError(f"approx and exact must have the same shape, got {tuple(approx.shape)} and {tuple(exact.shape)}.")
    if bool((exact == 0).any()):
        raise ValueError("exact must be nonzero everywhere (a relative error of 0 is undefined); drop those entries.")
    error = (approx - exact).abs() / exact.abs()
    if not bool(torch.isfinite(error).all()):
        raise ValueError("the relative error overflows float64: exact holds values too close to 0 (or approx and exact "
                         "are near float64's largest); drop those entries.")
    return error


SUM_METHODS = ("fp32", "fp16", "bf16", "bf16, Kahan")


def summation_errors(lengths=(256, 1024, 4096, 16384), n_rows: int = 4, seed: int = 0) -> list[dict]:
    """How far sums of ``n`` random terms in [0, 1) land from the exact sum, per accumulator.

    For each ``n`` in ``lengths``: ``n_rows`` rows of ``n`` uniform terms (seeded), summed by
    :func:`sequential_sum` in fp32, fp16 and bf16 and by :func:`kahan_sum` in bf16; the error is
    :func:`relative_error` against the float64 sum, averaged over rows. The terms average 0.5,
    like the positive terms of a softmax denominator, a mean or a squared norm.

    Returns:
        one dict per (n, method): ``{"n", "method", "mean_relative_error"}``, methods in
        :data:`SUM_METHODS` order.

    >>> [round(r["mean_relative_error"], 2) for r in summation_errors(lengths=(600,), n_rows=1)]
    [0.0, 0.0, 0.14, 0.0]
    """
    lengths = [check_int(n, "lengths", 1) for n in (lengths if isinstance(lengths, (list, tuple)) else [lengths])]
    if not lengths:
        raise ValueError("lengths is empty; pass at least one number of terms, e.g. (256, 1024).")
    n_rows = check_int(n_rows, "n_rows", 1)
    g = torch.Generator().manual_seed(check_int(seed, "seed", 0, 2**63 - 1))
    rows = []
    for n in lengths:
        x = torch.rand(n_rows, n, generator=g)
        exact = x.double().sum(-1)
        sums = {"fp32": sequential_sum(x, FP32), "fp16": sequential_sum(x, FP16), "bf16": sequential_sum(x, BF16),
                "bf16, Kahan": kahan_sum(x, BF16)}
        for method in SUM_METHODS:
            rows.append({"n": n, "method": method, "mean_relative_error": relative_error(sums[method], exact).mean().item()})
    return rows
