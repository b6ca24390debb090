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
    panel.figure.png                      # the last picture drawn (bytes)
    panel.current                         # False while an invalid setting is shown as "not current"
"""
from __future__ import annotations

import hashlib
import html
import struct
import time
import zlib
from pathlib import Path
from typing import Callable, Mapping

import ipywidgets as W
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

__all__ = ["LiveFigure", "StackedFigure", "Panel", "encode_png", "decode_png", "not_current_png", "plain_log_ticks",
           "plural", "toggle_row", "BUSY_HTML"]


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the word, singular or plural: ``plural(1, "bit")`` is "1 bit", ``plural(4, "bit")`` "4 bits".

    >>> plural(1, "image"), plural(3, "epoch"), plural(2, "class", "classes")
    ('1 image', '3 epochs', '2 classes')
    """
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def toggle_row() -> W.Layout:
    """The layout for a ``ToggleButtons``: its label beside its buttons, on one line.

    ipywidgets 8 lays a ToggleButtons out as a block, so its label sits on a line of its own
    above the buttons; a flex row keeps them together (tests/test_browser.py checks it).
    """
    return W.Layout(display="flex", flex_flow="row", align_items="center", width="max-content", margin="0 12px 0 0")


def plain_log_ticks(axis, numticks: int = 6) -> None:
    """A few plain-text labels (1e-05, 0.01, 100, 1e+06) and no minor ticks on a log-scale axis.

    Matplotlib's default log axis draws minor ticks and typesets each label as mathtext
    (10^{-5}), which makes a live figure several times slower to redraw.
    """
    axis.set_major_locator(LogLocator(numticks=numticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def encode_png(rgba: np.ndarray, level: int = 1) -> bytes:
    r"""Encode an (height, width, 4) uint8 RGBA picture as PNG bytes, quickly.

    A PNG is a signature and three chunks: IHDR (size, 8-bit RGBA), IDAT (the rows, each
    prefixed by a filter byte, here 0 = "none", deflated with zlib) and IEND. Skipping PNG's
    per-row filter search and using zlib's fastest level makes this ~3x faster than Pillow's
    encoder for a widget's figure (about 3 ms vs 10 ms at 720x400) at a similar size, since
    plots are mostly flat colour. Deterministic: the same pixels give the same bytes.

    >>> png = encode_png(np.zeros((2, 3, 4), np.uint8))
    >>> png[:8], png[12:16]
    (b'\x89PNG\r\n\x1a\n', b'IHDR')
    """
    if not (isinstance(rgba, np.ndarray) and rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4):
        raise TypeError("rgba must be a uint8 numpy array of shape (height, width, 4), "
                        f"got {type(rgba).__name__} {getattr(rgba, 'dtype', '')} {getattr(rgba, 'shape', '')}.")
    h, w, _ = rgba.shape
    rows = np.zeros((h, 1 + 4 * w), np.uint8)  # column 0: filter type 0 for every row
    rows[:, 1:] = rgba.reshape(h, 4 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)  # 8 bits per channel, colour type 6 = RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, level))
            + chunk(b"IEND", b""))


_TEXT_CACHE_SIZE = 128  # patches per figure (each a few KiB): plenty for the titles a widget cycles through
_PAD = 3  # pixels around a text's extent that its antialiased glyphs may touch


def _draw_animated(figure: Figure, artists, cache: dict) -> None:
    """Draw ``artists`` in order over the figure's canvas, reusing the pixels of texts drawn before.

    Drawing a text (laying out and rasterising its glyphs) takes 1-2 ms, often the slowest part of
    a widget's redraw, while a title cycles through a handful of strings. So for each animated
    :class:`~matplotlib.text.Text` the pixels of its box are kept after drawing, keyed on the
    text, its style and position and the exact pixels under it before drawing; the next time the
    same text lands on the same pixels, they are pasted back instead. The result is the same
    bytes as drawing it (tests/test_widgets.py holds this).
    """
    pixels = None
    for artist in artists:
        if not (isinstance(artist, Text) and artist.get_visible() and artist.get_text()
                and artist.get_bbox_patch() is None and not artist.get_path_effects()):
            figure.draw_artist(artist)
            continue
        if pixels is None:
            pixels = np.asarray(figure.canvas.buffer_rgba())  # a writable view of the canvas
        box = artist.get_window_extent(figure.canvas.get_renderer())
        h, w = pixels.shape[:2]
        x0, x1 = max(int(np.floor(box.x0)) - _PAD, 0), min(int(np.ceil(box.x1)) + _PAD, w)
        y0, y1 = max(h - int(np.ceil(box.y1)) - _PAD, 0), min(h - int(np.floor(box.y0)) + _PAD, h)
        if x0 >= x1 or y0 >= y1:
            figure.draw_artist(artist)
            continue
        clip = artist.get_clip_box().bounds if artist.get_clip_on() and artist.get_clip_box() is not None else None
        key = (id(artist), artist.get_text(), x0, x1, y0, y1, to_rgba(artist.get_color(), artist.get_alpha()),
               hash(artist.get_fontproperties()), artist.get_rotation(), artist.get_horizontalalignment(),
               artist.get_verticalalignment(), artist.get_zorder(), clip,
               hashlib.blake2b(pixels[y0:y1, x0:x1].tobytes(), digest_size=16).digest())
        patch = cache.get(key)
        if patch is None:
            figure.draw_artist(artist)
            if len(cache) >= _TEXT_CACHE_SIZE:
                cache.clear()
            cache[key] = pixels[y0:y1, x0:x1].copy()
        else:
            pixels[y0:y1, x0:x1] = patch


class LiveFigure:
    """A matplotlib figure outside pyplot, shown as a PNG in an ``ipywidgets.Image``.

    ``axes`` is what ``Figure.subplots`` returns (or, with ``mosaic``, ``Figure.subplot_mosaic``).
    Change artists or redraw the axes, then call :meth:`render`.

    For fast widgets, mark the artists that move with :meth:`animate`: the first render draws
    everything else once (axes, ticks, labels: most of the drawing time) and keeps it as a
    background; later renders restore that background and draw only the animated artists on
    top ("blitting"). Only animated artists may change after the first render. Either way the
    same inputs give the same PNG bytes.
    """

    def __init__(self, nrows: int = 1, ncols: int = 1, figsize=(8.0, 3.2), dpi: int = 90, mosaic=None, **subplot_kw):
        self.figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.figure)
        if mosaic is None:
            self.axes = self.figure.subplots(nrows, ncols, **subplot_kw)
        else:  # a dict of named axes, e.g. mosaic="AAB;CDE" (see Figure.subplot_mosaic)
            self.axes = self.figure.subplot_mosaic(mosaic, **subplot_kw)
        self.image = W.Image(format="png", layout=W.Layout(width=f"{int(figsize[0] * dpi)}px", max_width="100%"))
        self.png = b""
        self.animated: list = []
        self._background = None
        self._texts: dict = {}  # see _draw_animated

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
            _draw_animated(self.figure, self.animated, self._texts)
        else:
            canvas.restore_region(self._background)
            _draw_animated(self.figure, self.animated, self._texts)
        self.png = encode_png(np.asarray(canvas.buffer_rgba()))
        self.image.value = self.png
        return self.png


class StackedFigure:
    """Several matplotlib figures stacked top to bottom and shown as one PNG.

    For widgets where each control changes only part of the picture: ``update`` says which
    strips it changed with :meth:`stale`, and :meth:`render` redraws only those, reusing the
    pixels of the others. A strip can also mark moving artists with :meth:`animate`;
    ``stale(i, background=False)`` then redraws just those over the strip's cached background
    (axes, ticks, labels: the slow part). Animated artists are always drawn over a background
    drawn without them, so the picture depends only on the current state of the artists, not
    on the order of the moves that led there: the same inputs give the same PNG bytes.

    ``figures[i]`` is strip ``i``'s :class:`~matplotlib.figure.Figure`; add axes to it (with
    fixed margins: strips have no layout engine, so the cached parts cannot move).
    """

    def __init__(self, heights, width: float = 9.0, dpi: int = 80):
        if not heights or any(h <= 0 for h in heights):
            raise ValueError(f"heights must be a non-empty list of positive sizes in inches, got {heights!r}.")
        self.figures = [Figure(figsize=(width, h), dpi=dpi) for h in heights]
        for fig in self.figures:
            FigureCanvasAgg(fig)
        self.image = W.Image(format="png", layout=W.Layout(width=f"{int(width * dpi)}px", max_width="100%"))
        self.png = b""
        self.animated: list[list] = [[] for _ in heights]
        self._pixels: list[np.ndarray | None] = [None] * len(heights)
        self._background: list = [None] * len(heights)
        self._stale = ["full"] * len(heights)
        self._texts: list[dict] = [{} for _ in heights]  # see _draw_animated

    def animate(self, strip: int, *artists):
        """Mark artists of strip ``strip`` as moving (drawn on every render of it, over its background)."""
        for artist in artists:
            artist.set_animated(True)
            self.animated[strip].append(artist)
        return artists[0] if len(artists) == 1 else artists

    def stale(self, *strips: int, background: bool = True) -> None:
        """Mark strips for redrawing at the next render: all of it, or (``background=False``) its animated artists."""
        for i in strips:
            if background or self._background[i] is None:
                self._stale[i] = "full"
            elif self._stale[i] is None:
                self._stale[i] = "animated"

    def render(self) -> bytes:
        """Redraw the stale strips, stack all strips and show them; returns the PNG bytes."""
        for i, fig in enumerate(self.figures):
            if self._stale[i] is None:
                continue
            canvas = fig.canvas
            if self._stale[i] == "full":
                canvas.draw()  # draws everything but the animated artists
                self._background[i] = canvas.copy_from_bbox(fig.bbox)
            else:
                canvas.restore_region(self._background[i])
            _draw_animated(fig, self.animated[i], self._texts[i])
            self._pixels[i] = np.array(canvas.buffer_rgba())  # a copy: the canvas is drawn over later
            self._stale[i] = None
        self.png = encode_png(np.concatenate(self._pixels, axis=0))
        self.image.value = self.png
        return self.png


_ERROR_STYLE = "color:#b00020"
# Text widgets in ipywidgets inherit a 28 px line height (one control's height), which
# double-spaces a readout of several lines: every text the panel shows sets its own.
_TEXT = "<div style='line-height:1.35'>{}</div>"
# The busy sign is sent at the start of every update but fades in only after 0.3 s, so quick
# updates never flicker and slow ones (a first visit that trains or calibrates) say so.
# A CSS spinner, not an emoji: an hourglass glyph shows as an empty box without an emoji font.
BUSY_HTML = ("<style>@keyframes qedu-busy-in {from {opacity: 0} to {opacity: 1}}"
             "@keyframes qedu-spin {to {transform: rotate(360deg)}}</style>"
             "<span class='qedu-busy' style='animation: qedu-busy-in 0.1s linear 0.3s both; color:#555'>"
             "<span style='display:inline-block; width:0.8em; height:0.8em; border:2px solid #999; "
             "border-top-color:transparent; border-radius:50%; animation: qedu-spin 0.8s linear infinite; "
             "vertical-align:-0.1em'></span> computing&hellip;</span>")


def decode_png(png: bytes) -> np.ndarray:
    """The (height, width, 4) RGBA pixels of a PNG made by :func:`encode_png` (filter 0 on every row).

    >>> rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    >>> bool((decode_png(encode_png(rgba)) == rgba).all())
    True
    """
    w, h = struct.unpack(">II", png[16:24])
    n = struct.unpack(">I", png[33:37])[0]  # the IDAT chunk follows the 25-byte IHDR chunk
    rows = np.frombuffer(zlib.decompress(png[41:41 + n]), np.uint8).reshape(h, 1 + 4 * w)
    return rows[:, 1:].reshape(h, w, 4)


def not_current_png(png: bytes, label: str = "not current: fix the setting above") -> bytes:
    """A faded copy of a figure's PNG with ``label`` written across it.

    Shown while the controls ask for something the widget cannot draw, so the picture of the
    last valid setting can never pass for the current one.
    """
    from PIL import Image, ImageDraw, ImageFont
    import matplotlib

    rgba = decode_png(png).astype(np.float32)
    faded = (0.3 * rgba + 0.7 * 255).astype(np.uint8)
    faded[..., 3] = 255
    img = Image.fromarray(faded, "RGBA")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"), 22)
    box = draw.textbbox((0, 0), label, font=font)
    x, y = (img.width - (box[2] - box[0])) // 2, (img.height - (box[3] - box[1])) // 2
    draw.rectangle((x - 12, y - 8, x + box[2] - box[0] + 12, y + box[3] - box[1] + 12), fill=(255, 255, 255, 255),
                   outline=(176, 0, 32, 255), width=2)
    draw.text((x, y), label, fill=(176, 0, 32, 255), font=font)
    return encode_png(np.asarray(img))


class Panel(W.VBox):
    """Controls + figure + readout + message, wired to one ``update(**values)`` function.

    Args:
        controls: name -> widget with a ``value``; the names are the keyword arguments of update.
        update: ``update(**values)`` redraws ``figure`` and returns the readout text (HTML
            string) or ``None``. It must depend only on its inputs.
        figure: the :class:`LiveFigure` or :class:`StackedFigure` that ``update`` draws into (optional).
        title: a line of HTML shown above the controls.
        inactive: ``inactive(**values)`` returns ``{name: why}`` for the controls that do nothing
            with these values; they are disabled and ``why`` is shown as a hint under the controls.

    When ``update`` raises, the message line shows the error and the figure and readout stay
    on the last valid setting but visibly say they are not current (the figure faded with a
    label across it, the readout struck through); ``panel.current`` is then False. Every update
    sends a busy sign that appears only if the update takes more than 0.3 s.

    After each update, ``last_update_ms`` holds how long it took (for benchmarks).
    """

    def __init__(self, controls: Mapping[str, W.Widget], update: Callable[..., str | None],
                 figure: LiveFigure | StackedFigure | None = None, title: str = "",
                 inactive: Callable[..., Mapping[str, str]] | None = None):
        self.controls = dict(controls)
        self._update_fn = update
        self._inactive_fn = inactive
        self.figure = figure
        self.readout = W.HTML()
        self.message = W.HTML()
        self.hint = W.HTML()
        self.busy = W.HTML()
        self.last_update_ms = float("nan")
        self.n_updates = 0
        self.current = True
        self.error = None
        self._readout_text = ""
        self._holding = 0
        self._missed = False
        children = []
        if title:
            children.append(W.HTML(_TEXT.format(title)))
        children.append(W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")))
        children.append(W.HBox([self.hint, self.busy]))
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
        if self._holding:
            self._missed = True
        else:
            self.update()

    def hold(self, update: bool = True):
        """A context manager: set several controls, then update once (``with panel.hold(): ...``).

        With ``update=False`` the changes made inside update nothing: for an observer that sets
        other controls just before the panel's own observer updates anyway.
        """
        panel = self

        class _Hold:
            def __enter__(self):
                panel._holding += 1

            def __exit__(self, *exc):
                panel._holding -= 1
                if not panel._holding and panel._missed:
                    panel._missed = False
                    if update:
                        panel.update()

        return _Hold()

    def _apply_inactive(self, values: dict) -> None:
        reasons = dict(self._inactive_fn(**values)) if self._inactive_fn is not None else {}
        for name, widget in self.controls.items():
            widget.disabled = name in reasons
        hint = " &middot; ".join(f"<i>{html.escape(getattr(self.controls[n], 'description', '') or n)}</i>: "
                                 f"{why}" for n, why in reasons.items())
        self.hint.value = _TEXT.format(f"<span style='color:#666'>{hint}</span>") if hint else ""

    def update(self) -> None:
        """Recompute everything from the current control values."""
        start = time.perf_counter()
        self.busy.value = BUSY_HTML
        try:
            values = self.values
            self._apply_inactive(values)
            text = self._update_fn(**values)
            if self.figure is not None:
                self.figure.render()
        except Exception as err:  # show it in the widget; never let a callback die silently
            self.show_error(err)
        else:
            self.message.value = ""
            self.error = None
            self.current = True
            if text is not None:
                self._readout_text = text
            self.readout.value = _TEXT.format(self._readout_text) if self._readout_text else ""
        finally:
            self.busy.value = ""
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        self.n_updates += 1

    def show_error(self, err: Exception) -> None:
        """Show ``err`` in the message line, and the figure and readout as not current."""
        self.message.value = _TEXT.format(
            f"<span style='{_ERROR_STYLE}'><b>{html.escape(type(err).__name__)}:</b> {html.escape(str(err))}</span>")
        self.error = err
        self._show_not_current()

    def _show_not_current(self) -> None:
        self.current = False
        if self.figure is not None and self.figure.png:
            self.figure.image.value = not_current_png(self.figure.png)
        self.readout.value = _TEXT.format(
            f"<b style='{_ERROR_STYLE}'>Not current</b> (the setting above cannot be shown; this is the last one "
            f"that could): <span style='opacity:0.55'><s>{self._readout_text}</s></span>")
