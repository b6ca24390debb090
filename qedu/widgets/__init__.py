"""Live widgets for the lessons, and the small base they share.

A lesson widget is a :class:`Panel`: named controls (sliders, dropdowns, toggles), a figure
rendered to PNG (:class:`LiveFigure`), a readout of numbers and a message line. Moving a
control calls one pure ``update(**values)`` function that redraws from the inputs alone; an
error inside it is shown in the message line instead of killing the widget. Because the figure
is a PNG produced by matplotlib's Agg backend, the same inputs always give byte-identical
pictures, the widget works in JupyterLab, Voila, Colab and VS Code, and tests can drive it
without a browser::

    panel = some_widget()
    panel.controls["bits"].value = 4     # runs update() synchronously
    panel.readout.value                   # the numbers now shown
    panel.figure.png                      # the picture now shown (bytes)
"""
from __future__ import annotations

import html
import io
import time
from typing import Callable, Mapping

import ipywidgets as W
import numpy as np
from matplotlib import image as mpl_image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["LiveFigure", "Panel"]


class LiveFigure:
    """A matplotlib figure outside pyplot, shown as a PNG in an ``ipywidgets.Image``.

    ``axes`` is what ``Figure.subplots`` returns. Change artists or redraw the axes, then call
    :meth:`render`.

    For fast widgets, mark the artists that move with :meth:`animate`: the first render draws
    everything else once (axes, ticks, labels: most of the drawing time) and keeps it as a
    background; later renders restore that background and draw only the animated artists on
    top ("blitting"). Only animated artists may change after the first render. Either way the
    same inputs give the same PNG bytes.
    """

    def __init__(self, nrows: int = 1, ncols: int = 1, figsize=(8.0, 3.2), dpi: int = 90, **subplot_kw):
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(nrows, ncols, **subplot_kw)
        self.image = W.Image(format="png", layout=W.Layout(width=f"{int(figsize[0] * dpi)}px", max_width="100%"))
        self.png = b""
        self.animated: list = []
        self._background = None

    def animate(self, *artists):
        """Mark artists as moving (drawn on every render, over a cached background)."""
        for artist in artists:
            artist.set_animated(True)
            self.animated.append(artist)
        return artists[0] if len(artists) == 1 else artists

    def render(self) -> bytes:
        """Draw the figure and show it; returns the PNG bytes."""
        canvas = self.figure.canvas
        if not self.animated:
            canvas.draw()
        elif self._background is None:
            canvas.draw()  # lays out and draws everything that is not animated
            self.figure.set_layout_engine("none")  # freeze the layout: the background must not move
            self._background = canvas.copy_from_bbox(self.figure.bbox)
            for artist in self.animated:
                self.figure.draw_artist(artist)
        else:
            canvas.restore_region(self._background)
            for artist in self.animated:
                self.figure.draw_artist(artist)
        buf = io.BytesIO()
        # fast zlib level: a live picture is sent once and replaced, so speed beats size here
        mpl_image.imsave(buf, np.asarray(canvas.buffer_rgba()), format="png", dpi=self.figure.dpi,
                         metadata={"Software": None}, pil_kwargs={"compress_level": 1})
        self.png = buf.getvalue()
        self.image.value = self.png
        return self.png


class Panel(W.VBox):
    """Controls + figure + readout + message, wired to one ``update(**values)`` function.

    Args:
        controls: name -> widget with a ``value``; the names are the keyword arguments of update.
        update: ``update(**values)`` redraws ``figure`` and returns the readout text (HTML
            string) or ``None``. It must depend only on its inputs.
        figure: the :class:`LiveFigure` that ``update`` draws into (optional).
        title: a line of HTML shown above the controls.

    After each update, ``last_update_ms`` holds how long it took (for benchmarks).
    """

    def __init__(self, controls: Mapping[str, W.Widget], update: Callable[..., str | None],
                 figure: LiveFigure | None = None, title: str = ""):
        self.controls = dict(controls)
        self._update_fn = update
        self.figure = figure
        self.readout = W.HTML()
        self.message = W.HTML()
        self.last_update_ms = float("nan")
        self.n_updates = 0
        children = []
        if title:
            children.append(W.HTML(title))
        children.append(W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")))
        if figure is not None:
            children.append(figure.image)
        children += [self.readout, self.message]
        super().__init__(children)
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        self.update()

    @property
    def values(self) -> dict:
        return {name: w.value for name, w in self.controls.items()}

    def _on_change(self, _change) -> None:
        self.update()

    def update(self) -> None:
        """Recompute everything from the current control values."""
        start = time.perf_counter()
        try:
            text = self._update_fn(**self.values)
        except Exception as err:  # show it in the widget; never let a callback die silently
            self.message.value = (
                f"<span style='color:#b00020'><b>{html.escape(type(err).__name__)}:</b> "
                f"{html.escape(str(err))}</span>"
            )
            self.error = err
        else:
            self.message.value = ""
            self.error = None
            if text is not None:
                self.readout.value = text
            if self.figure is not None:
                self.figure.render()
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        self.n_updates += 1
