# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# <!-- Lesson 11 fragment (issue 17): "Operating a quantized model" and "Governance".
#      Owner: h17ops. Merged into lessons/11_deployment_and_monitoring.ipynb by h17int.
#      Each number in the prose is held by tests/test_lesson11_ops_claims.py. -->
#
# ## Operating a quantized model
#
# A quantized model that passed every test can still fail on the first day: a camera with a new
# gain, a client that forgot the `/ 16` of the preprocessing, a sensor that fades, users who send
# other digits than the test set held. Nobody can test for all of these before deploying, so
# deployment itself has to be careful. `qedu.serving` is a small serving loop, in the notebook's
# own process (no network server), that does what production systems do:
#
# * **shadow**: the quantized model serves, and the float model it replaces runs beside it on
#   every request; its answers are computed and compared, never served;
# * **canary**: at first only a share of the traffic (25 %, for 40 batches) goes to the quantized
#   model, chosen by a seeded draw per request; the rest is still served by the float model;
# * **three signals**, each with a written alarm rule (below);
# * **rollback**: when one signal has alarmed on `k` consecutive batches (3), the float model
#   serves everything from the next batch on;
# * an **incident log**: what fired, when, what was rolled back, and the evidence.

# %%
import tempfile
from pathlib import Path

import torch
from IPython.display import Markdown, display

import qedu
from qedu.data import load_digits
from qedu.model_card import load_artifact, model_card, quantized_tensors, save_artifact
from qedu.models import WeightsMismatchError, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.results import results_markdown
from qedu.serving import RULES, AlarmRules, ServingLoop, log_jsonl, log_markdown, make_stream
from qedu.widgets.deploy import deployment_simulator

qedu.setup(seed=0)

# %% [markdown]
# The model: lesson 04's digits MLP at W8A8 (per-channel weights, min/max ranges calibrated on the
# 256 calibration images). The loop watches it with lesson 09's range monitor and drift test,
# calibrated on the same images. The three rules, as the loop applies them:

# %%
data = load_digits(seed=0)
mlp = pretrained("mlp", seed=0)
w8a8 = quantize_model(mlp, PTQConfig(), data.x_calib)
loop = ServingLoop(mlp, w8a8, data.x_calib)
for name, rule in RULES.items():
    print(f"{name:>12}: {rule}")
print(AlarmRules())

# %% [markdown]
# * **range** is lesson 09's `RangeMonitor`: inputs that outgrow the grid (clipping) or use only a
#   corner of it (under-use);
# * **drift** compares the whole histogram of each layer's input codes with calibration's (PSI,
#   lesson 09). PSI on a handful of images is large even on clean data (the next cell measures
#   it), so the histogram pools the last 128 requests the quantized model handled, and gives no
#   verdict before it has them;
# * **disagreement** needs no labels: the share of requests where the quantized model's answer
#   differs from the float shadow's. On clean test images the two disagree on well under 1 %.
#
# PSI is biased upwards on small samples: an empty bin in a small histogram, or one value in a bin
# calibration rarely used, counts as a change. The largest PSI over the layers, on clean test
# images, for windows of 8, 32 and 128 requests:

# %%
clean = loop.features(make_stream(data.x_test, data.y_test, "none", n_batches=100, batch_size=32, seed=0))
for size in (8, 32, 128):
    t = loop.track(clean, torch.ones(3200, dtype=torch.bool), drift_window=size)
    scores = t["psi"][t["window"] >= size]
    print(f"{size:>4} requests: median PSI {scores.median():.3f}, largest {scores.max():.3f}")

# %% [markdown]
# About 0.5 for a canary's 8 requests, 0.12 for a batch of 32 and 0.04 for 128, on data that has
# not changed at all: with a threshold of 0.1 (the usual line between "stable" and "moderate
# shift"), only the pooled histogram stays quiet.
#
# A stream is 100 batches of 32 test images, drawn with replacement; from batch 30 on, a fault is
# injected. Here a client forgets the `/ 16`: pixels arrive as 0..16 instead of 0..1.

# %%
stream = make_stream(data.x_test, data.y_test, "missing_div16", n_batches=100, batch_size=32, onset=30, seed=0)
run = loop.run(stream)  # AlarmRules() and Rollout(): 25 % canary for 40 batches, k = 3
no_rollback = loop.run(stream, rollback=False)  # the counterfactual: same alarms, no action
print(f"rolled back after batch {run.rollback}; accuracy over the stream: served {100 * run.accuracy:.1f} %, "
      f"without rollback {100 * no_rollback.accuracy:.1f} %")
display(Markdown(log_markdown(run.incidents)))

# %% [markdown]
# The range alarm fires on the first faulty batch (batch 30): fc1's grid ends at 1.0 and most ink
# pixels are now far above it. It holds for three batches, and after batch 32 the float model
# serves everything. The disagreement alarm at batch 9 is a false one: one differing answer among
# the 7 requests the canary sent the quantized model that batch; it held for one batch only. The float model barely minds the missing `/ 16` (a ReLU network without the
# grid's clamp is nearly blind to a common scale of its input), so rolling back to it restores the
# accuracy. The quantized model keeps running in the shadow after the rollback, so its signals stay
# visible to whoever investigates.
#
# The same log as JSON lines, one record per line, for a log collector:

# %%
print(log_jsonl(run.incidents[-1:]))

# %% [markdown]
# ### The deployment simulator
#
# Pick a fault and its severity, the canary's share and the thresholds, and watch accuracy over
# time (what was served, the float shadow, and what would have been served without rollback), each
# signal against its threshold (above 1 is an alarm), the alarms, the rollback and the incident log.
# Try a PSI threshold of 0.02 on a clean stream: the drift signal then alarms on ordinary sampling
# noise and rolls back a model that was fine. Try a 10 % canary: fewer requests per batch for the
# signals to judge.

# %%
deployment_simulator()

# %% [markdown]
# ### Ten seeds per fault
#
# `benchmarks/rollback.py` serves every fault at three severities on ten streams each (stream and
# routing seeded), and twenty clean streams to measure the false alarms. The committed table:

# %%
display(Markdown(results_markdown("rollback")))

# %% [markdown]
# What it says:
#
# * **A forgotten `/ 16`** is caught on every seed, the rollback comes 2 batches after the onset
#   (the range alarm fires at once; `k = 3` batches must pass), and it saves about 13 points of
#   accuracy over the rest of the stream.
# * **Sensor gain** is caught the same way, at every severity; the quantized model loses a few points
#   to clipping that the float model does not, and the rollback saves 1 to 3 points.
# * **Fading** is caught by the drift test on every seed, 3 batches after the onset; the range
#   monitor's under-use rule sees it only at the strongest severity, and late. But the rollback
#   saves **nothing**: at 8 bits the quantized model reads faded digits as well as the float
#   model does. The data changed; the model did not get worse. An alarm says "look", not "the
#   model is wrong": a drift alarm alone might page a person rather than roll back.
# * **A class mix** (more 8s and 9s) is the hardest to see: the drift test rolls back in 6 of 10
#   seeds, only at the strongest mix, and a median of 23 batches late; nothing needed saving, since
#   both models are equally good on those digits.
# * **On clean streams** no rollback happened in 20 streams. The range and drift signals never
#   alarmed; the disagreement signal alarmed on 12 of the 800 canary batches (1.5 %; a canary
#   batch holds only about 8 requests, so a single disagreement is 12.5 %) and never after the
#   canary. None of those alarms held for 3 batches: this is what `k` is for.
# * **The last table trades `k` against delay.** Rolling back on the first alarm (`k = 1`) rolls
#   back 9 of the 20 clean streams for nothing (the canary's lone disagreements), and half of the
#   faulty ones before their fault even began. `k = 2` already silences the clean streams, at one
#   batch of delay; the default `k = 3` buys one more batch of margin. A tighter PSI threshold
#   (0.05) is not a free gain in speed: even with `k = 5` it still rolls back 2 clean streams.

# %% [markdown]
# ## Governance
#
# Whoever deploys a quantized model must be able to say what it is: how it was quantized, on which
# data, how it was evaluated, and which exact files ship. `qedu.model_card` writes that section of a
# model card **from the pipeline's own objects**: the recipe is read from the quantized layers (and
# checked against the codes they hold), the data's provenance from scikit-learn's bundled copy, the
# slices are measured, the monitoring rules come from the serving loop's `AlarmRules`, and every
# artifact is listed with its sha256.

# %%
folder = tempfile.TemporaryDirectory()  # the artifacts of this lesson; deleted at the end
artifact = Path(folder.name) / "digits_mlp_w8a8.safetensors"
digest = save_artifact(artifact, quantized_tensors(w8a8), {"recipe": PTQConfig().name})
display(Markdown(model_card(mlp, w8a8, data, artifacts={"W8A8 weights and qparams": artifact},
                            monitoring=AlarmRules())))

# %% [markdown]
# The digits come from scikit-learn's copy of the test set of the UCI "Optical Recognition of
# Handwritten Digits" data (E. Alpaydin and C. Kaynak, 1998). scikit-learn's description names the
# creator and the UCI page but states no licence; the UCI repository licenses the data set under
# CC BY 4.0 (attribution required), and the card says where that comes from.
#
# The card records the artifact's sha256. `load_artifact` reads the file once, hashes its bytes and
# parses them (safetensors: tensors only, never a pickle) **only if** the hash matches. Change one
# bit of the file and it is refused:

# %%
tensors = load_artifact(artifact, digest)
print(f"loaded {len(tensors)} tensors; fc1 codes {tensors['fc1.weight_q'].dtype}")
raw = bytearray(artifact.read_bytes())
raw[-1] ^= 1  # one bit of the last tensor
artifact.write_bytes(bytes(raw))
try:
    load_artifact(artifact, digest)
except WeightsMismatchError as err:
    print("refused:", err)
folder.cleanup()
