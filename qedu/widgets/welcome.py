"""Lesson 00's first widget: fewer bits, coarser numbers, smaller models."""
from __future__ import annotations

import ipywidgets as W
import numpy as np

from qedu._validation import check_int
from qedu.widgets import LiveFigure, Panel, plural

__all__ = ["snap_uniform", "bits_demo"]


def snap_uniform(x: np.ndarray, bits: int, lo: float, hi: float) -> np.ndarray:
    """Round ``x`` to the nearest of ``2**bits`` evenly spaced levels from ``lo`` to ``hi``.

    ``step = (hi - lo) / (2**bits - 1)``; ``x_hat = lo + step * round((x - lo) / step)``, with
    ``x`` first clipped to ``[lo, hi]``. (Lesson 02 builds the full quantizer; this is the idea.)

    >>> snap_uniform(np.array([0.1, 0.4, 0.9]), bits=1, lo=0.0, hi=1.0).tolist()
    [0.0, 0.0, 1.0]
    """
    bits = check_int(bits, "bits", 1, 16)
    if not hi > lo:
        raise ValueError(f"hi must be greater than lo, got lo={lo}, hi={hi}.")
    step = (hi - lo) / (2**bits - 1)
    return lo + step * np.round((np.clip(x, lo, hi) - lo) / step)


def bits_demo(image: np.ndarray | None = None, n_params: int = 17_226) -> Panel:
    """A bit-width slider that re-rounds a smooth signal and a digit image, live.

    Args:
        image: a 2-D array in [0, 1] (default: the first of scikit-learn's bundled digits).
        n_params: the model size quoted in the readout (default: lesson 01's MLP).
    """
    if image is None:
        from qedu.data import _raw_digits  # the same bundled file, without importing scikit-learn (~75 MiB)

        image = _raw_digits()[0][0, 0]  # pixel / 16: exact in float32
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array, got shape {image.shape}.")
    t = np.linspace(0.0, 1.0, 400)
    signal = np.sin(2 * np.pi * t) * np.exp(-1.5 * t)

    fig = LiveFigure(1, 2, figsize=(8.0, 2.8), gridspec_kw={"width_ratios": [2.2, 1]})
    ax_sig, ax_img = fig.axes
    ax_sig.plot(t, signal, color="0.6", lw=1, label="float32")
    (stairs,) = ax_sig.plot(t, signal, color="C0", lw=1.5, drawstyle="steps-mid", label="quantized")
    ax_sig.legend(loc="upper right", fontsize=8)
    ax_sig.set_xlabel("time")
    shown = ax_img.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_img.grid(False)
    ax_sig.set_title(" ", fontsize=10)
    ax_img.set_title(" ", fontsize=10)
    fig.animate(stairs, shown, ax_sig.title, ax_img.title)  # only these change: the rest is drawn once

    def update(bits: int) -> str:
        x_hat = snap_uniform(signal, bits, signal.min(), signal.max())
        stairs.set_ydata(x_hat)
        ax_sig.title.set_text(f"{plural(bits, 'bit')} = {2**bits} levels")
        shown.set_data(snap_uniform(image, bits, 0.0, 1.0))
        ax_img.title.set_text(f"digit at {plural(bits, 'bit')}")
        max_err = float(np.abs(x_hat - signal).max())
        kib = n_params * bits / 8 / 1024
        return (
            f"<b>{bits}-bit</b>: {2**bits} levels, largest rounding error {max_err:.4f}; "
            f"a {n_params:,}-parameter model takes {kib:.1f} KiB (float32: {n_params * 4 / 1024:.1f} KiB)"
        )

    slider = W.IntSlider(value=8, min=1, max=8, description="bits", continuous_update=True)
    return Panel({"bits": slider}, update, fig, title="<b>Move the slider</b>: fewer bits, coarser values, smaller model.")
