"""Drive a real JupyterLab in headless Chromium (Debian's /usr/bin/chromium, via playwright).

Used by tests/test_browser.py. The server runs on 127.0.0.1 on a free port, serves a *copy* of
the notebooks (so autosave can never write outputs into the repository) with the news popup
off, and is stopped by the fixture that started it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("QEDU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
IDLE = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server over a temporary copy of lessons/, exercises/ and solutions/."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        for d in ("lessons", "exercises", "solutions"):
            shutil.copytree(ROOT / d, workdir / d)
        settings = workdir / "_settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # render every cell (no virtual scrolling), so every output and widget is in the DOM
        notebook_settings = workdir / "_settings" / "@jupyterlab" / "notebook-extension"
        notebook_settings.mkdir(parents=True)
        (notebook_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        cmd = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={workdir}", f"--LabApp.user_settings_dir={workdir / '_settings'}",
            f"--LabApp.workspaces_dir={workdir / '_workspaces'}", "--LabApp.expose_app_in_browser=True",
            "--ServerApp.port_retries=0",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(workdir / "_config"), JUPYTER_RUNTIME_DIR=str(workdir / "_runtime"))
        self.log = open(workdir / "server.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early:\n{(self.workdir / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("JupyterLab did not start within a minute")

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class LessonPage:
    """One notebook open in JupyterLab, with helpers to run it and drive its widgets."""

    def __init__(self, page, server: LabServer, notebook: str):
        self.page = page
        page.goto(server.url(notebook))
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        # JupyterLab may ask which kernel to start: take the notebook's own (python3)
        dialog = page.locator(".jp-Dialog button.jp-mod-accept")
        try:
            dialog.wait_for(timeout=5_000)
            dialog.click()
        except Exception:  # no dialog this time
            pass
        page.wait_for_selector(IDLE, timeout=60_000)

    def run_all(self, timeout_ms: int = 120_000) -> None:
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        # done when the kernel is idle and every code cell of the notebook model has run
        # (the model, not the DOM, so it holds however the notebook is rendered)
        try:
            self.page.wait_for_function(
                """() => {
                    const panel = window.jupyterapp.shell.currentWidget;
                    const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
                    if (!panel || !panel.content || !idle) return false;
                    const cells = [...panel.content.model.cells].filter(c => c.type === 'code');
                    const failed = cells.some(c => Array.from({length: c.outputs.length}, (_, i) => c.outputs.get(i)).some(o => o.type === 'error'));
                    return failed || (cells.length > 0 && cells.every(c => c.executionCount !== null));
                }""",
                timeout=timeout_ms,
            )
        except Exception:
            self.page.screenshot(path=str(ROOT / "test-artifacts" / "run_all_timeout.png"))
            raise

    def errors(self) -> list[str]:
        """Texts of every error output (tracebacks) in the notebook."""
        model_errors = self.page.evaluate(
            """() => [...window.jupyterapp.shell.currentWidget.content.model.cells]
                .flatMap(c => c.type === 'code' ? Array.from({length: c.outputs.length}, (_, i) => c.outputs.get(i)) : [])
                .filter(o => o.type === 'error').map(o => JSON.stringify(o.toJSON()).slice(0, 2000))"""
        )
        return model_errors + self.page.eval_on_selector_all(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]',
            "els => els.map(e => e.textContent).filter(t => /Error|Traceback/.test(t))",
        )

    def panel(self, index: int = 0):
        """The index-th qedu Panel (a widget VBox holding an image) on the page."""
        panels = self.page.locator(".widget-vbox:has(img.widget-image)")
        panels.nth(index).scroll_into_view_if_needed()
        return panels.nth(index)

    def figure_png(self, panel) -> bytes:
        """The exact PNG bytes the widget shows (read from the image's blob URL)."""
        data = panel.locator("img.widget-image").first.evaluate(
            """async img => {
                const buf = await (await fetch(img.src)).arrayBuffer();
                return Array.from(new Uint8Array(buf));
            }"""
        )
        return bytes(data)

    def texts(self, panel) -> str:
        return panel.locator(".widget-html-content").all_inner_texts().__str__()

    def wait_for_change(self, panel, before: bytes, timeout_ms: int = 20_000) -> bytes:
        deadline = time.time() + timeout_ms / 1000
        while time.time() < deadline:
            now = self.figure_png(panel)
            if now != before:
                return now
            self.page.wait_for_timeout(100)
        raise AssertionError("the widget's figure did not change")

    def wait_for_png(self, panel, expected: bytes, timeout_ms: int = 20_000) -> bool:
        """Wait until the figure shows exactly ``expected``; False if it never does."""
        deadline = time.time() + timeout_ms / 1000
        while time.time() < deadline:
            if self.figure_png(panel) == expected:
                return True
            self.page.wait_for_timeout(150)
        return False

    def press_slider(self, panel, key: str, index: int = 0, times: int = 1, label: str | None = None) -> None:
        """Press a key on a slider's handle (by position, or by its description ``label``)."""
        scope = panel.locator(".widget-slider", has_text=label) if label else panel
        handle = scope.locator(".noUi-handle").nth(0 if label else index)
        handle.focus()
        for _ in range(times):
            handle.press(key)

    def select(self, panel, label: str, option: str) -> None:
        """Choose ``option`` in the dropdown whose description is ``label``."""
        panel.locator(".widget-dropdown", has_text=label).locator("select").select_option(label=option)

    def click_checkbox(self, panel, label: str) -> None:
        panel.locator(".widget-checkbox", has_text=label).locator("input").click()

    def message(self, panel) -> str:
        """The panel's message line (the last HTML widget): red text when a setting is invalid."""
        return panel.locator(":scope > .widget-html").last.inner_text()

    def toggles_fit(self, panel) -> list[str]:
        """Problems with the panel's ToggleButtons: a label not on the line of its buttons, a button label cut off."""
        problems = []
        for toggles in panel.locator(".widget-toggle-buttons").all():
            label, first = toggles.locator(".widget-label").first.bounding_box(), toggles.locator("button").first.bounding_box()
            if abs((label["y"] + label["height"] / 2) - (first["y"] + first["height"] / 2)) >= first["height"] / 2:
                problems.append(f"label {toggles.locator('.widget-label').first.inner_text()!r} is not beside its buttons")
        problems += panel.locator(".widget-toggle-buttons button").evaluate_all(
            "bs => bs.filter(b => b.scrollWidth > b.clientWidth).map(b => 'cut off: ' + b.innerText)")
        return problems
