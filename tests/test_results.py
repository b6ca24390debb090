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


# --- What lessons 06 and 07 say about the digits training-recipe table (benchmarks/mixed_precision.py
# --accuracy, five seeds). Re-running the benchmark can move these numbers: then update the prose.

def _recipes_digits():
    report = results.load_results("training_recipes_digits")
    assert report["seeds"] == [0, 1, 2, 3, 4] and report["epochs"] == 30  # "five seeds and 30 epochs"
    return {(r["table"], r["recipe"]): r for r in report["rows"]}


def test_lesson07_block_size_claims():
    rows = _recipes_digits()
    adam = lambda name: rows[("adam_states", name)]
    fp32 = adam("fp32 Adam")
    every_2048 = adam("8-bit Adam, dynamic map, blocks of 2048")
    paper = adam("8-bit Adam, dynamic map, blocks of 2048, tensors < 4096 elements in fp32")
    bnb = adam("8-bit Adam, dynamic map, blocks of 256, tensors < 4096 elements in fp32")
    # "Blocks of 2048 on every tensor diverged in one seed of five (accuracy 10 %, chance)"
    assert sum(a < 0.5 for a in every_2048["accuracies"]) == 1 and min(every_2048["accuracies"]) < 0.15
    # "With the paper's rule all five seeds trained, as well as fp32 Adam, and so did blocks of 256 with the exemption"
    for row in (paper, bnb):
        assert min(row["accuracies"]) > 0.95
        assert abs(row["mean"] - fp32["mean"]) < fp32["std"] + row["std"]
    # "The exemption costs 0.3 B/param here"
    extra = paper["per_seed"][0]["bytes_per_param"] - every_2048["per_seed"][0]["bytes_per_param"]
    assert 0.25 < extra < 0.35
    # "within one standard deviation": the safe rows are not ranked
    safe = [adam("8-bit Adam, dynamic map, blocks of 256"), paper, bnb]
    assert max(r["mean"] for r in safe) - min(r["mean"] for r in safe) < max(r["std"] for r in safe)


def test_lesson07_small_tensors_of_the_mlp():
    from qedu.models import make_mlp
    sizes = [p.numel() for p in make_mlp(seed=0).parameters()]
    small = [n for n in sizes if n < 4096]
    assert sorted(small) == [10, 64, 128, 640]  # "the last layer's 640 weights and the biases"
    assert 0.045 < sum(small) / sum(sizes) < 0.055  # "5 % of this tiny model"


def test_lesson06_dynamic_loss_scaling_table_claims():
    rows = _recipes_digits()
    scaling = lambda name: rows[("loss_scaling", name)]
    fp32 = scaling("loss / 2^0: fp32")
    for k in (16, 20):
        default = scaling(f"loss / 2^{k}: fp16, dynamic loss scaling (GradScaler defaults)")
        # "With GradScaler's defaults the scale stays at 2^16 for all 1,350 steps"
        assert all(i["min_scale"] == i["max_scale"] == 2.0**16 and i["skipped_steps"] == 0 for i in default["per_seed"])
        moving = scaling(f"loss / 2^{k}: fp16, dynamic loss scaling, growth_interval=10")
        # "growing every 10 steps, the scaler searches as above and trains as well"
        assert all(i["min_scale"] < i["max_scale"] and i["skipped_steps"] > 0 for i in moving["per_seed"])
        assert abs(moving["mean"] - fp32["mean"]) < fp32["std"] + moving["std"]


def test_lesson05_ternary_control_claims():
    report = results.load_results("qat_control")
    assert report["seeds"] == [0, 1, 2, 3, 4] and report["epochs"] == 3  # "five seeds", "the same 3 epochs"
    row = {r["method"]: r for r in report["rows"]}
    mean = lambda name: row[name]["mean"]
    qat, lsq = mean("QAT min/max, 3 epochs"), mean("QAT LSQ, 3 epochs")
    control = mean("float +3 epochs, PTQ TWN")
    # "over five seeds, about 3" / "still wins by about 3 points (min/max scales) to 4 (LSQ)"
    assert 2.5 <= qat - control <= 4 and 3.5 <= lsq - control <= 5
    # "more than the spread over seeds"
    assert qat - control > max(row["QAT min/max, 3 epochs"]["std"], row["float +3 epochs, PTQ TWN"]["std"])
    # "3 more float epochs before PTQ add nothing to min/max"
    assert mean("float +3 epochs, PTQ min/max") <= mean("PTQ min/max") + row["PTQ min/max"]["std"]
    # "good clipping (PTQ MSE) or TWN's threshold closes most of [the ternary gap] without training"
    gap = qat - mean("PTQ min/max")
    for name in ("PTQ MSE", "PTQ TWN"):
        assert mean(name) - mean("PTQ min/max") > 0.5 * gap
