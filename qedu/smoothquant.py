"""SmoothQuant (Xiao et al. 2022): move the activation outliers into the weights, then run W8A8.

Int8 activations with one scale per tensor fail when a few channels are much larger than the
rest (they set the scale; everything else rounds to a few levels). Weights are easy to
quantize. SmoothQuant divides each input channel ``k`` of the activations by ``s_k`` and
multiplies the matching weight column by ``s_k``, which leaves the product unchanged::

    y = x W^T = (x diag(s)^-1) (W diag(s))^T
    s_k = clamp(max_t |x[t, k]| ^ alpha / max_o |W[o, k]| ^ (1 - alpha), min=1e-5)

``alpha`` (the *migration strength*, 0.5 by default) sets how much of the difficulty moves
from activations to weights; at 0.5 both end with the same per-channel maximum
``sqrt(max|x_k| * max|W_k|)``. The division costs nothing at inference: when the activation
comes out of a LayerNorm, ``1/s`` is folded into the LayerNorm's weight and bias::

    LayerNorm(x) * gamma / s + beta / s                   (gamma, beta divided by s)
    W <- W diag(s)                                        (every Linear reading that LayerNorm)

Then every Linear runs in W8A8: int8 weights and int8 activations, one symmetric scale each
per tensor (``scale = max|.| / 127``; the activation scale is taken from each input, i.e.
dynamic per-tensor, as the SmoothQuant repository's fake-quantization).

>>> smoothing_scales(torch.tensor([16.0, 1.0]), torch.tensor([1.0, 4.0]), alpha=0.5)
tensor([4.0000, 0.5000])
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from qedu._validation import check_module
from qedu.formats import INT8
from qedu.layerwise import linear_inputs, replace_linears
from qedu.quantizers import fake_quantize

__all__ = ["smoothing_scales", "smooth_ln_linears", "default_pairs", "smooth_model", "W8A8Linear", "w8a8_model",
           "alpha_sweep", "MIN_SCALE"]

MIN_SCALE = 1e-5


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (0.5 in the paper), got {alpha!r}.")
    return float(alpha)


def smoothing_scales(act_absmax, weight_absmax, alpha: float = 0.5) -> torch.Tensor:
    """``s = clamp(act_absmax^alpha / weight_absmax^(1 - alpha), min=1e-5)``, one per input channel.

    Args:
        act_absmax: ``(C_in,)`` max |activation| per channel over the calibration tokens.
        weight_absmax: ``(C_in,)`` max |weight| per input column (over every Linear that shares the input).
        alpha: migration strength in [0, 1].

    Returns:
        float32 ``(C_in,)``.

    >>> smoothing_scales(torch.tensor([16.0, 1.0]), torch.tensor([1.0, 4.0]), alpha=1.0)
    tensor([16.,  1.])
    """
    for name, t in (("act_absmax", act_absmax), ("weight_absmax", weight_absmax)):
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() == 0:
            raise TypeError(f"{name} must be a 1-D tensor with one value per input channel.")
        if not bool(torch.isfinite(t.float()).all()) or not bool((t >= 0).all()):
            raise ValueError(f"{name} must be >= 0 and fit float32 (a maximum of absolute values), got max {float(t.max()):.3g}.")
    if act_absmax.shape != weight_absmax.shape:
        raise ValueError(f"act_absmax and weight_absmax must have the same shape, got {tuple(act_absmax.shape)} "
                         f"and {tuple(weight_absmax.shape)}.")
    alpha = _check_alpha(alpha)
    weight_absmax = weight_absmax.float().clamp(min=MIN_SCALE)  # as smooth_ln_fcs: a zero column is no division by 0
    return (act_absmax.float().pow(alpha) / weight_absmax.pow(1 - alpha)).clamp(min=MIN_SCALE)


def smooth_ln_linears(ln: nn.LayerNorm, linears, act_absmax, alpha: float = 0.5):
    """Fold SmoothQuant's scales into a LayerNorm and the Linears that read it; returns new copies.

    Returns:
        ``(new_ln, [new_linear, ...], s)``; the arguments are not changed. In exact arithmetic
        ``[f(new_ln(x)) for f in new_linears] == [f(ln(x)) for f in linears]``.

    >>> ln, fc = nn.LayerNorm(2), nn.Linear(2, 1)
    >>> new_ln, (new_fc,), s = smooth_ln_linears(ln, [fc], torch.tensor([4.0, 1.0]))
    >>> x = torch.randn(3, 2); torch.allclose(new_fc(new_ln(x)), fc(ln(x)), atol=1e-6)
    True
    """
    if not isinstance(ln, nn.LayerNorm) or ln.weight is None:
        raise TypeError(f"ln must be an nn.LayerNorm with a weight (elementwise_affine=True), got {type(ln).__name__}.")
    linears = list(linears) if isinstance(linears, (list, tuple)) else [linears]
    if not linears or not all(isinstance(fc, nn.Linear) and fc.in_features == ln.weight.numel() for fc in linears):
        raise TypeError(f"linears must be a list of nn.Linear reading the LayerNorm's {ln.weight.numel()} channels.")
    weight_absmax = torch.stack([fc.weight.detach().abs().amax(dim=0) for fc in linears]).amax(dim=0)  # (C_in,)
    s = smoothing_scales(act_absmax, weight_absmax.float(), alpha)
    new_ln, new_linears = copy.deepcopy(ln), [copy.deepcopy(fc) for fc in linears]
    with torch.no_grad():
        new_ln.weight.div_(s.to(new_ln.weight.dtype))
        if new_ln.bias is not None:
            new_ln.bias.div_(s.to(new_ln.bias.dtype))
        for fc in new_linears:
            fc.weight.mul_(s.to(fc.weight.dtype)[None, :])  # column k times s_k
    return new_ln, new_linears, s


def default_pairs(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The (LayerNorm, Linears) pairs of a qedu TinyGPT-style model: in every block with
    ``ln1``/``qkv`` and ``ln2``/``fc1``, ``ln1 -> [qkv]`` and ``ln2 -> [fc1]``.

    >>> from qedu.models import TinyGPT
    >>> default_pairs(TinyGPT(vocab_size=8, seq_len=4, hidden=8, n_layers=1, n_heads=2))
    [('blocks.0.ln1', ['blocks.0.qkv']), ('blocks.0.ln2', ['blocks.0.fc1'])]
    """
    check_module(model)
    pairs = []
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, a, None), nn.Module) for a in ("ln1", "qkv", "ln2", "fc1")):
            prefix = f"{name}." if name else ""
            pairs += [(f"{prefix}ln1", [f"{prefix}qkv"]), (f"{prefix}ln2", [f"{prefix}fc1"])]
    return pairs


def smooth_model(model: nn.Module, inputs, alpha: float = 0.5, pairs=None) -> nn.Module:
    """A copy of ``model`` with SmoothQuant's scales folded into every (LayerNorm, Linears) pair.

    The activation maxima come from one forward pass of ``model`` on ``inputs`` (the input of
    each pair's first Linear). The copy computes the same function as ``model`` (up to float
    rounding); only its activations and weights have moved.

    Args:
        model: the float model (not changed).
        inputs: calibration inputs (e.g. token ids).
        alpha: migration strength in [0, 1].
        pairs: ``[(layernorm_name, [linear_name, ...]), ...]``; default :func:`default_pairs`.

    Returns:
        the smoothed copy, in eval mode.

    >>> from qedu.models import TinyGPT
    >>> model = TinyGPT(vocab_size=8, seq_len=4, hidden=8, n_layers=1, n_heads=2).double()
    >>> tokens = torch.randint(0, 8, (2, 4)); smoothed = smooth_model(model, tokens, alpha=0.5)
    >>> torch.allclose(smoothed(tokens), model(tokens))
    True
    """
    check_module(model)
    alpha = _check_alpha(alpha)
    pairs = default_pairs(model) if pairs is None else pairs
    if not pairs:
        raise ValueError("no (LayerNorm, Linears) pairs to smooth; pass pairs=[('ln_name', ['linear_name']), ...].")
    modules = dict(model.named_modules())
    for ln_name, fc_names in pairs:
        if ln_name not in modules or any(n not in modules for n in fc_names):
            raise ValueError(f"pair ({ln_name!r}, {fc_names!r}) names modules the model does not have.")
    new = copy.deepcopy(model).eval()  # the caller's model keeps its weights and its train/eval mode
    acts = linear_inputs(new, inputs, [fcs[0] for _, fcs in pairs])  # measured before any change
    for ln_name, fc_names in pairs:
        act_absmax = acts[fc_names[0]].abs().amax(dim=0).float()  # (C_in,) max over tokens
        ln, fcs, _ = smooth_ln_linears(new.get_submodule(ln_name), [new.get_submodule(n) for n in fc_names],
                                       act_absmax, alpha)
        for name, module in [(ln_name, ln)] + list(zip(fc_names, fcs)):
            parent, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, child, module)
    return new


def _fake_int8_per_tensor(t: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 with one scale ``max|t| / 127`` (nothing clips)."""
    scale = (t.detach().abs().amax().float() / 127.0).clamp(min=1e-12)
    return fake_quantize(t, scale, 0, INT8).to(t.dtype)


class W8A8Linear(nn.Module):
    """A Linear with int8 weights and int8 activations, one symmetric scale per tensor each
    (weights quantized once; activations at every call). Simulated in float.

    >>> layer = W8A8Linear(nn.Linear(4, 2)); layer(torch.randn(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.register_buffer("weight", _fake_int8_per_tensor(linear.weight.detach()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(_fake_int8_per_tensor(x), self.weight, self.bias)


def w8a8_model(model: nn.Module, names=None) -> nn.Module:
    """A copy of ``model`` with every (or each named) Linear replaced by a :class:`W8A8Linear`.

    >>> w8a8_model(nn.Sequential(nn.Linear(2, 2)))[0].__class__.__name__
    'W8A8Linear'
    """
    return replace_linears(model, W8A8Linear, names)


def alpha_sweep(model: nn.Module, inputs, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), pairs=None,
                eval_inputs=None) -> list[tuple[float, float]]:
    """Output error of W8A8 after smoothing with each ``alpha``: ``[(alpha, mse), ...]``.

    ``mse = mean((model(e) - w8a8(smooth(model, alpha))(e))^2)`` on ``eval_inputs`` (default:
    the calibration ``inputs``). ``alpha = 0`` divides by the weight maxima only (no activation
    information); compare with ``w8a8_model(model)`` for no smoothing at all.

    >>> from qedu.models import TinyGPT
    >>> model = TinyGPT(vocab_size=8, seq_len=4, hidden=8, n_layers=1, n_heads=2)
    >>> [alpha for alpha, mse in alpha_sweep(model, torch.randint(0, 8, (2, 4)), alphas=(0.5, 0.8))]
    [0.5, 0.8]
    """
    check_module(model)
    alphas = [_check_alpha(a) for a in alphas]
    eval_inputs = inputs if eval_inputs is None else eval_inputs
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(eval_inputs)
        return [(a, float(((w8a8_model(smooth_model(model, inputs, a, pairs))(eval_inputs) - ref) ** 2).mean()))
                for a in alphas]
