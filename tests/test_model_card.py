"""qedu.model_card: the recipe is read from the model, provenance from scikit-learn, tampered artifacts are refused."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from qedu.data import load_digits
from qedu.granularity import PerTensor
from qedu.model_card import (
    calibration_provenance, digits_provenance, load_artifact, model_card, quantization_recipe, quantized_tensors,
    save_artifact, sha256_bytes,
)
from qedu.models import WeightsMismatchError, per_class_accuracy, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.quantizers import dequantize


@pytest.fixture(scope="module")
def setup():
    data = load_digits(seed=0)
    model = pretrained("mlp", seed=0)
    config = PTQConfig(weight_bits=4, weight_granularity=PerTensor(), act_bits=8, act_method="percentile",
                       overrides={"fc3": {"weight_bits": 8}})
    return data, model, quantize_model(model, config, data.x_calib)


def test_recipe_is_read_from_the_quantized_model(setup):
    _, _, q = setup
    rows = {r["layer"]: r for r in quantization_recipe(q)}
    assert rows["fc1"]["weight_bits"] == 4 and rows["fc3"]["weight_bits"] == 8  # the override, from the model
    assert rows["fc1"]["weight_granularity"] == "per-tensor" and rows["fc1"]["weight_scales"] == 1
    assert rows["fc2"]["act_method"] == "percentile" and rows["fc2"]["act_bits"] == 8
    lo, hi = map(int, rows["fc1"]["weight_codes"].split(".."))
    assert -8 <= lo <= hi <= 7 and rows["fc1"]["act_scale"] == float(q.fc1.act.scale)


def test_recipe_refuses_a_model_whose_codes_contradict_its_bits(setup):
    _, _, q = setup
    import copy

    bad = copy.deepcopy(q)
    bad.fc1.weight_q[0, 0] = 100  # a 4-bit layer cannot hold code 100
    with pytest.raises(ValueError, match="fc1.*4-bit.*codes"):
        quantization_recipe(bad)
    with pytest.raises(TypeError, match="QuantLayer"):
        quantization_recipe(pretrained("mlp", seed=0))


def test_provenance_is_read_from_scikit_learns_copy():
    import sklearn
    from sklearn.datasets import load_digits as sk

    prov = digits_provenance()
    path = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    assert prov["instances"] == 1797 and "UCI" in prov["copy_of"] and "Alpaydin" in prov["creator"]
    assert prov["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["descr_mentions_license"] == ("licen" in sk().DESCR.lower())
    assert prov["license"].startswith("CC BY 4.0") and "archive.ics.uci.edu/dataset/80" in prov["source"]


def test_calibration_provenance_names_the_images(setup):
    data = setup[0]
    prov = calibration_provenance(data)
    assert prov["images"] == len(data.x_calib) == sum(prov["per_class"]) and prov["split_seed"] == 0
    changed = load_digits(seed=0)
    changed.x_calib[0, 0, 0, 0] += 1 / 16
    assert calibration_provenance(changed)["sha256_float32"] != prov["sha256_float32"]
    with pytest.raises(TypeError, match="Digits"):
        calibration_provenance(data.x_calib)


def test_artifact_round_trip_rebuilds_the_weights_exactly(setup, tmp_path):
    _, _, q = setup
    path = tmp_path / "q.safetensors"
    digest = save_artifact(path, quantized_tensors(q), {"recipe": "W4A8"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    t = load_artifact(path, digest)
    assert t["fc1.weight_q"].dtype == torch.int8 and t["fc1.weight_q"].abs().max() <= 8
    w = dequantize(t["fc1.weight_q"].to(torch.int32), t["fc1.weight_scale"], t["fc1.weight_zero_point"])
    assert torch.equal(w, q.fc1.layer.weight)
    assert float(t["fc2.act_scale"]) == float(q.fc2.act.scale)


@pytest.mark.parametrize("tamper", ["flip a byte", "truncate", "append", "another file"])
def test_a_tampered_artifact_is_refused(setup, tmp_path, tamper):
    _, _, q = setup
    path = tmp_path / "q.safetensors"
    digest = save_artifact(path, quantized_tensors(q))
    raw = bytearray(path.read_bytes())
    if tamper == "flip a byte":
        raw[-1] ^= 0x01  # one bit of the last tensor's data
    elif tamper == "truncate":
        raw = raw[:-4]
    elif tamper == "append":
        raw += b"\x00"
    else:
        other = tmp_path / "other.safetensors"
        save_artifact(other, {"w": torch.zeros(2)})
        raw = bytearray(other.read_bytes())
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsMismatchError, match="refusing to load"):
        load_artifact(path, digest)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda p, d: load_artifact(p, d[:10]), ValueError, "64 hex digits"),
    (lambda p, d: load_artifact(p, None), ValueError, "64 hex digits"),
    (lambda p, d: load_artifact(p.with_name("missing.safetensors"), d), FileNotFoundError, "no artifact"),
    (lambda p, d: save_artifact(p, {}), TypeError, "non-empty dict"),
    (lambda p, d: save_artifact(p, {"w": [1.0]}), TypeError, "torch.Tensor"),
    (lambda p, d: save_artifact(p, {"w": torch.ones(2)}, {"bits": 4}), TypeError, "metadata"),
    (lambda p, d: sha256_bytes("text"), TypeError, "bytes"),
])
def test_bad_input_is_a_clear_error(tmp_path, call, error, fragment):
    path = tmp_path / "a.safetensors"
    digest = save_artifact(path, {"w": torch.ones(2)})
    with pytest.raises(error, match=fragment):
        call(path, digest)


def test_card_is_written_from_the_objects(setup, tmp_path):
    data, model, q = setup
    path = tmp_path / "q.safetensors"
    digest = save_artifact(path, quantized_tensors(q))
    card = model_card(model, q, data, artifacts={"quantized model": path}, latency={"W4A8": "0.3 ms (example)"})
    assert card.startswith("## Quantization") and digest in card and "CC BY 4.0" in card
    assert "| fc1 | 4 | per-tensor |" in card and "| fc3 | 8 | per-tensor |" in card and "percentile" in card
    per_class = per_class_accuracy(q, data.x_test, data.y_test)
    assert "| quantized % | " + " | ".join(f"{100 * v:.1f}" for v in per_class.tolist()) + " |" in card
    assert "W4A8: 0.3 ms (example)" in card and "gaussian_noise 3" in card
    plain = model_card(model, q, data)
    assert "not measured" in plain and "No monitoring recorded" in plain


def test_card_lists_the_monitoring_rules(setup):
    from qedu.serving import AlarmRules

    data, model, q = setup
    card = model_card(model, q, data, monitoring=AlarmRules(psi_threshold=0.2, k=4))
    assert "psi_threshold=0.2" in card and "k=4" in card and "**disagreement**" in card
    with pytest.raises(TypeError, match="AlarmRules"):
        model_card(model, q, data, monitoring={"k": 3})


def test_recipe_of_a_cnn_names_its_convolutions():
    from qedu.models import make_cnn

    data = load_digits(seed=0)
    q = quantize_model(make_cnn(seed=0), PTQConfig(weight_bits=6), data.x_calib)
    rows = quantization_recipe(q)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    assert all(r["weight_bits"] == 6 and r["weight_scales"] == q.get_submodule(r["layer"]).weight_scale.numel()
               for r in rows)
    assert len(quantized_tensors(q)) == 3 * 6  # codes, scale, zero point, bias (folded BatchNorm), act scale, zero point


def test_provenance_reads_sklearns_own_description_without_importing_it():
    """The card reads sklearn's DESCR file directly (a kernel saves ~45 MiB): the same text load_digits gives."""
    import subprocess
    import sys

    code = ("import sys, qedu.model_card as m; p = m.digits_provenance(); "
            "assert 'sklearn' not in sys.modules, 'importing scikit-learn costs a kernel ~45 MiB'; print(p['creator'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from sklearn.datasets import load_digits

    from qedu.model_card import digits_provenance

    descr = load_digits().DESCR
    p = digits_provenance()
    assert p["creator"].split()[0].rstrip(".") in descr and p["instances"] == len(load_digits().target)
    assert p["copy_of"] in descr and p["uci_url"] in descr
