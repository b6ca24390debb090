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
    assert panel.progress.value == 3 and not panel.train_button.disabled
    seconds = sum(run.epoch_seconds)  # issue 15 item 6: the status and the readout give the same time
    assert panel.status.value == f"done: 3 epochs in {seconds:.2f} s"
    assert f"training took {seconds:.2f} s" in panel.readout.value
    assert f"QAT-minmax, 3 epochs: {100 * run.final_acc:.1f} %" in panel.readout.value
    assert "points over PTQ" in panel.readout.value and "s per epoch" in panel.readout.value


def test_same_inputs_same_picture_and_finished_runs_come_back(panel):
    panel.controls["method"].value = "LSQ"
    panel.controls["epochs"].value = 1
    panel.train_button.click()
    trained = panel.figure.png
    panel.controls["bits"].value = "ternary"
    assert panel.figure.png != trained
    panel.controls["bits"].value = "2 bits"
    assert panel.figure.png == trained and "LSQ, 1 epoch:" in panel.readout.value


def test_ptq_method_needs_no_training(panel):
    """Issue 15 item 6: "press Train" was shown for PTQ."""
    panel.controls["method"].value = "PTQ"
    assert panel.train_button.disabled and panel.controls["epochs"].disabled and "PTQ does not train" in panel.hint.value
    assert "PTQ needs no training" in panel.readout.value and "Train" not in panel.readout.value
    assert "no training" in panel.figure.axes[1].title.get_text()
    panel.train_button.click()  # even a click that gets through trains nothing
    assert panel.runs == {}
    panel.controls["method"].value = "LSQ"
    assert not panel.train_button.disabled and not panel.controls["epochs"].disabled


def test_progress_and_status_always_describe_the_setting_shown(panel):
    """Issue 15 item 6: a full progress bar and "done in 0.5 s" stayed beside "no training yet"."""
    panel.controls["method"].value = "QAT-minmax"
    panel.controls["epochs"].value = 1
    panel.train_button.click()
    assert panel.progress.value == panel.progress.max == 1 and panel.status.value.startswith("done: 1 epoch in")
    panel.controls["method"].value = "LSQ"  # not trained: empty bar, no status
    assert panel.progress.value == 0 and panel.status.value == ""
    assert panel.figure.axes[0].title.get_text() == "no training yet"
    panel.controls["method"].value = "QAT-minmax"  # the finished run comes back, with its bar and time
    assert panel.progress.value == 1 and panel.status.value.startswith("done: 1 epoch in")


def test_no_two_controls_share_a_name_and_toggle_labels_fit(panel):
    """Issue 15 item 6: two controls were called "epochs", and "QAT-minmax" was cut off."""
    names = [w.description for w in panel.controls.values()] + [panel.progress.description]
    assert len(names) == len(set(names))
    assert all(panel.controls[k].layout.display == "flex" for k in ("bits", "method"))  # label beside buttons (browser test)
    width = int(panel.controls["method"].style.button_width.rstrip("px"))
    assert width >= 8 * max(len(m) for m in METHODS)  # about 8 px per character at the widget font


def test_an_error_while_training_is_shown_in_the_widget(panel, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (pretend)")

    monkeypatch.setattr(qat_widget, "run_method", broken)
    panel.train_button.click()
    assert "RuntimeError" in panel.message.value and "out of memory" in panel.message.value
    assert not panel.train_button.disabled
    assert not panel.current and "Not current" in panel.readout.value and panel.status.value == "training failed"


def test_run_method_reports_epochs_and_converted_accuracy(model, data):
    run = run_method(model, data, "ternary", "LSQ", epochs=1, seed=0)
    assert len(run.test_acc) == len(run.train_loss) == len(run.epoch_seconds) == 1
    assert run.final_acc == run.test_acc[-1]  # the converted model computes what QAT evaluated
