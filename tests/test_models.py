"""Tests for qedu.models: architectures, seeded training, evaluation and the pretrained cache."""
import pathlib
import warnings

import pytest
import torch
from torch import nn

import qedu.models as models
from qedu.data import load_digits
from qedu.models import (
    PRETRAINED,
    CacheWarning,
    History,
    clear_memo,
    count_params,
    default_cache_dir,
    evaluate,
    make_cnn,
    make_mlp,
    per_class_accuracy,
    predict,
    pretrained,
    pretrained_path,
    train,
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and an empty memo: the real home cache is never touched."""
    cache = tmp_path / "qedu-cache"
    monkeypatch.setenv("QEDU_CACHE_DIR", str(cache))
    clear_memo()
    yield cache
    clear_memo()


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The real pretrained MLP and CNN (full recipe), trained once for this module."""
    cache = tmp_path_factory.mktemp("trained")
    return {name: pretrained(name, cache_dir=cache, return_history=True) for name in ("mlp", "cnn")}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------ architectures

def test_mlp_architecture():
    model = make_mlp()
    assert count_params(model) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10 == 17226
    assert [type(m).__name__ for m in model] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model.fc1 is model[1] and model.fc3.out_features == 10
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_cnn_architecture():
    model = make_cnn()
    assert count_params(model) == 9978
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU", "Flatten", "Linear"]
    assert model.conv1.bias is None and model.bn1.num_features == 16
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_init_is_seeded_and_leaves_global_rng_alone(make):
    state = torch.random.get_rng_state()
    assert same_weights(make(seed=3), make(seed=3))
    assert not same_weights(make(seed=3), make(seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_custom_widths():
    assert count_params(make_mlp(hidden=(32,), n_classes=3)) == 64 * 32 + 32 + 32 * 3 + 3
    assert count_params(make_mlp(hidden=())) == 650
    assert make_cnn(channels=(4, 8, 8))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: make_mlp(hidden=(128, 0)), ValueError, "hidden"),
        (lambda: make_mlp(hidden="128"), TypeError, "hidden"),
        (lambda: make_mlp(n_classes=1), ValueError, "n_classes"),
        (lambda: make_cnn(channels=()), ValueError, "channels"),
        (lambda: make_cnn(seed=-1), ValueError, "seed"),
    ],
    ids=["zero width", "string widths", "one class", "no channels", "negative seed"],
)
def test_builders_reject_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


# ------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_training_is_bitwise_deterministic(make, data):
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    ha = train(a, data, epochs=2, seed=1)
    hb = train(b, data, epochs=2, seed=1)
    train(c, data, epochs=2, seed=2)
    assert same_weights(a, b)  # includes BatchNorm running statistics
    assert ha.train_loss == hb.train_loss and ha.test_acc == hb.test_acc
    assert not same_weights(a, c)


def test_training_shuffle_seed_matters(data):
    a, b = make_mlp(seed=0), make_mlp(seed=0)
    train(a, data, epochs=1, seed=0)
    train(b, data, epochs=1, seed=1)
    assert not same_weights(a, b)


def test_train_history_and_callback(data):
    seen = []
    model = make_mlp(seed=0)
    history = train(model, data, epochs=3, callback=lambda epoch, m: seen.append((epoch, m)))
    assert isinstance(history, History)
    assert len(history.train_loss) == len(history.test_acc) == len(history.epoch_seconds) == 3
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1]["test_acc"] == history.final_test_acc == evaluate(model, data.x_test, data.y_test)
    assert set(seen[0][1]) == {"train_loss", "test_acc", "seconds"}
    assert history.train_loss[-1] < history.train_loss[0]
    assert not model.training and "History(epochs=3" in repr(history)


def test_train_does_not_touch_the_data(data):
    before = data.x_train.clone()
    train(make_mlp(seed=0), data, epochs=1)
    assert torch.equal(before, data.x_train)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(epochs=2.0), TypeError, "pass 2"),
        (dict(lr=0), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr="fast"), TypeError, "lr"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
        (dict(callback=3), TypeError, "callback"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_train_rejects_bad_input(kwargs, error, words, data):
    with pytest.raises(error, match=words):
        train(make_mlp(), data, **kwargs)


def test_train_rejects_wrong_model_or_data(data):
    with pytest.raises(TypeError, match="nn.Module"):
        train("mlp", data)
    with pytest.raises(TypeError, match="load_digits"):
        train(make_mlp(), (data.x_train, data.y_train))


# ---------------------------------------------------------------------------------- evaluation

def test_trained_models_reach_95_percent(trained, data):
    for name, (model, history) in trained.items():
        accuracy = evaluate(model, data.x_test, data.y_test)
        assert accuracy >= 0.95, name
        assert accuracy == history.final_test_acc  # eval mode: the same number train() reported
        assert len(history.test_acc) == PRETRAINED[name].epochs


def test_predict_evaluate_per_class_agree(trained, data):
    model, _ = trained["cnn"]
    pred = predict(model, data.x_test)
    assert pred.dtype == torch.int64 and pred.shape == (360,)
    assert evaluate(model, data.x_test, data.y_test) == pytest.approx((pred == data.y_test).double().mean().item())
    per_class = per_class_accuracy(model, data.x_test, data.y_test)
    counts = torch.bincount(data.y_test, minlength=10).double()
    assert per_class.shape == (10,)
    assert float((per_class * counts).sum() / counts.sum()) == pytest.approx(evaluate(model, data.x_test, data.y_test))


def test_evaluate_restores_mode_and_uses_eval_mode(data):
    model = make_cnn(seed=0)
    train(model, data, epochs=1)
    model.train()
    a = evaluate(model, data.x_test[:7], data.y_test[:7])  # single small batch: train-mode BN would differ
    assert model.training
    model.eval()
    assert a == evaluate(model, data.x_test[:7], data.y_test[:7])


def test_evaluate_matches_the_model_dtype(data):
    model = make_mlp(seed=0).to(torch.float64)
    assert 0.0 <= evaluate(model, data.x_test, data.y_test) <= 1.0


def test_evaluate_known_values():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3)

    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([1, 1, 0, 2])
    assert evaluate(Constant(), x, y) == 0.5
    assert predict(Constant(), x).tolist() == [1, 1, 1, 1]
    assert per_class_accuracy(Constant(), x, y, n_classes=4).tolist()[:3] == [0.0, 1.0, 0.0]
    assert per_class_accuracy(Constant(), x, y, n_classes=4)[3].isnan()


def test_evaluate_rejects_bad_input():
    with pytest.raises(ValueError, match="4 images but y has 3"):
        evaluate(make_mlp(), torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels"):
        evaluate(make_mlp(), torch.zeros(4, 1, 8, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="n_classes"):
        per_class_accuracy(make_mlp(), torch.zeros(2, 1, 8, 8), torch.tensor([0, 5]), n_classes=3)


# ---------------------------------------------------------------------------- pretrained cache

def spy_train(monkeypatch):
    calls = []
    real = models.train

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "train", spy)
    return calls


def forbid_train(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("train() was called but the model should have come from the cache")

    monkeypatch.setattr(models, "train", fail)


def test_pretrained_trains_once_then_loads_from_disk(isolated_cache, monkeypatch):
    calls = spy_train(monkeypatch)
    first = pretrained("mlp", epochs=1)
    path = pretrained_path("mlp", epochs=1)
    assert len(calls) == 1 and path.is_file() and path.parent == isolated_cache / "models"
    assert not first.training
    clear_memo()  # a new session: only the disk cache is left
    forbid_train(monkeypatch)
    second = pretrained("mlp", epochs=1)
    assert same_weights(first, second) and second is not first and not second.training


def test_pretrained_memo_avoids_reading_the_disk_again(monkeypatch):
    pretrained("cnn", epochs=1)
    forbid_train(monkeypatch)
    monkeypatch.setattr(models.torch, "load", lambda *a, **k: pytest.fail("read the file again"))
    pretrained("cnn", epochs=1)


def test_pretrained_returns_independent_copies():
    a = pretrained("mlp", epochs=1)
    with torch.no_grad():
        a.fc1.weight.zero_()
    b = pretrained("mlp", epochs=1)
    assert b is not a and float(b.fc1.weight.detach().abs().sum()) > 0
    clear_memo()
    c = pretrained("mlp", epochs=1)
    assert same_weights(b, c)


def test_cache_file_is_a_weights_only_checkpoint():
    model, history = pretrained("cnn", epochs=1, return_history=True)
    payload = torch.load(pretrained_path("cnn", epochs=1), weights_only=True)
    assert payload["format"] == models.MODEL_FORMAT_VERSION
    assert set(payload["state_dict"]) == set(model.state_dict())
    assert payload["history"]["test_acc"] == history.test_acc
    assert not list(pretrained_path("cnn", epochs=1).parent.glob("*.tmp"))  # no temporary files left


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"this is not a checkpoint"),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        lambda p: p.write_bytes(b""),
        lambda p: torch.save({"format": models.MODEL_FORMAT_VERSION, "config": "{}", "state_dict": {}}, p),
        lambda p: torch.save({"format": -1}, p),
    ],
    ids=["garbage", "truncated", "empty", "other config", "old format"],
)
def test_damaged_cache_file_is_retrained_and_rewritten(damage, monkeypatch):
    original = pretrained("mlp", epochs=1)
    path = pretrained_path("mlp", epochs=1)
    damage(path)
    clear_memo()
    calls = spy_train(monkeypatch)
    with pytest.warns(CacheWarning, match="retraining"):
        again = pretrained("mlp", epochs=1)
    assert len(calls) == 1
    assert same_weights(original, again)  # training is deterministic, so retraining gives the same model
    assert torch.load(path, weights_only=True)["history"]  # rewritten with a good file
    forbid_train(monkeypatch)
    pretrained("mlp", epochs=1)


def test_weights_for_another_architecture_are_rejected():
    path = pretrained_path("mlp", epochs=1)
    pretrained("cnn", epochs=1)
    payload = torch.load(pretrained_path("cnn", epochs=1), weights_only=True)
    payload["config"] = models._config_json("mlp", 0, 0, models.TrainConfig(1, 1e-3, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    with pytest.warns(CacheWarning):
        model = pretrained("mlp", epochs=1)
    assert count_params(model) == 17226


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_cache_never_unpickles_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = pretrained_path("mlp", epochs=1)
    path.parent.mkdir(parents=True)
    torch.save({"format": models.MODEL_FORMAT_VERSION, "payload": _Malicious(marker)}, path)
    with pytest.warns(CacheWarning):
        model = pretrained("mlp", epochs=1)
    assert not marker.exists()
    assert isinstance(model, nn.Sequential)


def test_different_configurations_use_different_files(tmp_path):
    paths = {
        pretrained_path("mlp"),
        pretrained_path("mlp", seed=1),
        pretrained_path("mlp", epochs=5),
        pretrained_path("mlp", data_seed=1),
        pretrained_path("cnn"),
        pretrained_path("mlp", cache_dir=tmp_path),
    }
    assert len(paths) == 6
    assert pretrained_path("MLP") == pretrained_path("mlp") == pretrained_path("mlp", epochs=PRETRAINED["mlp"].epochs)


def test_different_seeds_give_different_models():
    assert not same_weights(pretrained("mlp", seed=0, epochs=1), pretrained("mlp", seed=1, epochs=1))


def test_unwritable_cache_dir_warns_once_and_still_returns_a_model(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    models._WARNED_DIRS.clear()
    with pytest.warns(CacheWarning, match="QEDU_CACHE_DIR"):
        model = pretrained("mlp", epochs=1, cache_dir=blocker / "cache")
    assert evaluate(model, torch.zeros(1, 1, 8, 8), torch.tensor([0])) in (0.0, 1.0)
    forbid_train(monkeypatch)  # the in-memory copy serves the rest of the session
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pretrained("mlp", epochs=1, cache_dir=blocker / "cache")
    assert same_weights(model, again)


def test_retrain_trains_again(monkeypatch):
    pretrained("mlp", epochs=1)
    calls = spy_train(monkeypatch)
    pretrained("mlp", epochs=1, retrain=True)
    assert len(calls) == 1


def test_pretrained_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\['cnn', 'mlp', 'tinylm'\]"):
        pretrained("resnet")
    with pytest.raises(ValueError, match="seed"):
        pretrained("mlp", seed=-1)
    with pytest.raises(ValueError, match="epochs"):
        pretrained("mlp", epochs=0)
    with pytest.raises(TypeError, match="retrain"):
        pretrained("mlp", retrain="yes")


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == pathlib.Path(str(tmp_path / "qedu-cache"))
    monkeypatch.delenv("QEDU_CACHE_DIR")
    monkeypatch.setattr(models.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "qedu"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec says: ignore it
    assert default_cache_dir() == pathlib.Path.home() / ".cache" / "qedu"
    monkeypatch.setattr(models.sys, "platform", "darwin")
    assert default_cache_dir() == pathlib.Path.home() / "Library" / "Caches" / "qedu"


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
def test_issue20_cache_dir_must_be_a_path():
    with pytest.raises(TypeError, match=r"cache_dir must be a folder path \(a str or pathlib.Path\) or None, got int 5"):
        models.pretrained("mlp", epochs=1, cache_dir=5)
    with pytest.raises(TypeError, match=r"cache_dir must be a folder path"):
        models.pretrained_path("mlp", cache_dir=5)
