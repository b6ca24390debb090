"""Bit-flip attacks on stored integer weights (Rakin, He and Fan 2019, "Bit-Flip Attack").

A quantized model is a few kilobytes of integer codes in memory. A fault attack (Rowhammer, a
laser, an undervolted chip) can flip single bits of that memory. Which bit hurts most? For a
signed ``b``-bit code stored in two's complement, flipping bit ``k`` changes the code by
``2**k`` (or, for the sign bit ``k = b - 1``, by ``-2**(b-1)``)::

    stored  = q mod 2**b                       # the bits in memory (qedu.packing packs 4-bit codes two to a byte)
    stored' = stored XOR (1 << k)
    q'      = stored' - 2**b  if stored' >= 2**(b-1)  else stored'      (signed formats)
    w'      = scale * (q' - zero_point)                                  # the weight the model now uses

Flipping the sign bit of an int8 code moves its weight by 128 steps, as far as from zero to
the largest weight of its row (symmetric grid: ``max|w| = 127 * scale``). :func:`bit_flip_attack` is Rakin et al.'s *progressive bit search*: per round,
rank every (weight, bit) by the first-order loss increase ``grad_w * (w' - w)`` (one backward
pass), evaluate the ``top_k`` best candidates exactly, keep the most damaging, repeat.
:func:`exhaustive_flip_search` tries every single flip (one forward pass each: seconds for a
small model, hopeless for a large one), which checks whether the greedy search found the most
damaging flip or only a good one.

>>> flip_code(torch.tensor([3, -1, 127]), 7, 8).tolist()  # sign bit of int8: 3 -> -125, -1 -> 127, 127 -> -1
[-125, 127, -1]
>>> flip_code(torch.tensor([3]), 3, 4).tolist()  # sign bit of int4: 3 -> -5
[-5]
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float_tensor, check_bool, check_int, check_labels, check_module, run_model, to_model_dtype
from qedu.models import evaluate
from qedu.ptq import QuantLayer
from qedu.security import straight_through

__all__ = ["flip_code", "BitFlip", "BitFlipResult", "bit_flip_attack", "exhaustive_flip_search"]


def flip_code(q: torch.Tensor, bit: int, bits: int, *, signed: bool = True) -> torch.Tensor:
    """The codes after flipping bit ``bit`` (0 = least significant) of their ``bits``-bit storage.

    Args:
        q: integer codes in the format's range. bit: 0 .. bits - 1. bits: 2 .. 16.
        signed: two's complement storage (qedu's weight formats) or plain unsigned codes.

    Raises:
        TypeError: ``q`` not an integer tensor, or its dtype cannot hold every code of the format
            (``uint8`` for signed codes).
        ValueError: ``bits`` or ``bit`` out of range, or a code of ``q`` outside the format's range.
    """
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor of codes, got {q.dtype if isinstance(q, torch.Tensor) else type(q)}.")
    bits = check_int(bits, "bits", 2, 16)
    bit = check_int(bit, "bit", 0, bits - 1)
    signed = check_bool(signed, "signed")
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    info = torch.iinfo(q.dtype)
    if info.min > qmin or info.max < qmax:
        raise TypeError(f"q's dtype {q.dtype} cannot hold every {'signed' if signed else 'unsigned'} {bits}-bit code "
                        f"({qmin}..{qmax}); pass q.long().")
    if q.numel() and (int(q.min()) < qmin or int(q.max()) > qmax):
        raise ValueError(f"q holds codes {int(q.min())}..{int(q.max())}, outside the {'signed' if signed else 'unsigned'} "
                         f"{bits}-bit range {qmin}..{qmax}; pass the layer's codes and its format's bits.")
    stored = torch.remainder(q.long(), 2**bits) ^ (1 << bit)  # two's complement bits of q, one flipped
    if signed:
        stored = torch.where(stored >= 2 ** (bits - 1), stored - 2**bits, stored)
    return stored.to(q.dtype)


@dataclass(frozen=True)
class BitFlip:
    """One flip: ``layer`` name, flat ``index`` of the weight, ``bit``, the code before and after,
    the byte it lives in when the layer's codes are packed (``bits`` per code, first code in the
    low bits, as :func:`qedu.packing.pack`), and the attack loss and accuracy after the flip."""

    layer: str
    index: int
    bit: int
    old_code: int
    new_code: int
    byte: int
    bit_in_byte: int
    loss: float
    accuracy: float


@dataclass(frozen=True)
class BitFlipResult:
    """The attacked copy ``model``, the ``flips`` in order, and the accuracy/loss before any flip."""

    model: nn.Module
    flips: tuple
    accuracy_before: float
    loss_before: float

    @property
    def accuracies(self) -> list[float]:
        """Accuracy on the evaluation images after 0, 1, 2, ... flips."""
        return [self.accuracy_before] + [f.accuracy for f in self.flips]


def _layers(model: nn.Module) -> dict:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}
    if not layers:
        raise TypeError("quantized must be a model from qedu.ptq.quantize_model (this one holds no QuantLayer with integer codes).")
    return layers


def _set_code(layer: QuantLayer, index: int, code: int) -> None:
    """Write one code and the float weight the layer computes with (kept equal to dequantize(codes))."""
    q = layer.weight_q.view(-1)
    q[index] = code
    row = index // (q.numel() // layer.weight_q.shape[0])  # output channel of this weight
    scale = layer.weight_scale.reshape(-1)[row if layer.weight_scale.numel() > 1 else 0]
    zero = layer.weight_zero_point.reshape(-1)[row if layer.weight_zero_point.numel() > 1 else 0]
    with torch.no_grad():
        layer.layer.weight.view(-1)[index] = scale * (code - zero)


def _batch(model: nn.Module, x, y, x_name: str, y_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in the model's dtype and ``y`` as labels in ``0..n_outputs - 1``, one per image (or a clear error)."""
    x = to_model_dtype(as_float_tensor(x, x_name), model, x_name)
    if x.ndim == 0:
        raise ValueError(f"{x_name} must be a batch of images (N, ...), got the single number {float(x)!r}.")
    with torch.no_grad():
        n_classes = run_model(model, x[:1], x_name).shape[-1]
    return x, check_labels(y, y_name, len(x), n_classes)


def _loss(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def bit_flip_attack(quantized: nn.Module, x_attack, y_attack, *, n_flips: int = 10, top_k: int = 20,
                    x_eval=None, y_eval=None) -> BitFlipResult:
    """Progressive bit search (Rakin et al. 2019): flip, one at a time, the ``n_flips`` bits of the
    stored weight codes that raise the loss on ``(x_attack, y_attack)`` most.

    Each round: one backward pass gives ``grad_w``; every (weight, bit) gets the first-order
    estimate ``grad_w * (w' - w)``; the ``top_k`` best over all layers are tried exactly (one
    forward pass each) and the flip with the highest actual loss is kept. The caller's model is
    never changed: the attack works on a copy, whose activation quantizers pass gradients
    straight through (:func:`qedu.security.straight_through`: same outputs; without it the
    rounding would hide every layer but the last from the gradient).

    Args:
        quantized: a model from :func:`qedu.ptq.quantize_model` (weights as integer codes).
        x_attack, y_attack: the images the attacker optimises on (a small batch).
        n_flips: bits to flip, >= 1. top_k: candidates tried exactly per round, >= 1.
        x_eval, y_eval: where to report accuracy (default: the attack batch).

    Returns:
        :class:`BitFlipResult` with the attacked copy and each flip's place (layer, weight,
        bit, byte of the packed codes) and effect.
    """
    n_flips = check_int(n_flips, "n_flips", 1)
    top_k = check_int(top_k, "top_k", 1)
    _layers(check_module(quantized, "quantized"))  # a clear error before copying anything that is not a PTQ model
    if (x_eval is None) != (y_eval is None):
        raise ValueError("pass both x_eval and y_eval (or neither: accuracy on the attack batch).")
    model = straight_through(quantized).eval()
    x_attack, y_attack = _batch(model, x_attack, y_attack, "x_attack", "y_attack")  # checked on the copy, in eval mode
    x_eval, y_eval = (x_attack, y_attack) if x_eval is None else _batch(model, x_eval, y_eval, "x_eval", "y_eval")
    layers = _layers(model)
    for layer in layers.values():
        layer.layer.weight.requires_grad_(True)
    flips = []
    before = (evaluate(model, x_eval, y_eval), _loss(model, x_attack, y_attack))
    for _ in range(n_flips):
        weights = [layers[n].layer.weight for n in layers]
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_attack), y_attack)
        grads = torch.autograd.grad(loss, weights)
        candidates = []  # (estimated loss increase, layer name, flat index, bit, new code)
        for (name, layer), grad in zip(layers.items(), grads):
            bits, signed = layer.config.weight_bits, layer.config.weight_format().signed
            q = layer.weight_q.reshape(-1)
            scale = layer.weight_scale.reshape(-1, 1).expand(layer.weight_q.shape[0], -1)  # per output channel
            step = scale.expand(-1, q.numel() // layer.weight_q.shape[0]).reshape(-1)      # (numel,)
            for bit in range(bits):
                new = flip_code(q, bit, bits, signed=signed)
                gain = grad.reshape(-1) * step * (new - q).float()  # first-order loss change
                best = torch.topk(gain, min(top_k, gain.numel()))
                candidates += [(float(v), name, int(i), bit, int(new[i])) for v, i in zip(best.values, best.indices)]
        candidates.sort(key=lambda c: -c[0])
        chosen, chosen_loss = None, -float("inf")
        for _, name, index, bit, new_code in candidates[:top_k]:
            layer = layers[name]
            old_code = int(layer.weight_q.view(-1)[index])
            _set_code(layer, index, new_code)
            trial = _loss(model, x_attack, y_attack)
            _set_code(layer, index, old_code)  # undo: try the next candidate on the same model
            if trial > chosen_loss:
                chosen, chosen_loss = (name, index, bit, old_code, new_code), trial
        name, index, bit, old_code, new_code = chosen
        _set_code(layers[name], index, new_code)
        bits = layers[name].config.weight_bits
        flips.append(BitFlip(name, index, bit, old_code, new_code, byte=index * bits // 8,
                             bit_in_byte=(index * bits) % 8 + bit, loss=chosen_loss,
                             accuracy=evaluate(model, x_eval, y_eval)))
    return BitFlipResult(model, tuple(flips), *before)


def exhaustive_flip_search(quantized: nn.Module, x, y, *, layers=None) -> tuple[BitFlip, torch.Tensor]:
    """Try every single bit flip of the stored weight codes; return the most damaging one.

    One forward pass on ``(x, y)`` per (weight, bit): ``numel * bits`` passes per layer, so keep
    ``x`` small. The caller's model is not changed.

    Args:
        quantized: a model from :func:`qedu.ptq.quantize_model`. x, y: the attack images.
        layers: names of the QuantLayers to search (default: all of them).

    Returns:
        ``(best, losses)``: the flip that raises the cross-entropy on ``(x, y)`` most (its
        ``accuracy`` is on ``(x, y)``), and every flip's loss as a float64 tensor.
    """
    _layers(check_module(quantized, "quantized"))
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of layer names, e.g. [{layers!r}], not a bare string.")
    model = copy.deepcopy(quantized).eval()
    x, y = _batch(model, x, y, "x", "y")
    all_layers = _layers(model)
    names = list(all_layers) if layers is None else list(layers)
    unknown = [n for n in names if n not in all_layers]
    if unknown or not names:
        raise ValueError(f"layers {names} must name quantized layers of the model; choose from {list(all_layers)}.")
    best, best_loss, losses = None, -float("inf"), []
    for name in names:
        layer = all_layers[name]
        bits, signed = layer.config.weight_bits, layer.config.weight_format().signed
        q = layer.weight_q.reshape(-1).clone()
        for index in range(q.numel()):
            old = int(q[index])
            for bit in range(bits):
                new = int(flip_code(q[index:index + 1], bit, bits, signed=signed))
                _set_code(layer, index, new)
                loss = _loss(model, x, y)
                losses.append(loss)
                if loss > best_loss:
                    best, best_loss = (name, index, bit, old, new), loss
            _set_code(layer, index, old)
    name, index, bit, old, new = best
    _set_code(all_layers[name], index, new)
    bits = all_layers[name].config.weight_bits
    flip = BitFlip(name, index, bit, old, new, byte=index * bits // 8, bit_in_byte=(index * bits) % 8 + bit,
                   loss=best_loss, accuracy=evaluate(model, x, y))
    return flip, torch.tensor(losses, dtype=torch.float64)
