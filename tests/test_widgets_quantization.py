"""Lesson 02's quantization explorer, driven headless, and the pure function behind it."""
import pytest
import torch

from qedu.formats import INT4, INT8, IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.quantizers import choose_qparams, fake_quantize, quantization_error
from qedu.widgets.quantization import CLIPPINGS, GRANULARITIES, error_table, quantization_explorer, quantize_weights


@pytest.fixture(scope="module")
def panel():
    return quantization_explorer()


# one other value per control that must change both the numbers and the picture
MOVES = {"bits": 2, "symmetric": False, "granularity": "per-channel", "rounding": "floor", "clipping": "0.5 x max"}


@pytest.mark.parametrize("name", MOVES)
def test_each_control_changes_readout_and_figure_and_moving_back_restores_them(panel, name):
    before_png, before_text = panel.figure.png, panel.readout.value
    assert before_png.startswith(b"\x89PNG") and "SQNR" in before_text
    original = panel.controls[name].value
    panel.controls[name].value = MOVES[name]
    assert panel.message.value == "", panel.message.value
    assert panel.readout.value != before_text
    assert panel.figure.png != before_png
    assert panel.figure.image.value == panel.figure.png
    panel.controls[name].value = original
    assert panel.figure.png == before_png and panel.readout.value == before_text
    assert panel.last_update_ms > 0


def test_every_option_of_every_dropdown_draws_without_error(panel):
    start = panel.values
    for name in ("granularity", "rounding", "clipping"):
        for option in panel.controls[name].options:
            panel.controls[name].value = option
            assert panel.message.value == "" and panel.error is None, (name, option, panel.message.value)
        panel.controls[name].value = start[name]
    for bits in range(2, 9):
        panel.controls["bits"].value = bits
        assert f"of {2**bits}" in panel.readout.value and panel.current
    panel.controls["bits"].value = start["bits"]


def test_the_bits_slider_cannot_reach_symmetric_1_bit(panel):
    """Issue 15 item 1: at 1 bit the figure and readout still said 4-bit. Now symmetric 1-bit cannot be chosen."""
    start = panel.values
    panel.controls["symmetric"].value = True
    assert panel.controls["bits"].min == 2
    panel.controls["bits"].value = 1  # ipywidgets clamps to the slider's range
    assert panel.controls["bits"].value == 2 and panel.current and panel.error is None
    panel.controls["symmetric"].value = False  # asymmetric 1-bit is valid: two levels, one of them 0
    panel.controls["bits"].value = 1
    assert panel.current and panel.message.value == "" and "of 2" in panel.readout.value
    n = panel.n_updates
    panel.controls["symmetric"].value = True  # moves bits up to 2, in one update
    assert panel.controls["bits"].value == 2 and panel.current and panel.n_updates == n + 1
    assert "<b>2-bit symmetric" in panel.readout.value
    for name, value in start.items():
        panel.controls[name].value = value


def test_custom_weights_are_offered_only_the_granularities_that_fit():
    small = quantization_explorer(torch.randn(4, 20, generator=torch.Generator().manual_seed(0)))
    assert list(small.controls["granularity"].options) == ["per-tensor", "per-channel"]
    small.controls["granularity"].value = "per-channel"
    assert small.message.value == "" and small.current
    with pytest.raises(ValueError, match="2-D"):
        quantization_explorer(torch.randn(8))


def _drawn(line):
    """The horizontal segments one NaN-separated line draws: [(x0, x1, y)]."""
    x, y = (list(map(float, v)) for v in line.get_data())
    assert len(x) % 3 == 0 and all(v != v for v in x[2::3] + y[2::3])  # NaN after each segment lifts the pen
    assert y[0::3] == y[1::3]  # horizontal
    return list(zip(x[0::3], x[1::3], y[0::3]))


def _row_levels(panel):
    """row -> the set of level heights drawn in its small plot, and the set of grid runs."""
    out = {}
    for row, _ax, levels, ends in panel._slices:
        segs = _drawn(levels) + _drawn(ends)  # the levels in view (blue), the grid's ends among them (red)
        out[row] = ({round(y, 7) for _, _, y in segs}, {(a, b) for a, b, _ in segs})
    return out


def test_granularity_shows_each_slice_its_grid_scale_and_error(panel):
    """Issue 15 item 4: per-channel and per-group left the histogram and grid unchanged."""
    from qedu.widgets import decode_png
    from qedu.widgets.quantization import example_rows

    w = panel._weights
    rows = example_rows(w)
    assert len(rows) == 4 and w[rows[0]].abs().max() < w[rows[-1]].abs().max()
    seen = {}
    for name in ("per-tensor", "per-channel", "per-group 32"):
        panel.controls["granularity"].value = name
        r = quantize_weights(w, 4, True, GRANULARITIES[name])
        levels = _row_levels(panel)
        text = panel.readout.value
        for row in rows:  # the readout's table gives each row's scale(s) and MSE
            scales = r.scale.expand_as(w)[row]
            mse = float(((w[row] - r.x_hat[row]) ** 2).mean())
            shown = (f"{float(scales.min()):.4f}" if name != "per-group 32"
                     else f"{float(scales.min()):.4f} to {float(scales.max()):.4f} (4)")
            assert f"<tr><td>{row}</td>" in text and shown in text and f"{mse:.1e}" in text
        if name == "per-tensor":  # one grid: every row shows the same levels; the narrowest row few of them
            steps = {min(b - a for a, b in zip(sorted(lv), sorted(lv)[1:])) for lv, _ in levels.values()}
            assert len({round(s, 6) for s in steps}) == 1
            assert len(levels[rows[0]][0]) < len(levels[rows[-1]][0]) <= 16
        elif name == "per-channel":  # one grid per row, each fitted to it: all 16 levels in view
            assert all(len(lv) == 16 for lv, _ in levels.values())
        else:  # four grids per row: the level lines run in four stretches of 32 weights
            assert all({(a, b) for a, b in runs} == {(-0.5, 31.5), (31.5, 63.5), (63.5, 95.5), (95.5, 127.5)}
                       for _, runs in levels.values())
        seen[name] = decode_png(panel.figure.png)
    h = seen["per-tensor"].shape[0]
    for a, b in (("per-tensor", "per-channel"), ("per-channel", "per-group 32")):  # the lower plots change
        assert (seen[a][h // 2:] != seen[b][h // 2:]).any()
    panel.controls["granularity"].value = "per-tensor"


def test_levels_too_dense_to_draw_leave_the_grid_ends(panel):
    panel.controls["granularity"].value = "per-channel"
    panel.controls["bits"].value = 8
    for _, _, levels, ends in panel._slices:  # two red segments each: the ends of the row's grid
        assert _drawn(levels) == [] and len(_drawn(ends)) == 2 and ends.get_color()[0] > 0.5
    panel.controls["bits"].value = 4
    panel.controls["granularity"].value = "per-tensor"


def test_readout_storage_is_the_arithmetic():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    r = quantize_weights(w, 4, symmetric=True, granularity=PerGroup(32))
    assert r.storage.total_bytes == 8 * 64 // 2 + 16 * 2 and r.storage.bits_per_value == 4.5


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerGroup(32)], ids=repr)
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_weights_is_choose_qparams_plus_fake_quantize(granularity, symmetric):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2)) * 0.1
    for fmt in (INT8, INT4, IntFormat(2)):
        r = quantize_weights(w, fmt.bits, symmetric, granularity)
        expected = fake_quantize(w, *choose_qparams(w, fmt, granularity, symmetric), fmt)
        assert torch.equal(r.x_hat, expected)
        assert r.error == quantization_error(w, expected) and r.n_clipped == 0


def test_clipping_shrinks_the_grid_and_counts_clipped_weights():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    full = quantize_weights(w, 4)
    half = quantize_weights(w, 4, clipping=CLIPPINGS["0.5 x max"])
    pct = quantize_weights(w, 4, clipping=CLIPPINGS["99th percentile"])
    assert float(half.scale) == pytest.approx(float(full.scale) / 2, rel=1e-6)
    assert half.n_clipped > pct.n_clipped > 0 and full.n_clipped == 0
    with pytest.raises(ValueError, match="clipping rule 'median'"):
        quantize_weights(w, 4, clipping=("median", 1.0))


def test_error_table_lists_every_tensor_bit_width_and_granularity():
    table = error_table({"a": torch.ones(2, 32), "bb": torch.randn(4, 64)}, bits=(8, 2))
    lines = table.splitlines()
    assert lines[0].split() == ["tensor", "bits", *" ".join(GRANULARITIES).split()]
    assert [line.split()[:2] for line in lines[1:]] == [["a", "8"], ["a", "2"], ["bb", "8"], ["bb", "2"]]
