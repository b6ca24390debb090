"""Property tests over extreme floats, module by module (issue 20: nothing silently wrong).

One rule for every public numeric function: from finite, valid input it returns finite values,
or it raises a ``ValueError``/``TypeError`` that says what is wrong. Non-finite input (NaN, inf)
is refused with such an error, except where a function documents that it passes them through
(``cast``, ``stochastic_round``, ``round_codes``: the number formats themselves have inf/NaN).

The inputs mix float32's extremes (its largest value, its smallest normal and subnormal
numbers), float64 values beyond float32's range (1e39, 1e-320), signed zeros, +-inf, NaN and
ordinary values. Each test is bounded (``max_examples`` 40-60) so the whole file runs in seconds.
"""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.extremes import F32, finite, finite_number, finite_values, fits_float32, number, tensor64, values

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])








_NAMED = re.compile(r"[a-z_]+(\[[^\]]*\])? (must|holds|contains|is |=)|^[a-z_]+=|scale|range|eps|grid|overflow|loss")


def holds(fn, *args, **kwargs):
    """Call ``fn``: either a clear ValueError/TypeError, or an output without NaN or inf. Returns the output (or None)."""
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert _NAMED.search(message), f"{fn.__name__}: the error does not name what is wrong: {message}"
        return None
    assert finite(out), f"{fn.__name__}{args} returned a non-finite value without saying so: {out}"
    return out


def finite_in_finite_out(fn, vals, *args, **kwargs):
    """For valid (float32-fitting) input the output must be finite (an error is also allowed); for other input:
    an error or a finite output."""
    return holds(fn, *args, **kwargs)


# ----------------------------------------------------------------------------- quantizers
from qedu.formats import INT4, INT8, UINT8, IntFormat  # noqa: E402
from qedu.granularity import PerChannel, PerGroup, PerTensor  # noqa: E402
from qedu import quantizers as Q  # noqa: E402


@SETTINGS
@given(values, st.sampled_from([INT8, UINT8, INT4, IntFormat(2), IntFormat(16)]), st.booleans())
def test_quantizers_choose_then_fake_quantize(vals, fmt, symmetric):
    x = tensor64(vals)
    qp = holds(Q.choose_qparams, x, fmt, symmetric=symmetric)
    if not fits_float32(vals):
        assert qp is None, "non-finite or float32-overflowing x must be refused"
        return
    if qp is None:
        return  # refused with a clear message (e.g. a range too close to float32's limit)
    scale, zero_point = qp
    assert bool((scale > 0).all()) and bool(torch.isfinite(1.0 / scale).all())
    q = holds(Q.quantize, x, scale, zero_point, fmt)
    assert q is not None and bool(((q >= fmt.qmin) & (q <= fmt.qmax)).all())
    x_hat = holds(Q.fake_quantize, x, scale, zero_point, fmt)
    assert x_hat is not None and torch.equal(x_hat, Q.dequantize(q, scale, zero_point))
    err = Q.quantization_error(x.float(), x_hat)  # documented: sqnr_db is +inf for an exact reconstruction
    assert math.isfinite(err.mse) and not math.isnan(err.sqnr_db)


@SETTINGS
@given(values, number, st.integers(-128, 127))
def test_quantizers_any_scale(vals, scale, zero_point):
    x = tensor64(vals)
    for fn in (Q.quantize, Q.fake_quantize):
        out = holds(fn, x, scale, zero_point, INT8)
        if out is not None:
            assert fits_float32(vals) and math.isfinite(scale) and scale > 0
    holds(Q.dequantize, torch.tensor([127, -128, 0]), scale, zero_point)


@SETTINGS
@given(number, number, number)
def test_quantizers_choose_from_minmax_and_eps(lo, hi, eps):
    holds(Q.choose_qparams_from_minmax, min(lo, hi) if not math.isnan(lo + hi) else lo, max(lo, hi) if not math.isnan(lo + hi) else hi, INT8, False)
    holds(Q.choose_qparams, torch.zeros(3), INT8, symmetric=False, eps=eps)


@SETTINGS
@given(finite_values, st.sampled_from(Q.ROUNDING_MODES))
def test_quantizers_round_codes_finite_in_finite_out(vals, rounding):
    out = Q.round_codes(tensor64(vals), rounding, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out).all())  # documented: inf/NaN pass through, finite stays finite


# ----------------------------------------------------------------------------- granularity
@SETTINGS
@given(st.lists(finite_number, min_size=4, max_size=4), st.sampled_from([PerTensor(), PerChannel(0), PerGroup(2)]),
       st.tuples(st.integers(-3, 5), st.integers(-3, 5)))
def test_granularity_reduce_and_num_params(vals, granularity, shape):
    x = torch.tensor(vals, dtype=torch.float64).clamp(-F32.max, F32.max).float().reshape(2, 2)  # finite float32
    out = holds(granularity.reduce, x, lambda rows: rows.abs().amax(dim=1))
    assert out is not None
    n = holds(granularity.num_params, shape)
    assert n is None or n >= 0


# ----------------------------------------------------------------------------- calibration
from qedu import calibration as C  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=2, max_size=10), st.floats(50.001, 100.0))
def test_calibration_ranges(vals, percentile):
    x = tensor64(vals)
    outs = [holds(C.minmax_range, x), holds(C.percentile_range, x, percentile), holds(C.percentile_range, x, percentile, symmetric=True),
            holds(C.kl_range, x, IntFormat(4), n_bins=32), holds(C.mse_range, x, IntFormat(4), n_grid=8)]
    if not fits_float32(vals):
        assert all(o is None for o in outs), "non-finite x must be refused by every range rule"
    for o in outs:
        if o is not None:
            lo, hi = o
            assert bool((lo <= hi).all())
            holds(C.clipping_error, x, lo, hi, IntFormat(4))


@SETTINGS
@given(st.lists(number, min_size=2, max_size=8), st.sampled_from(sorted(C.OBSERVERS)))
def test_calibration_observers(vals, method):
    obs = C.make_observer(method, UINT8, **({"n_bins": 64} if method == "kl" else {"n_grid": 10} if method == "mse" else {}))
    if holds(obs, tensor64(vals)) is not None:
        holds(obs.calculate_qparams)


# ----------------------------------------------------------------------------- floats and rounding
from qedu import floats as FL  # noqa: E402
from qedu import rounding as R  # noqa: E402

FLOAT_FORMATS = [FL.FP16, FL.BF16, FL.FP8_E4M3, FL.FP8_E5M2, FL.FP4_E2M1, FL.FP32]


@SETTINGS
@given(values, st.sampled_from(FLOAT_FORMATS), st.sampled_from([None, True, False]))
def test_floats_cast_is_non_finite_only_where_documented(vals, fmt, saturate):
    x = tensor64(vals)
    y = FL.cast(x, fmt, saturate)
    x32 = x.float()
    overflow = torch.isfinite(x32) & (x32.abs() > fmt.max)  # documented: overflow follows saturate
    unexplained = ~torch.isfinite(y) & torch.isfinite(x32) & ~overflow
    assert not bool(unexplained.any()), (vals, fmt, saturate, y)
    y2 = R.stochastic_round(x, fmt, torch.Generator().manual_seed(0))
    assert not bool((~torch.isfinite(y2) & torch.isfinite(x32) & ~overflow).any())


@SETTINGS
@given(number, number, st.sampled_from(FLOAT_FORMATS))
def test_floats_repeated_add_and_swamping(start, step, fmt):
    out = holds_or_overflow(FL.repeated_add, fmt, start, step, 20, fmt)
    if out is not None:
        assert math.isfinite(start) and math.isfinite(step)
    holds_or_overflow(R.swamping, fmt, fmt, "nearest", 20, step, start)


def holds_or_overflow(fn, fmt, *args):
    """As holds(), but a sum that grows beyond fmt.max may overflow to inf (the format's own, documented)."""
    try:
        out = fn(*args)
    except (ValueError, TypeError):
        return None
    bad = ~torch.isfinite(out)
    assert not bool(torch.isnan(out).any()), f"{fn.__name__}{args} gave NaN"
    if bool(bad.any()):
        assert fmt.has_inf, f"{fn.__name__}: inf in a format without inf"
    return out


# ----------------------------------------------------------------------------- nonuniform
from qedu import nonuniform as NU  # noqa: E402


@SETTINGS
@given(values, st.integers(1, 4))
def test_nonuniform_blockwise_round_trip(vals, block_size):
    x = tensor64(vals)
    out = holds(NU.blockwise_absmax_quantize, x, NU.nf4_levels(), block_size)
    if not fits_float32(vals):
        assert out is None
    if out is not None:
        codes, absmax = out
        x_hat = holds(NU.blockwise_absmax_dequantize, codes, absmax, NU.nf4_levels(), block_size)
        assert x_hat is not None
    holds(NU.blockwise_absmax_dequantize, torch.zeros(len(vals), dtype=torch.long),
          tensor64([vals[0]] * math.ceil(len(vals) / block_size)), NU.nf4_levels(), block_size)
    holds(NU.quantize_to_codebook, x, torch.tensor([-1.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------- qat and lsq
from qedu import lsq as LSQ  # noqa: E402
from qedu import qat as QAT  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=2, max_size=8), number)
def test_qat_and_lsq(vals, scale):
    x = torch.tensor(vals, dtype=torch.float32)
    holds(QAT.fake_quantize_ste, x, scale, 0, INT4)
    q = holds(LSQ.LSQQuantizer, x, IntFormat(2), init="minmax")
    if q is not None:
        holds(q, x)
    holds(LSQ.init_step, x, IntFormat(4), init="lsq")
    holds(LSQ.pact_quantize, x, torch.tensor(abs(scale) if math.isfinite(scale) else scale), IntFormat(2, signed=False))


# ----------------------------------------------------------------------------- loss scaling and mixed precision
from qedu import loss_scaling as LS  # noqa: E402


@SETTINGS
@given(number, number, st.lists(number, min_size=1, max_size=6))
def test_loss_scaling(scale, amax, vals):
    scaler = holds(LS.StaticLossScaler, scale)
    if scaler is not None:
        assert 0 < scaler.get_scale() < math.inf and math.isfinite(1 / scaler.get_scale())
    holds(LS.DynamicLossScaler, scale)
    holds(LS.scale_from_amax, amax, FL.FP8_E4M3)
    ds = LS.DelayedScaling(FL.FP8_E4M3)
    for _ in range(2):
        holds(ds.quantize, tensor64(vals))


@settings(max_examples=12, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1e-30, 1e30, 3e38, -3e38, math.inf, -math.inf, math.nan, 1.0]), min_size=2, max_size=2),
       st.sampled_from([-1, 1]))
def test_loss_scaler_never_leaves_nan_weights(grads, sign):
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = LS.DynamicLossScaler(init_scale=2.0**16)
    for _ in range(3):
        p.grad = torch.tensor(grads) * sign
        scaler.step(opt)
        scaler.update()
        assert bool(torch.isfinite(p).all()) and math.isfinite(scaler.get_scale())


# ----------------------------------------------------------------------------- optim
from qedu import optim as OPT  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=4, max_size=4), st.sampled_from(OPT.STATE_FORMATS), number)
def test_optim_adam_never_makes_nan_weights(grads, states, eps):
    import warnings

    opt = holds(OPT.Adam, [torch.nn.Parameter(torch.zeros(2))], eps=eps)
    w = torch.nn.Parameter(torch.ones(4))
    opt = OPT.Adam([w], lr=1e-2, states=states, block_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the skipped-step warning is tested in test_optim.py
        for g in (torch.tensor(grads), torch.ones(4), torch.zeros(4)):
            w.grad = g.float()
            opt.step()
            assert bool(torch.isfinite(w).all()), (grads, states)


# ----------------------------------------------------------------------------- memory
from qedu import memory as MEM  # noqa: E402


@SETTINGS
@given(number, number, number)
def test_memory_sizes(n, activations, bytes_per_value):
    holds(MEM.training_memory, n, "mixed", activations)
    holds(MEM.transformer_activation_bytes, 2, 64, 16, 2, 4, bytes_per_value, True, bytes_per_value)
    holds(MEM.gpt_param_count, 2, n, 100, 16)


# ----------------------------------------------------------------------------- ptq
from qedu import ptq as PTQ  # noqa: E402
from qedu.models import make_mlp  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=6, max_size=6))
def test_ptq_fold_bn_params(vals):
    w = tensor64(vals[:2]).float().reshape(2, 1)
    holds(PTQ.fold_bn_params, w, None, torch.tensor(vals[2:4]).float(), torch.tensor(vals[3:5]).float().abs(),
          torch.tensor(vals[4:6]).float(), torch.tensor(vals[:2]).float(), 1e-5)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([1e39, 3e38, 1e30, math.inf, math.nan, 1.0, F32.tiny, 1e-320]))
def test_ptq_quantize_model_with_extreme_calibration_inputs(value):
    x = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64)
    x[0, 0, 0, 0] = value
    q = holds(PTQ.quantize_model, make_mlp(seed=0), PTQ.PTQConfig(act_bits=8), x)
    if q is not None:
        assert fits_float32([value])
        holds(q, x.float()[1:])


# ----------------------------------------------------------------------------- evaluation, analysis, security, robustness
from qedu import analysis as AN  # noqa: E402
from qedu import evaluation as EV  # noqa: E402
from qedu import robustness as ROB  # noqa: E402
from qedu import security as SEC  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=4, max_size=4))
def test_evaluation_confidence_shift(vals):
    logits = torch.tensor(vals, dtype=torch.float32).reshape(2, 2)
    holds(EV.confidence_shift, torch.tensor([0, 1]), logits, torch.zeros(2, 2))


@SETTINGS
@given(number)
def test_evaluation_and_analysis_with_one_extreme_input(value):
    x = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64)
    x[0, 0, 0, 0] = value
    holds(EV.logits, make_mlp(seed=0), x)
    holds(AN.output_error, make_mlp(seed=0), make_mlp(seed=1), x)


@SETTINGS
@given(st.lists(number, min_size=4, max_size=4), number, number)
def test_security(vals, eps, factor):
    x = tensor64(vals).reshape(1, 1, 2, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    holds(SEC.fgsm, model, x, torch.tensor([0]), eps)
    holds(SEC.pgd, model, x, torch.tensor([0]), 0.1, steps=2, step_size=eps)
    holds(SEC.clip_rate, x, eps, 0, UINT8)
    holds(SEC.poison_calibration, x.repeat(2, 1, 1, 1), n=1, factor=factor)


@SETTINGS
@given(st.lists(number, min_size=16, max_size=16), st.sampled_from(ROB.CORRUPTIONS), st.integers(0, 5))
def test_robustness_corrupt(vals, corruption, severity):
    out = holds(ROB.corrupt, tensor64(vals).reshape(1, 1, 4, 4), corruption, severity)
    if out is not None:
        assert bool(((out >= 0) & (out <= 1)).all())


@settings(max_examples=30, deadline=None)
@given(st.lists(finite_number, min_size=2, max_size=4))
def test_analysis_ablate_keeps_finite_values_finite(vals):
    vals = [float(np.float32(max(-F32.max, min(F32.max, v)))) for v in vals]  # float32-sized metrics
    table = AN.ablate(lambda k, seed: vals[seed], {"k": [1]}, seeds=range(len(vals)))
    assert finite(table.rows)


# ----------------------------------------------------------------------------- packing, data, tasks
from qedu import data as D  # noqa: E402
from qedu import packing as PK  # noqa: E402


@SETTINGS
@given(st.tuples(st.integers(-2, 40), st.integers(-2, 40)), st.sampled_from([1, 2, 3, 4, 8]), st.integers(-1, 33))
def test_packing_storage_bytes(shape, bits, scale_bits):
    out = holds(PK.storage_bytes, shape, bits, PerTensor(), scale_bits)
    if out is not None:
        assert min(shape) >= 0


@settings(max_examples=10, deadline=None)
@given(number)
def test_data_test_size(test_size):
    holds(D.load_digits, 0, test_size, 16)


# ----------------------------------------------------------------------------- models and mixed precision
from qedu import mixed_precision as MP  # noqa: E402
from qedu import models as M  # noqa: E402


@SETTINGS
@given(number)
def test_models_predict_and_evaluate_with_one_extreme_input(value):
    x = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64)
    x[0, 0, 0, 0] = value
    pred = holds(M.predict, make_mlp(seed=0), x)
    if pred is not None:
        assert fits_float32([value])  # NaN, inf and float64 beyond float32 are refused
        assert bool(((pred >= 0) & (pred < 10)).all())
    holds(M.evaluate, make_mlp(seed=0), x, torch.tensor([0, 1]))


@SETTINGS
@given(values, st.sampled_from([FL.FP16, FL.BF16, FL.FP8_E4M3]))
def test_mixed_precision_grad_stats_count_every_value(vals, fmt):
    before = tensor64(vals).float()
    stats = MP.GradStats.count(before, FL.cast(before, fmt), fmt)
    assert stats.n == len(vals) and 0 <= stats.zero + stats.underflow <= stats.n
    assert all(math.isfinite(f) for f in (stats.underflow_fraction, stats.lost_fraction, stats.overflow_fraction))
