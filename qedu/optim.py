"""Adam with 8-bit states, quantized block by block (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization").

Adam keeps two fp32 numbers per parameter, ``m`` (running mean of the gradient) and ``v``
(running mean of its square): 8 bytes, twice the weights themselves. 8-bit Adam stores each in
one byte, a code into a table of 256 ``levels`` in [-1, 1] (or [0, 1] for ``v``)::

    blocks  = state split into blocks of block_size values      (numel,) -> (n_blocks, block_size)
    absmax  = max |blocks| per block                             one float32 per block
    q       = index of the level nearest to blocks / absmax      uint8
    x_hat   = levels[q] * absmax                                 dequantize

(:func:`qedu.nonuniform.blockwise_absmax_quantize` with a 256-level table.) Every step dequantizes
``m`` and ``v``, does the usual fp32 Adam update with them, and quantizes the new ``m`` and ``v`` again. State memory: 2 bytes + 2 x 4 bytes per block per parameter, 2.03
bytes for blocks of 256 instead of 8. Which levels matters:

* ``"linear"``: 256 evenly spaced levels. ``v`` spans many orders of magnitude within a block,
  so its small entries round to 0; the next update ``m / (sqrt(v) + eps)`` then divides by
  almost nothing and training blows up.
* ``"dynamic"``: bitsandbytes' *dynamic tree* map (:func:`dynamic_map`): levels spread over seven
  decades, dense near 1 and sparse near 1e-6, like a float whose exponent is stored in unary.
  Small blocks keep one outlier from setting the scale of too many values.

``Adam(params, states="fp32")`` does no quantization and equals ``torch.optim.Adam`` bit for bit
(the tests prove it, weight decay included).

**Against bitsandbytes' ``Adam8bit`` (0.50, CPU, blocks of 256, ``min_8bit_size=0``).** Same maps
(``create_dynamic_map``), same blocks, same absmax, same update formula -- and yet the weights
differ from step 2 on (step 1 is equal: the states start at 0). Two design choices, pinned by
``tests/test_optim.py``:

1. *Rounding to a level.* qedu picks the **nearest** level (exact midpoints). bitsandbytes' CPU
   kernel (``quantize_cpu``) finds the level with an approximate table search (``BinSearch``'s
   ``Direct2``, then compares only the level found and the one to its right), so for some values it
   stores a neighbouring, farther level (its boundary between -0.99297 and -0.97891 sits near
   -0.985948, not at the midpoint -0.9859375; tiny values of ``v`` can land several levels off).
   qedu's rounding error is never larger.
2. *Updating m.* qedu uses ``m.lerp_(g, 1 - beta1)``, torch.optim.Adam's formula (so ``"fp32"``
   stays bit for bit torch); bitsandbytes ``m.mul_(beta1).add_(g, alpha=1 - beta1)``: the same
   number up to one rounding (1 ulp on a few entries).

With bitsandbytes' quantizer put inside this class, and ``mul_ + add_`` for ``m``, the two are
equal bit for bit over 300 steps (measured while writing this); with ``lerp_`` kept, within 2e-4.
(bitsandbytes' CPU path also applies weight decay *decoupled*, as AdamW; this class adds it to the
gradient, as ``torch.optim.Adam``.)

>>> w = torch.nn.Parameter(torch.ones(1000)); opt = Adam([w], lr=0.1, states="dynamic")
>>> w.grad = torch.ones(1000); opt.step(); round(w[0].item(), 4), opt.state_bytes() / w.numel()
(0.9, 2.032)
"""
from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qedu._validation import FLOAT32_TINY, check_int, check_module

__all__ = ["dynamic_map", "linear_map", "Adam", "STATE_FORMATS", "AdamRun", "train_adam"]

STATE_FORMATS = ("fp32", "dynamic", "linear")


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The 256 levels of the dynamic tree map, built as bitsandbytes' ``create_dynamic_map`` does.

    (Dettmers 2015, "8-Bit Approximations for Parallelism in Deep Learning".) After the sign
    bit, a code's leading zeros choose a decade ``10**-(6 - i)`` (i = 0..6) and its remaining
    bits a *fraction*: ``2**i`` (signed) or ``2**(i+1)`` (unsigned) equal slices of [0.1, 1],
    each represented by its midpoint. So the top decade has the finest levels and each decade
    below it half as many::

        level = 10**(i - 6) * mean of one slice of linspace(0.1, 1, n_i + 1),  n_i = 2**i (signed)

    plus 0 and 1.0 (and, signed, the negatives). Signed: 2 x 127 + 2 = 256 values from -0.993
    to 1 (there is no -1); unsigned: 254 + 2 = 256 values in [0, 1]. Smallest nonzero
    magnitude: 10**-6 x 0.55 (signed) or 10**-6 x 0.325 (unsigned).

    >>> m = dynamic_map(signed=True); len(m), m.min().item(), m.max().item()
    (256, -0.992968738079071, 1.0)
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True or False, got {signed!r}.")
    max_exponent_bits = check_int(max_exponent_bits, "max_exponent_bits", 1, 7)
    total_bits = check_int(total_bits, "total_bits", max_exponent_bits + 1, 8)
    data: list[float] = []
    non_sign_bits = total_bits - 1
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1  # codes with no decade-marker bit
    for i in range(max_exponent_bits):
        n_slices = 2 ** (i + non_sign_bits - max_exponent_bits) * (1 if signed else 2)
        boundaries = torch.linspace(0.1, 1, n_slices + 1)  # float32, as bitsandbytes computes it
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if extra > 0:  # only when total_bits - 1 > max_exponent_bits: more levels in the top decade
        boundaries = torch.linspace(0.1, 1, extra + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))  # pads smaller maps with zeros, as bitsandbytes does
    return torch.tensor(sorted(data), dtype=torch.float32)


def linear_map(signed: bool = True) -> torch.Tensor:
    """Evenly spaced levels: ``k / 127`` for k = -127..127 (signed, 255 levels with an exact 0),
    ``k / 255`` for k = 0..255 (unsigned).

    >>> (linear_map(signed=False)[:3] * 255).tolist()
    [0.0, 1.0, 2.0]
    """
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True or False, got {signed!r}.")
    k = torch.arange(-127, 128) if signed else torch.arange(0, 256)
    return k.float() / (127.0 if signed else 255.0)


def _float32_boundaries(levels: torch.Tensor) -> torch.Tensor:
    """Midpoints between neighbouring levels, as float32 numbers that decide like the exact ones.

    :func:`qedu.nonuniform.quantize_to_codebook` compares values with the float64 midpoints. For
    float32 values ``x <= m`` holds exactly when ``x <= m32``, ``m`` rounded *down* to float32,
    so the optimizer can bucketize in float32 (faster) and get the same codes.
    """
    m64 = (levels[1:].double() + levels[:-1].double()) / 2
    m32 = m64.float()
    return torch.where(m32.double() > m64, torch.nextafter(m32, torch.tensor(-math.inf)), m32)


def _quantize(x: torch.Tensor, boundaries: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`qedu.nonuniform.blockwise_absmax_quantize` without input checks (inf/NaN pass),
    returning uint8 codes: the optimizer's hot path. The tests prove the codes equal."""
    n = x.numel()
    n_blocks = math.ceil(n / block_size)
    padded = torch.zeros(n_blocks * block_size)
    padded[:n] = x.reshape(-1)
    blocks = padded.view(n_blocks, block_size)  # (numel,) -> (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    normalized = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]  # in [-1, 1]
    q = torch.bucketize(normalized, boundaries).to(torch.uint8)  # index of the nearest level
    return q.reshape(-1)[:n].reshape(x.shape), absmax


def _dequantize(q: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x_hat = levels[q] * absmax`` of its block, as :func:`qedu.nonuniform.blockwise_absmax_dequantize`."""
    n = q.numel()
    n_blocks = absmax.numel()
    codes = torch.zeros(n_blocks * block_size, dtype=torch.long)
    codes[:n] = q.reshape(-1)
    x_hat = levels[codes].view(n_blocks, block_size) * absmax[:, None]  # (n_blocks, block_size)
    return x_hat.reshape(-1)[:n].reshape(q.shape)


class _LeanAdam:
    """``torch.optim.Adam`` (fp32 states, the default single-tensor update) without torch.optim's machinery.

    Constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its ``add_param_group``
    is wrapped in ``torch._disable_dynamo``), which costs a lesson's kernel about 70 MiB. qedu's
    own training loops (:func:`qedu.models.train`, AdaRound, :func:`qedu.mixed_precision.train_simulated`)
    use this class instead: the same arithmetic, op for op, so the same weights bit for bit
    (tests/test_optim.py compares it with ``torch.optim.Adam``). It has what those loops and
    :class:`~qedu.loss_scaling.DynamicLossScaler` use: ``param_groups``, ``state``,
    :meth:`zero_grad` and :meth:`step`.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.param_groups = [{"params": list(params), "lr": lr, "betas": tuple(betas), "eps": eps,
                              "weight_decay": weight_decay}]
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state.setdefault(p, {})
            if not state:  # torch keeps the step count in a float32 tensor
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grad, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            if wd != 0:
                grad = grad.add(p, alpha=wd)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            t = state["step"].item()
            step_size = lr / (1 - beta1**t)
            denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
            p.addcdiv_(m, denom, value=-step_size)


class Adam(torch.optim.Optimizer):
    """Adam whose ``m`` and ``v`` are stored in fp32 or 8 bits (block-wise, see the module docstring).

    The update, as in ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

        g = grad + weight_decay * w
        m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g**2
        w = w - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Args:
        params, lr, betas, eps, weight_decay: as ``torch.optim.Adam``.
        states: "fp32" (no quantization), "dynamic" (:func:`dynamic_map`, signed for ``m``,
            unsigned for ``v``, as bitsandbytes' Adam8bit) or "linear" (:func:`linear_map`).
        block_size: values per absmax block (bitsandbytes uses 256; Dettmers et al. 2022 used 2048).
        min_8bit_size: tensors with fewer elements than this keep fp32 ``m`` and ``v`` (bitsandbytes'
            ``min_8bit_size``, default 4096 there; 0 here quantizes every tensor). Small tensors
            (biases, a small last layer) cost little memory, and a block that spans a whole small
            tensor lets one large value set the scale of all of it.

    After each :meth:`step`, ``last_stats`` gives the fraction of nonzero ``m`` and ``v``
    entries that quantization turned into 0 (``"m_zeroed"``, ``"v_zeroed"``).

    A step is all or nothing. When any gradient holds NaN or inf (or is so large that ``v``
    overflows float32), :meth:`step` **skips** the step, as ``torch.amp.GradScaler`` does: no
    weight and no state changes, ``last_stats["skipped"]`` is True, ``skipped_steps`` counts it
    and a ``RuntimeWarning`` names the parameter. Updating anyway would be worse than in fp32:
    with 8-bit states one inf sets its block's absmax to inf and turns all 256 values of the
    block into NaN for good (fp32 Adam loses one value).

    Raises:
        TypeError / ValueError: bad hyper-parameters (``eps`` must be a normal float32 > 0, so a
            zero gradient never gives 0 / 0; ``betas`` a pair); in :meth:`step`: a sparse
            gradient, or a non-float32 parameter with 8-bit states.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, states: str = "dynamic", block_size: int = 256, min_8bit_size: int = 0):
        if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers (beta1, beta2) such as (0.9, 0.999), got {betas!r}.")
        for name, value, lo, hi in (("lr", lr, 0, math.inf), ("eps", eps, 0, math.inf), ("weight_decay", weight_decay, 0, math.inf),
                                    ("betas[0]", betas[0], 0, 1), ("betas[1]", betas[1], 0, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number in [{lo}, {hi}), got {type(value).__name__} {value!r}.")
            if not lo <= value < hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}), got {value!r}.")
        if float(torch.tensor(float(eps), dtype=torch.float32)) < FLOAT32_TINY:
            raise ValueError(f"eps must be at least {FLOAT32_TINY:.4g} (a normal float32), got {eps!r}: with a zero "
                             "gradient m / (sqrt(v) + eps) would be 0 / 0 = NaN. Use the default 1e-8.")
        if states not in STATE_FORMATS:
            raise ValueError(f"states must be one of {STATE_FORMATS}, got {states!r}.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.states = states
        self.block_size = check_int(block_size, "block_size", 1)
        self.min_8bit_size = check_int(min_8bit_size, "min_8bit_size", 0)
        make = dynamic_map if states == "dynamic" else linear_map
        self.levels = {} if states == "fp32" else {"m": make(signed=True), "v": make(signed=False)}
        self._boundaries = {k: _float32_boundaries(lv) for k, lv in self.levels.items()}
        self._zero_code = {k: int(torch.bucketize(torch.zeros(()), b)) for k, b in self._boundaries.items()}
        self.last_stats = {"m_zeroed": 0.0, "v_zeroed": 0.0, "skipped": False}
        self.skipped_steps = 0

    def quantizes(self, p: torch.Tensor) -> bool:
        """Whether ``p``'s states are stored in 8 bits: ``states`` is not "fp32" and ``p.numel() >= min_8bit_size``."""
        return self.states != "fp32" and p.numel() >= self.min_8bit_size

    def _load(self, state: dict, key: str) -> torch.Tensor:
        """The fp32 value of state ``key`` ("m" or "v")."""
        if key in state:  # fp32 states (states="fp32", or a tensor below min_8bit_size)
            return state[key]
        return _dequantize(state[key + "_q"], state[key + "_absmax"], self.levels[key], self.block_size)

    def _store(self, state: dict, key: str, value: torch.Tensor, zeroed: dict) -> None:
        if key in state:
            return  # fp32 state, updated in place
        q, absmax = _quantize(value, self._boundaries[key], self.block_size)
        state[key + "_q"], state[key + "_absmax"] = q, absmax
        zeroed[key][0] += int(((q == self._zero_code[key]) & (value != 0)).sum())  # nonzero -> level 0
        zeroed[key][1] += int((value != 0).sum())

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        zeroed = {"m": [0, 0], "v": [0, 0]}  # [entries turned to 0, nonzero entries]
        skip = self._check_grads()  # all or nothing: decide before changing anything
        if skip is not None:
            return self._skip(skip, loss)
        updates = []  # (p, state, m, v, step, lr / bias_correction1, denom): committed once all are finite
        for gi, group in enumerate(self.param_groups):
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for key in ("m", "v"):
                        zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if not self.quantizes(p):
                            state[key] = zeros
                        else:
                            state[key + "_q"], state[key + "_absmax"] = _quantize(zeros, self._boundaries[key], self.block_size)
                t = state["step"] + 1
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                m, v = self._load(state, "m"), self._load(state, "v")
                if "m" in state:  # fp32 states (see _load): work on copies until the step commits
                    m, v = m.clone(), v.clone()
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) * (g - m), torch's formula for the same thing
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                if not bool(torch.isfinite(v).all() and torch.isfinite(m).all()):
                    return self._skip(f"the gradient of param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)}) "
                                      "is so large that Adam's v = g**2 overflows float32", loss)
                bias_correction1 = 1 - beta1**t
                bias_correction2_sqrt = (1 - beta2**t) ** 0.5
                denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
                updates.append((p, state, m, v, t, -lr / bias_correction1, denom))
        for p, state, m, v, t, step_size, denom in updates:  # every update is finite: commit them
            p.addcdiv_(m, denom, value=step_size)
            state["step"] = t
            if "m" in state:  # fp32 states
                state["m"], state["v"] = m, v
            self._store(state, "m", m, zeroed)
            self._store(state, "v", v, zeroed)
        self.last_stats = {f"{k}_zeroed": z / n if n else 0.0 for k, (z, n) in zeroed.items()}
        self.last_stats["skipped"] = False
        return loss

    def _skip(self, reason: str, loss):
        """Leave every weight and state as it is, and say so."""
        self.skipped_steps += 1
        self.last_stats = {"m_zeroed": 0.0, "v_zeroed": 0.0, "skipped": True}
        warnings.warn(f"qedu.optim.Adam skipped a step: {reason}; weights and optimizer states are unchanged. "
                      "Training has probably diverged: lower the learning rate, or find where the NaN/inf come from.",
                      RuntimeWarning, stacklevel=3)
        return loss

    def _check_grads(self) -> str | None:
        """Refuse sparse gradients (and non-float32 parameters with 8-bit states); return why the step must be
        skipped (a non-finite gradient, named), or None."""
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
                if p.grad.is_sparse:
                    raise TypeError(f"the gradient of {where} is sparse; qedu's Adam needs dense gradients. Use "
                                    "nn.Embedding(..., sparse=False), or torch.optim.SparseAdam for sparse ones.")
                if self.states != "fp32" and p.dtype != torch.float32:
                    raise TypeError(f"{where} is {p.dtype}; states={self.states!r} computes the update in float32 "
                                    "and needs float32 parameters (keep fp32 master weights, as mixed precision does), "
                                    "or use states='fp32'.")
                if not bool(torch.isfinite(p.grad).all()):
                    n_nan, n_inf = int(torch.isnan(p.grad).sum()), int(torch.isinf(p.grad).sum())
                    return f"the gradient of {where} holds {n_nan} NaN and {n_inf} inf values"
        return None

    def state_bytes(self) -> int:
        """Bytes of all optimizer-state tensors (codes, absmax, or fp32 m and v)."""
        return sum(t.nbytes for s in self.state.values() for t in s.values() if isinstance(t, torch.Tensor))


@dataclass
class AdamRun:
    """What :func:`train_adam` measured: ``test_acc`` per epoch, ``v_zeroed`` and ``train_loss`` per
    step; the trained ``model`` and its ``optimizer`` (whose ``state`` holds m and v)."""

    states: str
    block_size: int
    model: torch.nn.Module
    optimizer: "Adam | None" = None
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    v_zeroed: list[float] = field(default_factory=list)
    state_bytes: int = 0
    n_params: int = 0
    seconds: float = 0.0
    skipped_steps: int = 0  # steps Adam skipped because a gradient was not finite (training diverged)

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    @property
    def bytes_per_param(self) -> float:
        return self.state_bytes / self.n_params if self.n_params else float("nan")

    def __repr__(self) -> str:
        return (f"AdamRun(states={self.states!r}, block_size={self.block_size}, final_test_acc={self.final_test_acc:.4f}, "
                f"bytes_per_param={self.bytes_per_param:.3f}, seconds={self.seconds:.2f})")


def train_adam(model: torch.nn.Module, data, *, states: str = "dynamic", block_size: int = 256, lr: float = 1e-3,
               epochs: int = 30, batch_size: int = 32, seed: int = 0, min_8bit_size: int = 0) -> AdamRun:
    """Train a copy of ``model`` on ``data`` (:class:`~qedu.data.Digits`) with :class:`Adam`.

    The same loop as :func:`qedu.models.train` (cross-entropy, batches in a seeded order), with
    this module's Adam, so ``states="fp32"`` gives the same weights as ``qedu.models.train``.
    ``min_8bit_size`` keeps smaller tensors' states in fp32 (see :class:`Adam`).

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``, ``data`` not a
            :class:`~qedu.data.Digits`, or bad hyper-parameters (as :class:`Adam`).
            Steps whose gradients are not finite are skipped with a warning and counted in
            ``skipped_steps`` (see :class:`Adam`).
    """
    from qedu.data import batches
    from qedu.models import evaluate

    from qedu.models import _check_data

    check_module(model)
    data = _check_data(data)
    model = copy.deepcopy(model)  # never touch the caller's model
    optimizer = Adam(model.parameters(), lr=lr, states=states, block_size=block_size, min_8bit_size=min_8bit_size)
    order = torch.Generator().manual_seed(check_int(seed, "seed", 0, 2**32 - 1))
    run = AdamRun(states, optimizer.block_size, model, optimizer, n_params=sum(p.numel() for p in model.parameters()))
    start = time.perf_counter()
    for _epoch in range(check_int(epochs, "epochs", 1)):
        model.train()
        for xb, yb in batches(data.x_train, data.y_train, check_int(batch_size, "batch_size", 1), shuffle=True, generator=order):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.train_loss.append(float(loss.detach()))
            run.v_zeroed.append(optimizer.last_stats["v_zeroed"])
        run.test_acc.append(evaluate(model, data.x_test, data.y_test))
    run.seconds = time.perf_counter() - start
    run.skipped_steps = optimizer.skipped_steps
    run.state_bytes = optimizer.state_bytes()
    model.eval()
    return run
