"""Nothing in qedu changes a caller's module, tensor, train/eval mode or global random state (issue 20).

Every name in the ``__all__`` of every top-level ``qedu`` module (the widgets and checks
subpackages have their own tests) has an entry in ``ENTRIES`` below, keyed by where the object
is defined. An entry either says how to call it -- the inputs are built fresh, snapshotted
(weights and buffers, every submodule's train flag, ``requires_grad``, hooks, tensors' values,
torch/numpy/Python global RNG states, torch's thread count and grad mode), the call is made,
and everything must be unchanged -- or says in one line why it takes no module or tensor.

A new public name without an entry fails ``test_every_public_name_has_an_entry``: add one.
"""
import dataclasses
import importlib
import pkgutil
import random
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

import qedu
from qedu import analysis, calibration, data, evaluation, floats, granularity, loss_scaling, lsq, memory
from qedu import mixed_precision, models, nonuniform, optim, packing, ptq, qat, quantizers, robustness, rounding
from qedu import security, tasks
from qedu import accumulation, adaround, bias_correction, equalization, integer_arithmetic, ternary
from qedu.formats import INT4, INT8, UINT8, BF16, FP16, FP8_E4M3, IntFormat

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*", "ignore:Please use quant_min and quant_max")


class Call(NamedTuple):
    fn: Callable
    args: tuple = ()
    kwargs: dict = {}
    may_change: tuple = ()  # argument positions/names the function changes by design (documented)
    global_rng: str = ""  # non-empty: documented use of torch's global generator (the reason)


def skip(reason: str) -> str:
    return reason


# ----------------------------------------------------------------------------- inputs, built fresh for every call
def mlp():
    return models.make_mlp(seed=0).train()  # train mode: a function that leaves it in eval mode is caught


def cnn():
    return models.make_cnn(seed=0).train()


def images(n=8, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def labels(n=8):
    return torch.arange(n) % 10


def x2d(seed=0):
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))


def digits():
    d = data.load_digits(seed=0, n_calib=20)
    return dataclasses.replace(d, x_train=d.x_train[:64], y_train=d.y_train[:64], x_test=d.x_test[:32], y_test=d.y_test[:32])


def ptq_model(act_bits=4):
    return ptq.quantize_model(models.make_mlp(seed=0), ptq.PTQConfig(act_bits=act_bits), images(16, 1))


def prepared_ptq():
    return ptq.prepare(models.make_mlp(seed=0), ptq.PTQConfig(act_bits=8))


def prepared_qat():
    return qat.prepare_qat(models.make_mlp(seed=0), qat.QATConfig(weight_bits=2, act_bits=4), images(16, 1))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def names_task():
    t = tasks.load_names_task(seed=0)
    return dataclasses.replace(t, x_train=t.x_train[:256], y_train=t.y_train[:256])


def tiny_gpt():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return memory.TinyGPT(vocab_size=16, seq_len=8, hidden=16, n_layers=1, n_heads=2).train()


NO_TENSOR = "takes no module or tensor"
CONSTANT = "a constant (a value, not a function)"

# ----------------------------------------------------------------------------- the table: every public name
ENTRIES = {
    # qedu
    "qedu.setup": skip("seeds the global RNGs on purpose: that is its job (qedu.setup(seed=0) starts every lesson)"),
    "qedu.environment_report": skip(NO_TENSOR),
    "qedu.__version__": skip(CONSTANT),
    # formats / floats
    "qedu.formats.IntFormat": skip(NO_TENSOR + " (a frozen format value)"),
    **{f"qedu.formats.{n}": skip(CONSTANT) for n in ("INT8", "UINT8", "INT4", "UINT4", "INT2", "UINT2", "BINARY")},
    "qedu.floats.FloatFormat": skip(NO_TENSOR + " (a frozen format value)"),
    **{f"qedu.floats.{n}": skip(CONSTANT) for n in ("FP32", "FP16", "BF16", "FP8_E4M3", "FP8_E5M2", "FP6_E3M2",
                                                     "FP6_E2M3", "FP4_E2M1")},
    "qedu.floats.cast": lambda: Call(floats.cast, (torch.tensor([0.1, 1e5, -3.0]), FP16)),
    "qedu.floats.default_saturate": skip(NO_TENSOR),
    "qedu.floats.grid": skip(NO_TENSOR),
    "qedu.floats.encode": lambda: Call(floats.encode, (torch.tensor([1.0, -2.0]), FP8_E4M3)),
    "qedu.floats.decode": lambda: Call(floats.decode, (torch.tensor([56, 192]), FP8_E4M3)),
    "qedu.floats.fields": lambda: Call(floats.fields, (torch.tensor(1.5), FP16)),
    "qedu.floats.Fields": skip(NO_TENSOR + " (what fields() returns)"),
    "qedu.floats.format_table": skip(NO_TENSOR),
    "qedu.floats.repeated_add": skip(NO_TENSOR + " (numbers in, a new tensor out)"),
    # granularity
    "qedu.granularity.PerTensor": lambda: Call(lambda x: granularity.PerTensor().reduce(x, lambda r: r.amax(dim=1)), (x2d(),)),
    "qedu.granularity.PerChannel": lambda: Call(lambda x: granularity.PerChannel(0).reduce(x, lambda r: r.amax(dim=1)), (x2d(),)),
    "qedu.granularity.PerGroup": lambda: Call(lambda x: granularity.PerGroup(4).reduce(x, lambda r: r.amax(dim=1)), (x2d(),)),
    "qedu.granularity.Granularity": skip("a type alias (Union of the three granularities)"),
    # quantizers
    "qedu.quantizers.FLOAT32_EPS": skip(CONSTANT),
    "qedu.quantizers.ROUNDING_MODES": skip(CONSTANT),
    "qedu.quantizers.SYMMETRIC_RULES": skip(CONSTANT),
    "qedu.quantizers.choose_qparams": lambda: Call(quantizers.choose_qparams, (x2d(), INT8, granularity.PerChannel(0))),
    "qedu.quantizers.choose_qparams_from_minmax": lambda: Call(quantizers.choose_qparams_from_minmax,
                                                               (torch.tensor([-1.0]), torch.tensor([2.0]), INT8, False)),
    "qedu.quantizers.round_codes": lambda: Call(quantizers.round_codes, (torch.tensor([0.5, 1.5]), "stochastic", gen())),
    "qedu.quantizers.quantize": lambda: Call(quantizers.quantize, (x2d(), torch.tensor(0.1), torch.tensor(0), INT8)),
    "qedu.quantizers.dequantize": lambda: Call(quantizers.dequantize, (torch.tensor([1, -2]), torch.tensor(0.1), torch.tensor(0))),
    "qedu.quantizers.fake_quantize": lambda: Call(quantizers.fake_quantize, (x2d(), torch.tensor(0.1), torch.tensor(1), INT8, "stochastic", gen())),
    "qedu.quantizers.QuantizationError": skip(NO_TENSOR + " (a result tuple)"),
    "qedu.quantizers.quantization_error": lambda: Call(quantizers.quantization_error, (x2d(), x2d(1))),
    # calibration
    "qedu.calibration.minmax_range": lambda: Call(calibration.minmax_range, (x2d(),)),
    "qedu.calibration.percentile_range": lambda: Call(calibration.percentile_range, (x2d(), 90.0)),
    "qedu.calibration.mse_range": lambda: Call(calibration.mse_range, (x2d(), INT4), {"n_grid": 10}),
    "qedu.calibration.kl_range": lambda: Call(calibration.kl_range, (x2d(), INT4), {"n_bins": 64}),
    "qedu.calibration.clipping_error": lambda: Call(calibration.clipping_error, (x2d(), torch.tensor(-1.0), torch.tensor(1.0), INT4)),
    "qedu.calibration.ClippingError": skip(NO_TENSOR + " (a result tuple)"),
    **{f"qedu.calibration.{cls.__name__}": (lambda cls=cls: Call(lambda x: cls()(x) is x and cls, (x2d(),)))
       for cls in (calibration.MinMaxObserver, calibration.MovingAverageMinMaxObserver, calibration.PercentileObserver,
                   calibration.MSEObserver, calibration.KLObserver)},
    "qedu.calibration.Observer": skip("the abstract base class of the observers above"),
    "qedu.calibration.OBSERVERS": skip(CONSTANT),
    "qedu.calibration.make_observer": lambda: Call(lambda x: calibration.make_observer("percentile", percentile=99.0)(x), (x2d(),)),
    "qedu.calibration.observing": lambda: Call(_observe, (mlp(), images())),
    "qedu.calibration.record_activations": lambda: Call(calibration.record_activations, (mlp(), images())),
    # ptq
    "qedu.ptq.WEIGHT_METHODS": skip(CONSTANT),
    "qedu.ptq.ACT_METHODS": skip(CONSTANT),
    "qedu.ptq.PTQConfig": skip(NO_TENSOR + " (a frozen configuration value)"),
    "qedu.ptq.QuantLayer": lambda: Call(ptq.QuantLayer, (nn.Linear(8, 4), ptq.PTQConfig(weight_bits=2))),
    "qedu.ptq.ActQuant": lambda: Call(lambda x: ptq.ActQuant("minmax", UINT8, False, 99.0)(x), (x2d(),)),
    "qedu.ptq.quantizable_layers": lambda: Call(ptq.quantizable_layers, (cnn(),)),
    "qedu.ptq.fold_bn_params": lambda: Call(ptq.fold_bn_params, (torch.ones(2, 3), torch.zeros(2), torch.zeros(2), torch.ones(2),
                                                                 torch.ones(2), torch.zeros(2), 1e-5)),
    "qedu.ptq.fold_batchnorm": lambda: Call(ptq.fold_batchnorm, (cnn(),)),
    "qedu.ptq.prepare": lambda: Call(ptq.prepare, (cnn(), ptq.PTQConfig())),
    "qedu.ptq.calibrate": lambda: Call(ptq.calibrate, (prepared_ptq(), images()), may_change=(0,)),  # documented: fills the prepared copy
    "qedu.ptq.convert": lambda: Call(ptq.convert, (ptq.calibrate(prepared_ptq(), images()),)),
    "qedu.ptq.quantize_model": lambda: Call(ptq.quantize_model, (cnn(), ptq.PTQConfig(act_bits=8), images())),
    "qedu.ptq.SizeReport": skip(NO_TENSOR + " (a result)"),
    "qedu.ptq.model_size": lambda: Call(ptq.model_size, (cnn(), ptq.PTQConfig(weight_bits=4))),
    # qat
    "qedu.qat.RoundSTE": lambda: Call(qat.RoundSTE.apply, (torch.tensor([0.4, 1.6], requires_grad=True),)),
    "qedu.qat.round_ste": lambda: Call(qat.round_ste, (torch.tensor([0.4, 1.6], requires_grad=True),)),
    "qedu.qat.round_clip_ste": lambda: Call(qat.round_clip_ste, (torch.tensor([-3.0, 0.4]), -2, 1)),
    "qedu.qat.fake_quantize_ste": lambda: Call(qat.fake_quantize_ste, (x2d(), torch.tensor(0.1, requires_grad=True), 0, INT4)),
    "qedu.qat.METHODS": skip(CONSTANT),
    "qedu.qat.ACT_METHODS": skip(CONSTANT),
    "qedu.qat.SCALE_INITS": skip(CONSTANT),
    "qedu.qat.QATConfig": skip(NO_TENSOR + " (a frozen configuration value)"),
    "qedu.qat.MinMaxWeightQuant": lambda: Call(lambda w: qat.MinMaxWeightQuant(INT4, granularity.PerChannel(0))(w), (x2d(),)),
    "qedu.qat.QATLayer": lambda: Call(lambda layer, x: qat.QATLayer(layer, qat.MinMaxWeightQuant(INT4, granularity.PerTensor()))(x),
                                      (nn.Linear(8, 2), x2d()), may_change=()),
    "qedu.qat.QuantizedLayer": lambda: Call(qat.QuantizedLayer, (nn.Linear(2, 1), torch.tensor([[1, -1]], dtype=torch.int32),
                                                                 torch.tensor(0.5), torch.tensor(0), None)),
    "qedu.qat.FixedActQuant": lambda: Call(lambda s, z, x: qat.FixedActQuant(s, z, UINT8)(x), (torch.tensor(0.1), torch.tensor(3), x2d())),
    "qedu.qat.prepare_qat": lambda: Call(qat.prepare_qat, (cnn(), qat.QATConfig(weight_bits=2, act_bits=4), images())),
    "qedu.qat.convert": lambda: Call(qat.convert, (prepared_qat(),)),
    "qedu.qat.TrainingProgress": skip(NO_TENSOR + " (a progress bar)"),
    "qedu.qat.train_qat": lambda: Call(qat.train_qat, (qat.prepare_qat(models.make_mlp(seed=0), qat.QATConfig(scale_init="minmax")), digits()), {"epochs": 1, "progress": False},
                                       may_change=(0,)),  # documented: trains the prepared copy in place
    # lsq
    "qedu.lsq.INITS": skip(CONSTANT),
    "qedu.lsq.lsq_grad_scale": skip(NO_TENSOR),
    "qedu.lsq.GradScale": lambda: Call(lsq.GradScale.apply, (torch.tensor(0.5, requires_grad=True), 0.1)),
    "qedu.lsq.scale_grad": lambda: Call(lsq.scale_grad, (torch.tensor(0.5, requires_grad=True), 0.1)),
    "qedu.lsq.init_step": lambda: Call(lsq.init_step, (x2d(), IntFormat(4), granularity.PerChannel(0), "mse")),
    "qedu.lsq.LSQQuantizer": lambda: Call(lambda x: lsq.LSQQuantizer(x, IntFormat(2))(x), (x2d(),)),
    "qedu.lsq.PACTFunction": lambda: Call(lsq.PACTFunction.apply, (x2d(), torch.tensor(1.0), IntFormat(2, signed=False))),
    "qedu.lsq.pact_quantize": lambda: Call(lsq.pact_quantize, (x2d(), torch.tensor(1.0), IntFormat(2, signed=False))),
    "qedu.lsq.PACTQuantizer": lambda: Call(lambda x: lsq.PACTQuantizer(x.abs(), IntFormat(2, signed=False))(x), (x2d(),)),
    # nonuniform
    "qedu.nonuniform.quantize_to_codebook": lambda: Call(nonuniform.quantize_to_codebook, (x2d(), torch.tensor([-1.0, 0.0, 1.0]))),
    "qedu.nonuniform.dequantize_codebook": lambda: Call(nonuniform.dequantize_codebook, (torch.tensor([0, 2]), torch.tensor([-1.0, 0.0, 1.0]))),
    "qedu.nonuniform.kmeans_codebook": lambda: Call(nonuniform.kmeans_codebook, (x2d(), 2), {"iters": 5}),
    "qedu.nonuniform.nf4_levels": skip(NO_TENSOR),
    "qedu.nonuniform.blockwise_absmax_quantize": lambda: Call(nonuniform.blockwise_absmax_quantize, (x2d(), nonuniform.nf4_levels(), 8)),
    "qedu.nonuniform.blockwise_absmax_dequantize": lambda: Call(nonuniform.blockwise_absmax_dequantize,
                                                                (torch.tensor([8, 0, 15]), torch.tensor([2.0, 0.5]), nonuniform.nf4_levels(), 2)),
    "qedu.nonuniform.NF4_OFFSET": skip(CONSTANT),
    # packing
    "qedu.packing.pack": lambda: Call(packing.pack, (torch.tensor([1, 2, 3, 0]), 2)),
    "qedu.packing.unpack": lambda: Call(packing.unpack, (torch.tensor([57], dtype=torch.uint8), 2, 4)),
    "qedu.packing.storage_bytes": skip(NO_TENSOR + " (a shape in, bytes out)"),
    "qedu.packing.StorageReport": skip(NO_TENSOR + " (a result tuple)"),
    "qedu.packing.PACK_BITS": skip(CONSTANT),
    # rounding, loss scaling, mixed precision
    "qedu.rounding.stochastic_round": lambda: Call(rounding.stochastic_round, (x2d(), FP8_E4M3, gen())),
    "qedu.rounding.swamping": skip(NO_TENSOR + " (numbers in; pass a generator for 'stochastic')"),
    "qedu.rounding.ROUNDINGS": skip(CONSTANT),
    # documented: step() unscales the gradients in place and lets the optimizer update the layer
    "qedu.loss_scaling.AMAX_FLOOR": skip(CONSTANT),
    "qedu.loss_scaling.StaticLossScaler": lambda: Call(_scaler_round_trip, (loss_scaling.StaticLossScaler(2.0**8), nn.Linear(2, 1)),
                                                       may_change=(1,)),
    "qedu.loss_scaling.DynamicLossScaler": lambda: Call(_scaler_round_trip, (loss_scaling.DynamicLossScaler(2.0**8), nn.Linear(2, 1)),
                                                        may_change=(1,)),
    "qedu.loss_scaling.DelayedScaling": lambda: Call(lambda x: loss_scaling.DelayedScaling().quantize(x), (x2d(),)),
    "qedu.loss_scaling.scale_from_amax": skip(NO_TENSOR),
    "qedu.mixed_precision.Precision": skip(NO_TENSOR + " (a frozen configuration value)"),
    "qedu.mixed_precision.GradStats": lambda: Call(mixed_precision.GradStats.count, (x2d(), floats.cast(x2d(), FP16), FP16)),
    "qedu.mixed_precision.simulate": lambda: Call(lambda m, x: mixed_precision.simulate(m, mixed_precision.Precision())(x), (mlp(), images())),
    "qedu.mixed_precision.SimulatedModel": lambda: Call(mixed_precision.SimulatedModel, (mlp(), mixed_precision.Precision(master_weights=False))),
    "qedu.mixed_precision.SimulatedRun": skip(NO_TENSOR + " (a result)"),
    "qedu.mixed_precision.train_simulated": lambda: Call(mixed_precision.train_simulated, (mlp(), digits(), mixed_precision.Precision()),
                                                         {"epochs": 1, "loss_scale": "dynamic"}),
    "qedu.mixed_precision.BACKENDS": skip(CONSTANT),
    # optim
    "qedu.optim.dynamic_map": skip(NO_TENSOR),
    "qedu.optim.linear_map": skip(NO_TENSOR),
    "qedu.optim.Adam": lambda: Call(_adam_step, (nn.Linear(4, 2),), may_change=(0,)),  # documented: step() updates the parameters
    "qedu.optim.STATE_FORMATS": skip(CONSTANT),
    "qedu.optim.AdamRun": skip(NO_TENSOR + " (a result)"),
    "qedu.optim.train_adam": lambda: Call(optim.train_adam, (mlp(), digits()), {"epochs": 1}),
    # memory
    "qedu.memory.Recipe": skip(NO_TENSOR),
    "qedu.memory.RECIPES": skip(CONSTANT),
    "qedu.memory.Memory": skip(NO_TENSOR + " (a result)"),
    "qedu.memory.training_memory": skip(NO_TENSOR),
    "qedu.memory.transformer_activation_bytes": skip(NO_TENSOR),
    "qedu.memory.gpt_param_count": skip(NO_TENSOR),
    "qedu.models.TinyGPT": lambda: Call(lambda: memory.TinyGPT(16, 8, 16, 1, 2),  # defined in qedu.models
                                        global_rng="like every torch module constructor, draws its initial weights from torch's "
                                                   "global generator (documented; qedu.setup seeds it)"),
    "qedu.memory.allocate_training_state": lambda: Call(memory.allocate_training_state, (mlp(), "mixed_adam8bit")),
    "qedu.memory.measure_state_bytes": lambda: Call(memory.measure_state_bytes, (mlp(), "mixed")),
    "qedu.memory.measure_activation_bytes": lambda: Call(memory.measure_activation_bytes, (tiny_gpt(), torch.zeros(2, 8, dtype=torch.long))),
    "qedu.memory.measure_cuda_peak": skip("needs a CUDA GPU; " + NO_TENSOR + " (it builds its own model)"),
    # models and data
    "qedu.models.make_mlp": skip(NO_TENSOR + " (seeded: leaves the global RNG alone, tested in test_models.py)"),
    "qedu.models.make_cnn": skip(NO_TENSOR + " (seeded, as make_mlp)"),
    "qedu.models.count_params": lambda: Call(models.count_params, (cnn(),)),
    "qedu.models.History": skip(NO_TENSOR + " (a result)"),
    "qedu.models.train": lambda: Call(models.train, (mlp(), digits()), {"epochs": 1}, may_change=(0,)),  # documented: in place
    "qedu.models.predict": lambda: Call(models.predict, (mlp(), images())),
    "qedu.models.evaluate": lambda: Call(models.evaluate, (mlp(), images(), labels())),
    "qedu.models.per_class_accuracy": lambda: Call(models.per_class_accuracy, (mlp(), images(), labels())),
    "qedu.models.TrainConfig": skip(NO_TENSOR),
    "qedu.models.PRETRAINED": skip(CONSTANT),
    "qedu.models.pretrained": lambda: Call(models.pretrained, ("mlp",), {"epochs": 1, "cache_dir": _CACHE}),
    "qedu.models.pretrained_path": skip(NO_TENSOR),
    "qedu.models.default_cache_dir": skip(NO_TENSOR),
    "qedu.models.clear_memo": skip(NO_TENSOR + " (clears qedu's own in-memory cache)"),
    "qedu.models.CacheWarning": skip("a warning class"),
    "qedu.data.Digits": skip(NO_TENSOR + " (a data container)"),
    "qedu.data.load_digits": skip(NO_TENSOR + " (fresh tensors every call, tested in test_data.py)"),
    "qedu.data.calibration_indices": lambda: Call(data.calibration_indices, (labels(20), 5), {"seed": 0}),
    "qedu.data.calibration_subset": lambda: Call(data.calibration_subset, (images(20), labels(20), 5), {"seed": 0}),
    "qedu.data.batches": lambda: Call(lambda x, y: list(data.batches(x, y, 3, shuffle=True, seed=0)), (images(), labels())),
    # evaluation
    "qedu.evaluation.Latency": skip(NO_TENSOR + " (a result)"),
    "qedu.evaluation.measure_latency": lambda: Call(evaluation.measure_latency, (mlp(), images()), {"warmup": 1, "repeats": 2, "threads": 2}),
    "qedu.evaluation.serialized_bytes": lambda: Call(evaluation.serialized_bytes, (mlp(),)),
    "qedu.evaluation.int8_support": skip(NO_TENSOR),
    "qedu.evaluation.dynamic_int8": lambda: Call(_dynamic_int8_if_supported, (mlp(),)),
    "qedu.evaluation.logits": lambda: Call(evaluation.logits, (mlp(), images())),
    "qedu.evaluation.disagreement_rate": lambda: Call(evaluation.disagreement_rate, (labels(), labels().flip(0))),
    "qedu.evaluation.class_accuracy": lambda: Call(evaluation.class_accuracy, (labels(), labels().flip(0))),
    "qedu.evaluation.per_class_deltas": lambda: Call(evaluation.per_class_deltas, (labels(), labels(), labels().flip(0))),
    "qedu.evaluation.Flips": skip(NO_TENSOR + " (a result tuple)"),
    "qedu.evaluation.flipped": lambda: Call(evaluation.flipped, (labels(), labels(), labels().flip(0))),
    "qedu.evaluation.confidence_shift": lambda: Call(evaluation.confidence_shift, (labels(4), x2d()[:, :10].repeat(1, 2)[:, :10],
                                                                                    x2d(1)[:, :10].repeat(1, 2)[:, :10])),
    "qedu.evaluation.RegressionReport": skip(NO_TENSOR + " (a result)"),
    "qedu.evaluation.regression_report": lambda: Call(evaluation.regression_report, (labels(), labels(), labels().flip(0))),
    "qedu.evaluation.compare_models": lambda: Call(evaluation.compare_models, (mlp(), cnn(), images(), labels())),
    # analysis
    "qedu.analysis.output_error": lambda: Call(analysis.output_error, (mlp(), cnn(), images())),
    "qedu.analysis.layer_sensitivity": lambda: Call(analysis.layer_sensitivity, (mlp(), ptq.PTQConfig(act_bits=8), images(), images(8, 2))),
    "qedu.analysis.BitAllocation": skip(NO_TENSOR + " (a result)"),
    "qedu.analysis.allocate_bits": lambda: Call(analysis.allocate_bits, (mlp(), ptq.PTQConfig(act_bits=None), None, 12_000),
                                                {"candidate_bits": (8, 4), "x_eval": images()}),
    "qedu.analysis.AblationTable": skip(NO_TENSOR + " (a result)"),
    "qedu.analysis.ablate": lambda: Call(analysis.ablate, (lambda m, seed: float(m(images(2, seed)).sum().detach()), {"m": [mlp()]}, [0, 1])),
    # robustness and security
    "qedu.robustness.CORRUPTIONS": skip(CONSTANT),
    "qedu.robustness.SEVERITIES": skip(CONSTANT),
    "qedu.robustness.LEVELS": skip(CONSTANT),
    "qedu.robustness.corrupt": lambda: Call(robustness.corrupt, (images(), "gaussian_noise", 3)),
    "qedu.robustness.RobustnessTable": skip(NO_TENSOR + " (a result)"),
    "qedu.robustness.robustness_table": lambda: Call(robustness.robustness_table, ({"a": mlp(), "b": cnn()}, images(), labels()),
                                                     {"corruptions": ["shift", "occlusion"], "severities": [0, 3]}),
    "qedu.security.fgsm": lambda: Call(security.fgsm, (mlp(), images(), labels(), 0.1)),
    "qedu.security.pgd": lambda: Call(security.pgd, (mlp(), images(), labels(), 0.1), {"steps": 2}),
    "qedu.security.straight_through": lambda: Call(security.straight_through, (ptq_model(),)),
    "qedu.security.attack_table": lambda: Call(security.attack_table, ({"f": mlp()}, {"f": mlp(), "q": ptq_model()}, images(), labels(), [0.1]),
                                               {"attack": "pgd", "steps": 2}),
    "qedu.security.poison_calibration": lambda: Call(security.poison_calibration, (images(),), {"n": 2}),
    "qedu.security.clip_rate": lambda: Call(security.clip_rate, (x2d(), torch.tensor(0.1), torch.tensor(3), UINT8)),
    "qedu.security.CalibrationReport": skip(NO_TENSOR + " (a result)"),
    "qedu.security.calibration_report": lambda: Call(security.calibration_report, (mlp(), ptq.PTQConfig(act_bits=4), images(), images(8, 3), labels())),
    "qedu.security.MonitorReport": skip(NO_TENSOR + " (a result)"),
    "qedu.security.RangeMonitor": lambda: Call(lambda q, xc, x: security.RangeMonitor(q, xc).check(x), (ptq_model(), images(16, 1), images(8, 4))),
    # tasks
    "qedu.tasks.VOCAB": skip(CONSTANT),
    "qedu.tasks.NamesTask": skip(NO_TENSOR + " (a data container)"),
    "qedu.tasks.load_names_task": skip(NO_TENSOR + " (fresh tensors every call, tested in test_tasks.py)"),
    "qedu.tasks.decode": lambda: Call(tasks.decode, (torch.tensor([38, 38, 19]),)),
    "qedu.tasks.OneHot": lambda: Call(lambda x: tasks.OneHot()(x), (torch.zeros(2, 6, dtype=torch.long),)),
    "qedu.tasks.make_char_mlp": skip(NO_TENSOR + " (seeded: forks the global RNG)"),
    "qedu.tasks.bits_per_char": lambda: Call(tasks.bits_per_char, (tasks.make_char_mlp(seed=0).train(), torch.zeros(4, 6, dtype=torch.long),
                                                                   torch.zeros(4, dtype=torch.long))),
    "qedu.tasks.trained_char_mlp": lambda: Call(tasks.trained_char_mlp, (), {"seed": 7, "epochs": 1, "task": names_task()}),
    # results and curriculum: files and text
    "qedu.results.results_dir": skip(NO_TENSOR),
    "qedu.results.load_results": skip(NO_TENSOR),
    "qedu.results.results_markdown": skip(NO_TENSOR),
    "qedu.results.lesson_performance_table": skip(NO_TENSOR),
    "qedu.curriculum.Lesson": skip(NO_TENSOR),
    "qedu.curriculum.LESSONS": skip(CONSTANT),
    "qedu.curriculum.lesson_map": skip(NO_TENSOR),
}

# ----------------------------------------------------------------------------- packaging, block formats, fp8, LoRA
def _lin(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(32, 32).train()


def _lora_model():
    return nn.Sequential(_lin(0), nn.ReLU(), _lin(1)).train()


def _lazy(module_name: str, attr: str):
    return getattr(importlib.import_module(module_name), attr)


ENTRIES.update({
    # the qedu command and where the bundled notebooks/results live: files and text
    "qedu.bundle.KINDS": skip(CONSTANT),
    "qedu.bundle.bundle_path": skip(NO_TENSOR),
    "qedu.bundle.notebooks": skip(NO_TENSOR),
    "qedu.cli.copy_lessons": skip(NO_TENSOR + " (copies notebooks into a folder; tests/test_cli.py)"),
    "qedu.cli.main": skip(NO_TENSOR),
    "qedu.classroom.DEFAULT_MEMORY_MIB": skip(CONSTANT),
    "qedu.classroom.parse_args": skip(NO_TENSOR),
    "qedu.classroom.limit_memory": skip("sets this process's own memory limit on purpose: the class kernel's launcher (tests/test_classroom.py)"),
    "qedu.classroom.memory_hint": skip(NO_TENSOR),
    "qedu.classroom.kernel_spec": skip(NO_TENSOR),
    "qedu.classroom.main": skip("starts a kernel (tests/test_classroom.py runs it under a real JupyterHub)"),
    "qedu.doctor.doctor_report": skip(NO_TENSOR),
    "qedu.doctor.doctor_text": skip(NO_TENSOR),
    "qedu.doctor.extras_status": skip(NO_TENSOR),
    # OCP MX and NVFP4
    **{f"qedu.mx.{n}": skip(CONSTANT) for n in ("E8M0_BIAS", "ELEMENTS", "RULES")},
    "qedu.mx.MXTensor": skip(NO_TENSOR + " (what mx_quantize returns)"),
    "qedu.mx.NVFP4Tensor": skip(NO_TENSOR + " (what nvfp4_quantize returns)"),
    "qedu.mx.bits_per_value": skip(NO_TENSOR),
    "qedu.mx.shared_exponent": lambda: Call(_lazy("qedu.mx", "shared_exponent"), (torch.tensor([6.0, 0.0]), "fp4_e2m1")),
    "qedu.mx.mx_quantize": lambda: Call(_lazy("qedu.mx", "mx_quantize"), (x2d().repeat(1, 4), "fp4_e2m1")),
    "qedu.mx.mx_dequantize": lambda: Call(_lazy("qedu.mx", "mx_dequantize"),
                                          (_lazy("qedu.mx", "mx_quantize")(x2d().repeat(1, 4), "fp8_e4m3"),)),
    "qedu.mx.nvfp4_quantize": lambda: Call(_lazy("qedu.mx", "nvfp4_quantize"), (x2d().repeat(1, 2),)),
    "qedu.mx.nvfp4_dequantize": lambda: Call(_lazy("qedu.mx", "nvfp4_dequantize"),
                                             (_lazy("qedu.mx", "nvfp4_quantize")(x2d().repeat(1, 2)),)),
    "qedu.mx.pack_fp4": lambda: Call(_lazy("qedu.mx", "pack_fp4"), (torch.tensor([0.5, -6.0, 1.0, 3.0]),)),
    "qedu.mx.unpack_fp4": lambda: Call(_lazy("qedu.mx", "unpack_fp4"), (torch.tensor([241, 18], dtype=torch.uint8),)),
    # FP8 training recipes
    **{f"qedu.fp8_training.{n}": skip(CONSTANT) for n in ("RECIPES", "ROLES")},
    "qedu.fp8_training.FP8Stats": skip(NO_TENSOR + " (a counter)"),
    "qedu.fp8_training.amax_to_scale": lambda: Call(_lazy("qedu.fp8_training", "amax_to_scale"), (torch.tensor([2.0, 0.0]),)),
    "qedu.fp8_training.overflowed": lambda: Call(_lazy("qedu.fp8_training", "overflowed"),
                                                 (torch.tensor([448.0, 465.0, -1e4]), _lazy("qedu.floats", "FP8_E4M3"))),
    "qedu.fp8_training.underflowed": lambda: Call(_lazy("qedu.fp8_training", "underflowed"),
                                                  (torch.tensor([1e-4, 1.0]), torch.tensor([0.0, 1.0]))),
    "qedu.fp8_training.fp8_matmul": lambda: Call(_lazy("qedu.fp8_training", "fp8_matmul"),
                                                 (x2d(), x2d(1).t().contiguous(), FP8_E4M3, FP8_E4M3, "rowwise")),
    "qedu.fp8_training.Float8Linear": lambda: Call(_lazy("qedu.fp8_training", "Float8Linear"), (_lin(),)),
    "qedu.fp8_training.convert_to_float8": lambda: Call(_lazy("qedu.fp8_training", "convert_to_float8"), (_lora_model(), "delayed")),
    # LoRA / QLoRA
    # integer-only inference
    **{f"qedu.integer.{n}": skip(CONSTANT) for n in ("INT32_MIN", "INT32_MAX", "ROUNDINGS")},
    "qedu.integer.quantize_multiplier": skip(NO_TENSOR + " (a number in, two integers out)"),
    "qedu.integer.saturating_rounding_doubling_high_mul": lambda: Call(_lazy("qedu.integer", "saturating_rounding_doubling_high_mul"),
                                                                       (torch.tensor([3, -3]), 2**30)),
    "qedu.integer.rounding_divide_by_pot": lambda: Call(_lazy("qedu.integer", "rounding_divide_by_pot"), (torch.tensor([5, -5]), 1)),
    "qedu.integer.multiply_by_quantized_multiplier": lambda: Call(_lazy("qedu.integer", "multiply_by_quantized_multiplier"),
                                                                  (torch.tensor([100, -7]), 2**30, -1)),
    "qedu.integer.requantize_float": lambda: Call(_lazy("qedu.integer", "requantize_float"),
                                                  (torch.tensor([[100, -7]]), torch.tensor([0.01, 0.02]))),
    "qedu.integer.IntegerLinear": lambda: Call(_lazy("qedu.integer", "IntegerLinear"), (_lin(), (0.02, 128), (0.05, 100))),
    "qedu.integer.IntegerMLP": lambda: Call(_lazy("qedu.integer", "IntegerMLP"), (mlp(), images(16))),
    "qedu.lora.BASES": skip(CONSTANT),
    "qedu.lora.LoRALinear": lambda: Call(_lazy("qedu.lora", "LoRALinear"), (_lin(),), {"r": 4, "base_format": "nf4"}),
    "qedu.lora.add_lora": lambda: Call(_lazy("qedu.lora", "add_lora"), (_lora_model(), ["0", "2"]), {"base_format": "nf4"}),
    "qedu.lora.merge_lora": lambda: Call(_lazy("qedu.lora", "merge_lora"),
                                         (_lazy("qedu.lora", "add_lora")(_lora_model(), ["0"]),)),
    "qedu.lora.trainable_parameters": lambda: Call(_lazy("qedu.lora", "trainable_parameters"),
                                                   (_lazy("qedu.lora", "add_lora")(_lora_model(), ["0"]),)),
})


# ----------------------------------------------------------------------------- classic PTQ methods, integer arithmetic, accumulation
def _codes(low, high, shape, seed):
    return torch.randint(low, high, shape, generator=gen(seed))


def _zero_point_args():
    """Input codes (4, 8) with zero point 3, weight codes (2, 8) with zero point 0."""
    return _codes(0, 16, (4, 8), 4), 3, _codes(-8, 8, (2, 8), 5), 0


def _adaround_layer_args():
    layer, x = _linear(), _inputs()
    scale, zero_point = quantizers.choose_qparams(layer.weight.detach(), INT4, granularity.PerChannel(0))
    return layer, x, layer(x), scale, zero_point, INT4  # target not detached: no gradient may reach the layer through it


def _dynamic_int8_reference_if_supported(model, x):
    """A dynamic int8 copy's layers cannot be snapshotted (packed weights): check the float model and input."""
    ok, _ = evaluation.int8_support()
    return evaluation.dynamic_int8_reference(evaluation.dynamic_int8(model).fc1, x.flatten(1)) if ok else None


ENTRIES.update({
    # accumulation
    "qedu.accumulation.SUM_METHODS": skip(CONSTANT),
    "qedu.accumulation.sequential_sum": lambda: Call(accumulation.sequential_sum, (x2d(), FP16)),
    "qedu.accumulation.kahan_sum": lambda: Call(accumulation.kahan_sum, (x2d(), BF16)),
    "qedu.accumulation.dot": lambda: Call(accumulation.dot, (x2d(), x2d(1)), {"inputs": BF16, "accumulate": FP16}),
    "qedu.accumulation.kahan_add": lambda: Call(accumulation.kahan_add, (floats.cast(x2d(), BF16), torch.zeros(4, 8), x2d(1) * 1e-3, BF16)),
    "qedu.accumulation.relative_error": lambda: Call(accumulation.relative_error, (x2d(), x2d(1))),
    "qedu.accumulation.summation_errors": lambda: Call(accumulation.summation_errors, (), {"lengths": (64,), "n_rows": 2}),
    # AdaRound
    **{f"qedu.adaround.{n}": skip(CONSTANT) for n in ("ZETA", "GAMMA")},
    "qedu.adaround.rectified_sigmoid": lambda: Call(adaround.rectified_sigmoid, (x2d(),)),
    "qedu.adaround.AdaRoundResult": skip(NO_TENSOR + " (a result)"),
    "qedu.adaround.adaround_layer": lambda: Call(adaround.adaround_layer, _adaround_layer_args(), {"iters": 3}),
    "qedu.adaround.adaround_model": lambda: Call(adaround.adaround_model, (cnn(), 4, images()), {"iters": 2}),
    "qedu.adaround.rtn_model": lambda: Call(adaround.rtn_model, (cnn(), 4)),
    # bias correction
    "qedu.bias_correction.layer_output": lambda: Call(bias_correction.layer_output, (_linear(), _inputs(), x2d(), torch.ones(4))),
    "qedu.bias_correction.output_shift": lambda: Call(bias_correction.output_shift, (mlp().fc1, ptq_model().fc1, images().flatten(1))),
    "qedu.bias_correction.correct_bias": lambda: Call(bias_correction.correct_bias, (mlp(), ptq_model(), images())),
    # energy per operation: a table of numbers
    **{f"qedu.energy.{n}": skip(CONSTANT) for n in ("ENERGY_45NM_PJ", "SOURCE")},
    "qedu.energy.energy_table": skip(NO_TENSOR),
    # cross-layer equalization
    "qedu.equalization.equalizable_pairs": lambda: Call(equalization.equalizable_pairs, (cnn(),)),
    "qedu.equalization.equalization_scales": lambda: Call(equalization.equalization_scales, (x2d(), x2d(1))),
    "qedu.equalization.equalize": lambda: Call(equalization.equalize, (cnn(),), {"sweeps": 2}),
    # integer arithmetic
    "qedu.integer_arithmetic.ZeroPointTerms": skip(NO_TENSOR + " (a result tuple)"),
    "qedu.integer_arithmetic.zero_point_terms": lambda: Call(integer_arithmetic.zero_point_terms, _zero_point_args()),
    "qedu.integer_arithmetic.accumulate": lambda: Call(integer_arithmetic.accumulate,
                                                       (integer_arithmetic.zero_point_terms(*_zero_point_args()),)),
    "qedu.integer_arithmetic.integer_linear": lambda: Call(integer_arithmetic.integer_linear, (_codes(0, 16, (4, 8), 4), torch.tensor(0.1), 3,
                                                                                               _codes(-8, 8, (2, 8), 5), torch.tensor([0.5, 0.25]),
                                                                                               torch.tensor([0, 1]), torch.ones(2))),
    "qedu.integer_arithmetic.dequantize_linear": lambda: Call(integer_arithmetic.dequantize_linear,
                                                              (_codes(0, 16, (4, 8), 4), torch.tensor(0.1), 3, _codes(-8, 8, (2, 8), 5),
                                                               torch.full((2, 2), 0.5).repeat_interleave(4, dim=1), 0, torch.ones(2))),
    # ternary weights
    "qedu.ternary.twn_quantize": lambda: Call(ternary.twn_quantize, (x2d(),)),
    "qedu.ternary.twn_ptq": lambda: Call(ternary.twn_ptq, (mlp(),)),
    # memory: numbers in, numbers out
    "qedu.memory.RECOMPUTE": skip(CONSTANT),
    "qedu.memory.ZERO_STAGES": skip(CONSTANT),
    "qedu.memory.recompute_flops_overhead": skip(NO_TENSOR),
    "qedu.memory.zero_memory": skip(NO_TENSOR),
    "qedu.mixed_precision.WEIGHT_ROUNDINGS": skip(CONSTANT),
    "qedu.evaluation.dynamic_int8_reference": lambda: Call(_dynamic_int8_reference_if_supported, (mlp(), images())),
})


# ----------------------------------------------------------------------------- lesson 11: serving (qedu.serving)
def _serving_entries() -> dict:
    from qedu import serving

    def stream(x, y):
        return serving.make_stream(x, y, "gain", 3, n_batches=4, batch_size=4, onset=2, seed=0)

    def served(f, q, xc, x, y):
        return serving.ServingLoop(f, q, xc).run(stream(x, y), serving.AlarmRules(k=1, drift_window=4))

    entries = {f"qedu.serving.{n}": skip(CONSTANT) for n in ("FAULTS", "SEVERITY_LEVELS", "MIX_CLASSES", "SIGNALS", "RULES")}
    entries.update({f"qedu.serving.{n}": skip(NO_TENSOR + " (a value or a result)")
                    for n in ("Stream", "AlarmRules", "Rollout", "Incident", "Features", "ServingRun", "Outcome")})
    entries.update({
        "qedu.serving.log_markdown": skip(NO_TENSOR + " (incident records)"),
        "qedu.serving.log_jsonl": skip(NO_TENSOR + " (incident records)"),
        "qedu.serving.make_stream": lambda: Call(stream, (images(), labels())),
        "qedu.serving.ServingLoop": lambda: Call(served, (mlp(), ptq_model(), images(16, 1), images(8, 4), labels())),
        "qedu.serving.outcome": lambda: Call(lambda f, q, xc, x, y: serving.outcome(serving.ServingLoop(f, q, xc), stream(x, y)),
                                             (mlp(), ptq_model(), images(16, 1), images(8, 4), labels())),
    })
    return entries


ENTRIES.update(_serving_entries())


def _model_card_entries() -> dict:
    import tempfile

    from qedu import model_card as mc

    def saved(tensors):
        with tempfile.TemporaryDirectory() as folder:
            return mc.save_artifact(f"{folder}/a.safetensors", tensors)

    return {
        "qedu.model_card.DIGITS_LICENSE": skip(CONSTANT),
        "qedu.model_card.sha256_bytes": skip(NO_TENSOR + " (bytes)"),
        "qedu.model_card.digits_provenance": skip(NO_TENSOR),
        "qedu.model_card.load_artifact": skip(NO_TENSOR + " (reads a file; tests/test_model_card.py)"),
        "qedu.model_card.calibration_provenance": lambda: Call(mc.calibration_provenance, (digits(),)),
        "qedu.model_card.quantization_recipe": lambda: Call(mc.quantization_recipe, (ptq_model(),)),
        "qedu.model_card.quantized_tensors": lambda: Call(mc.quantized_tensors, (ptq_model(),)),
        "qedu.model_card.evaluation_slices": lambda: Call(mc.evaluation_slices, (mlp(), ptq_model(), images(), labels())),
        "qedu.model_card.save_artifact": lambda: Call(saved, (mlp(),)),
        "qedu.model_card.model_card": lambda: Call(mc.model_card, (mlp(), ptq_model(), digits())),
    }


ENTRIES.update(_model_card_entries())


_CACHE = None  # set per test to a temporary folder (pretrained writes its cache there)


def _observe(model, x):
    with calibration.observing(model, calibration.MinMaxObserver) as observers:
        model(x)
    return {k: o.clipping_range() for k, o in observers.items()}


def _scaler_round_trip(scaler, layer):
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler.scale(layer(torch.ones(1, 2)).sum()).backward()
    stepped = scaler.step(opt)
    scaler.update()
    return stepped


def _adam_step(layer):
    opt = optim.Adam(layer.parameters(), lr=0.1, states="dynamic")
    layer(torch.ones(3, 4)).sum().backward()
    opt.step()
    return opt.state_bytes()


def _dynamic_int8_if_supported(model):
    ok, _ = evaluation.int8_support()
    return evaluation.dynamic_int8(model) if ok else None


# ----------------------------------------------------------------------------- the machinery
# ----------------------------------------------------------------------------- LLM weight quantization (issue 16)
def _linear():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(8, 4).train()


def _inputs(scale=1.0):
    return torch.randn(16, 8, generator=gen(2)) * scale


def _tokens():
    return torch.randint(0, 16, (2, 8), generator=gen(3))


def _int8_weight():
    from qedu import llm_int8
    return llm_int8.vectorwise_quantize(x2d())[:2]


def _llm_entries():
    from qedu import awq, gptq, layerwise, llm_int8, nf4, rtn, smoothquant
    return {
        "qedu.rtn.CONVENTIONS": skip(CONSTANT),
        "qedu.rtn.RTNParams": skip(NO_TENSOR + " (a result tuple)"),
        "qedu.rtn.bits_per_weight": skip(NO_TENSOR),
        "qedu.rtn.rtn_qparams": lambda: Call(rtn.rtn_qparams, (x2d(), 4, 4), {"convention": "awq"}),
        "qedu.rtn.rtn_quantize": lambda: Call(rtn.rtn_quantize, (x2d(), 3, 4, True)),
        "qedu.rtn.rtn_linear": lambda: Call(rtn.rtn_linear, (_linear(), 4, 4)),
        "qedu.gptq.GPTQResult": skip(NO_TENSOR + " (a result tuple)"),
        "qedu.gptq.hessian": lambda: Call(gptq.hessian, (_inputs(),)),
        "qedu.gptq.layer_error": lambda: Call(gptq.layer_error, (x2d(), x2d(1), _inputs())),
        "qedu.gptq.gptq_quantize": lambda: Call(gptq.gptq_quantize, (x2d(), _inputs()), {"group_size": 4, "act_order": True}),
        "qedu.gptq.gptq_linear": lambda: Call(gptq.gptq_linear, (_linear(), _inputs()), {"group_size": None}),
        "qedu.awq.AWQResult": skip(NO_TENSOR + " (a result tuple)"),
        "qedu.awq.activation_scale": lambda: Call(awq.activation_scale, (_inputs(),)),
        "qedu.awq.awq_scales": lambda: Call(awq.awq_scales, (torch.tensor([1.0, 4.0]), 0.5)),
        "qedu.awq.awq_quantize": lambda: Call(awq.awq_quantize, (x2d(), _inputs()), {"group_size": 4, "n_grid": 4, "clip": True}),
        "qedu.awq.clip_search": lambda: Call(awq.clip_search, (x2d(), _inputs()), {"group_size": 4}),
        "qedu.awq.scaled_linear": lambda: Call(awq.scaled_linear, (_linear(), torch.full((8,), 2.0))),
        "qedu.awq.awq_linear": lambda: Call(awq.awq_linear, (_linear(), _inputs()), {"group_size": None, "n_grid": 4}),
        "qedu.layerwise.linear_names": lambda: Call(layerwise.linear_names, (tiny_gpt(),)),
        "qedu.layerwise.linear_inputs": lambda: Call(layerwise.linear_inputs, (tiny_gpt(), _tokens())),
        "qedu.layerwise.quantize_linears": lambda: Call(layerwise.quantize_linears,
                                                        (tiny_gpt(), _tokens(), lambda w, x: w.round())),
        "qedu.layerwise.replace_linears": lambda: Call(layerwise.replace_linears, (tiny_gpt(), lambda lin: nn.Identity())),
        "qedu.llm_int8.BNB_CPU_FACTOR": skip(CONSTANT),
        "qedu.llm_int8.DEFAULT_THRESHOLD": skip(CONSTANT),
        "qedu.llm_int8.outlier_columns": lambda: Call(llm_int8.outlier_columns, (_inputs(4.0),)),
        "qedu.llm_int8.vectorwise_quantize": lambda: Call(llm_int8.vectorwise_quantize, (_inputs(4.0), 6.0)),
        "qedu.llm_int8.int8_mm_dequant": lambda: Call(llm_int8.int8_mm_dequant, (torch.ones(2, 3, dtype=torch.int32),
                                                                                  torch.ones(2), torch.ones(3), torch.ones(3))),
        "qedu.llm_int8.int8_linear": lambda: Call(llm_int8.int8_linear, (_inputs(4.0), *_int8_weight())),
        "qedu.llm_int8.Int8Linear": lambda: Call(lambda lin, x: llm_int8.Int8Linear(lin)(x), (_linear(), _inputs(4.0))),
        "qedu.llm_int8.llm_int8_model": lambda: Call(llm_int8.llm_int8_model, (tiny_gpt(),)),
        "qedu.nf4.ABSMAX_ROUNDINGS": skip(CONSTANT),
        "qedu.nf4.NF4_CODE": skip(CONSTANT),
        "qedu.nf4.NF4Weight": skip(NO_TENSOR + " (a result tuple)"),
        "qedu.nf4.nf4_bits_per_parameter": skip(NO_TENSOR),
        "qedu.nf4.nf4_quantize": lambda: Call(nf4.nf4_quantize, (x2d(),), {"block_size": 8, "absmax_rounding": "lut"}),
        "qedu.nf4.nf4_dequantize": lambda: Call(nf4.nf4_dequantize, (nf4.nf4_quantize(x2d(), block_size=8),)),
        "qedu.nf4.nf4_fake_quantize": lambda: Call(nf4.nf4_fake_quantize, (x2d(),)),
        "qedu.nf4.pack_nibbles_high_first": lambda: Call(nf4.pack_nibbles_high_first, (torch.tensor([1, 2, 3]),)),
        "qedu.nf4.unpack_nibbles_high_first": lambda: Call(nf4.unpack_nibbles_high_first,
                                                           (torch.tensor([18, 52], dtype=torch.uint8), 3)),
        "qedu.smoothquant.MIN_SCALE": skip(CONSTANT),
        "qedu.smoothquant.smoothing_scales": lambda: Call(smoothquant.smoothing_scales, (torch.ones(8) * 3, torch.ones(8))),
        "qedu.smoothquant.smooth_ln_linears": lambda: Call(smoothquant.smooth_ln_linears,
                                                           (nn.LayerNorm(8).train(), [_linear()], torch.ones(8) * 3)),
        "qedu.smoothquant.default_pairs": lambda: Call(smoothquant.default_pairs, (tiny_gpt(),)),
        "qedu.smoothquant.smooth_model": lambda: Call(smoothquant.smooth_model, (tiny_gpt(), _tokens())),
        "qedu.smoothquant.W8A8Linear": lambda: Call(lambda lin, x: smoothquant.W8A8Linear(lin)(x), (_linear(), _inputs())),
        "qedu.smoothquant.w8a8_model": lambda: Call(smoothquant.w8a8_model, (tiny_gpt(),)),
        "qedu.smoothquant.alpha_sweep": lambda: Call(smoothquant.alpha_sweep, (tiny_gpt(), _tokens()), {"alphas": (0.5,)}),
    }


ENTRIES.update(_llm_entries())


def _lm():
    """A TinyGPT that reads 128-byte windows, as the shipped tinylm (tiny, so fast)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return models.TinyGPT(vocab_size=256, seq_len=128, hidden=32, n_layers=1, n_heads=2).train()


def _windows():
    return torch.randint(0, 256, (2, 128), generator=gen(4))


def _llm_model_entries():
    from qedu import llm_quant, lm_eval, outliers, text

    def log_probs():
        return torch.randn(2, 3, 5, generator=gen(5)).log_softmax(-1)

    return {
        "qedu.models.TINYLM_CONFIG": skip(CONSTANT),
        "qedu.models.TINYLM_SHA256": skip(CONSTANT),
        "qedu.models.WeightsMismatchError": skip(NO_TENSOR + " (an exception class)"),
        "qedu.models.load_tinylm": lambda: Call(models.load_tinylm),
        "qedu.models.sha256_file": skip(NO_TENSOR + " (hashes a file)"),
        "qedu.models.tinylm_info": skip(NO_TENSOR + " (reads a JSON file)"),
        "qedu.models.tinylm_path": skip(NO_TENSOR),
        "qedu.text.CORPUS": skip(CONSTANT),
        "qedu.text.VOCAB_SIZE": skip(CONSTANT),
        "qedu.text.Text": skip(NO_TENSOR + " (what load_text() returns)"),
        "qedu.text.load_text": skip(NO_TENSOR),
        "qedu.text.encode": skip(NO_TENSOR + " (takes a str)"),
        "qedu.text.decode": lambda: Call(text.decode, (torch.tensor([104, 105]),)),
        "qedu.text.windows": lambda: Call(text.windows, (torch.arange(50), 8)),
        "qedu.text.random_windows": lambda: Call(text.random_windows, (torch.arange(50), 8, 2, gen(6)), may_change=(3,)),
        "qedu.lm_eval.LMScores": skip(NO_TENSOR + " (a result value)"),
        "qedu.lm_eval.log_probs": lambda: Call(lm_eval.log_probs, (tiny_gpt(), _tokens())),
        "qedu.lm_eval.nll_from_log_probs": lambda: Call(lm_eval.nll_from_log_probs, (log_probs(), torch.zeros(2, 3, dtype=torch.long))),
        "qedu.lm_eval.perplexity": lambda: Call(lm_eval.perplexity, (tiny_gpt(), _tokens(), _tokens())),
        "qedu.lm_eval.kl_divergence": lambda: Call(lm_eval.kl_divergence, (log_probs(), log_probs().flip(-1))),
        "qedu.lm_eval.top1_flips": lambda: Call(lm_eval.top1_flips, (log_probs(), log_probs().flip(-1))),
        "qedu.lm_eval.generate": lambda: Call(lm_eval.generate, (tiny_gpt(), torch.tensor([1, 2])), {"n_new": 3}),
        "qedu.lm_eval.LMEvaluator": lambda: Call(lambda m, x: lm_eval.LMEvaluator(m, x, x).score(m), (tiny_gpt(), _tokens())),
        "qedu.outliers.LLM_INT8_THRESHOLD": skip(CONSTANT),
        "qedu.outliers.ChannelStats": skip(NO_TENSOR + " (a result value)"),
        "qedu.outliers.channel_stats": lambda: Call(outliers.channel_stats, ("x", torch.tensor([1.0, 7.0, 2.0]))),
        "qedu.outliers.linear_input_absmax": lambda: Call(outliers.linear_input_absmax, (tiny_gpt(), _tokens())),
        "qedu.outliers.residual_absmax": lambda: Call(outliers.residual_absmax, (tiny_gpt(), _tokens())),
        "qedu.outliers.outlier_table": lambda: Call(outliers.outlier_table, (tiny_gpt(), _tokens())),
        "qedu.outliers.heatmap_data": lambda: Call(outliers.heatmap_data, (tiny_gpt(), _tokens())),
        "qedu.llm_quant.LINEARS": skip(CONSTANT),
        "qedu.llm_quant.METHODS": skip(CONSTANT),
        "qedu.llm_quant.QuantizeResult": skip(NO_TENSOR + " (a result tuple)"),
        "qedu.llm_quant.calibration_tokens": skip(NO_TENSOR + " (draws from its own seeded generator)"),
        "qedu.llm_quant.linear_layers": lambda: Call(llm_quant.linear_layers, (tiny_gpt(),)),
        "qedu.llm_quant.layer_inputs": lambda: Call(llm_quant.layer_inputs, (tiny_gpt(), "blocks.0.fc1", _tokens())),
        "qedu.llm_quant.layer_method": lambda: Call(lambda lin, x: llm_quant.layer_method("gptq", 4, 4)(lin, x),
                                                    (_linear(), _inputs())),
        "qedu.llm_quant.quantize_model": lambda: Call(llm_quant.quantize_model,
                                                      (tiny_gpt(), llm_quant.layer_method("rtn", 4, 8), _tokens())),
        "qedu.llm_quant.quantize_tinylm": lambda: Call(llm_quant.quantize_tinylm, (_lm(), "smoothquant"), {"n_calib": 2}),
    }


ENTRIES.update(_llm_model_entries())


# ----------------------------------------------------------------------------- lessons 08-09, second edition (issue 13)
def _lessons_08_09_entries() -> dict:
    from qedu import bitflip, drift, membership, stats

    def tiny_ptq():  # 4 hidden units: an exhaustive flip search over its last layer is 160 forward passes
        return ptq.quantize_model(models.make_mlp(hidden=(4,), seed=0), ptq.PTQConfig(weight_bits=4, act_bits=4), images(16, 1))

    return {
        "qedu.stats.McNemar": skip(NO_TENSOR + " (a result)"),
        "qedu.stats.mcnemar_test": lambda: Call(stats.mcnemar_test, (labels(), labels(), labels().flip(0))),
        "qedu.stats.BootstrapCI": skip(NO_TENSOR + " (a result)"),
        "qedu.stats.bootstrap_delta": lambda: Call(stats.bootstrap_delta, (labels(), labels(), labels().flip(0)), {"n_resamples": 100}),
        "qedu.stats.sign_flip_test": lambda: Call(stats.sign_flip_test, (x2d()[0],)),
        "qedu.stats.worst_class_null": lambda: Call(stats.worst_class_null, (labels(), labels(), 2), {"n_trials": 5}),
        "qedu.stats.ConfidenceCalibration": skip(NO_TENSOR + " (a result)"),
        "qedu.stats.confidence_calibration": lambda: Call(stats.confidence_calibration, (torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), labels())),
        "qedu.stats.confidence_rank": lambda: Call(stats.confidence_rank, (x2d(),)),
        "qedu.stats.pareto_front": skip(NO_TENSOR + " (dicts of numbers)"),
        "qedu.drift.psi": lambda: Call(drift.psi, (torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))),
        "qedu.drift.code_histogram": lambda: Call(drift.code_histogram, (x2d(), 0.1, 3, 0, 15)),
        "qedu.drift.DriftReport": skip(NO_TENSOR + " (a result)"),
        "qedu.drift.DriftMonitor": lambda: Call(lambda q, xc, x: drift.DriftMonitor(q, xc).check(x), (ptq_model(), images(16, 1), images(8, 4))),
        "qedu.drift.false_alarm_rate": lambda: Call(lambda q, xc, x: drift.false_alarm_rate(drift.DriftMonitor(q, xc), x, batch_size=4, n_batches=2),
                                                    (ptq_model(), images(16, 1), images(8, 4))),
        "qedu.membership.per_example_loss": lambda: Call(membership.per_example_loss, (mlp(), images(), labels())),
        "qedu.membership.membership_auc": lambda: Call(membership.membership_auc, (x2d()[0], x2d(1)[0])),
        "qedu.membership.MembershipResult": skip(NO_TENSOR + " (a result)"),
        "qedu.membership.loss_threshold_attack": lambda: Call(membership.loss_threshold_attack, (mlp(), images(), labels(), images(8, 2), labels())),
        "qedu.bitflip.flip_code": lambda: Call(bitflip.flip_code, (torch.tensor([3, -1, 127]), 7, 8)),
        "qedu.bitflip.BitFlip": skip(NO_TENSOR + " (a result)"),
        "qedu.bitflip.BitFlipResult": skip(NO_TENSOR + " (a result)"),
        "qedu.bitflip.bit_flip_attack": lambda: Call(bitflip.bit_flip_attack, (ptq_model(), images(), labels()), {"n_flips": 1, "top_k": 2}),
        "qedu.bitflip.exhaustive_flip_search": lambda: Call(bitflip.exhaustive_flip_search, (tiny_ptq(), images(), labels()), {"layers": ["fc2"]}),
    }


ENTRIES.update(_lessons_08_09_entries())


def public_names() -> dict[str, object]:
    """Every name in every top-level qedu module's __all__, keyed by where the object is defined."""
    found = {f"qedu.{n}": getattr(qedu, n) for n in qedu.__all__}
    for info in pkgutil.iter_modules(qedu.__path__):
        if info.name.startswith("_") or info.ispkg:
            continue  # qedu.widgets and qedu.checks have their own tests
        module = importlib.import_module(f"qedu.{info.name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None) if callable(obj) and hasattr(obj, "__qualname__") else None
            if home and home.startswith("qedu.") and getattr(importlib.import_module(home), name, None) is obj:
                found.setdefault(f"{home}.{name}", obj)
            else:
                found.setdefault(f"qedu.{info.name}.{name}", obj)
    # re-exported constants (qedu.formats re-exports qedu.floats' formats): key them where they are defined
    for key in [k for k in found if k.startswith("qedu.formats.")]:
        name = key.rsplit(".", 1)[1]
        if hasattr(floats, name) and getattr(floats, name) is found[key]:
            found.setdefault(f"qedu.floats.{name}", found.pop(key))
    for key in [k for k in found if k.startswith("qedu.mixed_precision.")]:
        name = key.rsplit(".", 1)[1]
        for home in (loss_scaling, rounding):
            if getattr(home, name, None) is found[key]:
                found.setdefault(f"{home.__name__}.{name}", found.pop(key))
                break
    return found


def test_every_public_name_has_an_entry():
    missing = sorted(set(public_names()) - set(ENTRIES))
    assert not missing, (f"public names without an entry in tests/test_no_mutation.py ENTRIES: {missing}. Add one per name: "
                         "a Call(...) that builds fresh inputs, or skip('why it takes no module or tensor').")
    stale = sorted(set(ENTRIES) - set(public_names()))
    assert not stale, f"ENTRIES names that are no longer public: {stale}; remove them."


def _snapshot(obj, depth=0):
    if depth > 4:
        return None
    if isinstance(obj, nn.Module):
        return ("module", {k: v.detach().clone() for k, v in obj.state_dict().items()},
                [(n, type(m).__name__, m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                 for n, m in obj.named_modules()],
                [(n, p.requires_grad, None if p.grad is None else p.grad.clone()) for n, p in obj.named_parameters()])
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.detach().clone(), obj.requires_grad, obj.dtype, tuple(obj.shape))
    if isinstance(obj, dict):
        return ("dict", {k: _snapshot(v, depth + 1) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return ("seq", [_snapshot(v, depth + 1) for v in obj])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return ("dataclass", {f.name: _snapshot(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)})
    return ("other", None)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _global_state():
    np_state = np.random.get_state()
    return {"torch RNG": torch.random.get_rng_state(), "numpy RNG": (np_state[0], np_state[1].copy(), *np_state[2:]),
            "python RNG": random.getstate(), "torch threads": torch.get_num_threads(), "grad mode": torch.is_grad_enabled()}


def _call_entries():
    return [k for k, v in ENTRIES.items() if callable(v)]


@pytest.mark.parametrize("name", _call_entries())
def test_no_mutation(name, tmp_path):
    global _CACHE
    _CACHE = tmp_path / "cache"  # where the pretrained entry writes its cache
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    call = ENTRIES[name]()
    params = list(call.args) + list(call.kwargs.values())
    keys = list(range(len(call.args))) + list(call.kwargs)
    before = {k: _snapshot(v) for k, v in zip(keys, params) if k not in call.may_change}
    state = _global_state()
    call.fn(*call.args, **call.kwargs)
    after = {k: _snapshot(v) for k, v in zip(keys, params) if k not in call.may_change}
    for k in before:
        assert _same(before[k], after[k]), f"{name} changed its argument {k!r}"
    now = _global_state()
    for what in state:
        if what == "torch RNG" and call.global_rng:
            continue  # documented in the entry
        assert _same(state[what], now[what]), f"{name} changed the {what}"


def test_the_snapshot_sees_each_kind_of_change():
    """The checks above can fail: each kind of mutation they look for is detected."""
    m = mlp()
    for change in (lambda m: m.eval(), lambda m: m.fc1.weight.data.add_(1), lambda m: m.fc1.register_forward_hook(lambda *a: None),
                   lambda m: m.fc1.weight.requires_grad_(False), lambda m: setattr(m, "fc2", nn.Linear(128, 64))):
        m = mlp()
        snap = _snapshot(m)
        change(m)
        assert not _same(snap, _snapshot(m))
    x = x2d()
    snap = _snapshot(x)
    x.mul_(2)
    assert not _same(snap, _snapshot(x))
    state = _global_state()
    torch.rand(1)
    assert not _same(state["torch RNG"], _global_state()["torch RNG"])
