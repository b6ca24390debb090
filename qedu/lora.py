"""LoRA and QLoRA: fine-tune a frozen (optionally NF4) model through small low-rank adapters.

LoRA (Hu et al. 2021) leaves a linear layer's weight ``W`` (``C_out x C_in``) frozen and learns
a low-rank update next to it::

    y = x W^T + b + (alpha / r) * (x A^T) B^T        A: (r, C_in), B: (C_out, r)

``A`` starts random and ``B`` at zero, so a fresh adapter changes nothing. Only ``r (C_in +
C_out)`` numbers train instead of ``C_in C_out``, and the optimizer's states shrink with them.

QLoRA (Dettmers et al. 2023) also stores the frozen ``W`` as NF4 with double quantization
(:mod:`qedu.nf4`, about 4.127 bits per weight): the forward pass dequantizes it, the gradient
flows through it to ``A`` and ``B`` (in 16/32 bits), and the NF4 bytes never change.

:func:`add_lora` returns a copy of a model with adapters on the layers you name; :meth:`LoRALinear.merged`
folds an adapter back into a plain ``nn.Linear`` (``W + (alpha / r) B A``), which gives the same
outputs as the adapter on a float base (tests/test_lora.py holds all three promises).

>>> layer = LoRALinear(nn.Linear(8, 4), r=2, alpha=4, seed=0)
>>> x = torch.randn(3, 8)
>>> torch.equal(layer(x), layer.base_forward(x))     # B = 0: a fresh adapter is a no-op
True
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from qedu._validation import FLOAT32_MAX, as_float32, as_float_tensor, check_choice, check_int, check_module, check_real
from qedu.nf4 import NF4Weight, nf4_dequantize, nf4_quantize

__all__ = ["BASES", "LoRALinear", "add_lora", "trainable_parameters", "merge_lora"]

BASES = ("float", "nf4")


class LoRALinear(nn.Module):
    """A frozen copy of ``base`` (float32, or NF4 with double quantization) plus a trainable adapter.

    Args:
        base: the ``nn.Linear`` to adapt (copied; the caller's layer is untouched).
        r: the adapter's rank.
        alpha: the adapter's scale numerator: the update is ``alpha / r * B A``.
        base_format: "float" (LoRA) or "nf4" (QLoRA: blocks of 64, double quantization).
        seed: seeds ``A``'s initialisation (Kaiming uniform, as the reference implementation).

    Raises:
        TypeError / ValueError: ``base`` not an ``nn.Linear`` with finite float32-sized weights;
        ``r`` not in 1..min(C_in, C_out); ``alpha`` not a number in (0, 3.4e38]; a bad
        ``base_format`` or ``seed``. ``forward`` refuses inputs of the wrong shape, NaN or inf.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, base_format: str = "float", seed: int = 0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}.")
        self.r = check_int(r, "r", 1, min(base.in_features, base.out_features))
        self.alpha = check_real(alpha, "alpha", 0, FLOAT32_MAX, lo_open=True, example="16")
        self.base_format = check_choice(base_format, "base_format", BASES)
        weight = as_float32(as_float_tensor(base.weight.detach(), "base.weight"), "base.weight")
        if base_format == "nf4":
            state = nf4_quantize(weight)  # frozen: stored as buffers, never a parameter
            for name in ("packed", "absmax", "absmax_scale", "offset"):
                self.register_buffer(f"nf4_{name}", getattr(state, name).clone())
            self._layout = (state.shape, state.block_size, state.block_size2)
        else:
            self.register_buffer("weight", weight.clone())
        bias = None if base.bias is None else as_float32(as_float_tensor(base.bias.detach(), "base.bias"), "base.bias")
        self.register_buffer("bias", None if bias is None else bias.clone())
        g = torch.Generator().manual_seed(check_int(seed, "seed", 0, 2**32 - 1))
        bound = 1 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)), what nn.Linear and peft use
        self.lora_A = nn.Parameter((torch.rand(self.r, base.in_features, generator=g) * 2 - 1) * bound)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def base_weight(self) -> torch.Tensor:
        """The frozen weight as the forward pass uses it (NF4 dequantized, or the float copy)."""
        if self.base_format == "float":
            return self.weight
        shape, block_size, block_size2 = self._layout
        return nf4_dequantize(NF4Weight(self.nf4_packed, self.nf4_absmax, self.nf4_absmax_scale, self.nf4_offset,
                                        shape, block_size, block_size2))

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` with the frozen weight alone."""
        x = self._check_input(x)
        y = x @ self.base_weight().t()
        return y if self.bias is None else y + self.bias

    def _check_input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}.")
        if x.ndim == 0 or x.shape[-1] != self.lora_A.shape[1]:
            raise ValueError(f"x must have shape (..., {self.lora_A.shape[1]}) (in_features), got {tuple(x.shape)}.")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf; find where they come from (the adapter cannot fix them).")
        return as_float32(x, "x")  # float64 input: checked to fit, then float32 like the weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_input(x)
        return self.base_forward(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())  # (.., r) -> (.., C_out)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + (alpha / r) B A`` (the NF4 base dequantized): same outputs."""
        out_features, in_features = self.lora_B.shape[0], self.lora_A.shape[1]
        with torch.random.fork_rng(devices=[]):  # nn.Linear's random init must not touch the caller's RNG
            linear = nn.Linear(in_features, out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.base_weight() + self.scaling * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, base_format={self.base_format!r}"


def add_lora(model: nn.Module, targets, r: int = 8, alpha: float = 16.0, base_format: str = "float", seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter frozen and a :class:`LoRALinear` on each target.

    Args:
        targets: names of ``nn.Linear`` modules (as ``named_modules`` gives them), or a function
            ``name -> bool`` choosing them (e.g. ``lambda n: n.endswith(("qkv", "proj", "fc1", "fc2"))``).

    Raises:
        ValueError: no target names an ``nn.Linear``, or a named target is not one.
    """
    check_module(model)
    if not (callable(targets) or isinstance(targets, (str, list, tuple, set))):
        raise TypeError(f"targets must be a list of nn.Linear names such as ['fc1'] or a function name -> bool, "
                        f"got {type(targets).__name__} {targets!r}.")
    if isinstance(model, nn.Linear):  # a bare layer: adapt it whatever the targets say
        return LoRALinear(model, r, alpha, base_format, seed=seed)
    model = copy.deepcopy(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if callable(targets):
        chosen = [n for n in linears if targets(n)]
    else:
        if isinstance(targets, str):
            targets = [targets]
        chosen = list(targets)
        missing = [n for n in chosen if n not in linears]
        if missing:
            raise ValueError(f"targets {missing} are not nn.Linear modules of the model; it has {sorted(linears)}.")
    if not chosen:
        raise ValueError(f"targets chose no layer; the model's nn.Linear modules are {sorted(linears)}.")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, name in enumerate(chosen):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linears[name], r, alpha, base_format, seed=seed + i))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`LoRALinear` folded into a plain ``nn.Linear``."""
    check_module(model)
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; NF4 bases count as the weights they store."""
    check_module(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, LoRALinear):
            total += math.prod(m.lora_B.shape[:1]) * m.lora_A.shape[1]  # the frozen base weight
            total += 0 if m.bias is None else m.bias.numel()
    return trainable, total
