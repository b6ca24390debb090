"""The widget base and lesson 00's widget, driven headless."""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import pytest

import qedu
from qedu.widgets import LiveFigure, Panel
from qedu.widgets.welcome import bits_demo, snap_uniform


def _toy_panel():
    fig = LiveFigure()
    x = np.linspace(0, 1, 50)
    (line,) = fig.axes.plot(x, x)

    def update(k):
        if k == 0:
            raise ValueError("k must be positive")
        line.set_ydata(x**k)
        return f"k = {k}"

    return Panel({"k": W.IntSlider(value=1, min=0, max=4)}, update, fig)


def test_panel_updates_and_moving_back_restores_identical_png():
    panel = _toy_panel()
    first = panel.figure.png
    assert first.startswith(b"\x89PNG") and panel.readout.value == "k = 1"
    panel.controls["k"].value = 3
    assert panel.figure.png != first and panel.readout.value == "k = 3"
    panel.controls["k"].value = 1
    assert panel.figure.png == first
    assert panel.figure.image.value == first
    assert panel.last_update_ms > 0


def test_panel_shows_errors_in_the_widget_instead_of_raising():
    panel = _toy_panel()
    panel.controls["k"].value = 0
    assert "ValueError" in panel.message.value and "k must be positive" in panel.message.value
    assert isinstance(panel.error, ValueError)
    panel.controls["k"].value = 2
    assert panel.message.value == "" and panel.error is None


def test_bits_demo_responds_to_every_bit_width():
    panel = bits_demo()
    pngs = {}
    for bits in range(1, 9):
        panel.controls["bits"].value = bits
        assert panel.message.value == ""
        assert f"{2**bits} levels" in panel.readout.value
        pngs[bits] = panel.figure.png
    assert len(set(pngs.values())) == 8
    panel.controls["bits"].value = 8
    assert panel.figure.png == pngs[8]


def test_bits_demo_size_readout_is_the_arithmetic():
    panel = bits_demo(n_params=1024 * 8)
    panel.controls["bits"].value = 4
    assert "takes 4.0 KiB" in panel.readout.value and "float32: 32.0 KiB" in panel.readout.value


def test_snap_uniform_is_within_half_a_step_and_hits_the_ends():
    x = np.linspace(-1, 1, 1001)
    for bits in (1, 2, 4, 8):
        x_hat = snap_uniform(x, bits, -1.0, 1.0)
        step = 2.0 / (2**bits - 1)
        assert np.abs(x - x_hat).max() <= step / 2 + 1e-12
        assert len(np.unique(x_hat)) == 2**bits
        assert x_hat.min() == -1.0 and x_hat.max() == 1.0


@pytest.mark.parametrize("bits", [0, 17, 2.5])
def test_snap_uniform_rejects_bad_bits(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        snap_uniform(np.zeros(3), bits, 0.0, 1.0)


def test_snap_uniform_rejects_empty_range():
    with pytest.raises(ValueError, match="hi must be greater than lo"):
        snap_uniform(np.zeros(3), 4, 1.0, 1.0)


def test_bits_demo_rejects_non_image():
    with pytest.raises(ValueError, match="2-D"):
        bits_demo(image=np.zeros(5))


def test_setup_is_reproducible_and_rejects_bad_seed():
    import torch

    qedu.setup(seed=3)
    a = torch.rand(3)
    qedu.setup(seed=3)
    assert torch.equal(a, torch.rand(3))
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="seed"):
        qedu.setup(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        qedu.setup(seed="0")
    qedu.setup(seed=0)


def test_environment_report_is_offline_and_complete():
    report = qedu.environment_report()
    assert report["qedu"] == qedu.__version__
    assert report["torch_threads"] >= 1 and report["cpu_count"] >= 1
