"""A class on one machine: a load test against a real JupyterHub on 127.0.0.1 (issue 19).

It starts JupyterHub 6.1 with the configurable-http-proxy from npm and the very config a teacher
uses (``teacher/jupyterhub_config.py``), then N simulated students work at once, through the
hub's REST API and the Jupyter server's kernels/websocket API, as a browser would:

1. the hub creates the student and starts their server;
2. the student uploads and opens lesson 02, starts a kernel and runs every code cell in order;
3. then moves a widget control (the lesson's ``bits`` slider) every few seconds, sending the same
   ``comm_msg`` a browser sends, and waits for the kernel to finish redrawing.

Measured: the time until each student's lesson has run, the widget update latency (from the
control's message to the kernel going idle, its new figure sent) p50 and p95 over all students,
the memory per student (resident memory of their server and kernel, summed), and failures.

    python benchmarks/classroom.py                 # N = 5, 10, 20, 30, 40 (about 20 minutes)
    python benchmarks/classroom.py --students 2 --minutes 0.5 --no-write   # a quick look

Everything it starts it stops, also on Ctrl-C or an error; every wait has a deadline; a class
size that would not fit in the free memory is reported as not run rather than started. Writes
``benchmarks/results/classroom.{json,md}``. ``tests/test_classroom.py`` runs a small version
(2 students, about a minute) with the same code.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "teacher" / "jupyterhub_config.py"
LESSON = "02_uniform_quantization"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_command() -> str | None:
    """configurable-http-proxy: where `make venv` puts it, else on PATH; None when absent."""
    local = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


def lesson_notebook(slug: str = LESSON) -> dict:
    from qedu.bundle import bundle_path

    return json.loads((bundle_path("lessons") / f"{slug}.ipynb").read_text())


class Hub:
    """A JupyterHub process on 127.0.0.1 with its own state folder; ``stop()`` ends it and all it started."""

    def __init__(self, state: Path, *, memory_mib: int = 1536):
        self.state = Path(state)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.memory_mib = memory_mib
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.state / "hub.log"

    def start(self, timeout: float = 90.0) -> None:
        if proxy_command() is None:
            raise RuntimeError("configurable-http-proxy is not installed: `make venv` puts it in .venv/node, "
                               "or run `npm install -g configurable-http-proxy@5.3.0`.")
        self.state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, QEDU_HUB_STATE=str(self.state), QEDU_HUB_PORT=str(self.port),
                   QEDU_HUB_INTERNAL_PORT=str(free_port()), QEDU_HUB_PROXY_API_PORT=str(free_port()),
                   QEDU_HUB_API_TOKEN=self.token, QEDU_HUB_AUTH="dummy", QEDU_KERNEL_MEMORY_MIB=str(self.memory_mib),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)], cwd=self.state, env=env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterHub exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/hub/api/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"JupyterHub did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def processes(self) -> list[psutil.Process]:
        """The hub and everything under it: the proxy, the students' servers and their kernels."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        procs = self.processes()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the hub stops the servers it spawned (cleanup_servers)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for p in procs:  # whatever is left: kill it
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class Api:
    """The hub's REST API and the students' servers, with the teacher service's token."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)

    async def call(self, method: str, path: str, body=None, *, ok=(200, 201, 202, 204), timeout: float = 120.0):
        data = None if body is None else json.dumps(body)
        if method in ("POST", "PUT", "PATCH") and data is None:
            data = ""
        req = HTTPRequest(self.hub.url + path, method=method, body=data, request_timeout=timeout,
                          headers={"Authorization": f"token {self.hub.token}", "Content-Type": "application/json"},
                          allow_nonstandard_methods=True)
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise RuntimeError(f"{method} {path}: {err}") from err
        if resp.code not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {resp.code} {resp.body[:300]!r}")
        return json.loads(resp.body) if resp.body else None

    async def start_server(self, name: str, timeout: float = 180.0) -> None:
        await self.call("POST", f"/hub/api/users/{name}", ok=(201, 409))
        await self.call("POST", f"/hub/api/users/{name}/server", {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            user = await self.call("GET", f"/hub/api/users/{name}")
            server = (user.get("servers") or {}).get("")
            if server and server.get("ready"):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{name}'s server was not ready within {timeout:.0f} s")

    async def stop_server(self, name: str) -> None:
        await self.call("DELETE", f"/user/{name}/api/kernels", ok=(200, 204, 404, 405))
        await self.call("DELETE", f"/hub/api/users/{name}/server", ok=(202, 204, 400))

    def close(self) -> None:
        self.http.close()


class Kernel:
    """One kernel over the websocket: execute code and send widget messages like JupyterLab does."""

    def __init__(self, ws, username: str):
        self.ws = ws
        self.session = uuid.uuid4().hex
        self.username = username
        self.widgets: dict[str, dict] = {}  # comm id -> widget state, from the kernel's comm_open
        self.waiting: dict[str, dict] = {}
        self.status = "starting"
        self.status_history: list[str] = []  # every state the kernel reported, restarts included
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, api: Api, name: str) -> "Kernel":
        model = await api.call("POST", f"/user/{name}/api/kernels", {"name": "python3"})
        url = api.hub.url.replace("http", "ws", 1) + f"/user/{name}/api/kernels/{model['id']}/channels"
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {api.hub.token}"}),
                                     max_message_size=64 * 2**20)
        kernel = cls(ws, name)
        kernel.id = model["id"]
        return kernel

    def _message(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": self.username,
                           "session": self.session, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                           "version": "5.3"},
                "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}

    async def _read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            if raw is None:  # the socket closed
                for w in self.waiting.values():
                    if not w["done"].done():
                        w["done"].set_exception(ConnectionError("the kernel's websocket closed"))
                return
            if isinstance(raw, bytes):  # binary frames carry buffers (images); their JSON part is all we need
                continue
            msg = json.loads(raw)
            mtype, content = msg["header"]["msg_type"], msg["content"]
            if mtype == "comm_open" and content.get("target_name") == "jupyter.widget":
                self.widgets[content["comm_id"]] = content["data"].get("state", {})
            if mtype == "status" and (not msg["parent_header"] or content["execution_state"] in ("restarting", "dead")):
                self.status = content["execution_state"]
                self.status_history.append(self.status)
            w = self.waiting.get(msg["parent_header"].get("msg_id"))
            if w is None:
                continue
            if mtype == "execute_reply":
                w["reply"] = content
            elif mtype == "error":
                w["error"] = f"{content['ename']}: {content['evalue']}"
            elif mtype == "stream":
                w["stream"] += content.get("text", "")
            elif mtype == "status" and content["execution_state"] == "idle":
                w["idle"] = True
            if w["idle"] and (w["reply"] is not None or w["kind"] == "comm"):
                if not w["done"].done():
                    w["done"].set_result(time.perf_counter() - w["t0"])

    async def _send(self, msg: dict, kind: str, timeout: float) -> dict:
        w = {"kind": kind, "reply": None, "error": None, "stream": "", "idle": False,
             "done": asyncio.get_running_loop().create_future(), "t0": time.perf_counter()}
        self.waiting[msg["header"]["msg_id"]] = w
        await self.ws.write_message(json.dumps(msg))
        try:
            w["seconds"] = await asyncio.wait_for(w["done"], timeout)
        finally:
            del self.waiting[msg["header"]["msg_id"]]
        return w

    async def execute(self, code: str, timeout: float = 300.0) -> dict:
        msg = self._message("execute_request", {"code": code, "silent": False, "store_history": True,
                                                "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
        return await self._send(msg, "execute", timeout)

    async def move(self, comm_id: str, value, timeout: float = 60.0) -> float:
        """Set a widget control's value as the browser does; seconds until the kernel is idle again."""
        msg = self._message("comm_msg", {"comm_id": comm_id,
                                         "data": {"method": "update", "state": {"value": value}, "buffer_paths": []}})
        w = await self._send(msg, "comm", timeout)
        return w["seconds"]

    def control(self, description: str = "bits") -> tuple[str, list]:
        """The last slider with this description (the lesson's widget), and the values it can take."""
        for comm_id, state in reversed(list(self.widgets.items())):
            if state.get("_model_name") == "IntSliderModel" and state.get("description") == description:
                return comm_id, list(range(state["min"], state["max"] + 1, state.get("step", 1)))
        raise LookupError(f"no IntSlider called {description!r} among the {len(self.widgets)} widgets the lesson made")

    async def close(self) -> None:
        self.reader.cancel()
        self.ws.close()


@dataclass
class Student:
    name: str
    server_s: float | None = None
    lesson_s: float | None = None
    latencies_s: list = field(default_factory=list)
    memory_mib: float | None = None
    failures: list = field(default_factory=list)


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


async def run_student(api: Api, student: Student, nb: dict, *, minutes: float, every: float, t0: float) -> Kernel | None:
    """One student's session: server, lesson 02 run top to bottom, then ``minutes`` of widget moves."""
    kernel = None
    try:
        await api.start_server(student.name)
        student.server_s = time.perf_counter() - t0
        path = f"/user/{student.name}/api/contents/{LESSON}.ipynb"
        await api.call("PUT", path, {"type": "notebook", "format": "json", "content": nb})
        await api.call("GET", path)  # opening it in JupyterLab reads it back
        kernel = await Kernel.open(api, student.name)
        for i, code in enumerate(code_cells(nb)):
            w = await kernel.execute(code)
            if w["reply"]["status"] != "ok":
                student.failures.append(f"cell {i}: {w['error']}")
                return kernel
        student.lesson_s = time.perf_counter() - t0
        comm_id, values = kernel.control("bits")
        until = time.perf_counter() + 60 * minutes
        k = 0
        while time.perf_counter() < until:
            await asyncio.sleep(every)
            k += 1
            student.latencies_s.append(await kernel.move(comm_id, values[k % len(values)]))
    except Exception as err:  # a failure is a result: record it, the others go on
        student.failures.append(f"{type(err).__name__}: {err}")
    return kernel


def server_memory_mib(hub: Hub, name: str) -> float | None:
    """Resident memory of one student's server and its kernels (MiB), found by the user's environment."""
    total = 0
    for p in hub.processes():
        try:
            if p.environ().get("JUPYTERHUB_USER") == name:
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1) if total else None


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def classroom(hub: Hub, n: int, *, minutes: float, every: float, stagger: float = 0.5) -> dict:
    """N students at once on a running hub; their servers are stopped at the end."""
    api = Api(hub)
    nb = lesson_notebook()
    students = [Student(f"student{n}x{i:02d}") for i in range(n)]
    t0 = time.perf_counter()
    kernels: list = []
    try:
        async def one(i, s):
            await asyncio.sleep(i * stagger)  # students arrive over a few seconds, not in the same millisecond
            start = time.perf_counter()
            kernel = await run_student(api, s, nb, minutes=minutes, every=every, t0=start)
            kernels.append(kernel)

        # each student moves the widget for `minutes` after their own lesson has run; cap the whole thing
        await asyncio.wait_for(asyncio.gather(*(one(i, s) for i, s in enumerate(students))),
                               timeout=60 * minutes + 600)
    except asyncio.TimeoutError:
        for s in students:
            if s.lesson_s is None:
                s.failures.append("timed out")
    finally:
        for s in students:
            s.memory_mib = server_memory_mib(hub, s.name)
        for k in kernels:
            if k is not None:
                await k.close()
        for s in students:
            try:
                await api.stop_server(s.name)
            except Exception:
                pass
        api.close()
    lat = [x for s in students for x in s.latencies_s]
    lesson = [s.lesson_s for s in students if s.lesson_s is not None]
    mem = [s.memory_mib for s in students if s.memory_mib]
    return {
        "students": n,
        "lesson_run_s_median": round(statistics.median(lesson), 1) if lesson else None,
        "lesson_run_s_max": round(max(lesson), 1) if lesson else None,
        "widget_moves": len(lat),
        "widget_p50_ms": round(1000 * quantile(lat, 0.5)) if lat else None,
        "widget_p95_ms": round(1000 * quantile(lat, 0.95)) if lat else None,
        "memory_per_student_mib": round(statistics.median(mem)) if mem else None,
        "failures": sum(bool(s.failures) for s in students),
        "failure_examples": [f for s in students for f in s.failures][:5],
        "per_student": [asdict(s) | {"latencies_s": [round(x, 3) for x in s.latencies_s]} for s in students],
    }


def markdown(runs: list[dict], meta: dict) -> str:
    ok = [r["students"] for r in runs if r.get("widget_p95_ms") is not None and r["widget_p95_ms"] < 1000
          and not r["failures"]]
    lines = [
        "# A class on one machine: JupyterHub load test",
        "",
        f"{meta['platform']}, {meta['cpu_count']} cores, {meta['memory_gib']} GiB, JupyterHub {meta['jupyterhub']}, "
        f"load average {meta['load_average_1min']} at start, {meta['date']}. Each student: own server, lesson 02 run "
        f"top to bottom, then the `bits` slider moved every {meta['every_s']} s for {meta['minutes']} min. "
        "Produced by `python benchmarks/classroom.py`." + (f" {meta['note']}" if meta.get("note") else ""),
        "",
        "Lesson run: from the student's arrival to the last cell of lesson 02 done (server start, upload, kernel "
        "start, every cell). Widget: from the slider's message to the kernel idle with the new figure sent. "
        "Memory: resident memory of the student's server and kernel together.",
        "",
        "| students | lesson run, median (s) | lesson run, slowest (s) | widget p50 (ms) | widget p95 (ms) "
        "| memory per student (MiB) | students with a failure |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "not_run" in r:
            lines.append(f"| {r['students']} | not run: {r['not_run']} | | | | | |")
            continue
        lines.append(f"| {r['students']} | {r['lesson_run_s_median']} | {r['lesson_run_s_max']} | {r['widget_p50_ms']} "
                     f"| {r['widget_p95_ms']} | {r['memory_per_student_mib']} | {r['failures']} |")
    lines += ["", f"Largest class with widget p95 under 1 s and no failure: **{max(ok) if ok else 'none measured'}** "
              "students on this machine." if ok else "No class size kept p95 under 1 s with no failure."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, nargs="+", default=[5, 10, 20, 30, 40])
    ap.add_argument("--minutes", type=float, default=2.0, help="widget phase per class size")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between one student's widget moves")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a sentence for the results file, e.g. what else ran on the machine")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine, write
    import jupyterhub

    meta = machine() | {"jupyterhub": jupyterhub.__version__, "memory_gib": round(psutil.virtual_memory().total / 2**30),
                        "every_s": args.every, "minutes": args.minutes, "note": args.note}
    runs = []
    with tempfile.TemporaryDirectory(prefix="qedu-hub-") as tmp:
        hub = Hub(Path(tmp))
        with hub:
            per_student_mib = 700.0  # a first guess; each run measures it
            for n in args.students:
                need, free = n * per_student_mib, psutil.virtual_memory().available / 2**20
                if need > 0.85 * free:  # never push the machine into swap or the OOM killer
                    runs.append({"students": n, "not_run": f"would need about {need / 1024:.1f} GiB, "
                                                          f"{free / 1024:.1f} GiB free"})
                    print(f"{n} students: not run ({runs[-1]['not_run']})", flush=True)
                    continue
                run = asyncio.run(classroom(hub, n, minutes=args.minutes, every=args.every))
                per_student_mib = run["memory_per_student_mib"] or per_student_mib  # measured, for the next size
                runs.append(run)
                print(f"{n} students: lesson {run['lesson_run_s_median']} s (slowest {run['lesson_run_s_max']}), "
                      f"widget p50 {run['widget_p50_ms']} ms p95 {run['widget_p95_ms']} ms, "
                      f"{run['memory_per_student_mib']} MiB each, {run['failures']} failed", flush=True)
    md = markdown(runs, meta)
    print(md)
    if not args.no_write:
        write("classroom", {"machine": meta, "runs": runs}, md)


if __name__ == "__main__":
    main()
