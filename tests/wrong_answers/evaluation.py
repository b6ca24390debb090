"""Lessons 08-09: wrong and right answers for disagreement_rate, per_class_deltas, clip_rate and fgsm."""
import numpy as np
import torch
import torch.nn.functional as F

from qedu import checks
from qedu.checks.evaluation import CLIP_RATE, DISAGREEMENT, FGSM, PER_CLASS_DELTAS
from tests.wrong_answers import AnswerSet

DR = AnswerSet("disagreement_rate", checks.check_disagreement_rate, DISAGREEMENT, "08")
PCD = AnswerSet("per_class_deltas", checks.check_per_class_deltas, PER_CLASS_DELTAS, "08")
CR = AnswerSet("clip_rate", checks.check_clip_rate, CLIP_RATE, "09")
FG = AnswerSet("fgsm", checks.check_fgsm, FGSM, "09")


# --- disagreement_rate ----------------------------------------------------------------------------

@DR.wrong("compared with the labels instead of the float model's predictions")
def dr_labels(y, float_pred, quant_pred):
    return (quant_pred != y).float().mean().item()


@DR.wrong("compared the two accuracies instead of the predictions")
def dr_accuracies(y, float_pred, quant_pred):
    return abs((float_pred == y).float().mean().item() - (quant_pred == y).float().mean().item())


@DR.wrong("returned the agreement, not the disagreement")
def dr_agreement(y, float_pred, quant_pred):
    return (quant_pred == float_pred).float().mean().item()


@DR.wrong("returned a count, not a fraction")
def dr_count(y, float_pred, quant_pred):
    return int((quant_pred != float_pred).sum())


@DR.wrong("more than 1: return a fraction")
def dr_percent(y, float_pred, quant_pred):
    return 100 * (quant_pred != float_pred).float().mean().item()


@DR.wrong("integer division")
def dr_floor_division(y, float_pred, quant_pred):
    return int((quant_pred != float_pred).sum()) // len(y)


@DR.right
def dr_numpy(y, float_pred, quant_pred):
    return np.mean(float_pred.numpy() != quant_pred.numpy())


@DR.right
def dr_loop(y, float_pred, quant_pred):
    return sum(int(a != b) for a, b in zip(float_pred.tolist(), quant_pred.tolist())) / len(y)


# --- per_class_deltas -----------------------------------------------------------------------------

@PCD.wrong("divided by the total number of inputs")
def pcd_total(y, float_pred, quant_pred, n_classes):
    def acc(pred):
        return torch.bincount(y[pred == y], minlength=n_classes).double() / len(y)
    return acc(quant_pred) - acc(float_pred)


@PCD.wrong("subtracted the wrong way round")
def pcd_sign(y, float_pred, quant_pred, n_classes):
    total = torch.bincount(y, minlength=n_classes).double()
    def acc(pred):
        return torch.bincount(y[pred == y], minlength=n_classes).double() / total
    return acc(float_pred) - acc(quant_pred)


@PCD.wrong("grouped by predicted class instead of true class")
def pcd_predicted(y, float_pred, quant_pred, n_classes):
    def acc(pred):
        return torch.bincount(pred[pred == y], minlength=n_classes).double() / torch.bincount(pred, minlength=n_classes).double()
    return acc(quant_pred) - acc(float_pred)


@PCD.wrong("gave a class with no input 0 instead of nan")
def pcd_zero_for_empty(y, float_pred, quant_pred, n_classes):
    out = torch.zeros(n_classes, dtype=torch.float64)
    for c in range(n_classes):
        mask = y == c
        if mask.any():
            out[c] = (quant_pred[mask] == c).double().mean() - (float_pred[mask] == c).double().mean()
    return out


@PCD.wrong("fails only on inputs like this one")
def pcd_python_division(y, float_pred, quant_pred, n_classes):  # 0 / 0 in Python raises
    out = []
    for c in range(n_classes):
        n = int((y == c).sum())
        out.append((int(((quant_pred == c) & (y == c)).sum()) - int(((float_pred == c) & (y == c)).sum())) / n)
    return torch.tensor(out)


@PCD.wrong("should be a torch.Tensor")
def pcd_list(y, float_pred, quant_pred, n_classes):
    total = torch.bincount(y, minlength=n_classes).double()
    def acc(pred):
        return torch.bincount(y[pred == y], minlength=n_classes).double() / total
    return (acc(quant_pred) - acc(float_pred)).tolist()


@PCD.right
def pcd_loop_float32(y, float_pred, quant_pred, n_classes):
    out = torch.full((n_classes,), float("nan"))
    for c in range(n_classes):
        mask = y == c
        if mask.any():
            out[c] = (quant_pred[mask] == c).float().mean() - (float_pred[mask] == c).float().mean()
    return out


@PCD.right
def pcd_numpy(y, float_pred, quant_pred, n_classes):
    y, f, q = y.numpy(), float_pred.numpy(), quant_pred.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.bincount(y, minlength=n_classes).astype(float)
        return (np.bincount(y[q == y], minlength=n_classes) - np.bincount(y[f == y], minlength=n_classes)) / total


# --- clip_rate ------------------------------------------------------------------------------------

def _code(x, scale, zero_point):
    return torch.round(x * (1.0 / scale)) + zero_point


@CR.wrong("counted values that land exactly on qmin or qmax as clipped")
def cr_ge(x, scale, zero_point, qmin, qmax):
    c = _code(x, scale, zero_point)
    return ((c <= qmin) | (c >= qmax)).float().mean().item()


@CR.wrong("forgot the lower bound")
def cr_upper_only(x, scale, zero_point, qmin, qmax):
    return (_code(x, scale, zero_point) > qmax).float().mean().item()


@CR.wrong("compared x with the range ends before rounding")
def cr_before_rounding(x, scale, zero_point, qmin, qmax):
    return ((x < (qmin - zero_point) * scale) | (x > (qmax - zero_point) * scale)).float().mean().item()


@CR.wrong("forgot the zero point")
def cr_no_zp(x, scale, zero_point, qmin, qmax):
    c = torch.round(x / scale)
    return ((c < qmin) | (c > qmax)).float().mean().item()


@CR.wrong("returned a count, not a fraction")
def cr_count(x, scale, zero_point, qmin, qmax):
    c = _code(x, scale, zero_point)
    return int(((c < qmin) | (c > qmax)).sum())


@CR.wrong("exact tie")
def cr_half_up(x, scale, zero_point, qmin, qmax):
    c = torch.floor(x / scale + 0.5) + zero_point
    return ((c < qmin) | (c > qmax)).float().mean().item()


@CR.wrong("exact tie")
def cr_half_away_numpy(x, scale, zero_point, qmin, qmax):
    v = x.numpy() / scale
    c = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return float(np.mean((c < qmin) | (c > qmax)))


@CR.wrong("more than 1: return the fraction")
def cr_percent(x, scale, zero_point, qmin, qmax):
    c = _code(x, scale, zero_point)
    return 100.0 * ((c < qmin) | (c > qmax)).float().mean().item()


@CR.wrong("forgot the lower bound")
def cr_clamp_first(x, scale, zero_point, qmin, qmax):  # clamps the lower end before comparing
    c = torch.clamp(_code(x, scale, zero_point), min=qmin)
    return ((c < qmin) | (c > qmax)).float().mean().item()


@CR.wrong("changed its input `x`")
def cr_in_place(x, scale, zero_point, qmin, qmax):
    x.mul_(1.0 / scale).round_().add_(zero_point)
    return ((x < qmin) | (x > qmax)).float().mean().item()


@CR.wrong("compared x with the range ends before rounding")
def cr_real_range_loop(x, scale, zero_point, qmin, qmax):  # a loop over real-valued range ends
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    return sum(1 for v in x.tolist() if v < lo or v > hi) / len(x)


@CR.right
def cr_sums(x, scale, zero_point, qmin, qmax):
    c = torch.round(x * (1.0 / scale)) + zero_point
    return ((c < qmin).sum() + (c > qmax).sum()).item() / x.numel()


@CR.right
def cr_clamp_changes(x, scale, zero_point, qmin, qmax):
    c = torch.round(x * (1.0 / torch.tensor(scale))) + zero_point
    return (torch.clamp(c, qmin, qmax) != c).double().mean()


# --- fgsm -----------------------------------------------------------------------------------------

def _grad(model, x, y, loss=F.cross_entropy):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(model(x), y), x)
    return g


@FG.wrong("used the gradient instead of its sign")
def fg_raw_grad(model, x, y, eps):
    return (x + eps * _grad(model, x, y)).clamp(0, 1).detach()


@FG.wrong("forgot to clamp to [0, 1]")
def fg_no_clamp(model, x, y, eps):
    return (x + eps * _grad(model, x, y).sign()).detach()


@FG.wrong("stepped down the loss")
def fg_minus(model, x, y, eps):
    return (x - eps * _grad(model, x, y).sign()).clamp(0, 1).detach()


@FG.wrong("still requires grad")
def fg_not_detached(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    return (x + eps * g.sign()).clamp(0, 1)


@FG.wrong("changed its input `x`")
def fg_requires_grad_on_input(model, x, y, eps):
    x.requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return (x + eps * x.grad.sign()).clamp(0, 1).detach()


@FG.wrong("the pixel's gradient is zero")
def fg_where_positive(model, x, y, eps):  # sign(0) is 0; this moves zero-gradient pixels down
    g = _grad(model, x, y)
    return (x + torch.where(g > 0, eps, -eps)).clamp(0, 1)


@FG.wrong("goes below 0")
def fg_clamp_max_only(model, x, y, eps):
    return (x + eps * _grad(model, x, y).sign()).clamp(max=1).detach()


@FG.wrong("changed its input `model`")
def fg_train_mode(model, x, y, eps):
    model.train()
    return (x + eps * _grad(model, x, y).sign()).clamp(0, 1).detach()


@FG.wrong("in the wrong direction")
def fg_nll_on_logits(model, x, y, eps):  # nll_loss expects log-probabilities
    return (x + eps * _grad(model, x, y, F.nll_loss).sign()).clamp(0, 1).detach()


@FG.wrong("in the wrong direction")
def fg_predicted_label(model, x, y, eps):  # attacks the model's own prediction instead of the label
    pred = model(x).argmax(dim=1)
    return (x + eps * _grad(model, x, pred).sign()).clamp(0, 1).detach()


@FG.wrong("not by exactly eps")
def fg_double_step(model, x, y, eps):
    return (x + 2 * eps * _grad(model, x, y).sign()).clamp(0, 1).detach()


@FG.wrong("not by exactly eps")
def fg_normalized_grad(model, x, y, eps):  # an L2 step, not FGSM's L-infinity one
    g = _grad(model, x, y)
    return (x + eps * g / (g.norm() + 1e-12)).clamp(0, 1).detach()


@FG.right
def fg_summed_loss_backward(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return (x + eps * x.grad.sign()).clamp(0, 1).detach()


@FG.right
def fg_no_grad_update(model, x, y, eps):
    x_adv = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    with torch.no_grad():
        x_adv = torch.clamp(x_adv + eps * torch.sign(x_adv.grad), 0.0, 1.0)
    return x_adv
