"""Activation outliers, measured: how large the inputs of a model's linear layers get, channel by channel.

A weight-and-activation quantizer with one scale per tensor is ruled by the largest value it
sees. In large language models a few *channels* (features of the hidden state) carry values far
larger than the rest:

* Dettmers et al. 2022 (LLM.int8()) call a value an outlier when ``|x| >= 6`` and find such
  features in every layer of models from about 6.7 B parameters on; they keep those input
  columns in 16-bit and multiply the rest in int8.
* Sun et al. 2024 ("Massive activations in large language models") find a handful of values in
  the residual stream that are thousands of times the median, in specific channels and tokens,
  in models small and large.
* Xiao et al. 2022 (SmoothQuant) move the difficulty from such activation channels into the
  weights with a per-channel scale.

This module does not assume outliers; it measures. For every ``nn.Linear`` it records the
per-input-channel ``max |x|`` over a batch (forward pre-hooks, removed afterwards; the model is
never changed), and for a :class:`~qedu.models.TinyGPT` the same for the residual stream after
the embedding and after each block::

    channel_max[c] = max over tokens t of |x[t, c]|
    ratio          = max_c channel_max[c] / median_c channel_max[c]     # how much one channel stands out

>>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
>>> stats = linear_input_absmax(model, torch.tensor([[1.0, -7.0], [0.5, 2.0]]))
>>> stats["0"].tolist()
[1.0, 7.0]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_int, check_module, check_real, run_model, to_model_dtype

__all__ = ["linear_input_absmax", "residual_absmax", "ChannelStats", "channel_stats", "outlier_table", "heatmap_data",
           "LLM_INT8_THRESHOLD"]

LLM_INT8_THRESHOLD = 6.0  # Dettmers et al. 2022: |x| >= 6 marks an outlier feature


def _run(model: nn.Module, inputs) -> None:
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():  # images or features; token ids pass as they are
        inputs = to_model_dtype(as_float_tensor(inputs, "inputs"), model, "inputs")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_model(model, inputs, "inputs")
    finally:
        model.train(was_training)


def _finite(store: dict) -> dict:
    bad = [name for name, m in store.items() if not bool(torch.isfinite(m).all())]
    if bad:
        raise ValueError(f"the inputs of {bad} hold NaN or inf (overflow inside the model, or NaN weights); "
                         "check the model's weights and rescale inputs so its activations stay finite.")
    return store


def _update(store: dict, name: str, x: torch.Tensor) -> None:
    m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()  # (..., C) -> (tokens, C) -> (C,)
    store[name] = m if name not in store else torch.maximum(store[name], m)


def linear_input_absmax(model: nn.Module, inputs) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x|`` at the input of every ``nn.Linear`` of ``model`` on ``inputs``.

    Args:
        model: any module; its ``nn.Linear`` layers are measured. inputs: what ``model`` takes.

    Returns:
        ``{layer name: (in_features,) float32 tensor}`` in the order of ``model.named_modules()``.
        The model, its mode and its hooks are as before.

    Raises:
        ValueError: if ``model`` has no ``nn.Linear`` layer.
    """
    model = check_module(model)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear layer to measure.")
    store: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: _update(store, name, args[0])) for name, m in linears]
    try:
        _run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return _finite({name: store[name] for name, _ in linears if name in store})


def residual_absmax(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel ``max |x|`` of a TinyGPT's residual stream: after the embeddings and after each block.

    Returns:
        ``{"embed": (hidden,), "block0": (hidden,), ...}`` float32 tensors.

    Raises:
        TypeError: if ``model`` has no ``blocks`` list (it must be a :class:`~qedu.models.TinyGPT`).
    """
    model = check_module(model)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(f"model must be a qedu.models.TinyGPT (with a .blocks list), got {type(model).__name__}.")
    store: dict[str, torch.Tensor] = {}
    handles = [blocks[0].register_forward_pre_hook(lambda mod, args: _update(store, "embed", args[0]))]
    handles += [b.register_forward_hook(lambda mod, args, out, i=i: _update(store, f"block{i}", out)) for i, b in enumerate(blocks)]
    try:
        _run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return _finite({name: store[name] for name in ["embed"] + [f"block{i}" for i in range(len(blocks))]})


@dataclass(frozen=True)
class ChannelStats:
    """Summary of one layer's per-channel maxima (see :func:`channel_stats`)."""

    name: str
    channels: int
    max: float
    median: float
    ratio: float
    top_channels: tuple[int, ...]
    n_outlier_channels: int

    def as_dict(self) -> dict:
        return {"layer": self.name, "channels": self.channels, "max": self.max, "median": self.median,
                "ratio": self.ratio, "top_channels": list(self.top_channels), "n_outlier_channels": self.n_outlier_channels}


def channel_stats(name: str, channel_max: torch.Tensor, threshold: float = LLM_INT8_THRESHOLD, top: int = 3) -> ChannelStats:
    """Largest and median channel maximum, their ratio, the ``top`` channels and how many reach ``threshold``.

    ``ratio`` is ``inf`` when the median channel maximum is 0 (at least half of the channels are
    all zeros), and ``nan`` never: ``channel_max`` must hold finite values >= 0.

    >>> s = channel_stats("fc", torch.tensor([1.0, 2.0, 8.0, 1.0, 1.5]))
    >>> s.max, s.median, s.ratio, s.top_channels, s.n_outlier_channels
    (8.0, 1.5, 5.333333333333333, (2, 1, 4), 1)
    """
    if not isinstance(channel_max, torch.Tensor) or channel_max.ndim != 1:
        raise TypeError(f"channel_max must be a non-empty 1-D tensor of per-channel maxima, got {type(channel_max).__name__}.")
    m = as_float_tensor(channel_max, "channel_max")
    if bool((m < 0).any()):
        raise ValueError(f"channel_max holds negative values ({float(m.min()):g}); it must be max |x| per channel.")
    m = as_float32(m, "channel_max").double()  # the max / median of float32 values is finite in float64
    threshold = check_real(threshold, "threshold", 0, example="6.0")
    top = check_int(top, "top", 1)
    median = float(m.median())
    order = torch.argsort(m, descending=True, stable=True)[:top]
    return ChannelStats(name, m.numel(), float(m.max()), median, float(m.max()) / median if median > 0 else float("inf"),
                        tuple(int(i) for i in order), int((m >= threshold).sum()))


def outlier_table(model: nn.Module, inputs: torch.Tensor, threshold: float = LLM_INT8_THRESHOLD) -> list[ChannelStats]:
    """One :class:`ChannelStats` row per linear-layer input, then one per residual-stream point of a TinyGPT.

    The table behind lesson 10's outlier figure: which layers have channels whose values reach
    ``threshold`` (LLM.int8()'s 6.0), and how far the largest channel stands above the median one.
    """
    rows = [channel_stats(n, m, threshold) for n, m in linear_input_absmax(model, inputs).items()]
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        rows += [channel_stats(f"residual.{n}", m, threshold) for n, m in residual_absmax(model, inputs).items()]
    return rows


def heatmap_data(model: nn.Module, inputs: torch.Tensor) -> dict[int, tuple[list[str], torch.Tensor]]:
    """Per-channel maxima stacked into matrices for a heat map, one per width.

    Linear inputs and (for a TinyGPT) the residual stream are grouped by their number of
    channels: ``{width: (row names, (rows, width) tensor)}``. For a TinyGPT with hidden size
    ``h`` that is ``h`` (``qkv``, ``proj``, ``fc1`` inputs and the residual stream) and ``4h``
    (the ``fc2`` inputs, after the GELU).

    >>> data = heatmap_data(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3)), torch.ones(1, 2))
    >>> {w: (names, tuple(m.shape)) for w, (names, m) in data.items()}
    {2: (['0'], (1, 2)), 3: (['1'], (1, 3))}
    """
    stats = linear_input_absmax(model, inputs)
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        stats.update({f"residual.{n}": m for n, m in residual_absmax(model, inputs).items()})
    groups: dict[int, tuple[list[str], list[torch.Tensor]]] = {}
    for name, m in stats.items():
        names, rows = groups.setdefault(m.numel(), ([], []))
        names.append(name)
        rows.append(m)
    return {w: (names, torch.stack(rows)) for w, (names, rows) in groups.items()}  # (rows, width)
