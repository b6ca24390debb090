"""Apply a weight-quantization method to every ``nn.Linear`` of a model, one layer at a time.

LLM weight quantizers (:mod:`qedu.rtn`, :mod:`qedu.gptq`, :mod:`qedu.awq`) work on one layer:
a weight ``W`` (``(C_out, C_in)``) and that layer's calibration inputs ``X`` (``(n, C_in)``).
This module connects them to a model:

* :func:`linear_inputs` runs the model once and returns every Linear's inputs;
* :func:`quantize_linears` returns a **copy** of the model whose Linear weights are replaced by
  ``quantize_weight(W, X)``. With ``sequential=True`` (GPTQ's ``--true-sequential``) each
  layer sees the inputs produced by the layers *already quantized* before it, so later layers
  can correct for the earlier layers' errors; the model runs once per layer, stopped as soon
  as the layer's input is known.
* :func:`replace_linears` swaps each Linear for a module built from it (an int8 or NF4 layer).

The caller's model is never changed.

>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> {name: tuple(x.shape) for name, x in linear_inputs(model, torch.randn(5, 4)).items()}
{'0': (5, 4), '2': (5, 8)}
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from qedu._validation import as_float_tensor, check_bool, check_module, to_model_dtype

__all__ = ["linear_names", "linear_inputs", "quantize_linears", "replace_linears"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


def linear_names(model: nn.Module, names=None) -> list[str]:
    """Names of the ``nn.Linear`` modules to quantize: all of them, in definition order, or ``names``.

    >>> linear_names(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
    ['0', '2']
    """
    check_module(model)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if names is None:
        return linears
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a list of module names (strings), got {names!r}.")
    unknown = [n for n in names if n not in linears]
    if unknown:
        raise ValueError(f"names {unknown} are not nn.Linear modules of the model; its Linear layers are {linears}.")
    return list(names)


def _run(model: nn.Module, inputs):
    if not isinstance(inputs, (torch.Tensor, tuple)):
        raise TypeError(f"inputs must be a tensor (e.g. token ids (batch, seq)) or a tuple of the model's positional "
                        f"arguments, got {type(inputs).__name__}.")
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():  # features: finite, in the model's dtype
        inputs = to_model_dtype(as_float_tensor(inputs, "inputs"), model, "inputs")
    try:
        with torch.no_grad():
            return model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    except (RuntimeError, IndexError, AttributeError) as err:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"the model cannot run on inputs ({shape}): {str(err).splitlines()[0]}. "
                         "Pass calibration inputs shaped like the model's data.") from err


def linear_inputs(model: nn.Module, inputs, names=None) -> dict[str, torch.Tensor]:
    """Every selected Linear's input during one forward pass (of a copy in eval mode), flattened to ``(n, C_in)``.

    Args:
        model: any module; it runs on ``inputs`` (a tensor, or a tuple of positional arguments).
        inputs: calibration inputs, e.g. token ids ``(batch, seq)``.
        names: Linear names to record (default: all).

    Returns:
        dict name -> float tensor ``(n, C_in)`` (all leading dims flattened). A layer called
        several times keeps the rows of every call.

    >>> xs = linear_inputs(nn.Sequential(nn.Linear(3, 2)), torch.ones(4, 5, 3)); xs["0"].shape
    torch.Size([20, 3])
    """
    names = linear_names(model, names)
    model = copy.deepcopy(model).eval()  # eval: no dropout noise; a copy: the caller's mode and hooks stay as they are
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [modules[n].register_forward_pre_hook(
        lambda mod, args, n=n: seen[n].append(args[0].detach().reshape(-1, args[0].shape[-1]))) for n in names]
    try:
        _run(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if not seen[n]]
    if missing:
        raise ValueError(f"Linear layers {missing} were not called in the forward pass; leave them out of names.")
    return {n: torch.cat(seen[n]) for n in names}


def _input_of(model: nn.Module, layer: nn.Module, inputs) -> torch.Tensor:
    """The input of ``layer``'s first call, stopping the forward pass right there."""
    captured: list[torch.Tensor] = []

    def hook(mod, args):
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]))  # (..., C_in) -> (n, C_in)
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        _run(model, inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError("a selected Linear layer was not called in the forward pass; leave it out of names.")
    return captured[0]


def quantize_linears(model: nn.Module, inputs, quantize_weight: Callable, names=None,
                     sequential: bool = True) -> nn.Module:
    """A copy of ``model`` with each selected Linear's weight replaced by ``quantize_weight(W, X)``.

    ``X`` is the layer's calibration input ``(n, C_in)``. With ``sequential=True`` it comes
    from the copy, in which the layers before have already been quantized (GPTQ's
    ``--true-sequential``; by default its code takes a whole transformer block's inputs at
    once); with ``False`` all inputs come from one pass of the float model.

    Args:
        model: the float model (not changed).
        inputs: calibration inputs (tensor or tuple of positional arguments).
        quantize_weight: ``(weight (C_out, C_in), x (n, C_in)) -> new weight``, e.g.
            ``lambda w, x: gptq_quantize(w, x, bits=4).weight``.
        names: Linear names to quantize (default: all, in definition order).
        sequential: see above.

    Returns:
        the quantized copy, in eval mode.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> q = quantize_linears(model, torch.randn(8, 4), lambda w, x: torch.zeros_like(w))
    >>> float(q[2].weight.detach().abs().sum()), float(model[2].weight.detach().abs().sum()) > 0
    (0.0, True)
    """
    names = linear_names(model, names)
    if not callable(quantize_weight):
        raise TypeError(f"quantize_weight must be a function (weight, x) -> new weight, got {type(quantize_weight).__name__}.")
    sequential = check_bool(sequential, "sequential")
    new = copy.deepcopy(model).eval()
    modules = dict(new.named_modules())
    float_inputs = None if sequential else linear_inputs(new, inputs, names)
    for name in names:
        layer = modules[name]
        x = _input_of(new, layer, inputs) if sequential else float_inputs[name]
        w_hat = quantize_weight(layer.weight.detach().clone(), x)
        if not isinstance(w_hat, torch.Tensor) or w_hat.shape != layer.weight.shape:
            raise ValueError(f"quantize_weight must return a tensor of the weight's shape {tuple(layer.weight.shape)} "
                             f"for layer {name!r}, got {getattr(w_hat, 'shape', type(w_hat).__name__)}.")
        if w_hat.is_floating_point() and not bool(torch.isfinite(w_hat).all()):
            raise ValueError(f"quantize_weight returned NaN or inf for layer {name!r} (its float weight is finite); "
                             "check the quantizer and its settings.")
        with torch.no_grad():
            layer.weight.copy_(w_hat)
    return new


def replace_linears(model: nn.Module, make_module: Callable, names=None) -> nn.Module:
    """A copy of ``model`` with each selected Linear replaced by ``make_module(linear)``.

    >>> q = replace_linears(nn.Sequential(nn.Linear(2, 2)), lambda lin: nn.Identity())
    >>> q
    Sequential(
      (0): Identity()
    )
    """
    names = linear_names(model, names)
    if not callable(make_module):
        raise TypeError(f"make_module must be a function nn.Linear -> nn.Module, got {type(make_module).__name__}.")
    new = copy.deepcopy(model).eval()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        replacement = make_module(getattr(parent, child))
        if not isinstance(replacement, nn.Module):
            raise TypeError(f"make_module must return an nn.Module, got {type(replacement).__name__} for {name!r}.")
        setattr(parent, child, replacement)
    return new
