"""The teacher's files agree with each other and with the kit (issue 19): hub config, Kubernetes values."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml", reason="PyYAML comes with jupyter_events (JupyterLab)")


def test_z2jh_values_parse_and_agree_with_the_one_machine_hub():
    values = yaml.safe_load((ROOT / "teacher" / "z2jh" / "values.yaml").read_text())
    single = values["singleuser"]
    assert single["image"]["name"] and single["image"]["tag"]
    lesson = single["defaultUrl"].removeprefix("/lab/tree/")
    assert (ROOT / lesson).exists(), f"defaultUrl names {lesson}, which is not in the repository"
    limit_mib = int(re.fullmatch(r"(\d+)M", single["memory"]["limit"]).group(1))
    from qedu.classroom import DEFAULT_MEMORY_MIB

    assert limit_mib == DEFAULT_MEMORY_MIB, "the pod limit and the one-machine kernel limit should be the same"
    assert int(single["memory"]["guarantee"].rstrip("M")) <= limit_mib
    assert values["cull"]["enabled"] is True


def test_hub_config_refuses_an_unknown_authenticator(tmp_path, monkeypatch):
    pytest.importorskip("jupyterhub", reason="JupyterHub is in the `teacher` extra")
    from traitlets.config import Config

    cfg = Config()
    monkeypatch.setenv("QEDU_HUB_STATE", str(tmp_path))
    code = (ROOT / "teacher" / "jupyterhub_config.py").read_text()
    exec(compile(code, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg, "__file__": "x"})
    assert cfg.JupyterHub.ip == "127.0.0.1" and cfg.JupyterHub.spawner_class == "simple"
    spec = (tmp_path / "jupyter" / "kernels" / "python3" / "kernel.json").read_text()
    assert "qedu.classroom" in spec
    monkeypatch.setenv("QEDU_HUB_AUTH", "ldap")
    with pytest.raises(ValueError, match="QEDU_HUB_AUTH='ldap'"):
        exec(compile(code, "jupyterhub_config.py", "exec"), {"get_config": lambda: Config(), "__file__": "x"})
