"""JupyterHub for a class on one machine: JupyterHub 6.1 + configurable-http-proxy.

Run it (from a checkout, with the `teacher` extra installed and the proxy from npm):

    pip install "qedu[teacher]"                      # jupyterhub, nbgrader
    npm install -g configurable-http-proxy@5.3.0     # or `make venv`, which puts it in .venv/node
    jupyterhub -f teacher/jupyterhub_config.py

Every setting a teacher might change is read from an environment variable, so the test
(tests/test_classroom.py) and the load test (benchmarks/classroom.py) run this very file:

    QEDU_HUB_IP            address to listen on              (default 127.0.0.1: this machine only)
    QEDU_HUB_PORT          port of the public proxy           (default 8000)
    QEDU_HUB_STATE         folder for the database, cookie secret and proxy token (default ./hub-state)
    QEDU_HUB_AUTH          "dummy" (test only: any name, shared password) or "pam" (real Unix accounts)
    QEDU_HUB_PASSWORD      the shared password for "dummy"
    QEDU_HUB_API_TOKEN     a token for a "teacher" service with admin rights (the tests drive the hub with it)
    QEDU_KERNEL_MEMORY_MIB the memory limit of each student's kernel (default 1536; 0: none)

Authentication. "dummy" lets anyone in who knows the shared password, with any user name:
use it only on 127.0.0.1 for tests and demos. For a real class use "pam" (students log in with
their Unix account on this machine, and each server runs as that user: the hub must then run as
root and spawn with LocalProcessSpawner), or an OAuth authenticator from the
`oauthenticator` package (GitHub, Google, your university's identity provider): set
`c.JupyterHub.authenticator_class = "generic-oauth"` and its client id, secret and URLs.
Serve it behind TLS (`c.JupyterHub.ssl_cert`/`ssl_key`, or a reverse proxy) whenever it listens
on anything but 127.0.0.1.

Spawner. "dummy" uses SimpleLocalProcessSpawner: every student's server runs as the user that
runs the hub, each in its own folder under QEDU_HUB_STATE/homes. That isolates nothing from a
malicious student; it is for one trusted machine and for the tests. The "pam" setting uses
LocalProcessSpawner (real Unix users, their own home folders). When one machine is not enough,
see teacher/z2jh/values.yaml (Kubernetes).

Memory. Jupyter has no memory limit of its own. Every student's kernel is started through
`python -m qedu.classroom`, which caps its data segment before ipykernel starts:
a cell that goes over it fails with a MemoryError in that student's notebook, and nobody
else's kernel is touched (tests/test_classroom.py holds both).
"""
import json
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub injects get_config)

state = Path(os.environ.get("QEDU_HUB_STATE", "hub-state")).resolve()
state.mkdir(parents=True, exist_ok=True)
homes = state / "homes"
homes.mkdir(exist_ok=True)

c.JupyterHub.ip = os.environ.get("QEDU_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("QEDU_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("QEDU_HUB_INTERNAL_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('QEDU_HUB_PROXY_API_PORT', '8001')}"
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
# The proxy from npm: on PATH, or where `make venv` puts it (.venv/node/node_modules/.bin).
local_proxy = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
if local_proxy.exists():
    c.ConfigurableHTTPProxy.command = [str(local_proxy)]

auth = os.environ.get("QEDU_HUB_AUTH", "dummy")
if auth == "dummy":
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = os.environ.get("QEDU_HUB_PASSWORD", "")
    c.Authenticator.allow_all = True
    c.JupyterHub.spawner_class = "simple"
    c.Spawner.notebook_dir = str(homes / "{username}")
    c.SimpleLocalProcessSpawner.home_dir_template = str(homes / "{username}")
elif auth == "pam":
    c.JupyterHub.authenticator_class = "pam"
    c.JupyterHub.spawner_class = "localprocess"
    c.Authenticator.allowed_users = set(filter(None, os.environ.get("QEDU_HUB_USERS", "").split(",")))
else:
    raise ValueError(f"QEDU_HUB_AUTH={auth!r}: use 'dummy' (tests, demos on 127.0.0.1) or 'pam' (real accounts).")

# Each student gets JupyterLab, opened at the first lesson.
c.Spawner.default_url = "/lab"
c.Spawner.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
memory_mib = int(os.environ.get("QEDU_KERNEL_MEMORY_MIB", "1536"))
c.Spawner.environment = {
    "QEDU_KERNEL_MEMORY_MIB": str(memory_mib),
    # one thread per kernel: on a shared machine, students' kernels should not fight over cores
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# Every kernel a student starts goes through qedu's memory-limited launcher: its kernel spec is
# named "python3" (what the notebooks ask for) and comes first on JUPYTER_PATH.
kernels = state / "jupyter" / "kernels" / "python3"
kernels.mkdir(parents=True, exist_ok=True)
from qedu.classroom import kernel_spec  # noqa: E402

(kernels / "kernel.json").write_text(json.dumps(kernel_spec(sys.executable), indent=1))
c.Spawner.environment["JUPYTER_PATH"] = str(state / "jupyter")
c.JupyterHub.services = []
token = os.environ.get("QEDU_HUB_API_TOKEN")
if token:
    c.JupyterHub.services.append({"name": "teacher", "api_token": token})
    c.JupyterHub.load_roles = [{
        "name": "teacher",
        "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
        "services": ["teacher"],
    }]
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
if hasattr(os, "geteuid") and os.geteuid() == 0:
    # a container or a test machine where everything runs as root (SimpleLocalProcessSpawner)
    c.Spawner.args = ["--allow-root"]
