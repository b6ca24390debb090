"""A real JupyterHub on 127.0.0.1 with the teacher's config: two students, then the bad cases (issue 19).

The same code as ``benchmarks/classroom.py``, small: two students get their own servers, run
lesson 02 top to bottom and move its ``bits`` slider for a few seconds. Then one student's
kernel goes over its memory limit and another's dies, and the others are unaffected. The hub
and every process under it are stopped at the end (checked).
"""
import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupyterhub", reason="JupyterHub is in the `teacher` extra: pip install -e '.[teacher]'")
psutil = pytest.importorskip("psutil", reason="psutil comes with ipykernel")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("classroom_bench", ROOT / "benchmarks" / "classroom.py")
classroom = importlib.util.module_from_spec(spec)
sys.modules["classroom_bench"] = classroom  # dataclasses look their module up
spec.loader.exec_module(classroom)

pytestmark = pytest.mark.slow


def _proxy_or_skip():
    if classroom.proxy_command() is None:
        if os.environ.get("QEDU_REQUIRE_EXTRAS"):
            pytest.fail("configurable-http-proxy is missing; `make venv` installs it with npm into .venv/node")
        pytest.skip("configurable-http-proxy (npm) is not installed: `make venv` puts it in .venv/node")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    _proxy_or_skip()
    h = classroom.Hub(tmp_path_factory.mktemp("hub"), memory_mib=1536)
    h.start()
    try:
        yield h
    finally:
        procs = h.processes()
        h.stop()
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"processes left running after the hub stopped: {alive}"


def test_two_students_run_lesson_02_and_move_its_widget(hub):
    result = asyncio.run(classroom.classroom(hub, 2, minutes=0.25, every=2.0, stagger=1.0))
    assert result["failures"] == 0, result["failure_examples"]
    for s in result["per_student"]:
        assert s["lesson_s"] is not None and s["lesson_s"] > 0
        assert len(s["latencies_s"]) >= 3, s  # the widget answered every move
        assert s["memory_mib"] and s["memory_mib"] > 50  # a server and a kernel with torch
    assert result["widget_p95_ms"] >= result["widget_p50_ms"] > 0
    md = classroom.markdown([result], {"platform": "test", "cpu_count": 2, "memory_gib": 24, "jupyterhub": "6",
                                       "load_average_1min": 0, "date": "now", "every_s": 2.0, "minutes": 0.25})
    assert "| 2 |" in md


async def _bad_cases(hub):
    api = classroom.Api(hub)
    names = ["greedy", "crashy", "calm"]
    try:
        await asyncio.gather(*(api.start_server(n) for n in names))
        greedy, crashy, calm = [await classroom.Kernel.open(api, n) for n in names]
        for k in (greedy, crashy, calm):
            w = await k.execute("import torch, qedu\nx = torch.ones(1000)\nprint(float(x.sum()))")
            assert w["reply"]["status"] == "ok" and "1000.0" in w["stream"], w

        # 1. over the memory limit: a clear message in that notebook, and the kernel lives on
        w = await greedy.execute("y = torch.ones(2**31)  # 8 GiB of float32")
        assert w["reply"]["status"] == "error"
        assert "limited to 1536 MiB" in w["stream"], w["stream"]
        w = await greedy.execute("print(float(x.sum()))")
        assert w["reply"]["status"] == "ok" and "1000.0" in w["stream"]

        # 2. a kernel that dies: its student is told (the kernel restarts), the others never notice
        try:
            await crashy.execute("import os; os._exit(1)", timeout=10)
        except (asyncio.TimeoutError, ConnectionError):
            pass  # no reply comes from a dead kernel
        for _ in range(60):
            if {"restarting", "dead"} & set(crashy.status_history):
                break
            await asyncio.sleep(0.5)
        assert {"restarting", "dead"} & set(crashy.status_history), crashy.status_history
        w = await calm.execute("print(float(x.sum()) + 1)")
        assert w["reply"]["status"] == "ok" and "1001.0" in w["stream"]
        w = await greedy.execute("print(float(x.sum()) + 2)")
        assert w["reply"]["status"] == "ok" and "1002.0" in w["stream"]
        for k in (greedy, crashy, calm):
            await k.close()
    finally:
        for n in names:
            try:
                await api.stop_server(n)
            except Exception:
                pass
        api.close()


def test_a_greedy_or_crashing_kernel_leaves_the_others_alone(hub):
    asyncio.run(_bad_cases(hub))


def test_kernel_launcher_arguments():
    from qedu.classroom import kernel_spec, memory_hint, parse_args

    assert parse_args(["--memory-mib", "0", "-f", "x"]) == (0, ["-f", "x"])
    with pytest.raises(ValueError, match="whole number of MiB"):
        parse_args(["--memory-mib", "lots"])
    with pytest.raises(ValueError, match="negative"):
        parse_args(["--memory-mib", "-5"])
    with pytest.raises(ValueError, match="needs a value"):
        parse_args(["--memory-mib"])
    assert kernel_spec("/py")["argv"][:3] == ["/py", "-m", "qedu.classroom"]
    assert memory_hint(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"), 10) is not None
    assert memory_hint(RuntimeError("shape mismatch"), 10) is None
    assert sys.executable  # the launcher runs under the same interpreter as the hub
