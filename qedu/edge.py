"""Edge budgets: pick the most accurate quantization that fits a microcontroller.

A microcontroller has no DRAM. The weights live in **flash** (read-only, ~1 MB), the
activations in **SRAM** (~256 KB), and there is no operating system to page anything out.
While a layer runs, its input and its output are both alive, so the SRAM a model needs is its
**largest activation pair** (TinyEngine and TFLite Micro reuse the rest of the arena between
layers). The time it takes is, to first order, its number of **multiply-accumulates** (MACs).
So a configuration fits a :class:`Budget` when::

    flash_bytes  = weight codes + scales/zero points + int32 biases      <= budget.flash_bytes
    sram_bytes   = max over layers (input + output activations, int8)      <= budget.sram_bytes
    macs         = sum over layers (C_out * C_in * kernel area * outputs)  <= budget.max_macs

:class:`BudgetSearch` tries every combination of weight bits (8/4/2; activations stay 8 bits),
granularity (per-tensor / per-channel / per-group) and which one layer is kept in 8 bits, for
each model it holds, keeps those that fit and returns the most accurate. It only evaluates
configurations that fit, and caches every quantized layer and every evaluated configuration,
so a second search under another budget costs almost nothing.

The example budget is MCUNet's (Lin et al., "MCUNet: Tiny Deep Learning on IoT Devices", NeurIPS
2020): the authors' later comparison (Lin et al., "Tiny Machine Learning: Progress and Futures",
IEEE Circuits and Systems Magazine, 2023, Table 4) sets **256 kB SRAM / 1 MB flash** (an
STM32F412, Cortex-M4) and 512 kB / 2 MB (a Cortex-M7); the STM32F746 of the original paper has
320 KB SRAM and 1 MB flash.

:func:`energy_estimate` prices one inference with Horowitz's 45 nm table (:mod:`qedu.energy`):
an **estimate** from published per-operation energies, not a measurement.

>>> MCU_256KB.scaled(1 / 128)
Budget(flash_bytes=8192, sram_bytes=2048, max_macs=None, name='MCU 256 kB SRAM / 1 MB flash / 128')
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from qedu._validation import check_choice, check_int, check_module
from qedu.energy import ENERGY_45NM_PJ
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.ptq import PTQConfig, QuantLayer, calibrate, convert, fold_batchnorm, model_size, quantizable_layers

__all__ = ["Budget", "MCU_256KB", "MCU_320KB", "Candidate", "Costs", "model_costs", "energy_estimate",
           "BudgetSearch", "GRANULARITIES", "table", "plot_tradeoff"]

GRANULARITIES = ("per-tensor", "per-channel", "per-group")
_GROUP_SIZE = 16


@dataclass(frozen=True)
class Budget:
    """What a device offers: flash for weights, SRAM for activations, and a MAC limit (``None``: no limit).

    >>> Budget(8192, 2048).fits(flash_bytes=8000, sram_bytes=2048, macs=10**9)
    True
    """

    flash_bytes: int
    sram_bytes: int
    max_macs: int | None = None
    name: str = ""

    def __post_init__(self):
        check_int(self.flash_bytes, "flash_bytes", 1)
        check_int(self.sram_bytes, "sram_bytes", 1)
        if self.max_macs is not None:
            check_int(self.max_macs, "max_macs", 1)

    def fits(self, flash_bytes: int, sram_bytes: int, macs: int) -> bool:
        return flash_bytes <= self.flash_bytes and sram_bytes <= self.sram_bytes and (
            self.max_macs is None or macs <= self.max_macs)

    def scaled(self, factor: float) -> "Budget":
        """The same device shrunk (or grown) by ``factor``: memory and MACs scale alike."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise ValueError(f"factor must be a positive number, e.g. 1/128, got {factor!r}.")
        macs = None if self.max_macs is None else max(1, int(self.max_macs * factor))
        label = f"{self.name} / {round(1 / factor)}" if factor < 1 else f"{self.name} x {factor:g}"
        return Budget(max(1, int(self.flash_bytes * factor)), max(1, int(self.sram_bytes * factor)), macs, label)


MCU_256KB = Budget(1024 * 1024, 256 * 1024, None, "MCU 256 kB SRAM / 1 MB flash")  # Lin et al. 2023, Table 4
MCU_320KB = Budget(1024 * 1024, 320 * 1024, None, "STM32F746 320 KB SRAM / 1 MB flash")  # MCUNet 2020's board


@dataclass(frozen=True)
class Candidate:
    """One configuration to try: a model, its weight bits and granularity, and a layer kept in 8 bits."""

    model: str
    weight_bits: int
    granularity: str
    keep_8bit: str | None = None

    @property
    def label(self) -> str:
        keep = f", {self.keep_8bit} in 8 bits" if self.keep_8bit else ""
        return f"{self.model} W{self.weight_bits} {self.granularity}{keep}"


@dataclass(frozen=True)
class Costs:
    """Bytes and operations of one inference (batch of one)."""

    flash_bytes: int
    sram_bytes: int
    macs: int
    energy_uj: float


def _granularity(name: str):
    return {"per-tensor": PerTensor(), "per-channel": PerChannel(0), "per-group": PerGroup(_GROUP_SIZE)}[name]


def model_costs(model: nn.Module, example: torch.Tensor) -> tuple[int, int, int]:
    """``(sram_bytes, macs, activation_bytes)`` of ``model`` on one input like ``example[:1]``, int8 activations.

    SRAM: the largest ``input + output`` of any Linear/Conv2d/MaxPool2d (ReLU is fused, Flatten
    is a view), one byte per activation. MACs: ``out_features * in_features`` per Linear,
    ``C_out * H_out * W_out * C_in * kh * kw`` per Conv2d. ``activation_bytes``: every layer's
    input and output summed (the activation traffic of one inference).

    >>> from qedu.models import make_mlp
    >>> model_costs(make_mlp(seed=0), torch.zeros(1, 1, 8, 8))
    (192, 17024, 458)
    """
    model = check_module(model)
    pairs, macs = [], []

    def hook(mod, inp, out):
        pairs.append(inp[0][:1].numel() + out[:1].numel())
        if isinstance(mod, nn.Linear):
            macs.append(mod.in_features * mod.out_features)
        elif isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs.append(out[:1].numel() * mod.in_channels // mod.groups * kh * kw)

    folded = fold_batchnorm(model)
    handles = [m.register_forward_hook(hook) for m in folded.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.MaxPool2d))]
    try:
        with torch.no_grad():
            folded(example[:1].float())
    finally:
        for h in handles:
            h.remove()
    return max(pairs), sum(macs), sum(pairs)


def energy_estimate(macs: int, weight_bytes: int, activation_bytes: int, *, float32: bool = False) -> float:
    """Energy of one inference in microjoules, from Horowitz's 45 nm figures: an **estimate**.

    ``macs * (multiply + add) + (weight_bytes + activation_bytes) / 4 * (32-bit SRAM read)``:
    int8 multiplies with int32 adds, or fp32 multiply-adds with 4-byte values if ``float32``.
    Flash reads are priced as SRAM reads (the table has no flash figure; real flash costs more),
    and sub-byte weights save only memory traffic: an MCU unpacks them and still multiplies int8.

    >>> round(energy_estimate(1000, 1000, 100), 4), round(energy_estimate(1000, 4000, 400, float32=True), 4)
    (0.0017, 0.0101)
    """
    e = ENERGY_45NM_PJ
    per_mac = e["fp32 multiply"] + e["fp32 add"] if float32 else e["int8 multiply"] + e["int32 add"]
    reads = (weight_bytes + activation_bytes) / 4 * e["32-bit SRAM read (8 KB cache)"]
    return (macs * per_mac + reads) * 1e-6  # pJ -> uJ


class BudgetSearch:
    """Every (model, weight bits, granularity, layer kept in 8 bits) that fits a budget, and the best of them.

    Args:
        models: ``{"name": float model}`` (e.g. the digits MLP and CNN).
        data: a :class:`qedu.data.Digits` (``x_calib`` calibrates, ``x_test``/``y_test`` score).
        bits: weight bit-widths to try; activations are 8-bit affine (min/max) throughout.
        weight_method: how weight ranges are chosen (``"mse"`` keeps 2-bit weights usable).

    Per-group (groups of 16 inputs) applies to Linear layers; a Conv2d's 3x3 kernels have no
    run of 16 inputs along their last axis, so conv layers stay per-channel in a per-group config.

    Each layer's quantized weights and each configuration's accuracy are cached on the object
    (never globally), so re-running :meth:`search` under other budgets is fast.
    """

    def __init__(self, models: dict, data, bits=(8, 4, 2), weight_method: str = "mse"):
        if not isinstance(models, dict) or not models:
            raise TypeError("models must be a non-empty dict {name: nn.Module}, e.g. {'mlp': pretrained('mlp')}.")
        self.models = {name: fold_batchnorm(check_module(m, f"models[{name!r}]")) for name, m in models.items()}
        self.data = data
        self.bits = tuple(check_int(b, "bits", 2, 8) for b in bits)
        self.weight_method = check_choice(weight_method, "weight_method", ("minmax", "mse", "percentile"))
        self._layers = {name: quantizable_layers(m) for name, m in self.models.items()}
        self._shape_costs = {name: model_costs(m, data.x_test) for name, m in self.models.items()}
        self._quant_layers: dict = {}
        self._accuracy: dict = {}

    # ---------------------------------------------------------------- the configurations
    def candidates(self) -> list[Candidate]:
        out = []
        for name, layers in self._layers.items():
            for bits in self.bits:
                for gran in GRANULARITIES:
                    keeps = [None] if bits == 8 else [None, *layers]
                    out += [Candidate(name, bits, gran, keep) for keep in keeps]
        return out

    def config(self, c: Candidate) -> PTQConfig:
        """The :class:`qedu.ptq.PTQConfig` a candidate stands for."""
        overrides = {}
        model = self.models[c.model]
        for layer in self._layers[c.model]:
            if c.granularity == "per-group" and isinstance(model.get_submodule(layer), nn.Conv2d):
                overrides[layer] = {"weight_granularity": PerChannel(0)}
        if c.keep_8bit is not None:
            overrides.setdefault(c.keep_8bit, {})["weight_bits"] = 8
        return PTQConfig(weight_bits=c.weight_bits, weight_granularity=_granularity(c.granularity),
                         weight_method=self.weight_method, act_bits=8, overrides=overrides, fold_bn=False)

    def costs(self, c: Candidate) -> Costs:
        sram, macs, acts = self._shape_costs[c.model]
        flash = model_size(self.models[c.model], self.config(c)).total_bytes
        return Costs(flash, sram, macs, energy_estimate(macs, flash, acts))

    # ---------------------------------------------------------------- accuracy, cached
    def _quant_layer(self, model: str, layer: str, cfg: PTQConfig) -> QuantLayer:
        key = (model, layer, cfg)
        if key not in self._quant_layers:
            self._quant_layers[key] = QuantLayer(self.models[model].get_submodule(layer), cfg)
        return self._quant_layers[key]

    def quantized_model(self, c: Candidate) -> nn.Module:
        """The candidate as :func:`qedu.ptq.quantize_model` would build it (same prepare/calibrate/convert)."""
        config = self.config(c)
        prepared = copy.deepcopy(self.models[c.model])
        for layer in self._layers[c.model]:
            prepared.set_submodule(layer, copy.deepcopy(self._quant_layer(c.model, layer, config.for_layer(layer))))
        prepared.qedu_config = config
        return convert(calibrate(prepared, self.data.x_calib))

    def accuracy(self, c: Candidate) -> float:
        if c not in self._accuracy:
            q = self.quantized_model(c)
            with torch.no_grad():
                self._accuracy[c] = (q(self.data.x_test).argmax(1) == self.data.y_test).float().mean().item()
        return self._accuracy[c]

    # ---------------------------------------------------------------- the search
    def search(self, budget: Budget) -> list[dict]:
        """Every candidate that fits ``budget``, most accurate first (ties: fewer flash bytes, then fewer MACs).

        Returns:
            a list of dicts (``candidate``, ``label``, ``accuracy``, ``flash_bytes``, ``sram_bytes``,
            ``macs``, ``energy_uj``); empty if nothing fits.
        """
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a qedu.edge.Budget, got {type(budget).__name__}.")
        rows = []
        for c in self.candidates():
            cost = self.costs(c)
            if budget.fits(cost.flash_bytes, cost.sram_bytes, cost.macs):
                rows.append(dict(candidate=c, label=c.label, accuracy=self.accuracy(c), flash_bytes=cost.flash_bytes,
                                 sram_bytes=cost.sram_bytes, macs=cost.macs, energy_uj=cost.energy_uj))
        return sorted(rows, key=lambda r: (-r["accuracy"], r["flash_bytes"], r["macs"]))

    def best(self, budget: Budget) -> dict | None:
        rows = self.search(budget)
        return rows[0] if rows else None

    def float_costs(self, model: str) -> Costs:
        """The float32 model's costs, for comparison (4 bytes per weight and activation)."""
        sram, macs, acts = self._shape_costs[model]
        flash = model_size(self.models[model]).total_bytes
        return Costs(flash, 4 * sram, macs, energy_estimate(macs, flash, 4 * acts, float32=True))


def table(rows: list[dict], limit: int = 8) -> str:
    """Search results as a markdown table."""
    lines = ["| configuration | accuracy | flash (B) | SRAM (B) | MACs | energy (uJ, est.) |", "|---|---|---|---|---|---|"]
    for r in rows[:limit]:
        lines.append(f"| {r['label']} | {100 * r['accuracy']:.1f} % | {r['flash_bytes']:,} | {r['sram_bytes']:,} | "
                     f"{r['macs']:,} | {r['energy_uj']:.3f} |")
    return "\n".join(lines)



def plot_tradeoff(search: BudgetSearch, budget: Budget, ax):
    """Accuracy against flash bytes for every candidate, one colour per model, with the flash budget.

    Filled markers fit the budget's SRAM and MAC limits, hollow ones do not. Evaluates every
    candidate (cached on ``search``). Returns ``ax``.
    """
    from matplotlib import ticker  # drawing only: the search itself needs no matplotlib


    markers = {2: "v", 4: "s", 8: "o"}
    for i, model in enumerate(search.models):
        colour = f"C{i}"
        for c in search.candidates():
            if c.model != model:
                continue
            cost = search.costs(c)
            fits = budget.fits(0, cost.sram_bytes, cost.macs)  # all but flash: flash is the x axis
            ax.scatter(cost.flash_bytes, 100 * search.accuracy(c), marker=markers.get(c.weight_bits, "o"), s=28,
                       facecolors=colour if fits else "none", edgecolors=colour)
        ax.scatter([], [], color=colour, label=model)
    for bits, m in markers.items():
        ax.scatter([], [], marker=m, color="grey", label=f"W{bits}")
    ax.axvline(budget.flash_bytes, color="k", ls="--", lw=1)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("flash bytes (weights, scales, biases)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"every configuration; dashed: {budget.flash_bytes:,} B of flash")
    ax.legend(fontsize=8, ncol=2)
    return ax
