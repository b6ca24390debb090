#!/usr/bin/env python
"""Write a static, offline site of the lessons: ``build/html/index.html`` plus one page per lesson.

Each lesson is executed top to bottom (nbclient, ``store_widget_state=True``), so a page shows
every output and figure, and each widget as it was left after the run (a snapshot of its state:
the controls render, and an output widget shows its last figure; moving a control does nothing
without a kernel). Pages are written by nbconvert's HTML exporter (``lab`` template) with the
widget renderer, require.js and MathJax loaded from ``vendor/`` beside the pages (copied from
``docs/vendor/``, see its README), never from a CDN: the folder opens from disk, offline, on a
laptop or a phone, and can be copied to any static web server.

Usage:
    python scripts/build_html.py                      # every lesson -> build/html/
    python scripts/build_html.py 00_welcome 02_uniform_quantization --out /tmp/site
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
VENDOR = ROOT / "docs" / "vendor"
OUT = ROOT / "build" / "html"
# Relative to the pages: the site works from file:// and from any sub-path of a web server.
URLS = {
    "widget_renderer_url": "vendor/html-manager/embed.js",
    "require_js_url": "vendor/requirejs/require.js",
    "mathjax_url": "vendor/mathjax.js",
}
# A page may link to the web (prose links) but must not *load* anything from it.
_REMOTE_LOAD = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in its own folder and keep the widgets' final state."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def render(nb: nbformat.NotebookNode, title: str) -> str:
    """One self-contained HTML page (figures inline as data: URIs) that loads scripts from vendor/."""
    exporter = HTMLExporter(template_name="lab", **URLS)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    remote = _REMOTE_LOAD.search(body)
    if remote:
        raise RuntimeError(f"{title}: the page would load {remote.group(0)!r} from the network; "
                           "vendor it under docs/vendor/ and point the exporter at it.")
    return body


def with_nav(page: str, previous: str | None, following: str | None) -> str:
    """Add a line of links (all lessons, previous, next) at the top and bottom of a lesson page."""
    links = ['<a href="index.html">all lessons</a>']
    if previous:
        links.append(f'<a href="{previous}.html" rel="prev">&larr; {html.escape(previous)}</a>')
    if following:
        links.append(f'<a href="{following}.html" rel="next">{html.escape(following)} &rarr;</a>')
    nav = ('<nav class="qedu-nav" style="font-family: system-ui, sans-serif; padding: .5rem 1rem; '
           'display: flex; gap: 1.5rem; flex-wrap: wrap;">'
           '<style>.qedu-nav a { color: #1565c0; text-decoration: underline; }</style>' + "".join(links) + "</nav>")
    head, sep, rest = page.partition("<body")
    if not sep:
        raise RuntimeError("nbconvert's page has no <body>; cannot add the navigation links")
    tag, _, body = rest.partition(">")
    body, sep, tail = body.rpartition("</body>")
    return f"{head}<body{tag}>\n{nav}{body}{nav}\n{sep}{tail}"


def index_page(built: list[str]) -> str:
    """The lesson map (qedu.curriculum) as a page; lessons in ``built`` link to their pages."""
    from qedu.curriculum import LESSONS as MAP

    rows = []
    for lesson in MAP:
        title = html.escape(lesson.title)
        name = f'<a href="{lesson.slug}.html">{title}</a>' if lesson.slug in built else title
        status = "" if lesson.slug in built else " <em>(not in this build)</em>" if lesson.ready else " <em>(coming)</em>"
        rows.append(f"<tr><td>{lesson.slug[:2]}</td><td>{name}{status}</td><td>{html.escape(lesson.idea)}</td></tr>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>qedu lessons</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
  table {{ border-collapse: collapse; width: 100%; }}
  td {{ border-top: 1px solid #ddd; padding: .4rem .5rem; vertical-align: top; }}
  td:first-child {{ color: #666; }}
</style>
</head>
<body>
<h1>qedu: learn quantization by moving a slider</h1>
<p>Each lesson below was run top to bottom when this site was built; its figures and widgets are
a snapshot of that run. To move the sliders and do the exercises, open the notebooks in
JupyterLab (<code>make lab</code>).</p>
<table>
{chr(10).join(rows)}
</table>
</body>
</html>
"""


def build_site(lessons: list[Path], out: Path = OUT, log=print) -> list[Path]:
    """Execute and render ``lessons`` into ``out`` (with ``out/vendor/`` and ``out/index.html``).

    Returns the pages written, index first.
    """
    if not lessons:
        raise ValueError("lessons is empty; pass at least one lessons/NN_slug.ipynb path.")
    missing = [str(p) for p in lessons if not Path(p).is_file()]
    if missing:
        raise ValueError(f"lessons: no such notebook(s) {missing}; pass paths like lessons/00_welcome.ipynb.")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(VENDOR, out / "vendor", dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
    pages = []
    stems = [Path(p).stem for p in lessons]
    for i, path in enumerate(map(Path, lessons)):
        start = time.perf_counter()
        page = out / f"{path.stem}.html"
        previous, following = (stems[i - 1] if i else None), (stems[i + 1] if i + 1 < len(stems) else None)
        page.write_text(with_nav(render(execute(path), path.stem), previous, following), encoding="utf-8")
        pages.append(page)
        log(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s)")
    index = out / "index.html"
    index.write_text(index_page([p.stem for p in pages]), encoding="utf-8")
    return [index, *pages]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson names (e.g. 02_uniform_quantization); default: all")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    names = args.lessons or [p.stem for p in sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))]
    pages = build_site([LESSONS / f"{Path(n).stem}.ipynb" for n in names], args.out)
    print(f"open {pages[0]} in a browser (works offline, from disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
