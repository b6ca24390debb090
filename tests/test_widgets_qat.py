"""Lesson 05's widget, driven headless: controls never train, bits show PTQ at once, Train trains
with a redraw per epoch, errors stay inside the widget, same inputs give the same picture."""
from __future__ import annotations

import pytest

from qedu.data import load_digits
from qedu.models import evaluate, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.widgets import qat as qat_widget
from qedu.widgets.qat import BITS, METHODS, ptq_accuracy, qat_config, qat_trainer, run_method


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pretrained("mlp", seed=0, epochs=5, cache_dir=tmp_path_factory.mktemp("qedu-cache"))


@pytest.fixture()
def panel(model, data):
    return qat_trainer(model, data, max_epochs=4)


def test_ptq_baseline_is_qedu_ptq(model, data):
    for bits in ("4 bits", "3 bits", "2 bits"):
        expected = evaluate(quantize_model(model, PTQConfig(weight_bits=BITS[bits][0], act_bits=None)), data.x_test, data.y_test)
        assert ptq_accuracy(model, data, bits) == expected


def test_config_labels_and_their_errors():
    assert qat_config("ternary", "LSQ").weight_format().levels == 3
    assert qat_config("3 bits", "PTQ") == qat_config("3 bits", "QAT-minmax")
    with pytest.raises(ValueError, match="bits='1 bit' is not one of"):
        qat_config("1 bit", "LSQ")
    with pytest.raises(ValueError, match="method='AdaRound' is not one of"):
        qat_config("2 bits", "AdaRound")


def test_moving_controls_never_trains_but_bits_show_ptq_at_once(panel, model, data, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a control change started training")

    monkeypatch.setattr(qat_widget, "train_qat", no_training)
    for bits in BITS:
        panel.controls["bits"].value = bits
        assert f"at {bits}: <b>{100 * ptq_accuracy(model, data, bits):.1f} %</b>" in panel.readout.value
        assert "press <b>Train</b>" in panel.readout.value and panel.error is None
    for method in METHODS:
        panel.controls["method"].value = method
    panel.controls["epochs"].value = 2
    assert panel.runs == {} and panel.error is None


def test_train_button_trains_redraws_each_epoch_and_reports_next_to_ptq(panel):
    panel.controls["bits"].value = "2 bits"
    panel.controls["method"].value = "QAT-minmax"
    panel.controls["epochs"].value = 3
    renders = []
    original = panel.figure.render
    panel.figure.render = lambda: renders.append(1) or original()
    panel.train_button.click()
    run = panel.runs["2 bits", "QAT-minmax", 3]
    assert len(run.test_acc) == 3 and len(renders) == 4  # one redraw per epoch, one at the end
    assert panel.progress.value == 3 and "done in" in panel.status.value and not panel.train_button.disabled
    assert f"QAT-minmax, 3 epoch(s): {100 * run.final_acc:.1f} %" in panel.readout.value
    assert "points over PTQ" in panel.readout.value and "s per epoch" in panel.readout.value


def test_same_inputs_same_picture_and_finished_runs_come_back(panel):
    panel.controls["method"].value = "LSQ"
    panel.controls["epochs"].value = 1
    panel.train_button.click()
    trained = panel.figure.png
    panel.controls["bits"].value = "ternary"
    assert panel.figure.png != trained
    panel.controls["bits"].value = "2 bits"
    assert panel.figure.png == trained and "LSQ, 1 epoch(s)" in panel.readout.value


def test_ptq_method_needs_no_training(panel):
    panel.controls["method"].value = "PTQ"
    panel.train_button.click()
    assert "PTQ needs no training" in panel.readout.value
    assert panel.runs["2 bits", "PTQ", panel.values["epochs"]].test_acc == ()


def test_an_error_while_training_is_shown_in_the_widget(panel, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (pretend)")

    monkeypatch.setattr(qat_widget, "run_method", broken)
    panel.train_button.click()
    assert "RuntimeError" in panel.message.value and "out of memory" in panel.message.value
    assert not panel.train_button.disabled


def test_run_method_reports_epochs_and_converted_accuracy(model, data):
    run = run_method(model, data, "ternary", "LSQ", epochs=1, seed=0)
    assert len(run.test_acc) == len(run.train_loss) == len(run.epoch_seconds) == 1
    assert run.final_acc == run.test_acc[-1]  # the converted model computes what QAT evaluated
