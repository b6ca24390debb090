"""Governance: a model card's quantization section written from the pipeline's own objects, and
artifacts that are refused when their bytes are not the recorded ones.

A card written by hand drifts from the model it describes. :func:`model_card` reads everything
from the objects themselves:

* the **recipe** (:func:`quantization_recipe`): bits, granularity, symmetric or affine, range
  method, per layer, from each :class:`~qedu.ptq.QuantLayer`'s config *and* checked against the
  codes and scales it holds (a 4-bit layer whose codes span more than 16 values is an error);
* the **calibration data** (:func:`digits_provenance`, :func:`calibration_provenance`): where the
  images come from (scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten
  Digits" test set, read from ``load_digits().DESCR`` at run time), its licence, the sha256 of the
  bundled file, and which images calibrated the model (count per class, the split seed, the
  sha256 of their float32 bytes);
* the **evaluation slices** (:func:`evaluation_slices`): accuracy per class and under
  corruptions, float vs quantized, and latency when a measurement is given;
* the **artifacts**: the sha256 of every file, as :func:`save_artifact` recorded it.

:func:`load_artifact` reads a safetensors file (tensors only, never a pickle) only if the sha256
of its bytes equals the one recorded in the card; otherwise it raises
:class:`~qedu.models.WeightsMismatchError` and loads nothing.

>>> sha256_bytes(b"qedu")[:12]
'5a1f1cf4ea1e'
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path

import torch
from torch import nn

from qedu._validation import check_module
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.models import WeightsMismatchError, per_class_accuracy, predict
from qedu.ptq import QuantLayer
from qedu.robustness import corrupt

__all__ = ["DIGITS_LICENSE", "sha256_bytes", "digits_provenance", "calibration_provenance", "quantization_recipe",
           "evaluation_slices", "quantized_tensors", "save_artifact", "load_artifact", "model_card"]

# scikit-learn's copy (load_digits().DESCR) states no licence; the UCI repository's page for the data set
# (archive.ics.uci.edu/dataset/80) licenses it under CC BY 4.0. Recorded here, with where it comes from.
DIGITS_LICENSE = {
    "license": "CC BY 4.0 (Creative Commons Attribution 4.0 International)",
    "source": "UCI Machine Learning Repository, https://archive.ics.uci.edu/dataset/80/"
              "optical+recognition+of+handwritten+digits",
    "citation": "Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits [Dataset]. "
                "UCI Machine Learning Repository.",
    "note": "scikit-learn's bundled copy ships no licence text of its own (its DESCR names the creator and "
            "the UCI page); the licence is the UCI repository's, as recorded on that page.",
}
_HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}.")
    return hashlib.sha256(data).hexdigest()


def digits_provenance() -> dict:
    """Where the digits come from, read from scikit-learn's own copy at run time.

    Returns title, creator, date, number of images, the sentence that says what the copy is, the
    UCI address it names, scikit-learn's version, the bundled file and its sha256, whether DESCR
    mentions a licence, and :data:`DIGITS_LICENSE`.
    """
    # Read scikit-learn's own files without importing it (with SciPy that costs a kernel ~45 MiB):
    # DESCR is sklearn/datasets/descr/digits.rst, the data sklearn/datasets/data/digits.csv.gz.
    from qedu.data import _digits_file, _raw_digits

    data_file = _digits_file()
    descr_file = data_file.parent.parent / "descr" / "digits.rst" if data_file is not None else None
    if descr_file is not None and descr_file.is_file():
        descr = descr_file.read_text(encoding="utf-8")
        sklearn_version = importlib.metadata.version("scikit-learn")
    else:  # an unusual install: ask scikit-learn itself
        import sklearn
        from sklearn.datasets import load_digits as sk_load_digits

        descr, sklearn_version = sk_load_digits().DESCR, sklearn.__version__
        data_file = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"

    def field(name: str) -> str:
        found = re.search(rf":{name}:\s*(.+)", descr)
        return found.group(1).strip() if found else "not stated"

    copy_of = re.search(r"This is a copy of [^\n]+", descr)
    url = re.search(r"https?://\S+", descr)
    return {
        "title": descr.split("\n")[2].strip() if descr.count("\n") > 2 else "digits",
        "creator": field("Creator").replace(" '@' ", "@"),
        "date": field("Date"),
        "instances": int(len(_raw_digits()[1])),
        "copy_of": copy_of.group(0).strip() if copy_of else "not stated",
        "uci_url": url.group(0) if url else None,
        "sklearn_version": sklearn_version,
        "file": f"sklearn/datasets/data/{data_file.name}",
        "file_sha256": sha256_bytes(data_file.read_bytes()) if data_file.is_file() else None,
        "descr_mentions_license": "licen" in descr.lower(),
        **DIGITS_LICENSE,
    }


def calibration_provenance(data) -> dict:
    """Which images calibrated the model: count, count per class, split seed, sha256 of their bytes.

    Args:
        data: the :class:`~qedu.data.Digits` the pipeline used (its ``x_calib``, ``y_calib``, ``seed``).
    """
    for name in ("x_calib", "y_calib", "seed"):
        if not hasattr(data, name):
            raise TypeError(f"data must be the Digits the model was calibrated with (qedu.data.load_digits), "
                            f"got {type(data).__name__} without {name}.")
    x = data.x_calib.detach().to(torch.float32).contiguous()
    counts = torch.bincount(data.y_calib, minlength=10).tolist()
    return {"images": len(x), "per_class": counts, "split_seed": data.seed,
            "drawn_from": "the training split of load_digits(seed) (never the test images)",
            "pixels": "pixel / 16, float32 in [0, 1]", "sha256_float32": sha256_bytes(x.numpy().tobytes())}


def _granularity(g) -> str:
    if isinstance(g, PerTensor):
        return "per-tensor"
    if isinstance(g, PerChannel):
        return f"per-channel (axis {g.axis})"
    if isinstance(g, PerGroup):
        return f"per-group ({g.group_size})"
    return repr(g)


def quantization_recipe(quantized: nn.Module) -> list[dict]:
    """Per quantized layer: weight bits, granularity, symmetric/affine, range method, activation grid.

    Read from each layer's config and checked against what it holds: the weight codes must fit
    ``weight_bits`` and there must be one scale per slice of the granularity.

    Raises:
        TypeError: ``quantized`` holds no :class:`~qedu.ptq.QuantLayer` (not from quantize_model).
        ValueError: a layer's codes or scales contradict its config.
    """
    quantized = check_module(quantized, "quantized")
    rows = []
    for name, m in quantized.named_modules():
        if not isinstance(m, QuantLayer):
            continue
        c, fmt = m.config, m.config.weight_format()
        lo, hi = int(m.weight_q.min()), int(m.weight_q.max())
        if lo < fmt.qmin or hi > fmt.qmax:
            raise ValueError(f"layer {name!r} says {c.weight_bits}-bit weights but holds codes {lo}..{hi} "
                             f"(outside {fmt.qmin}..{fmt.qmax}); the model was changed after quantization.")
        slices = c.weight_granularity.num_params(m.layer.weight.shape)
        if m.weight_scale.numel() != slices:
            raise ValueError(f"layer {name!r} says {_granularity(c.weight_granularity)} but holds "
                             f"{m.weight_scale.numel()} weight scales, not {slices}.")
        act = m.act
        rows.append({
            "layer": name, "weight_bits": c.weight_bits, "weight_granularity": _granularity(c.weight_granularity),
            "weight_grid": "symmetric" if c.weight_symmetric else "affine", "weight_method": c.weight_method,
            "weight_codes": f"{lo}..{hi}", "weight_scales": slices,
            "act_bits": None if act is None else act.fmt.bits,
            "act_grid": None if act is None else ("symmetric" if act.symmetric else "affine"),
            "act_method": None if act is None else act.method,
            "act_scale": None if act is None else float(act.scale), "act_zero_point":
                None if act is None else int(act.zero_point),
        })
    if not rows:
        raise TypeError("quantized holds no QuantLayer: pass the model qedu.ptq.quantize_model returned.")
    return rows


def evaluation_slices(float_model: nn.Module, quantized: nn.Module, x_test, y_test, *,
                      corruptions=("gaussian_noise", "blur", "contrast"), severity: int = 3, seed: int = 0,
                      latency: dict | None = None) -> dict:
    """Accuracy of both models overall, per class and under ``corruptions`` at ``severity``; ``latency``
    (e.g. ``{"float32": "0.21 ms", "W8A8": ...}``, from your own measurement) is passed through."""
    out = {"overall": {}, "per_class": {}, "corruptions": {}, "latency": dict(latency) if latency else None}
    for label, model in (("float32", float_model), ("quantized", quantized)):
        check_module(model, label)
        out["overall"][label] = float((predict(model, x_test) == y_test).double().mean())
        out["per_class"][label] = per_class_accuracy(model, x_test, y_test).tolist()
        for c in corruptions:
            x = corrupt(x_test, c, severity, seed)
            out["corruptions"].setdefault(f"{c} {severity}", {})[label] = float((predict(model, x) == y_test).double().mean())
    return out


# ----------------------------------------------------------------------------- artifacts
def quantized_tensors(quantized: nn.Module) -> dict[str, torch.Tensor]:
    """What an integer deployment needs, per quantized layer: int8 (or int16/int32) weight codes,
    weight scales and zero points, the bias, the activation scale and zero point."""
    tensors = {}
    for row in quantization_recipe(quantized):  # checks the codes fit their bits
        m = quantized.get_submodule(row["layer"])
        dtype = torch.int8 if row["weight_bits"] <= 8 else torch.int16 if row["weight_bits"] <= 16 else torch.int32
        tensors[f"{row['layer']}.weight_q"] = m.weight_q.to(dtype).contiguous()
        tensors[f"{row['layer']}.weight_scale"] = m.weight_scale.detach().float().contiguous()
        tensors[f"{row['layer']}.weight_zero_point"] = m.weight_zero_point.to(torch.int32).contiguous()
        if m.layer.bias is not None:
            tensors[f"{row['layer']}.bias"] = m.layer.bias.detach().float().contiguous()
        if m.act is not None:
            tensors[f"{row['layer']}.act_scale"] = m.act.scale.detach().float().reshape(1).contiguous()
            tensors[f"{row['layer']}.act_zero_point"] = m.act.zero_point.to(torch.int32).reshape(1).contiguous()
    return tensors


def save_artifact(path, tensors, metadata: dict | None = None) -> str:
    """Write ``tensors`` (a dict of tensors, or an ``nn.Module``'s state dict) as safetensors; return its sha256.

    ``metadata`` (str -> str) is stored in the file's header. Record the returned hash somewhere
    you trust (the model card): :func:`load_artifact` needs it.
    """
    from safetensors.torch import save

    if isinstance(tensors, nn.Module):
        tensors = tensors.state_dict()
    if not isinstance(tensors, dict) or not tensors or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise TypeError("tensors must be a non-empty dict of name -> torch.Tensor (or an nn.Module), got "
                        f"{type(tensors).__name__}.")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map str to str (safetensors headers hold text); json.dumps other values.")
    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    Path(path).write_bytes(data)
    return sha256_bytes(data)


def load_artifact(path, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file, only if the sha256 of its bytes is ``sha256``.

    The bytes are read once, hashed, and only then parsed (safetensors: tensors only, no code).

    Raises:
        FileNotFoundError: no file at ``path``. ValueError / TypeError: ``sha256`` is not 64 hex digits.
        WeightsMismatchError: the file's hash differs from ``sha256``: it is refused, nothing is loaded.
    """
    from safetensors.torch import load

    if not isinstance(sha256, str) or not _HEX.match(sha256.lower()):
        raise ValueError(f"sha256 must be the 64 hex digits recorded when the artifact was saved (see the model "
                         f"card), got {sha256!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact at {path}.")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != sha256.lower():
        raise WeightsMismatchError(f"refusing to load {path}: its sha256 is {actual}, but the model card records "
                                   f"{sha256.lower()}. The file was changed or damaged since it was saved; restore it "
                                   "from a trusted copy (never load it to 'see what changed').")
    return load(data)


# ----------------------------------------------------------------------------- the card
def _monitoring_lines(rules) -> list[str]:
    from qedu.serving import RULES, AlarmRules

    if rules is None:
        return ["No monitoring recorded for this card."]
    if not isinstance(rules, AlarmRules):
        raise TypeError(f"monitoring must be the qedu.serving.AlarmRules the deployment uses, got {type(rules).__name__}.")
    values = {"range": f"clip_tolerance={rules.clip_tolerance}, underuse={rules.underuse}",
              "drift": f"psi_threshold={rules.psi_threshold}, drift_window={rules.drift_window}",
              "disagreement": f"disagreement_threshold={rules.disagreement_threshold}", "rollback": f"k={rules.k}"}
    return ["Served with the float model in the shadow (qedu.serving); alarm rules and thresholds:", ""] + [
        f"* **{name}** ({values[name]}): {rule}." for name, rule in RULES.items()]


def _pct(v) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def model_card(float_model: nn.Module, quantized: nn.Module, data, *, artifacts: dict | None = None,
               latency: dict | None = None, corruptions=("gaussian_noise", "blur", "contrast"),
               severity: int = 3, monitoring=None) -> str:
    """The quantization section of a model card, in markdown, from the pipeline's objects.

    Args:
        float_model, quantized: the model and its quantized copy (:func:`qedu.ptq.quantize_model`).
        data: the :class:`~qedu.data.Digits` it was calibrated and tested on.
        artifacts: name -> path of each file shipped; their sha256 and sizes are computed here.
        latency: a measurement to report (passed through, labelled as given); ``None``: "not measured".
        monitoring: the :class:`~qedu.serving.AlarmRules` the deployment watches it with (its written
            rules and thresholds are listed); ``None``: "no monitoring recorded".
    """
    recipe = quantization_recipe(quantized)
    config = getattr(quantized, "qedu_config", None)
    prov, calib = digits_provenance(), calibration_provenance(data)
    slices = evaluation_slices(float_model, quantized, data.x_test, data.y_test, corruptions=corruptions,
                               severity=severity, latency=latency)
    lines = ["## Quantization", "", "### Recipe", ""]
    if config is not None:
        kept = ", ".join(config.keep_float) or "none"
        lines += [f"Configuration: `{config.name}` (qedu.ptq.PTQConfig, BatchNorm folded: {config.fold_bn}; "
                  f"layers kept in float32: {kept}).", ""]
    lines += ["| layer | weight bits | granularity | weight grid | weight range | codes | activation | act. range "
              "| act. scale, zero point |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recipe:
        act = "float" if r["act_bits"] is None else f"{r['act_bits']}-bit {r['act_grid']}"
        qp = "-" if r["act_scale"] is None else f"{r['act_scale']:.4g}, {r['act_zero_point']}"
        lines.append(f"| {r['layer']} | {r['weight_bits']} | {r['weight_granularity']} | {r['weight_grid']} | "
                     f"{r['weight_method']} | {r['weight_codes']} | {act} | {r['act_method'] or '-'} | {qp} |")
    lines += ["", "### Calibration data", "",
              f"* Source: {prov['title']}. {prov['copy_of']}: {prov['instances']:,} images, creator "
              f"{prov['creator']}, {prov['date']}; bundled with scikit-learn {prov['sklearn_version']} as "
              f"`{prov['file']}` (sha256 `{prov['file_sha256']}`). No download.",
              f"* Licence: {prov['license']}, per the {prov['source']}. {prov['note']} "
              f"(checked now: DESCR {'mentions' if prov['descr_mentions_license'] else 'does not mention'} a licence.)",
              f"* Cite: {prov['citation']}.",
              f"* Calibration images: {calib['images']} from {calib['drawn_from']}, split seed {calib['split_seed']}, "
              f"per class {calib['per_class']}; {calib['pixels']}; sha256 of their float32 bytes "
              f"`{calib['sha256_float32']}`.",
              "", "### Evaluation slices", "",
              f"Test set: {len(data.y_test)} images. Overall accuracy: float32 {_pct(slices['overall']['float32'])} %, "
              f"quantized {_pct(slices['overall']['quantized'])} %.", "",
              "| digit | " + " | ".join(str(c) for c in range(10)) + " |", "|---|" + "---|" * 10]
    for label in ("float32", "quantized"):
        lines.append(f"| {label} % | " + " | ".join(_pct(v) for v in slices["per_class"][label]) + " |")
    lines += ["", "| corruption, severity | float32 % | quantized % |", "|---|---|---|"]
    for name, accs in slices["corruptions"].items():
        lines.append(f"| {name} | {_pct(accs['float32'])} | {_pct(accs['quantized'])} |")
    lines += ["", "Latency: " + ("not measured for this card." if not latency else
                                 "; ".join(f"{k}: {v}" for k, v in latency.items()) + " (as measured and given)."),
              "", "### Monitoring in deployment", ""]
    lines += _monitoring_lines(monitoring)
    lines += ["", "### Artifacts", ""]
    if artifacts:
        lines += ["| artifact | file | bytes | sha256 |", "|---|---|---|---|"]
        for name, path in artifacts.items():
            raw = Path(path).read_bytes()
            lines.append(f"| {name} | `{Path(path).name}` | {len(raw):,} | `{sha256_bytes(raw)}` |")
        lines += ["", "`qedu.model_card.load_artifact(path, sha256)` refuses any file whose sha256 differs."]
    else:
        lines.append("No artifact files were given.")
    return "\n".join(lines)
