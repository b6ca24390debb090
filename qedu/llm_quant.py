"""Quantize every linear layer of a TinyGPT, block by block, with any per-layer method.

A per-layer method (``qedu.rtn``, ``qedu.gptq``, ``qedu.awq``...) sees one ``nn.Linear`` and the
inputs ``X`` it receives on calibration text, and returns the layer to use instead. This
module does the rest, the way GPTQ's and AWQ's reference scripts do:

1. run the calibration sequences through the embeddings;
2. for each block in turn: record the inputs of its four linear layers (``qkv``, ``proj``,
   ``fc1``, ``fc2``), quantize each one, then run the block **with its quantized layers** to get
   the next block's input. Later blocks are calibrated on what the quantized model really
   computes, so they can compensate earlier errors;
3. for every layer, measure the relative output error on its calibration inputs::

       error = ||X W^T - X W_hat^T||^2 / ||X W^T||^2        (W_hat: the quantized layer; biases cancel)

The model passed in is never changed: :func:`quantize_model` returns a quantized copy.
The tied output layer (``tok.weight``) and the embeddings stay in float, as in GPTQ and AWQ.

>>> from qedu.models import TinyGPT
>>> torch.manual_seed(0); model = TinyGPT(16, 8, 32, 2, 4); calib = torch.randint(0, 16, (4, 8))
<torch._C.Generator object at ...>
>>> same, errors = quantize_model(model, lambda layer, x: layer, calib)
>>> len(errors), max(errors.values())
(8, 0.0)
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import nn

from qedu._validation import check_int, check_module, check_seed, check_token_ids
from qedu.text import load_text, random_windows

__all__ = ["LINEARS", "METHODS", "calibration_tokens", "linear_layers", "layer_inputs", "quantize_model", "QuantizeResult", "layer_method",
           "quantize_tinylm"]

LINEARS = ("qkv", "proj", "fc1", "fc2")  # the linear layers of one TinyGPT block, in the order they run

LayerMethod = Callable[[nn.Linear, torch.Tensor], nn.Module]


def calibration_tokens(n_sequences: int, seed: int = 0, seq_len: int = 128) -> torch.Tensor:
    """``n_sequences`` windows of ``seq_len`` bytes drawn from the **training** split with ``seed``.

    Calibration text never overlaps the validation or test text the model is scored on.

    >>> calibration_tokens(2, seed=0).shape
    torch.Size([2, 128])
    """
    n_sequences = check_int(n_sequences, "n_sequences", 1)
    seed = check_seed(seed)
    x, _ = random_windows(load_text().train, check_int(seq_len, "seq_len", 1), n_sequences, torch.Generator().manual_seed(seed))
    return x


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers :func:`quantize_model` quantizes, in order (``blocks.0.qkv`` ...)."""
    blocks = _blocks(model)
    return [f"blocks.{i}.{name}" for i in range(len(blocks)) for name in LINEARS]


def layer_inputs(model: nn.Module, name: str, tokens: torch.Tensor) -> torch.Tensor:
    """What the layer ``name`` (e.g. ``"blocks.0.fc1"``) receives when ``model`` reads ``tokens``: ``(tokens, in_features)``.

    A forward pre-hook records it and is removed again; the model is not changed.

    >>> from qedu.models import TinyGPT
    >>> layer_inputs(TinyGPT(16, 8, 32, 1, 4), "blocks.0.fc2", torch.zeros(2, 8, dtype=torch.long)).shape
    torch.Size([16, 128])
    """
    model = check_module(model)
    tokens = check_token_ids(tokens, "tokens", model)
    try:
        layer = model.get_submodule(name)
    except (AttributeError, TypeError):
        raise ValueError(f"model has no layer {name!r}; choose one of {linear_layers(model)}.") from None
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(seen)  # (n * s, C_in)


def _blocks(model) -> nn.ModuleList:
    model = check_module(model)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not all(all(hasattr(b, n) for n in LINEARS) for b in blocks):
        raise TypeError(f"model must be a qedu.models.TinyGPT (blocks with {LINEARS}), got {type(model).__name__}.")
    return blocks


class QuantizeResult(tuple):
    """``(model, errors)``; also has ``.seconds`` (wall clock) and ``.cpu_seconds`` (this process's
    CPU time: steadier on a busy machine) spent quantizing, without measuring the errors."""

    seconds: float
    cpu_seconds: float


def _relative_error(layer: nn.Module, new: nn.Module, x: torch.Tensor, name: str) -> float:
    with torch.no_grad():
        ref = layer(x).double()  # (tokens, C_out); float64: squares of large outputs stay finite
        try:
            out = new(x).double()
        except RuntimeError as err:
            raise ValueError(f"method's module for {name} cannot take the layer's input {tuple(x.shape)}: "
                             f"{str(err).splitlines()[0]}; it must keep the layer's input and output shapes.") from err
    if out.shape != ref.shape:
        raise ValueError(f"method's module for {name} gives outputs of shape {tuple(out.shape)}, the layer {tuple(ref.shape)}; "
                         "it must keep the layer's input and output shapes.")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"method's module for {name} gives NaN or inf on the calibration inputs (the float layer's "
                         "outputs are finite); check the method and its settings.")
    denom = float(ref.pow(2).sum())
    return float((ref - out).pow(2).sum()) / denom if denom > 0 else 0.0


def quantize_model(model: nn.Module, method: LayerMethod, calib: torch.Tensor) -> QuantizeResult:
    """A copy of ``model`` whose linear layers are replaced by ``method(layer, X)``, block by block.

    Args:
        model: a :class:`~qedu.models.TinyGPT` (left unchanged).
        method: ``method(layer, x)`` gets a copy of one ``nn.Linear`` and its calibration inputs
            ``x`` of shape ``(tokens, in_features)`` (float32) and returns the module to use
            instead (a ``nn.Linear`` with quantized weights, or any module with the same
            input and output shapes).
        calib: ``(n_sequences, seq_len)`` token ids (e.g. :func:`calibration_tokens`).

    Returns:
        ``(quantized model, {layer name: relative output error})`` (see the module docstring);
        ``result.seconds`` is the time the quantization took.

    Raises:
        TypeError: not a TinyGPT, ``method`` not callable, ``calib`` not a 2-D integer tensor,
            or ``method`` returned something that is not a module.
        ValueError: ``calib`` holds ids outside the vocabulary or rows longer than the model reads;
            the module ``method`` returned gives another shape, or NaN/inf, on the calibration inputs.
    """
    _blocks(model)  # refuses anything but a TinyGPT, naming what it got
    if not callable(method):
        raise TypeError(f"method must be a function method(layer, x) -> module, got {type(method).__name__}.")
    calib = check_token_ids(calib, "calib", model)
    start, cpu_start, measuring, measuring_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0
    quantized = copy.deepcopy(model).eval()
    errors: dict[str, float] = {}
    with torch.no_grad():
        h = quantized.tok(calib) + quantized.pos(torch.arange(calib.shape[1]))  # (n, s, hidden): block 0's input
        for i, block in enumerate(quantized.blocks):
            inputs: dict[str, torch.Tensor] = {}
            handles = [getattr(block, n).register_forward_pre_hook(
                lambda mod, args, n=n: inputs.__setitem__(n, args[0].reshape(-1, args[0].shape[-1]).clone()))  # (n*s, C_in)
                for n in LINEARS]
            try:
                block(h)  # float block, quantized inputs: records what each linear layer sees
            finally:
                for handle in handles:
                    handle.remove()
            for n in LINEARS:
                layer = getattr(block, n)
                new = method(copy.deepcopy(layer), inputs[n])
                if not isinstance(new, nn.Module):
                    raise TypeError(f"method returned {type(new).__name__} for blocks.{i}.{n}; it must return a module.")
                t, t_cpu = time.perf_counter(), time.process_time()
                errors[f"blocks.{i}.{n}"] = _relative_error(layer, new, inputs[n], f"blocks.{i}.{n}")
                measuring += time.perf_counter() - t
                measuring_cpu += time.process_time() - t_cpu
                setattr(block, n, new)
            del inputs
            h = block(h)  # the quantized block's output feeds the next block
    result = QuantizeResult((quantized, errors))
    result.seconds = time.perf_counter() - start - measuring
    result.cpu_seconds = time.process_time() - cpu_start - measuring_cpu
    return result


# name -> (module, what it does); each module's function takes (layer, x, **settings) -> module
METHODS = {
    "rtn": "round to nearest, per group (qedu.rtn)",
    "gptq": "GPTQ: column by column with error feedback through the inverse Hessian (qedu.gptq)",
    "awq": "AWQ: scale input channels by mean|x|^alpha (alpha searched) before RTN (qedu.awq)",
    "w8a8": "W8A8 per-tensor: int8 weights and activations, one scale per tensor each (qedu.smoothquant.W8A8Linear)",
    "smoothquant": "SmoothQuant: move activation range into the weights (alpha = 0.5), then W8A8 per-tensor (qedu.smoothquant)",
    "nf4": "NF4 codes in blocks of 64, absmax double-quantized, 4.127 bits (qedu.nf4; bits and group_size unused)",
    "int8": "W8A8 vector-wise: int8 per output row of W and per token of X (qedu.llm_int8, threshold 0)",
    "llm_int8": "LLM.int8(): W8A8 vector-wise, input columns with |x| >= 6 kept in float (qedu.llm_int8)",
}


def layer_method(name: str, bits: int = 4, group_size: int | None = 128, **settings) -> LayerMethod:
    """The per-layer function ``method(layer, x) -> module`` of a method in :data:`METHODS`.

    Args:
        name: a key of :data:`METHODS`. bits, group_size: the weight format (``group_size=None``:
            one scale per output channel). settings: passed on to the method's layer function.

    >>> layer = nn.Linear(8, 2); layer_method("rtn", bits=8, group_size=None)(layer, torch.randn(4, 8)).weight.shape
    torch.Size([2, 8])
    """
    if name == "rtn":
        from qedu.rtn import rtn_linear

        return lambda layer, x: rtn_linear(layer, bits=bits, group_size=group_size, **settings)
    if name == "gptq":
        from qedu.gptq import gptq_linear

        return lambda layer, x: gptq_linear(layer, x, bits=bits, group_size=group_size, **settings)
    if name == "awq":
        from qedu.awq import awq_linear

        return lambda layer, x: awq_linear(layer, x, bits=bits, group_size=group_size, **settings)
    if name == "w8a8":  # weights and activations int8, one scale per tensor each (dynamic for activations)
        from qedu.smoothquant import W8A8Linear

        return lambda layer, x: W8A8Linear(layer)
    if name == "nf4":  # 4-bit normal-float codes in blocks of 64, absmax double-quantized (bits, group_size unused)
        from qedu.nf4 import nf4_fake_quantize

        def nf4_layer(layer, x):
            with torch.no_grad():
                layer.weight.copy_(nf4_fake_quantize(layer.weight.detach(), **settings))
            return layer

        return nf4_layer
    if name in ("llm_int8", "int8"):  # W8A8 vector-wise; LLM.int8() keeps input columns with |x| >= 6 in float
        from qedu.llm_int8 import DEFAULT_THRESHOLD, Int8Linear

        threshold = settings.get("threshold", DEFAULT_THRESHOLD if name == "llm_int8" else 0.0)
        return lambda layer, x: Int8Linear(layer, threshold)
    raise ValueError(f"name must be one of {sorted(METHODS)}, got {name!r}.")


def quantize_tinylm(model: nn.Module, method: str, bits: int = 4, group_size: int | None = 128, n_calib: int = 16,
                    seed: int = 0, **settings) -> QuantizeResult:
    """``quantize_model(model, layer_method(method, bits, group_size, **settings), calibration_tokens(n_calib, seed))``.

    ``method="smoothquant"`` first smooths the model (``qedu.smoothquant.smooth_model``, ``alpha``
    from ``settings``, default 0.5), then makes every linear layer W8A8 per-tensor; its per-layer
    errors compare with the *smoothed* float layers (the same function as the originals).
    """
    calib = calibration_tokens(n_calib, seed, model.pos.num_embeddings if hasattr(model, "pos") else 128)
    if method == "smoothquant":  # a model-level step first: fold the scales into the LayerNorms and weights
        from qedu.smoothquant import smooth_model

        start, cpu_start = time.perf_counter(), time.process_time()
        smoothed = smooth_model(model, calib, alpha=settings.pop("alpha", 0.5), **settings)
        smoothing = time.perf_counter() - start
        smoothing_cpu = time.process_time() - cpu_start
        result = quantize_model(smoothed, layer_method("w8a8"), calib)
        result.seconds += smoothing
        result.cpu_seconds += smoothing_cpu
        return result
    return quantize_model(model, layer_method(method, bits, group_size, **settings), calib)
