"""FP8 training recipes, simulated on the CPU: every linear layer's matmuls take fp8 inputs.

A linear layer runs three matmuls per training step, and an fp8 recipe feeds each of them fp8
operands, accumulating in fp32::

    forward        y      = x   @ W^T        x: e4m3, W: e4m3
    grad_input     dL/dx  = g   @ W          g = dL/dy: e5m2 (the "hybrid" recipe) or e4m3
    grad_weight    dL/dW  = g^T @ x

Every operand is scaled into fp8's range before the cast and unscaled after the product::

    a @ b  ~=  (fp8(a * s_a) @ fp8(b * s_b)) / (s_a * s_b)       s = fp8_max / amax

Recipes differ in where ``amax`` comes from (the names are torchao's and Transformer Engine's):

- ``"tensorwise"`` (current scaling): one amax per operand, from the operand itself
  (:func:`amax_to_scale`: ``fp8_max / max(amax, 1e-12)`` in float64, then float32).
- ``"rowwise"``: one amax per row of the contraction, i.e. along the dimension the matmul sums
  over (rows of ``a``, columns of ``b``), so one outlier row cannot squash the others; scales
  are rounded down to powers of two, and gradients use e4m3 too (torchao's "rowwise").
- ``"delayed"``: one scale per operand computed from an *amax history* of earlier steps
  (:class:`qedu.loss_scaling.DelayedScaling`, Transformer Engine's ``DelayedScaling`` with
  ``amax_compute_algo="max"``); a sudden spike saturates until the history catches up.
- ``"mxfp8"``: blocks of 32 along the contraction, each with an E8M0 scale (:mod:`qedu.mx`).
- ``"unscaled"``: no scale at all (``s = 1``), a plain saturating cast to e4m3 / e5m2: the
  baseline that shows why the others exist (small gradients underflow to 0).

:class:`Float8Linear` counts, per operand role, how many values overflowed or underflowed: where a
recipe breaks shows there first. Both are defined by what the cast does (:func:`overflowed`,
:func:`underflowed`): a scaled value *overflows* when it rounds (to nearest even) past the format's
max, so that the saturating cast clips it (a plain cast would give inf or NaN); one that rounds
down to the max is ordinary rounding (e4m3: max 448, neighbours 32 apart, overflow above 464). A
nonzero value *underflows* when its fp8 value is 0 (e4m3: magnitudes up to 2^-10, half its smallest
subnormal). MXFP8 counts both per element, after the element's block scale.

Tested in tests/test_fp8_training.py against torchao 0.18's ``convert_to_float8_training``
(tensorwise and rowwise run on the CPU) and against the formulas. torchao's rowwise matmuls return
bf16 on the CPU (its ``_scaled_mm`` path); here every product stays fp32.

>>> layer = Float8Linear(nn.Linear(4, 2), "tensorwise")
>>> layer(torch.ones(3, 4)).shape
torch.Size([3, 2])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_bool, check_choice, check_module
from qedu.floats import FP8_E4M3, FP8_E5M2, FloatFormat, cast
from qedu.loss_scaling import DelayedScaling
from qedu.mx import E8M0_BIAS, mx_dequantize, mx_quantize

__all__ = ["RECIPES", "ROLES", "amax_to_scale", "overflowed", "underflowed", "fp8_matmul", "FP8Stats", "Float8Linear",
           "convert_to_float8"]

RECIPES = ("tensorwise", "rowwise", "delayed", "mxfp8", "unscaled")
# the six operands of a linear layer's three matmuls
ROLES = ("input", "weight", "grad_output", "weight_for_grad_input", "grad_output_for_grad_weight", "input_for_grad_weight")
EPS = 1e-12  # torchao's floor on amax


def amax_to_scale(amax: torch.Tensor, fmt: FloatFormat = FP8_E4M3, power_of_2: bool = False) -> torch.Tensor:
    """``s = fmt.max / max(amax, 1e-12)``, computed in float64 and rounded to float32 (torchao's rule).

    With ``power_of_2`` the scale is rounded *down* to a power of two, so ``x * s`` is exact.

    >>> amax_to_scale(torch.tensor([2.0, 0.0])).tolist()
    [224.0, 447999985582080.0]
    >>> amax_to_scale(torch.tensor(3.0), power_of_2=True).item()   # 448 / 3 = 149.3 -> 128
    128.0

    Raises:
        TypeError / ValueError: ``amax`` not a tensor of finite numbers >= 0, ``fmt`` not a
        :class:`~qedu.floats.FloatFormat`, ``power_of_2`` not a bool.
    """
    amax = as_float32(as_float_tensor(amax, "amax", allow_empty=True), "amax")  # beyond float32: scale would be 0
    if bool((amax < 0).any()):
        raise ValueError(f"amax must be >= 0 (the largest |value|), got {amax.min().item()}; pass x.abs().amax().")
    return _amax_to_scale(amax, _check_format(fmt, "fmt"), check_bool(power_of_2, "power_of_2"))


def _amax_to_scale(amax: torch.Tensor, fmt: FloatFormat, power_of_2: bool) -> torch.Tensor:
    """:func:`amax_to_scale` without the checks (the backward pass: an inf gradient gives scale 0, then NaN)."""
    scale = (fmt.max / torch.clamp(amax.double(), min=EPS)).float()
    if power_of_2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return scale


def _check_format(fmt, name: str) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"{name} must be a FloatFormat such as qedu.floats.FP8_E4M3, got {fmt!r}.")
    return fmt


def _operand(t, name: str) -> torch.Tensor:
    """A matmul operand: a 2-d tensor of finite numbers that float32 can hold, as float32."""
    t = as_float32(as_float_tensor(t, name), name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a matrix (2-d), got shape {tuple(t.shape)}; reshape it to (rows, columns).")
    return t


def overflowed(scaled: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Where casting ``scaled`` to ``fmt`` overflows: the magnitude rounds (to nearest even) past ``fmt.max``.

    These are the values a plain cast turns into inf (e5m2) or NaN (e4m3fn without saturation) and
    a saturating cast clips to ``±fmt.max``. A value a little above the max that rounds *down* to it
    is not one: e4m3's top neighbours are 448 and 480 (not a number in e4m3fn), so it overflows
    above 464 (464 itself ties to 448, the even neighbour); e5m2 (max 57344, next 2^16 = inf)
    overflows from 61440 on (that tie goes to the even 2^16). ±inf overflows; NaN does not.

    Args:
        scaled: the values about to be cast (already multiplied by their scale).
        fmt: the fp8 (or any) :class:`~qedu.floats.FloatFormat`.

    Returns:
        A bool tensor shaped like ``scaled``.

    >>> overflowed(torch.tensor([448.0, 460.0, 464.0, 465.0, -1e4]), FP8_E4M3).tolist()
    [False, False, False, True, True]
    """
    scaled = as_float_tensor(scaled, "scaled", allow_empty=True, allow_nonfinite=True)  # inf overflows, NaN does not
    return ~torch.isnan(scaled) & ~torch.isfinite(cast(scaled, fmt, saturate=False))


def underflowed(x: torch.Tensor, x_fp8: torch.Tensor) -> torch.Tensor:
    """Where a nonzero ``x`` became 0 in ``x_fp8`` (its scaled, cast value; same shape).

    A magnitude underflows when ``|x * scale|`` is at most half the format's smallest subnormal
    (the tie goes to the even neighbour, 0): e4m3 up to 2^-10, e5m2 up to 2^-17.

    >>> x = torch.tensor([0.0, 2.0**-10, 2.0**-9])
    >>> underflowed(x, cast(x, FP8_E4M3)).tolist()
    [False, True, False]
    """
    for name, t in (("x", x), ("x_fp8", x_fp8)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if x.shape != x_fp8.shape:
        raise ValueError(f"x and x_fp8 must have the same shape, got {tuple(x.shape)} and {tuple(x_fp8.shape)}.")
    return (x != 0) & (x_fp8 == 0)


@dataclass
class FP8Stats:
    """Per operand role: values cast, values that overflowed, nonzero values that became 0.

    "Overflowed" and "became 0" are :func:`overflowed` and :func:`underflowed`: what the cast did.
    """

    count: dict = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    overflow: dict = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    underflow: dict = field(default_factory=lambda: dict.fromkeys(ROLES, 0))

    def add(self, role: str, scaled: torch.Tensor, x: torch.Tensor, x_fp8: torch.Tensor, fmt: FloatFormat) -> None:
        """Count ``x`` (cast as ``x_fp8`` from ``scaled``, element by element) under ``role``."""
        self.count[role] += x.numel()
        self.overflow[role] += int(overflowed(scaled, fmt).sum())
        self.underflow[role] += int(underflowed(x, x_fp8).sum())

    def rates(self) -> dict[str, tuple[float, float]]:
        """role -> (overflow share, underflow share) of the values cast so far."""
        return {r: (self.overflow[r] / max(self.count[r], 1), self.underflow[r] / max(self.count[r], 1)) for r in ROLES}


def _cast(x: torch.Tensor, fmt: FloatFormat, scale: torch.Tensor, role: str, stats: FP8Stats | None) -> torch.Tensor:
    """fp8 values (in a float32 tensor) of ``x * scale``, saturating like torchao's ``to_fp8_saturated``."""
    scaled = x * scale
    x_fp8 = cast(scaled.clamp(-fmt.max, fmt.max), fmt)
    if stats is not None:
        stats.add(role, scaled, x, x_fp8, fmt)
    return x_fp8


def _mx_cast(x: torch.Tensor, role: str, stats: FP8Stats | None) -> torch.Tensor:
    """MXFP8 (e4m3, blocks of 32 along the last dimension) values of ``x``; counts per element.

    A last dimension that is not a multiple of 32 is padded with zeros (they change no block's max),
    then cut back."""
    k = x.shape[-1]
    padded = _pad_to_blocks(x.float())
    mx = mx_quantize(padded, "fp8_e4m3", 32)
    if stats is not None:  # each element against its own block's scale 2**(code - 127)
        e = mx.scale_code.to(torch.int32) - E8M0_BIAS  # (M, K/32)
        scale = torch.ldexp(torch.ones(e.shape), e.clamp(max=E8M0_BIAS)).repeat_interleave(32, dim=-1)  # (M, K)
        stats.add(role, (padded / scale)[..., :k], x, mx.elements[..., :k], FP8_E4M3)
    return mx_dequantize(mx)[..., :k]


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, fmt_a: FloatFormat, fmt_b: FloatFormat, recipe: str = "tensorwise",
               *, roles=("a", "b"), stats: FP8Stats | None = None, delayed: dict | None = None) -> torch.Tensor:
    """``a @ b`` (``(M, K) @ (K, N)``) with both operands cast to fp8 as ``recipe`` says, fp32 accumulation.

    Scales are per tensor ("tensorwise", "delayed"), per row of ``a`` / column of ``b`` ("rowwise",
    along the summed dimension K) or per block of 32 along K ("mxfp8").

    >>> a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0], [4.0]])
    >>> fp8_matmul(a, b, FP8_E4M3, FP8_E4M3).item()      # exact: these values fit e4m3
    10.0

    Raises:
        TypeError / ValueError: ``a`` or ``b`` not a finite float32-sized matrix, shapes that do
        not multiply, formats that are not :class:`~qedu.floats.FloatFormat`, a bad ``recipe``,
        "delayed" without its ``delayed`` scalers, or a product that overflows float32.
    """
    check_choice(recipe, "recipe", RECIPES)
    a, b = _operand(a, "a"), _operand(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a @ b needs a's columns to match b's rows, got shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    _check_format(fmt_a, "fmt_a"), _check_format(fmt_b, "fmt_b")
    if recipe == "delayed" and not (isinstance(delayed, dict) and all(r in delayed for r in roles)):
        raise ValueError(f"recipe='delayed' needs delayed={{role: DelayedScaling}} for the roles {roles} "
                         "(Float8Linear builds them); or pick another recipe.")
    out = _fp8_matmul(a, b, fmt_a, fmt_b, recipe, roles=roles, stats=stats, delayed=delayed)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"a @ b overflows float32 (|a @ b| > 3.4e38 somewhere; largest |a| {a.abs().max().item():.3g}, "
                         f"largest |b| {b.abs().max().item():.3g}); scale a or b down.")
    return out


def _pad_to_blocks(t: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Zeros appended to the last dimension up to a multiple of ``block`` (they change no block max, no product)."""
    return torch.nn.functional.pad(t, (0, -t.shape[-1] % block))


def _fp8_matmul(a, b, fmt_a, fmt_b, recipe, *, roles, stats, delayed) -> torch.Tensor:
    """:func:`fp8_matmul` without the input checks (the backward pass: a NaN/inf gradient passes through)."""
    if recipe == "mxfp8":  # blocks of 32 along K: rows of a, columns of b (K padded with zeros to a multiple of 32)
        return _mx_cast(a, roles[0], stats) @ _mx_cast(b.t().contiguous(), roles[1], stats).t()
    if recipe == "delayed":
        hats = []
        for role, x in ((roles[0], a), (roles[1], b)):
            scaler = delayed[role]
            scale = scaler.scale  # from earlier steps' amax history
            hats.append(scaler.quantize(x))  # then the history takes this step's amax
            if stats is not None:
                scaled = x.float() * scale  # what quantize cast
                stats.add(role, scaled, x, cast(scaled, scaler.fmt, saturate=True), scaler.fmt)
        return hats[0] @ hats[1]
    if recipe == "unscaled":  # a plain cast: s = 1
        one = torch.ones(())
        return _cast(a, fmt_a, one, roles[0], stats) @ _cast(b, fmt_b, one, roles[1], stats)
    rowwise = recipe == "rowwise"
    amax_a = a.abs().amax(dim=1, keepdim=True) if rowwise else a.abs().amax()  # (M, 1) or ()
    amax_b = b.abs().amax(dim=0, keepdim=True) if rowwise else b.abs().amax()  # (1, N) or ()
    s_a, s_b = _amax_to_scale(amax_a, fmt_a, rowwise), _amax_to_scale(amax_b, fmt_b, rowwise)
    a_fp8 = _cast(a, fmt_a, s_a, roles[0], stats)
    b_fp8 = _cast(b, fmt_b, s_b, roles[1], stats)
    return (a_fp8 @ b_fp8) / (s_a * s_b)  # (M, N) / ((M, 1) * (1, N)): unscale each entry


class _Float8Matmul(torch.autograd.Function):
    """x @ W^T with fp8 operands in the forward pass and in both backward matmuls."""

    @staticmethod
    def forward(ctx, x2d, weight, layer):
        ctx.save_for_backward(x2d, weight)
        ctx.layer = layer
        fwd = layer.formats[0]
        return _fp8_matmul(x2d, weight.t(), fwd, fwd, layer.recipe, roles=("input", "weight"), stats=layer.stats,
                           delayed=layer.delayed)

    @staticmethod
    def backward(ctx, grad_out):
        x2d, weight = ctx.saved_tensors
        layer = ctx.layer
        fwd, bwd = layer.formats
        grad_x = _fp8_matmul(grad_out, weight, bwd, fwd, layer.recipe, roles=("grad_output", "weight_for_grad_input"),
                             stats=layer.stats, delayed=layer.delayed)  # (M, N) @ (N, K)
        grad_w = _fp8_matmul(grad_out.t(), x2d, bwd, fwd, layer.recipe,
                             roles=("grad_output_for_grad_weight", "input_for_grad_weight"),
                             stats=layer.stats, delayed=layer.delayed)  # (N, M) @ (M, K)
        return grad_x, grad_w, None


class Float8Linear(nn.Module):
    """A copy of ``linear`` whose three matmuls run in simulated fp8 (the caller's layer is untouched).

    Args:
        linear: the ``nn.Linear`` to copy.
        recipe: one of :data:`RECIPES`.
        history_len: amax history length of the "delayed" recipe.

    Gradients are e5m2 in "tensorwise", "delayed" and "unscaled" (the hybrid recipe), e4m3 in "rowwise"
    (torchao's choice) and "mxfp8". ``stats`` accumulates overflow/underflow counts per role.

    ``forward`` refuses NaN/inf inputs and an output that overflows float32 (a ``ValueError``). A
    NaN/inf *gradient* in the backward pass passes through as NaN/inf, so that a loss scaler sees
    it and skips the step (the "delayed" recipe's scalers refuse it with a ``ValueError`` instead).
    "mxfp8" pads a contraction that is not a multiple of 32 with zeros.
    """

    def __init__(self, linear: nn.Linear, recipe: str = "tensorwise", history_len: int = 16):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.recipe = check_choice(recipe, "recipe", RECIPES)
        self.weight = nn.Parameter(linear.weight.detach().clone().float())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone().float())
        self.formats = (FP8_E4M3, FP8_E4M3 if recipe in ("rowwise", "mxfp8") else FP8_E5M2)
        self.stats = FP8Stats()
        self.delayed = None
        if recipe == "delayed":
            fmt_of = {r: self.formats[1] if r.startswith("grad") else self.formats[0] for r in ROLES}
            self.delayed = {r: DelayedScaling(fmt_of[r], history_len=history_len) for r in ROLES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}.")
        if x.ndim == 0 or x.shape[-1] != self.weight.shape[1] or x.numel() == 0:
            raise ValueError(f"x must have shape (..., {self.weight.shape[1]}) (in_features), got {tuple(x.shape)}.")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf; fp8 training needs finite inputs. Find where they come from.")
        x32 = as_float32(x, "x")
        shape = x.shape
        y = _Float8Matmul.apply(x32.reshape(-1, shape[-1]), self.weight, self)  # (..., K) -> (M, K)
        y = y.reshape(*shape[:-1], y.shape[-1])
        y = y if self.bias is None else y + self.bias
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"the layer's output overflows float32 (largest |x| {x.abs().max().item():.3g}); scale x down.")
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, recipe={self.recipe!r}"


def convert_to_float8(model: nn.Module, recipe: str = "tensorwise", skip=(), history_len: int = 16) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except names in ``skip``) a :class:`Float8Linear`.

    The caller's model is not changed. ``skip`` takes module names as ``named_modules`` gives them
    (e.g. the output head, often kept in bf16).
    """
    check_module(model)
    check_choice(recipe, "recipe", RECIPES)
    if isinstance(skip, str):
        skip = (skip,)
    if not isinstance(skip, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in skip):
        raise TypeError(f"skip must be a list of module names (strings) such as ['head'], got {skip!r}.")
    if isinstance(model, nn.Linear):
        return Float8Linear(model, recipe, history_len)
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in set(skip)]
    if not names:
        raise ValueError("model has no nn.Linear to convert (or skip names them all).")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Float8Linear(getattr(parent, child), recipe, history_len))
    return model

