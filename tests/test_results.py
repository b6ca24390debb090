import json

import pytest

from qedu import results


def test_finds_the_repository_results_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook copied elsewhere still finds the measured tables
    monkeypatch.delenv("QEDU_RESULTS_DIR", raising=False)
    assert results.results_dir().name == "results"
    assert "machine" in results.load_results("ptq_ablation")


def test_env_var_wins_and_missing_file_names_the_choices(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text(json.dumps({"a": 1}))
    monkeypatch.setenv("QEDU_RESULTS_DIR", str(tmp_path))
    assert results.load_results("mine") == {"a": 1}
    assert results.load_results("mine.json") == {"a": 1}
    with pytest.raises(FileNotFoundError, match=r"available: \['mine'\]"):
        results.load_results("nope")


def test_bad_name_is_a_type_error():
    with pytest.raises(TypeError, match="name"):
        results.load_results(3)


def test_markdown_tables_load_too(tmp_path, monkeypatch):
    (tmp_path / "t.md").write_text("| a |\n")
    monkeypatch.setenv("QEDU_RESULTS_DIR", str(tmp_path))
    assert results.results_markdown("t") == "| a |\n"
    with pytest.raises(FileNotFoundError, match="available"):
        results.results_markdown("u")
