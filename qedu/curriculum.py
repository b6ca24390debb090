"""The lesson map: one row per lesson, shared by lesson 00, the README and the tests.

A lesson is "ready" when ``lessons/<slug>.ipynb`` exists; the test suite checks that the two
agree, so the map never promises a notebook that is not there.

>>> LESSONS[0].slug
'00_welcome'
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lesson", "LESSONS", "lesson_map"]


@dataclass(frozen=True)
class Lesson:
    slug: str
    title: str
    idea: str
    ready: bool


LESSONS = (
    Lesson("00_welcome", "Welcome", "what quantization buys, how the widgets and exercises work", True),
    Lesson("01_number_formats", "Number formats", "int, fp32/fp16/bf16, fp8, fp4: range vs precision", True),
    Lesson("02_uniform_quantization", "Uniform quantization", "scale, zero point, rounding, granularity, integer arithmetic, NF4, packing", True),
    Lesson("03_calibration", "Calibration", "min/max, percentile, MSE and KL clipping of activations", True),
    Lesson("04_post_training_quantization", "Post-training quantization", "W8A8 to W2 on a real model, sensitivity, BN folding, CLE, bias correction, AdaRound", True),
    Lesson("05_quantization_aware_training", "Quantization-aware training", "STE, learned step size, when QAT beats PTQ", True),
    Lesson("06_mixed_precision_training", "Mixed-precision training", "master weights, loss scaling, fp32 accumulation, fp16 vs bf16", True),
    Lesson("07_low_bit_optimizers_and_memory", "Low-bit optimizers and memory", "8-bit Adam, stochastic rounding, recomputation, ZeRO, where memory goes", True),
    Lesson("08_evaluating_quantized_models", "Evaluating quantized models", "latency, size, silent per-class regressions, significance tests, calibration error, Pareto fronts", True),
    Lesson("09_data_quality_and_security", "Data quality and security", "calibration data, poisoning, drift tests, adaptive attacks, membership inference, bit flips", True),
    Lesson("10_llm_weight_quantization", "LLM weight quantization", "memory-bound decoding, group-wise int4, outliers, GPTQ, AWQ, SmoothQuant, NF4", True),
    Lesson("11_deployment_and_monitoring", "Deployment and monitoring",
           "integer-only inference, real int8 kernels, edge budgets, canary rollout and rollback", True),
    Lesson("12_low_precision_training", "Training at the frontier", "block-scaled formats (MX, NVFP4), FP8 training recipes, QLoRA", True),
)


def lesson_map(link_prefix: str = "") -> str:
    """The lesson map as a markdown table; ready lessons link to ``link_prefix + slug.ipynb``.

    >>> lesson_map("lessons/").splitlines()[2]
    '| 00 | [Welcome](lessons/00_welcome.ipynb) | what quantization buys, how the widgets and exercises work | ready |'
    """
    rows = ["| # | lesson | what you will learn | status |", "|---|---|---|---|"]
    for lesson in LESSONS:
        name = f"[{lesson.title}]({link_prefix}{lesson.slug}.ipynb)" if lesson.ready else lesson.title
        status = "ready" if lesson.ready else "coming"
        rows.append(f"| {lesson.slug[:2]} | {name} | {lesson.idea} | {status} |")
    return "\n".join(rows)
