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
    assert first.startswith(b"\x89PNG") and "k = 1" in panel.readout.value
    panel.controls["k"].value = 3
    assert panel.figure.png != first and "k = 3" in panel.readout.value
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


def test_a_failed_update_marks_the_figure_and_readout_not_current():
    """Issue 15 item 1: an error kept the old picture and numbers as if they were current."""
    from qedu.widgets import decode_png

    panel = _toy_panel()
    panel.controls["k"].value = 3
    good_png, good_text = panel.figure.png, panel.readout.value
    assert panel.current and panel.figure.image.value == good_png
    panel.controls["k"].value = 0
    assert not panel.current
    shown = bytes(panel.figure.image.value)
    assert shown != good_png and shown.startswith(b"\x89PNG")
    # the picture shown is the old one faded (no dark pixels left: the black axes turned light grey)
    # with a red label across it
    dark = lambda rgb: int((rgb.max(axis=-1) < 100).sum())  # noqa: E731
    old, new = decode_png(good_png)[..., :3], decode_png(shown)[..., :3]
    assert dark(old) > 1000 and dark(new) == 0
    assert int(((new[..., 0] == 176) & (new[..., 1] == 0)).sum()) > 100
    text = panel.readout.value
    assert "Not current" in text and "<s>k = 3</s>" in text and text != good_text
    panel.controls["k"].value = 3  # a valid setting again: exactly the picture and numbers of before
    assert panel.current and panel.figure.image.value == good_png and panel.readout.value == good_text


def test_an_error_while_drawing_is_caught_too():
    """Issue 20: Panel.update() called figure.render() outside its try block."""
    fig = LiveFigure()
    (line,) = fig.axes.plot([0, 1], [0, 1])

    def update(k):
        line.set_ydata([0, k])
        fig.axes.set_title("ok" if k < 2 else r"$\frac{1$")  # broken mathtext: fails only when drawn
        return f"k = {k}"

    panel = Panel({"k": W.IntSlider(value=1, min=0, max=4)}, update, fig)
    assert panel.current
    panel.controls["k"].value = 3
    assert panel.error is not None and not panel.current and "Not current" in panel.readout.value
    panel.controls["k"].value = 1
    assert panel.current and panel.error is None


def test_inactive_controls_are_disabled_with_a_hint():
    """Issue 15 item 3: controls that do nothing in the current state are disabled, with a hint."""
    panel = Panel({"method": W.Dropdown(options=["a", "b"], value="a"), "p": W.IntSlider(value=1, description="p")},
                  lambda method, p: f"{method} {p}",
                  inactive=lambda method, p: {"p": "only used by method b"} if method == "a" else {})
    assert panel.controls["p"].disabled and "only used by method b" in panel.hint.value
    panel.controls["method"].value = "b"
    assert not panel.controls["p"].disabled and panel.hint.value == ""
    assert not panel.controls["method"].disabled


def test_hold_updates_once_for_several_changes():
    panel = _toy_panel()
    n = panel.n_updates
    with panel.hold():
        panel.controls["k"].value = 2
        panel.controls["k"].value = 4
    assert panel.n_updates == n + 1 and "k = 4" in panel.readout.value
    with panel.hold(update=False):
        panel.controls["k"].value = 3
    assert panel.n_updates == n + 1


def test_every_update_sends_a_busy_sign_that_shows_after_300_ms():
    """Issue 15 item 7: updates over ~300 ms showed no busy sign. The sign is sent at the start of
    every update and cleared at its end; its CSS fades it in only after 0.3 s, so quick updates
    never flicker."""
    from qedu.widgets import BUSY_HTML

    panel = _toy_panel()
    seen = []
    panel.busy.observe(lambda change: seen.append(change["new"]), names="value")
    panel.controls["k"].value = 2
    assert seen == [BUSY_HTML, ""]
    assert "0.3s both" in BUSY_HTML and "computing" in BUSY_HTML
    assert all(ord(c) < 0x2000 or c == "\u2026" for c in BUSY_HTML), "no emoji: plain text and CSS only"
    panel.controls["k"].value = 0  # a failing update clears it too
    assert seen[-2:] == [BUSY_HTML, ""]


def test_readout_is_not_double_spaced():
    """Issue 15 item 9: ipywidgets gives HTML a 28 px line height, double-spacing multi-line readouts."""
    panel = _toy_panel()
    assert panel.readout.value.startswith("<div style='line-height:1.35'>")


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


def test_encode_png_round_trips_through_pillow():
    import io

    from PIL import Image

    from qedu.widgets import encode_png

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    png = encode_png(rgba)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")), rgba)
    assert encode_png(rgba) == png  # deterministic
    with pytest.raises(TypeError, match="rgba must be a uint8 numpy array of shape"):
        encode_png(rgba[..., :3])
    with pytest.raises(TypeError, match="rgba must be a uint8"):
        encode_png(rgba.astype(np.float32))


def _stacked_panel():
    from qedu.widgets import StackedFigure

    fig = StackedFigure([1.0, 1.2], width=4.0, dpi=50)
    top, bottom = (f.add_axes((0.1, 0.2, 0.85, 0.7)) for f in fig.figures)
    x = np.linspace(0, 1, 40)
    (curve,) = top.plot(x, x)
    (base,) = bottom.plot(x, x)
    marker = fig.animate(1, bottom.axvline(0.5, color="r"))
    draws = [0, 0]
    for i, f in enumerate(fig.figures):
        original = f.canvas.draw
        f.canvas.draw = lambda original=original, i=i: (draws.__setitem__(i, draws[i] + 1), original())[1]
    shown = {}

    def update(k, where, scale):
        if shown.get("k") != k:
            curve.set_ydata(x**k)
            fig.stale(0)
        if shown.get("scale") != scale:
            base.set_ydata(scale * x)
            bottom.set_ylim(0, scale)
            fig.stale(1)
        if shown.get("where") != where:
            marker.set_xdata([where, where])
            fig.stale(1, background=False)
        shown.update(k=k, where=where, scale=scale)

    controls = {"k": W.IntSlider(value=1, min=1, max=3), "where": W.FloatSlider(value=0.5, min=0, max=1),
                "scale": W.IntSlider(value=1, min=1, max=3)}
    return Panel(controls, update, fig), draws


def test_stacked_figure_redraws_only_the_stale_strips():
    panel, draws = _stacked_panel()
    assert draws == [1, 1] and panel.figure.png.startswith(b"\x89PNG")
    panel.controls["k"].value = 2  # top strip only
    assert draws == [2, 1]
    panel.controls["where"].value = 0.8  # bottom strip's animated marker only: no full redraw
    assert draws == [2, 1]
    panel.controls["scale"].value = 2  # the bottom strip's background changed
    assert draws == [2, 2]


def test_stacked_figure_picture_does_not_depend_on_the_path():
    a, _ = _stacked_panel()
    for name, value in (("where", 0.2), ("scale", 3), ("k", 3), ("where", 0.9)):
        a.controls[name].value = value
    b, _ = _stacked_panel()
    for name, value in (("k", 3), ("where", 0.9), ("scale", 3)):
        b.controls[name].value = value
    assert a.figure.png == b.figure.png
    c, _ = _stacked_panel()
    assert c.figure.png != a.figure.png


def test_stacked_figure_refuses_bad_heights():
    from qedu.widgets import StackedFigure

    with pytest.raises(ValueError, match="heights must be a non-empty list"):
        StackedFigure([])
    with pytest.raises(ValueError, match="heights"):
        StackedFigure([1.0, 0.0])



def _titled() -> LiveFigure:
    """A figure with an animated title and an animated line that can cross the title's box (at y = 1.1)."""
    fig = LiveFigure(figsize=(4.0, 2.0), dpi=60)
    fig.axes.set_ylim(0, 1)
    fig.axes.set_title("a")
    (line,) = fig.axes.plot([0, 1], [0.5, 0.5], clip_on=False, lw=4)
    fig.animate(line, fig.axes.title)  # the line first: the title's pixels depend on where it is
    fig.render()
    return fig


def test_cached_texts_give_the_same_bytes_as_drawing_them():
    """LiveFigure reuses a text's pixels when the same text lands on the same pixels; it must be exact."""
    cached, drawn = _titled(), _titled()
    path = [("b", 0.5), ("a", 0.5), ("a", 1.1), ("b", 1.1), ("a", 0.5), ("a", 1.1), ("b", 0.5), ("b", 1.1)]
    pngs = set()
    for text, y in path:  # after the first visit of a state, `cached` pastes the title's pixels
        for fig in (cached, drawn):
            fig.axes.title.set_text(text)
            fig.animated[0].set_ydata([y, y])
        drawn._texts.clear()  # always draws the text
        assert cached.render() == drawn.render(), (text, y)
        pngs.add(cached.png)
    assert len(pngs) == 4  # the four states differ
    assert len(cached._texts) == 4  # one patch per (text, pixels under it)
