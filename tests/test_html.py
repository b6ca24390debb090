"""`make html`: the static lesson site opens from disk with the network off and shows figures,
widgets (from their saved state) and math.

The suite builds one small lesson (lesson 02: figures, widgets, inline and display math) into
a temporary folder with the same function `make html` uses for all of them
(scripts/build_html.py). The browser part needs Chromium and playwright, like tests/test_browser.py.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT
from tests.test_browser import _require_browser

spec = importlib.util.spec_from_file_location("build_html", ROOT / "scripts" / "build_html.py")
build_html = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_html)

LESSON = "02_uniform_quantization"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    pages = build_html.build_site([ROOT / "lessons" / f"{LESSON}.ipynb"], out, log=lambda *a: None)
    return out, pages


def test_index_lists_the_lesson_map_and_links_the_built_lessons(site):
    from qedu.curriculum import LESSONS

    out, pages = site
    assert [p.name for p in pages] == ["index.html", f"{LESSON}.html"]
    index = (out / "index.html").read_text()
    for lesson in LESSONS:
        assert lesson.title in index
    assert re.findall(r'href="([^"]+)"', index) == [f"{LESSON}.html"], "only built lessons are links"


def test_pages_use_the_vendored_scripts(site):
    out, _ = site
    page = (out / f"{LESSON}.html").read_text()
    for url in build_html.URLS.values():
        assert f"'{url}'" in page or f'"{url}"' in page, f"{url} is not referenced"
        assert (out / url).is_file(), f"{url} was not copied next to the pages"
    assert "application/vnd.jupyter.widget-state+json" in page, "the widget state was not saved"
    assert not build_html._REMOTE_LOAD.search(page)


def test_lesson_pages_link_back_to_the_index_and_to_their_neighbours(site):
    out, _ = site
    page = (out / f"{LESSON}.html").read_text()
    assert page.count('<a href="index.html">all lessons</a>') == 2  # top and bottom
    assert 'rel="prev"' not in page and 'rel="next"' not in page  # the only lesson of this build
    nav = build_html.with_nav("<html><body class='x'>text</body></html>", "01_a", "03_c")
    assert nav.startswith("<html><body class='x'>\n<nav") and nav.endswith("</nav>\n</body></html>")
    assert 'href="01_a.html" rel="prev"' in nav and 'href="03_c.html" rel="next"' in nav and "text" in nav


def test_make_html_builds_every_lesson_into_an_ignored_folder():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^html: .*\n\t\$\(BIN\)/python scripts/build_html.py --out build/html$", makefile, re.M)
    assert "make html" in makefile.split("\nvenv:")[0], "`make help` should list `make html`"
    assert "build/" in (ROOT / ".gitignore").read_text().splitlines()
    assert build_html.OUT == ROOT / "build" / "html"


def test_build_site_names_bad_input(tmp_path):
    with pytest.raises(ValueError, match="lessons is empty"):
        build_html.build_site([], tmp_path)
    with pytest.raises(ValueError, match="no such notebook"):
        build_html.build_site([tmp_path / "99_nothing.ipynb"], tmp_path)


@pytest.mark.browser
def test_site_opens_offline_with_figures_widgets_and_math(site):
    _require_browser()
    from playwright.sync_api import sync_playwright

    out, _ = site
    attempted, errors = [], []

    def only_files(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(offline=True, viewport={"width": 412, "height": 900})  # a phone's width
            context.route("**/*", only_files)
            page = context.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.goto((out / "index.html").as_uri())
            page.click(f'a[href="{LESSON}.html"]')
            page.wait_for_url(f"**/{LESSON}.html")
            page.click('a[href="index.html"] >> nth=0')  # and back: the navigation works from disk
            page.wait_for_url("**/index.html")
            page.go_back()
            page.wait_for_url(f"**/{LESSON}.html")
            # the widget renderer draws the saved state: the controls and the widget's figure
            page.wait_for_selector(".jupyter-widgets .widget-slider", timeout=60_000)
            page.wait_for_selector("mjx-container", timeout=60_000)
            page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
            sizes = page.evaluate("""() => [...document.images].map(i => ({
                widget: !!i.closest('.jupyter-widgets'), w: i.naturalWidth, h: i.naturalHeight}))""")
            slider = page.inner_text(".jupyter-widgets .widget-readout")
            n_widgets = page.locator(".jupyter-widgets.widget-inline-hbox, .jupyter-widgets .widget-slider").count()
        finally:
            browser.close()
    figures = [s for s in sizes if not s["widget"]]
    assert figures, f"no figure outside the widgets: {sizes}"
    assert any(s["widget"] for s in sizes), f"no widget shows its saved figure: {sizes}"
    assert all(s["w"] > 0 and s["h"] > 0 for s in sizes), f"an image did not load: {sizes}"
    assert n_widgets >= 1 and slider.strip(), "the widget controls did not render from the saved state"
    assert not attempted, f"the page tried to reach the network: {attempted}"
    assert not errors, f"JavaScript errors: {errors}"
