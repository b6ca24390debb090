#!/usr/bin/env python
"""Canary rollout with automatic rollback (qedu.serving): detection delay, false alarms, accuracy saved.

The digits MLP (``pretrained("mlp", seed=0)``) quantized W8A8 (per-channel weights, min/max
ranges on ``load_digits(seed=0).x_calib``) is served with the float model in the shadow, on
streams of 100 batches of 32 test images with a fault from batch 30 on, under the default
``AlarmRules()`` and ``Rollout()`` (25 % canary for 40 batches). For each fault and severity,
over ``SEEDS`` (each seed draws its own stream and routing), the table gives:

* detected: seeds whose stream was rolled back at or after the onset; rollback delay (batches
  from the onset to the batch whose alarm triggered the rollback, median and max);
* first alarm of each signal after the onset (median delay; "-": never, in any seed);
* false rollbacks (before the onset);
* accuracy from the onset on: what was served, what would have been served without rollback,
  the float shadow's; saved = served - no rollback (mean, min, max over seeds, points).

Clean streams (``CLEAN_SEEDS``) give each signal's false-alarm rate per batch (the share of the
batches it judged on which it alarmed), in the canary and after it, and the false rollbacks.
A last table trades ``k`` and the PSI threshold against false rollbacks and detection delay.
These are accuracy and delay numbers, not timings: the machine's load does not change them.

Usage: python benchmarks/rollback.py   ->  benchmarks/results/rollback.{json,md}
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

import qedu  # noqa: E402
from qedu.data import load_digits  # noqa: E402
from qedu.models import pretrained  # noqa: E402
from qedu.ptq import PTQConfig, quantize_model  # noqa: E402
from qedu.serving import (  # noqa: E402
    FAULTS, RULES, SEVERITY_LEVELS, SIGNALS, AlarmRules, Rollout, ServingLoop, make_stream, outcome,
)

SEEDS = range(10)
CLEAN_SEEDS = range(20)
TRADEOFF_K = (1, 2, 3, 5)
TRADEOFF_PSI = (0.05, 0.1)
STREAM = dict(n_batches=100, batch_size=32, onset=30)


def settings(fault: str) -> list[int]:
    return [1, 2, 3] if fault in SEVERITY_LEVELS else [2]


def main() -> None:
    qedu.setup(seed=0)
    data = load_digits(seed=0)
    model = pretrained("mlp", seed=0)
    config = PTQConfig()
    loop = ServingLoop(model, quantize_model(model, config, data.x_calib), data.x_calib)
    rules, rollout = AlarmRules(), Rollout()

    # clean streams: false alarms per signal, in the canary and after it
    counts = {n: {"canary": [0, 0], "full": [0, 0]} for n in SIGNALS}  # [alarms, judged batches]
    false_rollbacks = 0
    for seed in CLEAN_SEEDS:
        stream = make_stream(data.x_test, data.y_test, "none", **STREAM, seed=seed)
        routing = Rollout(rollout.canary_fraction, rollout.canary_batches, seed)
        run = loop.run(stream, rules, routing, rollback=False)
        false_rollbacks += loop.run(stream, rules, routing).rollback is not None
        for n in SIGNALS:
            for b, (value, alarm) in enumerate(zip(run.values[n], run.alarms[n])):
                if value == value:  # judged (not NaN)
                    c = counts[n]["canary" if b < rollout.canary_batches else "full"]
                    c[0] += alarm
                    c[1] += 1
    clean = {n: {phase: {"alarms": a, "batches": j, "rate": a / j if j else None} for phase, (a, j) in counts[n].items()}
             for n in SIGNALS}
    for n in SIGNALS:
        a = sum(v["alarms"] for v in clean[n].values())
        j = sum(v["batches"] for v in clean[n].values())
        clean[n]["all"] = {"alarms": a, "batches": j, "rate": a / j}

    rows, per_seed = [], []
    for fault in FAULTS[1:]:
        for severity in settings(fault):
            outs = [outcome(loop, make_stream(data.x_test, data.y_test, fault, severity, **STREAM, seed=seed), rules,
                            Rollout(rollout.canary_fraction, rollout.canary_batches, seed)) for seed in SEEDS]
            for o in outs:
                per_seed.append(dict(fault=fault, severity=severity, seed=o.seed, rollback=o.rollback,
                                     rollback_delay=o.rollback_delay, first_alarm_delay=o.first_alarm_delay,
                                     false_rollback=o.false_rollback, served=o.served_accuracy,
                                     no_rollback=o.no_rollback_accuracy, float=o.float_accuracy, saved=o.saved))
            delays = [o.rollback_delay for o in outs if o.rollback_delay is not None]
            saved = [100 * o.saved for o in outs]
            first = {}
            for n in SIGNALS:
                d = [o.first_alarm_delay[n] for o in outs if o.first_alarm_delay[n] is not None]
                first[n] = {"median": statistics.median(d) if d else None, "seeds": len(d)}
            rows.append(dict(
                fault=fault, severity=severity,
                parameter=SEVERITY_LEVELS[fault][severity - 1] if fault in SEVERITY_LEVELS else 16.0,
                seeds=len(outs), detected=len(delays),
                rollback_delay_median=statistics.median(delays) if delays else None,
                rollback_delay_max=max(delays) if delays else None,
                first_alarm_delay=first, false_rollbacks=sum(o.false_rollback for o in outs),
                served=statistics.mean(o.served_accuracy for o in outs),
                no_rollback=statistics.mean(o.no_rollback_accuracy for o in outs),
                float=statistics.mean(o.float_accuracy for o in outs),
                saved_points_mean=statistics.mean(saved), saved_points_min=min(saved), saved_points_max=max(saved),
            ))
            r = rows[-1]
            print(fault, severity, r["detected"], r["rollback_delay_median"], round(r["saved_points_mean"], 2))

    # the trade-off: k and the PSI threshold against false rollbacks (clean) and delays (faulty)
    clean_features = [loop.features(make_stream(data.x_test, data.y_test, "none", **STREAM, seed=s)) for s in CLEAN_SEEDS]
    faulty = {f: [loop.features(make_stream(data.x_test, data.y_test, f, 2, **STREAM, seed=s)) for s in SEEDS]
              for f in ("gain", "fading")}
    tradeoff = []
    for k in TRADEOFF_K:
        for threshold in TRADEOFF_PSI:
            r = AlarmRules(psi_threshold=threshold, k=k)
            false = sum(loop.run(f, r, Rollout(rollout.canary_fraction, rollout.canary_batches, seed)).rollback is not None
                        for seed, f in zip(CLEAN_SEEDS, clean_features))
            row = {"k": k, "psi_threshold": threshold, "clean_false_rollbacks": false}
            for fault, feats in faulty.items():
                rb = [loop.run(f, r, Rollout(rollout.canary_fraction, rollout.canary_batches, seed)).rollback
                      for seed, f in zip(SEEDS, feats)]
                delays = [b - STREAM["onset"] for b in rb if b is not None and b >= STREAM["onset"]]
                row[f"{fault}_delay_median"] = statistics.median(delays) if delays else None
                row[f"{fault}_false_rollbacks"] = sum(b is not None and b < STREAM["onset"] for b in rb)
            tradeoff.append(row)

    payload = {
        "machine": machine(),
        "setup": {"model": "pretrained('mlp', seed=0)", "quantization": config.name, "stream": STREAM,
                  "seeds": list(SEEDS), "clean_seeds": list(CLEAN_SEEDS), "rules": dict(vars(rules)),
                  "rollout": {"canary_fraction": rollout.canary_fraction, "canary_batches": rollout.canary_batches},
                  "written_rules": RULES, "severity_levels": {k: list(v) for k, v in SEVERITY_LEVELS.items()}},
        "clean": clean, "clean_streams": len(CLEAN_SEEDS), "clean_false_rollbacks": false_rollbacks,
        "rows": rows, "per_seed": per_seed, "tradeoff": tradeoff,
    }

    def cell(v, fmt="{:g}"):
        return "-" if v is None else fmt.format(v)

    lines = [
        "# Canary rollout with automatic rollback (qedu.serving)",
        "",
        f"Digits MLP, {config.name}, served with the float model in the shadow; streams of {STREAM['n_batches']} "
        f"batches of {STREAM['batch_size']} test images, fault from batch {STREAM['onset']}; canary "
        f"{rollout.canary_fraction:.0%} of the traffic for {rollout.canary_batches} batches; rules: clip tolerance "
        f"{rules.clip_tolerance}, under-use {rules.underuse}, PSI > {rules.psi_threshold} over the last "
        f"{rules.drift_window} requests, disagreement > {rules.disagreement_threshold}; rollback when one signal "
        f"alarms {rules.k} batches in a row. {len(SEEDS)} seeds per row (stream and routing). Accuracies from the "
        "onset on, mean over seeds. Produced by `python benchmarks/rollback.py` (accuracy and delays, not timings).",
        "",
        "| fault | severity (parameter) | detected | rollback delay median (max) | first alarm, median (seeds): range / "
        "drift / disagreement | false rollbacks | served % | no rollback % | float % | saved, points mean (min..max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fa = " / ".join(f"{cell(r['first_alarm_delay'][n]['median'])} ({r['first_alarm_delay'][n]['seeds']})"
                        for n in SIGNALS)
        lines.append(f"| {r['fault']} | {r['severity']} ({r['parameter']:g}) | {r['detected']}/{r['seeds']} | "
                     f"{cell(r['rollback_delay_median'])} ({cell(r['rollback_delay_max'])}) | {fa} | "
                     f"{r['false_rollbacks']} | {100 * r['served']:.1f} | {100 * r['no_rollback']:.1f} | "
                     f"{100 * r['float']:.1f} | {r['saved_points_mean']:+.1f} ({r['saved_points_min']:+.1f}.."
                     f"{r['saved_points_max']:+.1f}) |")
    lines += ["", f"Clean streams ({len(CLEAN_SEEDS)} seeds): false rollbacks {false_rollbacks}/{len(CLEAN_SEEDS)}.", "",
              "| signal | false alarms per judged batch, canary | after the canary | all |", "|---|---|---|---|"]
    for n in SIGNALS:
        c = clean[n]
        lines.append(f"| {n} | {c['canary']['alarms']}/{c['canary']['batches']} | {c['full']['alarms']}/"
                     f"{c['full']['batches']} | {100 * c['all']['rate']:.2f} % |")
    lines += ["", f"Trade-off: k and the PSI threshold (other rules as above). False rollbacks on the "
              f"{len(CLEAN_SEEDS)} clean streams; median rollback delay (batches after the onset) and false rollbacks "
              f"(before the onset) on the {len(SEEDS)} streams with gain or fading at severity 2.", "",
              "| k | PSI > | clean: false rollbacks | gain 2: delay (false) | fading 2: delay (false) |",
              "|---|---|---|---|---|"]
    for r in tradeoff:
        lines.append(f"| {r['k']} | {r['psi_threshold']:g} | {r['clean_false_rollbacks']}/{len(CLEAN_SEEDS)} | "
                     f"{cell(r['gain_delay_median'])} ({r['gain_false_rollbacks']}) | "
                     f"{cell(r['fading_delay_median'])} ({r['fading_false_rollbacks']}) |")
    lines += ["", "Alarm rules:", ""] + [f"* **{k}**: {v}." for k, v in RULES.items()]
    write("rollback", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
