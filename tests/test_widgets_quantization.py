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
        assert f"of {2**bits}" in panel.readout.value
    panel.controls["bits"].value = start["bits"]


def test_invalid_settings_show_a_message_not_an_exception(panel):
    start = panel.values
    panel.controls["symmetric"].value = True
    panel.controls["bits"].value = 1
    assert "at least 2 bits" in panel.message.value and isinstance(panel.error, ValueError)
    panel.controls["symmetric"].value = False  # asymmetric 1-bit is valid: two levels, one of them 0
    assert panel.message.value == "" and "of 2" in panel.readout.value
    for name, value in start.items():
        panel.controls[name].value = value


def test_custom_weights_that_per_group_cannot_cut_give_a_message():
    small = quantization_explorer(torch.randn(4, 20, generator=torch.Generator().manual_seed(0)))
    small.controls["granularity"].value = "per-group 32"
    assert "group_size=32 does not divide the length 20" in small.message.value
    small.controls["granularity"].value = "per-channel"
    assert small.message.value == ""


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
