#!/usr/bin/env python
"""Browser-side widget latency: from a control's change in the page to the new figure, decoded.

Opens each lesson in a real JupyterLab in headless Chromium (the harness of
tests/browser.py: a server on 127.0.0.1 over a temporary copy of the notebooks, stopped at the
end), runs all cells, then moves one main control of the lesson's first widget back and forth.
For each move, a script in the page notes the time of the user event (key press, click or
`change`), then the moment the widget's <img> gets its new PNG, then the moment that image is
decoded and ready to paint. That round trip is what a learner feels: the browser sends the new
value to the kernel, the kernel redraws (see widgets.md for that part alone), the PNG travels
back over the websocket and the browser decodes it.

Needs Chromium (/usr/bin/chromium or QEDU_CHROMIUM) and the playwright package.

Every lesson in lessons/ is measured; MOVES below only says which control to move where the
default (the first dropdown of the first widget, or its first slider if it has none) is not the
telling one.

Usage: python benchmarks/browser_latency.py [--moves N]  ->  benchmarks/results/browser_latency.{json,md}
       python benchmarks/browser_latency.py --moves 2 --only 12   (those lessons; prints, writes nothing)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import lesson_slugs, machine, main_widget, summary, write  # noqa: E402

# lesson -> (what to move, its label, the two settings to alternate between). Kinds: "slider"
# (two keys pressed on its handle), "select" (two options of a dropdown; None: another option and the current one),
# "toggle" (two buttons of a ToggleButtons). A lesson not listed gets DEFAULT_MOVE.
DEFAULT_MOVE = ("select", None, None)
MOVES = {
    "00_welcome": ("slider", "bits", ("ArrowLeft", "ArrowRight")),
    "01_number_formats": ("select", "format", ("BF16", "FP16")),
    "02_uniform_quantization": ("slider", "bits", ("ArrowLeft", "ArrowRight")),
    "03_calibration": ("select", "method", ("percentile", "minmax")),
    "04_post_training_quantization": ("slider", "weight bits", ("ArrowLeft", "ArrowRight")),
    "05_quantization_aware_training": ("toggle", None, ("4 bits", "2 bits")),
    "06_mixed_precision_training": ("select", None, None),
    "07_low_bit_optimizers_and_memory": ("select", None, None),
    "08_evaluating_quantized_models": ("select", None, None),
    "09_data_quality_and_security": ("select", None, None),
}

# Armed before each move: resolves with the times (ms) from the first user event in the panel
# to the new image source, and to that image decoded.
ARM = """panel => {
    const img = panel.querySelector('img.widget-image');
    const before = img.src;
    window.__qeduLatency = new Promise((resolve, reject) => {
        let t0 = null;
        const start = () => { if (t0 === null) t0 = performance.now(); };
        for (const kind of ['keydown', 'click', 'change']) panel.addEventListener(kind, start, {capture: true, once: true});
        const observer = new MutationObserver(async () => {
            if (img.src === before) return;
            observer.disconnect();
            const t1 = performance.now();
            try { await img.decode(); } catch (e) {}
            resolve({new_src_ms: t1 - t0, decoded_ms: performance.now() - t0});
        });
        observer.observe(img, {attributes: true, attributeFilter: ['src']});
        setTimeout(() => reject(new Error('no new figure within 60 s')), 60000);
    });
}"""


def lesson_latency(page, server, lesson: str, n_moves: int) -> dict:
    from tests.browser import LessonPage

    kind, label, settings = MOVES.get(lesson, DEFAULT_MOVE)
    nb = LessonPage(page, server, f"lessons/{lesson}.ipynb")
    nb.run_all(timeout_ms=300_000)
    if nb.errors():
        raise RuntimeError(f"{lesson} raised while running: {nb.errors()[0][:300]}")
    panel = nb.panel(0)
    if (kind, label, settings) == DEFAULT_MOVE and panel.locator(".widget-dropdown").count() == 0:
        kind, settings = "slider", ("ArrowLeft", "ArrowRight")  # no dropdown: its first slider
    if kind == "select":
        scope = panel.locator(".widget-dropdown", has_text=label) if label else panel.locator(".widget-dropdown").first
        select = scope.locator("select").first
        if settings is None:
            settings = tuple(select.evaluate("""s => {  // another option first, then back to the current one
                const now = s.options[s.selectedIndex].text;
                return [[...s.options].map(o => o.text).find(t => t !== now), now];
            }"""))
        name = label or select.evaluate("s => s.closest('.widget-dropdown').querySelector('label').innerText")
        description = f"dropdown {name!r}"
    elif kind == "slider":
        sliders = panel.locator(".widget-slider", has_text=label) if label else panel.locator(".widget-slider")
        handle = sliders.first.locator(".noUi-handle").first
        label = label or sliders.first.locator("label").first.inner_text()
        description = f"slider {label!r} (arrow keys)"
    else:
        description = "toggle buttons"

    def move(i: int) -> None:
        setting = settings[i % 2]
        if kind == "select":
            select.select_option(label=setting)
        elif kind == "slider":
            handle.focus()
            handle.press(setting)
        else:
            panel.locator(".widget-toggle-buttons button", has_text=setting).click()

    src, decoded = [], []
    for i in range(n_moves):
        panel.evaluate(ARM)
        move(i)
        times = page.evaluate("() => window.__qeduLatency")
        src.append(times["new_src_ms"])
        decoded.append(times["decoded_ms"])
    return {"control": description, "settings": list(settings), "new_figure": summary(src),
            "decoded": summary(decoded)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=10, help="moves per lesson (alternating between two settings)")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="only the lessons whose name starts with PREFIX (repeatable); prints, writes no results")
    args = parser.parse_args(argv)
    lessons = [name for name in lesson_slugs() if (not args.only or name.startswith(tuple(args.only)))
               and main_widget(name) is not None]  # a lesson without a widget has nothing to move
    from tests.browser import CHROMIUM, CHROMIUM_ARGS, LabServer

    if not Path(CHROMIUM).exists():
        print(f"skipped: no Chromium at {CHROMIUM} (apt-get install chromium, or set QEDU_CHROMIUM)")
        return 0
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("skipped: the playwright package is missing (pip install playwright; never `playwright install`)")
        return 0
    payload, rows = {"machine": machine(), "moves_per_lesson": args.moves, "lessons": {}}, []
    with tempfile.TemporaryDirectory(prefix="qedu-latency-") as tmp:
        server = LabServer(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                for lesson in lessons:
                    context = browser.new_context(viewport={"width": 1280, "height": 1400})
                    result = lesson_latency(context.new_page(), server, lesson, args.moves)
                    context.close()
                    payload["lessons"][lesson] = result
                    a, d = result["new_figure"], result["decoded"]
                    rows.append(f"| {lesson} | {result['control']} | {a['n']} | {a['median_ms']:.0f} | "
                                f"{a['p25_ms']:.0f}-{a['p75_ms']:.0f} | {d['median_ms']:.0f} | {d['max_ms']:.0f} |")
                    print(rows[-1], flush=True)
                browser.close()
        finally:
            server.stop()
    m = payload["machine"]
    md = "\n".join([
        "# Widget latency in the browser (control change -> new figure)",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, headless Chromium and JupyterLab on the same machine, "
        f"load average {m['load_average_1min']} at start, {m['date']}. Produced by `python benchmarks/browser_latency.py`.",
        f"Each lesson: run all, then {args.moves} moves of one control of its first widget, alternating between two "
        "settings (the first visit of a setting may compute and cache; later ones only redraw).",
        "",
        "| lesson | control | moves | new figure, median ms | p25-p75 ms | decoded, median ms | decoded, max ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "new figure: from the user event to the widget's image receiving the new PNG (browser -> kernel -> "
        "redraw -> browser); decoded: until that PNG is decoded and ready to paint.",
    ])
    if args.only:
        print("(not written: --only)")
    else:
        write("browser_latency", payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
