"""Lesson 05's widget: train the digits MLP through its quantizer, live, and compare with PTQ.

Pure functions do the work and the widget only draws: :func:`qat_config` (a bit-width label and
a method -> :class:`~qedu.qat.QATConfig`), :func:`ptq_accuracy` (weight-only min/max PTQ: zero
epochs of QAT) and :func:`run_method` (prepare, train, convert, evaluate -> :class:`QATRun`).
:func:`qat_trainer` wraps them: moving a control only redraws (the PTQ line for the chosen bits
appears at once); the **Train** button trains, redrawing the loss and accuracy after every epoch.

>>> qat_config("ternary", "LSQ").name
'W2n lsq per-channel'
"""
from __future__ import annotations

from typing import NamedTuple

import ipywidgets as W
import numpy as np

from qedu.models import evaluate, pretrained
from qedu.qat import QATConfig, convert, prepare_qat, train_qat
from qedu.widgets import LiveFigure, Panel, plural, toggle_row

__all__ = ["BITS", "METHODS", "qat_config", "ptq_accuracy", "start_accuracy", "QATRun", "run_method", "qat_trainer"]

BITS = {"4 bits": (4, False), "3 bits": (3, False), "2 bits": (2, False), "ternary": (2, True)}  # (bits, narrow)
METHODS = ("PTQ", "QAT-minmax", "LSQ")


def qat_config(bits: str, method: str) -> QATConfig:
    """The weight-only config for a bit-width label of :data:`BITS` and a method of :data:`METHODS`.

    PTQ and QAT-minmax share a config (min/max scales, per channel); PTQ just never trains it.
    """
    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is not one of {list(BITS)}.")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {list(METHODS)}.")
    n_bits, narrow = BITS[bits]
    return QATConfig(weight_bits=n_bits, weight_narrow_range=narrow, method="lsq" if method == "LSQ" else "minmax")


def ptq_accuracy(model, data, bits: str) -> float:
    """Test accuracy of weight-only min/max PTQ at ``bits``: ``convert(prepare_qat(...))`` without
    training (for 2-4 bits the same numbers as :func:`qedu.ptq.quantize_model`; tests/test_qat.py)."""
    return evaluate(convert(prepare_qat(model, qat_config(bits, "PTQ"))), data.x_test, data.y_test)


def start_accuracy(model, data, bits: str, method: str) -> float:
    """Test accuracy of ``method``'s quantized model before any training (epoch 0)."""
    return evaluate(prepare_qat(model, qat_config(bits, method)), data.x_test, data.y_test)


class QATRun(NamedTuple):
    """One run: accuracy before training (epoch 0), then per epoch, and the converted model's accuracy."""

    start_acc: float
    test_acc: tuple
    train_loss: tuple
    epoch_seconds: tuple
    final_acc: float


def run_method(model, data, bits: str, method: str, epochs: int, seed: int = 0, callback=None,
               progress: bool = False) -> QATRun:
    """Quantize ``model``'s weights at ``bits`` with ``method`` and train ``epochs`` epochs (PTQ: none).

    ``callback(epoch, metrics)`` runs after every epoch (see :func:`qedu.qat.train_qat`).
    """
    prepared = prepare_qat(model, qat_config(bits, method))
    start = evaluate(prepared, data.x_test, data.y_test)  # start_accuracy, on the model we go on to train
    if method == "PTQ":
        return QATRun(start, (), (), (), start)
    history = train_qat(prepared, data, epochs=epochs, seed=seed, callback=callback, progress=progress)
    final = evaluate(convert(prepared), data.x_test, data.y_test)
    return QATRun(start, tuple(history.test_acc), tuple(history.train_loss), tuple(history.epoch_seconds), final)


def qat_trainer(model=None, data=None, seed: int = 0, max_epochs: int = 10) -> Panel:
    """Bits, method and epochs, and a Train button: loss and accuracy per epoch, next to PTQ.

    Args:
        model: the float model (default ``pretrained("mlp", seed)``). data: the
            :class:`~qedu.data.Digits` split (default ``load_digits(seed=0)``).
        seed: training seed. max_epochs: the largest choice of epochs.

    The returned :class:`~qedu.widgets.Panel` also has ``train_button``, ``progress`` and
    ``runs`` (finished runs by ``(bits, method, epochs)``), so tests can press Train headless.
    """
    from qedu.data import load_digits

    model = pretrained("mlp", seed=seed) if model is None else model
    data = load_digits(seed=0) if data is None else data
    float_acc = evaluate(model, data.x_test, data.y_test)
    ptq: dict = {}  # bits -> accuracy of min/max PTQ
    starts: dict = {}  # (bits, method) -> accuracy before training
    runs: dict = {}  # (bits, method, epochs) -> QATRun

    fig = LiveFigure(1, 2, figsize=(8.4, 3.0))
    ax_loss, ax_acc = fig.axes
    ax_loss.set(yscale="log", ylim=(0.01, 2.0), xlim=(-0.3, max_epochs + 0.3), xlabel="epoch", ylabel="training loss")
    ax_acc.set(ylim=(40, 100), xlim=(-0.3, max_epochs + 0.3), xlabel="epoch", ylabel="test accuracy (%)")
    ax_acc.axhline(100 * float_acc, color="0.5", ls=":", lw=1.2, label=f"float32 {100 * float_acc:.1f} %")
    ptq_line = ax_acc.axhline(np.nan, color="C3", ls="--", lw=1.2, label="PTQ min/max")
    (acc_line,) = ax_acc.plot([], [], "o-", color="C0", ms=4, label="this method")
    (loss_line,) = ax_loss.plot([], [], "o-", color="C1", ms=4)
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_loss.set_title(" ", fontsize=10)
    ax_acc.set_title(" ", fontsize=10)
    fig.animate(ptq_line, acc_line, loss_line, ax_loss.title, ax_acc.title)

    def baseline(bits):
        if bits not in ptq:
            ptq[bits] = ptq_accuracy(model, data, bits)
        return ptq[bits]

    def draw(start, accs, losses, title):
        acc_line.set_data(np.arange(len(accs) + 1), 100 * np.array((start, *accs)))
        loss_line.set_data(np.arange(1, len(losses) + 1), np.array(losses))
        ax_acc.title.set_text(title)
        ax_loss.title.set_text(f"{plural(len(losses), 'epoch')} trained" if losses else "no training yet")

    button = W.Button(description="Train", button_style="primary", icon="play")
    progress = W.IntProgress(value=0, min=0, max=1, description="trained", layout=W.Layout(width="220px"))
    status = W.HTML()

    def show_progress(run, epochs) -> None:
        """The progress bar and status line always describe the setting shown, never a previous one."""
        progress.max = max(epochs, 1)
        progress.value = len(run.test_acc) if run is not None else 0
        status.value = "" if run is None or not run.epoch_seconds else (
            f"done: {plural(len(run.epoch_seconds), 'epoch')} in {sum(run.epoch_seconds):.2f} s")

    def update(bits, method, epochs) -> str:
        base = baseline(bits)
        ptq_line.set_ydata([100 * base] * 2)
        button.disabled = method == "PTQ"  # PTQ never trains
        head = f"PTQ (min/max, per channel) at {bits}: <b>{100 * base:.1f} %</b> (float32 {100 * float_acc:.1f} %)"
        if method == "PTQ":
            show_progress(None, epochs)
            draw(base, (), (), f"PTQ at {bits}: {100 * base:.1f} %, no training")
            return f"{head}. PTQ needs no training: the red line is its accuracy."
        run = runs.get((bits, method, epochs))
        show_progress(run, epochs)
        if run is None:
            if (bits, method) not in starts:  # min/max methods start at PTQ; LSQ at its (MSE) initial steps
                starts[bits, method] = base if method != "LSQ" else start_accuracy(model, data, bits, method)
            draw(starts[bits, method], (), (), f"{method} at {bits}: press Train")
            return (f"{head}. {method} starts at {100 * starts[bits, method]:.1f} %; press <b>Train</b> for "
                    f"{plural(epochs, 'epoch')}.")
        draw(run.start_acc, run.test_acc, run.train_loss, f"{method} at {bits}: {100 * run.final_acc:.1f} %")
        seconds = sum(run.epoch_seconds)
        return (f"{head}. <b>{method}, {plural(epochs, 'epoch')}: {100 * run.final_acc:.1f} %</b> "
                f"({100 * (run.final_acc - base):+.1f} points over PTQ), from {100 * run.start_acc:.1f} % before training; "
                f"training took {seconds:.2f} s ({seconds / max(len(run.epoch_seconds), 1):.2f} s per epoch).")

    # toggle_row(): each label beside its buttons; 112 px fits "QAT-minmax" whole
    controls = {
        "bits": W.ToggleButtons(options=list(BITS), value="2 bits", description="weights",
                                style={"button_width": "72px", "description_width": "initial"}, layout=toggle_row()),
        "method": W.ToggleButtons(options=list(METHODS), value="QAT-minmax", description="method",
                                  style={"button_width": "112px", "description_width": "initial"}, layout=toggle_row()),
        "epochs": W.IntSlider(value=3, min=1, max=max_epochs, description="epochs", continuous_update=False),
    }

    def inactive(method, **_):
        return {"epochs": "PTQ does not train"} if method == "PTQ" else {}

    panel = Panel(controls, update, fig, inactive=inactive,
                  title="<b>Train through the quantizer</b>: pick the weights' bits and a method, "
                  "then press <b>Train</b>. Moving a control never trains; the red line is PTQ at those bits.")
    panel.children = (*panel.children[:2], W.HBox([button, progress, status]), *panel.children[2:])

    def on_train(_button) -> None:
        bits, method, epochs = panel.values["bits"], panel.values["method"], panel.values["epochs"]
        if method == "PTQ":
            return
        accs, losses = [], []
        button.disabled = True
        progress.max, progress.value = max(epochs, 1), 0
        status.value = ""

        def each_epoch(epoch, metrics):
            accs.append(metrics["test_acc"])
            losses.append(metrics["train_loss"])
            draw(starts.get((bits, method), accs[0]), accs, losses, f"{method} at {bits}: training...")
            fig.render()
            progress.value = epoch
            status.value = f"epoch {epoch}/{epochs}: {100 * metrics['test_acc']:.1f} %, {metrics['seconds']:.2f} s"

        try:
            runs[bits, method, epochs] = run_method(model, data, bits, method, epochs, seed, each_epoch)
            panel.update()  # the readout, the picture, the progress bar and the status: all from this run
        except Exception as err:  # show it in the widget; never let a callback die silently
            panel.show_error(err)  # the half-drawn curves are marked not current
            progress.value = 0
            status.value = "training failed"
        finally:
            button.disabled = panel.values["method"] == "PTQ"

    button.on_click(on_train)
    panel.train_button, panel.progress, panel.status, panel.runs = button, progress, status, runs
    return panel
