"""Lesson 03: wrong and right answers for minmax_observer, percentile_range and mse_clip."""
import numpy as np
import torch

from qedu import checks
from qedu.checks.ptq import MINMAX_OBSERVER, MSE_CLIP, PERCENTILE_RANGE
from tests.wrong_answers import AnswerSet

MM = AnswerSet("minmax_observer", checks.check_minmax_observer, MINMAX_OBSERVER, "03")
PR = AnswerSet("percentile_range", checks.check_percentile_range, PERCENTILE_RANGE, "03")
MSE = AnswerSet("mse_clip", checks.check_mse_clip, MSE_CLIP, "03")

EPS = 1.1920929e-07


def _qp(lo, hi, bits, zp_round=round, qmin=0, qmax=None, eps=EPS):
    qmax = 2**bits - 1 if qmax is None else qmax
    scale = float(np.float32(max((hi - lo) / (qmax - qmin), eps)))
    if scale == 0:
        return 0.0, qmin
    return scale, int(min(max(qmin - zp_round(lo / scale), qmin), qmax))


def _lohi(batches):
    return min(min(float(x.min()) for x in batches), 0.0), max(max(float(x.max()) for x in batches), 0.0)


# --- minmax_observer ------------------------------------------------------------------------------

@MM.wrong("did not widen the range to include 0")
def mm_no_widen(batches, bits):
    lo = min(float(x.min()) for x in batches)
    hi = max(float(x.max()) for x in batches)
    return _qp(lo, hi, bits)


@MM.wrong("kept only the last batch's range")
def mm_last(batches, bits):
    for x in batches:
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    return _qp(lo, hi, bits)


@MM.wrong("averaged the batches' minima and maxima")
def mm_mean(batches, bits):
    lo = np.mean([x.min().item() for x in batches])
    hi = np.mean([x.max().item() for x in batches])
    return _qp(min(lo, 0.0), max(hi, 0.0), bits)


@MM.wrong("divided by 2**bits (the number of levels)")
def mm_levels(batches, bits):
    lo, hi = _lohi(batches)
    return _qp(lo, hi, bits, qmax=2**bits)


@MM.wrong("did not round the zero point to an integer")
def mm_float_zp(batches, bits):
    lo, hi = _lohi(batches)
    scale = max((hi - lo) / (2**bits - 1), EPS)
    return scale, -lo / scale


@MM.wrong("scale right, zero point off by")
def mm_signed_codes(batches, bits):  # signed codes -2**(bits-1) .. 2**(bits-1) - 1
    lo, hi = _lohi(batches)
    return _qp(lo, hi, bits, qmin=-(2 ** (bits - 1)), qmax=2 ** (bits - 1) - 1)


@MM.wrong("scale right, zero point off by")
def mm_zp_half_up(batches, bits):
    lo, hi = _lohi(batches)
    return _qp(lo, hi, bits, zp_round=lambda v: int(np.floor(v + 0.5)))


@MM.wrong("scale is 0")
def mm_no_eps(batches, bits):
    lo, hi = _lohi(batches)
    return _qp(lo, hi, bits, eps=0.0)


@MM.wrong("another order")
def mm_first_batch_only(batches, bits):
    lo, hi = min(float(batches[0].min()), 0.0), max(float(batches[0].max()), 0.0)
    for x in batches[1:]:
        lo = min(lo, float(x.min()))
    return _qp(lo, hi, bits)


@MM.wrong("right when all the data comes in one batch")
def mm_min_of_maxima(batches, bits):  # the running hi updated with min() by a slip
    lo, hi = 0.0, float("inf")
    for x in batches:
        lo = min(lo, float(x.min()))
        hi = min(hi, float(x.max()))
    return _qp(lo, max(hi, 0.0), bits)


@MM.wrong("changed its input `batches`")
def mm_in_place(batches, bits):
    for x in batches:
        x.clamp_(max=x.max().item())
    batches.append(torch.zeros(1))
    lo, hi = _lohi(batches)
    return _qp(lo, hi, bits)


@MM.right
def mm_concatenate(batches, bits):
    x = torch.cat([b.reshape(-1) for b in batches])
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = max((hi - lo) / (2**bits - 1), EPS)
    return scale, int(np.clip(-np.round(lo / scale), 0, 2**bits - 1))


@MM.right
def mm_torch_tensors(batches, bits):
    lo, hi = torch.tensor(0.0), torch.tensor(0.0)
    for x in batches:
        lo, hi = torch.minimum(lo, x.min()), torch.maximum(hi, x.max())
    scale = torch.clamp((hi - lo) / (2**bits - 1), min=EPS)
    return scale, torch.clamp(-torch.round(lo / scale), 0, 2**bits - 1).long()


# --- percentile_range -----------------------------------------------------------------------------

@PR.wrong("took the percentile of |x| for an asymmetric range")
def pr_abs_always(x, percentile, symmetric):
    hi = float(np.percentile(np.abs(x.numpy()), percentile))
    return -hi, hi


@PR.wrong("built the symmetric range from the signed percentiles")
def pr_signed_symmetric(x, percentile, symmetric):
    v = x.numpy()
    lo, hi = float(np.percentile(v, 100 - percentile)), float(np.percentile(v, percentile))
    if symmetric:
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi


@PR.wrong("mirrored the upper end")
def pr_mirror(x, percentile, symmetric):
    hi = float(np.percentile(x.numpy(), percentile))
    return -hi, hi


@PR.wrong("passed a fraction (p / 100) to np.percentile")
def pr_fraction(x, percentile, symmetric):
    v = x.numpy()
    if symmetric:
        hi = float(np.percentile(np.abs(v), percentile / 100))
        return -hi, hi
    return float(np.percentile(v, 1 - percentile / 100)), float(np.percentile(v, percentile / 100))


@PR.wrong("used the nearest value instead of interpolating")
def pr_nearest(x, percentile, symmetric):
    v = x.numpy()
    if symmetric:
        hi = float(np.percentile(np.abs(v), percentile, method="nearest"))
        return -hi, hi
    return float(np.percentile(v, 100 - percentile, method="nearest")), float(np.percentile(v, percentile, method="nearest"))


@PR.wrong("instead of interpolating")
def pr_sorted_index(x, percentile, symmetric):  # index into the sorted values, no interpolation
    v = np.sort(np.abs(x.numpy()) if symmetric else x.numpy())
    n = len(v)
    hi = float(v[min(int(percentile / 100 * n), n - 1)])
    if symmetric:
        return -hi, hi
    return float(v[int((100 - percentile) / 100 * n)]), hi


@PR.wrong("lo off by")
def pr_only_top(x, percentile, symmetric):  # clips the top only, keeps the minimum
    v = x.numpy()
    if symmetric:
        hi = float(np.percentile(np.abs(v), percentile))
        return -hi, hi
    return float(v.min()), float(np.percentile(v, percentile))


@PR.right
def pr_torch_quantile_float32(x, percentile, symmetric):
    if symmetric:
        hi = torch.quantile(x.abs(), percentile / 100)
        return -hi, hi
    return torch.quantile(x, 1 - percentile / 100).item(), torch.quantile(x, percentile / 100).item()


@PR.right
def pr_numpy_float32(x, percentile, symmetric):
    v = x.numpy()
    if symmetric:
        hi = np.percentile(np.abs(v), percentile)
        return -hi, hi
    return np.percentile(v, 100 - percentile), np.percentile(v, percentile)


# --- mse_clip -------------------------------------------------------------------------------------

def _search(x, bits, n_grid, *, ks=None, clamp=True, pick=np.argmin, power=2):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    largest = float(x.abs().max())
    ks = range(1, n_grid + 1) if ks is None else ks
    errors = []
    for k in ks:
        scale = k / n_grid * largest / qmax
        q = torch.round(x / scale)
        x_hat = (torch.clamp(q, qmin, qmax) if clamp else q) * scale
        errors.append(float(((x - x_hat).abs() ** power).mean()))
    return errors


@MSE.wrong("did not clamp the codes")
def mse_no_clamp(x, bits, n_grid):
    return (int(np.argmin(_search(x, bits, n_grid, clamp=False))) + 1) / n_grid


@MSE.wrong("returned the clipping threshold alpha * max|x|, not alpha")
def mse_threshold(x, bits, n_grid):
    return (int(np.argmin(_search(x, bits, n_grid))) + 1) / n_grid * float(x.abs().max())


@MSE.wrong("minimised the mean absolute error")
def mse_mae(x, bits, n_grid):
    return (int(np.argmin(_search(x, bits, n_grid, power=1))) + 1) / n_grid


@MSE.wrong("picked the largest error")
def mse_argmax(x, bits, n_grid):
    return (int(np.argmax(_search(x, bits, n_grid))) + 1) / n_grid


@MSE.wrong("on a tie keep the smallest alpha")
def mse_tie_last(x, bits, n_grid):  # a loop with <=: the last of equal errors wins
    best_alpha, best_err = None, float("inf")
    for k, err in zip(range(1, n_grid + 1), _search(x, bits, n_grid)):
        if err <= best_err:
            best_alpha, best_err = k / n_grid, err
    return best_alpha


@MSE.wrong("one grid step off")
def mse_index_not_k(x, bits, n_grid):  # forgot the + 1: alpha = index / n_grid
    return int(np.argmin(_search(x, bits, n_grid))) / n_grid


@MSE.wrong("return k / n_grid, not k")
def mse_returns_k(x, bits, n_grid):
    return int(np.argmin(_search(x, bits, n_grid))) + 1 + 0.0


@MSE.wrong("used 2**(bits-1) steps")
def mse_steps(x, bits, n_grid):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    largest = float(x.abs().max())
    errors = []
    for k in range(1, n_grid + 1):
        scale = k / n_grid * largest / 2 ** (bits - 1)
        errors.append(float(((x - torch.clamp(torch.round(x / scale), qmin, qmax) * scale) ** 2).mean()))
    return (int(np.argmin(errors)) + 1) / n_grid


@MSE.right
def mse_float64_numpy(x, bits, n_grid):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = x.numpy().astype(np.float32)
    largest = np.abs(v).max()
    alphas = np.arange(1, n_grid + 1) / n_grid
    errors = [np.mean((v - np.clip(np.round(v / np.float32(a * largest / qmax)), qmin, qmax) * np.float32(a * largest / qmax)) ** 2)
              for a in alphas]
    return float(alphas[int(np.argmin(errors))])


@MSE.right
def mse_loop_strict(x, bits, n_grid):
    best_alpha, best_err = None, float("inf")
    for k, err in zip(range(1, n_grid + 1), _search(x, bits, n_grid)):
        if err < best_err:
            best_alpha, best_err = k / n_grid, err
    return best_alpha
