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


# --- What lesson 06 says about the GPU tables it shows (measured once on an H100). If the
# benchmark is re-run and the numbers move, these fail and the lesson's prose must be updated.

def _by_recipe(name):
    report = results.load_results(name)
    assert report["device"] == "cuda", f"{name} must be a GPU measurement"
    return {r["recipe"]: r for r in report["results"]}


def test_lesson06_gpu_speed_claims():
    fused = _by_recipe("mixed_precision_cuda_fused")
    fp32 = fused["fp32"]["median_ms"]
    assert fp32 / fused["bf16_autocast"]["median_ms"] > 5  # "more than 5x faster"
    assert fp32 / fused["fp16_autocast_gradscaler"]["median_ms"] > 5
    assert fused["bf16_pure"]["median_ms"] < min(fused["bf16_autocast"]["median_ms"],
                                                 fused["fp16_autocast_gradscaler"]["median_ms"])
    assert fp32 / fused["tf32"]["median_ms"] > 2  # "TF32 alone more than doubles"


def test_lesson06_gpu_memory_claims():
    explicit, fused = _by_recipe("mixed_precision_cuda"), _by_recipe("mixed_precision_cuda_fused")

    def saving(table, recipe):
        return 1 - table[recipe]["peak_memory_bytes"] / table["fp32"]["peak_memory_bytes"]

    assert 0 <= saving(explicit, "bf16_autocast") < 0.02  # "barely moves (under 2 %)"
    assert 0.2 < saving(fused, "bf16_autocast") < 0.3  # "about a quarter"
    assert 0.3 < saving(fused, "bf16_pure") < 0.37  # "about a third"
    assert saving(explicit, "bf16_pure") > saving(fused, "bf16_pure")  # "or more with written-out attention"


def test_lesson06_memory_estimate_claim():
    rows = results.load_results("memory_cuda")["rows"]
    larger = [r for r in rows if r["config"].get("hidden", 512) >= 512]
    assert larger and all(1.05 <= r["ratio"] < 1.35 for r in larger)  # "1.1-1.3 times the estimate"
