"""qedu.memory: the per-parameter table and the activation formula against real allocations."""
from __future__ import annotations

import math

import pytest
import torch

from qedu.memory import (RECIPES, TinyGPT, allocate_training_state, gpt_param_count, measure_activation_bytes,
                         measure_cuda_peak, measure_state_bytes, training_memory, transformer_activation_bytes)
from qedu.models import make_cnn, make_mlp


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("make", [make_mlp, make_cnn, lambda seed: TinyGPT(64, 16, 32, 2, 4)], ids=["mlp", "cnn", "gpt"])
def test_table_equals_real_nbytes_of_the_allocated_tensors(recipe, make):
    model = make(seed=0)
    n = _n_params(model)
    measured = measure_state_bytes(model, recipe)
    predicted = training_memory(n, recipe)
    assert (measured.weights, measured.grads, measured.master) == (predicted.weights, predicted.grads, predicted.master)
    if recipe == "mixed_adam8bit":
        # 8-bit states: 2 bytes + 2 absmax floats per block; a tensor's last block may be partial
        n_tensors = len(list(model.parameters()))
        assert 0 <= measured.optimizer - predicted.optimizer <= 8 * n_tensors
    else:
        assert measured.optimizer == predicted.optimizer


def test_allocated_dtypes_follow_the_recipe():
    model = make_mlp(seed=0)
    mixed = allocate_training_state(model, "mixed")
    assert {t.dtype for t in mixed["weights"]} == {torch.float16} and {t.dtype for t in mixed["master"]} == {torch.float32}
    pure = allocate_training_state(model, "bf16_pure")
    assert pure["master"] == [] and {t.dtype for t in pure["optimizer"]} == {torch.bfloat16}
    fp8 = allocate_training_state(model, "fp8")
    assert {t.dtype for t in fp8["weights"]} == {torch.float8_e4m3fn}
    q8 = allocate_training_state(model, "mixed_adam8bit")
    assert {t.dtype for t in q8["optimizer"]} == {torch.uint8, torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched


def test_table_values():
    per_param = {name: r.per_param for name, r in RECIPES.items()}
    assert per_param == {"fp32": 16, "mixed": 16, "mixed_adam8bit": 10.03125, "bf16_pure": 8, "fp8": 15}
    assert training_memory(10, "mixed_adam8bit", block_size=64).optimizer == 10 * (2 + 8 / 64)
    assert training_memory(100, "fp32", activation_values=1000).activations == 4000
    with pytest.raises(ValueError, match="recipe must be one of"):
        training_memory(1, "fp4")
    with pytest.raises(ValueError, match="n_params"):
        training_memory(-1, "fp32")


def test_gpt_param_count_matches_tinygpt():
    for L, h, V, s, a in [(1, 16, 10, 4, 2), (2, 32, 64, 16, 4), (3, 48, 100, 7, 6)]:
        assert _n_params(TinyGPT(V, s, h, L, a)) == gpt_param_count(L, h, V, s)


def test_activation_formula_is_korthikanti_eq1():
    s, b, h, a = 2048, 4, 4096, 32
    assert transformer_activation_bytes(1, h, s, b, a) == s * b * h * (34 + 5 * a * s / h)
    assert transformer_activation_bytes(3, h, s, b, a, dropout=False) == 3 * (16 * 2 * s * b * h + 2 * a * s * s * b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_activation_formula_matches_bytes_autograd_saves(dtype, dropout):
    """Count every tensor autograd keeps for backward inside the blocks of a TinyGPT.

    The formula leaves out two small things the measurement sees: LayerNorm's per-token mean
    and 1/std, and the causal mask; they stay under 2 % here. torch's CPU dropout stores its
    mask in the activation dtype (GPU kernels use 1-byte masks), hence mask_bytes=B.
    """
    torch.manual_seed(0)
    L, V, s, h, a, b = 2, 64, 32, 64, 4, 3
    model = TinyGPT(V, s, h, L, a, dropout=dropout).to(dtype).train()
    measured = measure_activation_bytes(model, torch.randint(V, (b, s)))
    B = torch.finfo(dtype).bits // 8
    formula = transformer_activation_bytes(L, h, s, b, a, B, dropout=dropout > 0, mask_bytes=B)
    assert formula <= measured <= 1.02 * formula


def test_fused_attention_computes_the_same_and_stores_no_attention_matrix():
    torch.manual_seed(0)
    V, s, h, a, b = 64, 32, 64, 4, 3
    explicit = TinyGPT(V, s, h, 2, a).train()
    fused = TinyGPT(V, s, h, 2, a, fused_attention=True).train()
    fused.load_state_dict(explicit.state_dict())
    idx = torch.randint(V, (b, s))
    torch.testing.assert_close(fused(idx), explicit(idx), rtol=1e-5, atol=1e-5)
    saved_explicit = measure_activation_bytes(explicit, idx)
    saved_fused = measure_activation_bytes(fused, idx)
    s_by_s = 2 * a * s * s * b * 4  # per layer: scores/probabilities (b, a, s, s) in fp32, 2 layers
    assert saved_fused < saved_explicit - 0.9 * s_by_s
    with pytest.raises(TypeError, match="fused_attention must be True or False"):
        TinyGPT(V, s, h, 2, a, fused_attention="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the peak-memory check "
                    "against torch.cuda.max_memory_allocated needs one (this is not a failure of qedu's code)")
@pytest.mark.parametrize("fused", [False, True], ids=["explicit_attention", "fused_attention"])
@pytest.mark.parametrize("recipe", ["fp32", "mixed", "bf16_pure"])
def test_cuda_peak_memory_is_close_to_the_estimate(recipe, fused):
    result = measure_cuda_peak(recipe, fused_attention=fused)
    # the estimate leaves out backward temporaries, workspaces and allocator rounding
    assert 0.9 < result["ratio"] < 1.5, result


def test_measure_cuda_peak_says_what_it_needs():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU test above runs instead")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        measure_cuda_peak()
    assert math.isfinite(training_memory(1, "fp8").total)


# --- activation recomputation (Korthikanti et al. 2022) and ZeRO (Rajbhandari et al. 2020) -------

from qedu.memory import RECOMPUTE, ZERO_STAGES, recompute_flops_overhead, zero_memory  # noqa: E402


def test_recompute_formulas_by_hand():
    s, b, h, a, L = 2048, 4, 4096, 32, 3
    none = transformer_activation_bytes(L, h, s, b, a)
    assert none == L * s * b * h * (34 + 5 * a * s / h)  # the paper's eq. 1 (16-bit, 1-byte masks)
    assert transformer_activation_bytes(L, h, s, b, a, recompute="selective") == L * 34 * s * b * h  # eq. 6
    assert transformer_activation_bytes(L, h, s, b, a, recompute="full") == L * 2 * s * b * h  # "2sbhL"
    with pytest.raises(ValueError, match="recompute must be one of"):
        transformer_activation_bytes(1, 4, 2, 1, 1, recompute="some")


class _Checkpointed(torch.nn.Module):
    """A block run under torch.utils.checkpoint: autograd keeps only its input."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)


def test_full_recomputation_equals_torch_checkpoint_exactly():
    torch.manual_seed(0)
    L, h, s, b, a = 2, 64, 32, 3, 4
    gpt = TinyGPT(64, s, h, L, a).to(torch.bfloat16).train()
    gpt.blocks = torch.nn.ModuleList(_Checkpointed(block) for block in gpt.blocks)
    measured = measure_activation_bytes(gpt, torch.randint(64, (b, s)))
    assert measured == transformer_activation_bytes(L, h, s, b, a, recompute="full", dropout=False)


def test_selective_recomputation_stores_what_fused_attention_stores():
    # a fused attention kernel keeps no s x s matrix either: the same tensors as selective recomputation,
    # plus its per-row log-sum-exp and LayerNorm's statistics (under 2 % here)
    torch.manual_seed(0)
    L, h, s, b, a = 2, 64, 32, 3, 4
    gpt = TinyGPT(64, s, h, L, a, fused_attention=True).to(torch.bfloat16).train()
    measured = measure_activation_bytes(gpt, torch.randint(64, (b, s)))
    formula = transformer_activation_bytes(L, h, s, b, a, recompute="selective", dropout=False)
    assert 1.0 <= measured / formula < 1.02


def test_recompute_flops_overhead():
    assert recompute_flops_overhead(4096, 2048, "none") == 0
    assert recompute_flops_overhead(4096, 2048, "full") == pytest.approx(1 / 3)
    sel = recompute_flops_overhead(4096, 2048, "selective")
    assert sel == pytest.approx(2048 / (3 * (6 * 4096 + 2048)))
    assert sel < 0.05 < 0.3 < recompute_flops_overhead(4096, 2048, "full")
    assert set(RECOMPUTE) == {"none", "selective", "full"}


def test_zero_stages_reproduce_the_papers_figure_1():
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 GPUs, mixed precision + Adam (K = 12)
    expected_gb = {0: 120, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in expected_gb.items():
        assert zero_memory(7.5e9, stage, 64).total / 1e9 == pytest.approx(gb, abs=0.05)
    one = zero_memory(1e9, 3, 1)
    assert one == training_memory(1e9, "mixed")  # one GPU: nothing to split
    assert zero_memory(1e9, 2, 8).weights == training_memory(1e9, "mixed").weights  # stage 2 keeps full weights
    assert sorted(ZERO_STAGES) == [0, 1, 2, 3]
    for bad in (4, -1, True):
        with pytest.raises(ValueError, match="stage must be"):
            zero_memory(1e9, bad, 8)


def test_lesson07_recomputation_and_zero_claims():
    L, h, a, s, b = 48, 1600, 25, 1024, 8  # GPT-2 XL, batch 8 x 1024, as the lesson's cell
    assert 5 * a * s / h == 80 and round(80 / 114, 2) == 0.70  # "80 of the 114 sbh per layer (70 %)"
    none = transformer_activation_bytes(L, h, s, b, a)
    assert none == L * s * b * h * 114
    assert transformer_activation_bytes(L, h, s, b, a, recompute="full") == none * 2 / 114  # "keeps 2 of the 114"
    assert 0.025 < recompute_flops_overhead(h, s, "selective") < 0.035  # "about 3 % more compute"
    # "2.03 bytes instead of 8 for blocks of 256 (2.004 for 2048)"
    assert round(training_memory(1, "mixed_adam8bit", block_size=256).optimizer, 2) == 2.03
    assert round(training_memory(1, "mixed_adam8bit", block_size=2048).optimizer, 3) == 2.004
    # "Stage 3 brings the 6.7B model's 100 GiB of states down to 12.5 GiB per GPU"
    assert round(zero_memory(6.7e9, 0, 8).total / 2**30) == 100
    assert round(zero_memory(6.7e9, 3, 8).total / 2**30, 1) == 12.5


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
import numpy as np  # noqa: E402

ISSUE20_BAD = {
    "n-params-inf": (lambda: training_memory(math.inf), ValueError, r"n_params must be a finite number"),
    "n-params-negative": (lambda: training_memory(-1), ValueError, r"n_params must be in \[0, inf\)"),
    "n-params-str": (lambda: training_memory("1e9"), TypeError, r"n_params must be a number"),
    "activation-values-negative": (lambda: training_memory(10, activation_values=-5), ValueError, r"activation_values must be in \[0"),
    "activation-values-str": (lambda: training_memory(10, activation_values="many"), TypeError, r"activation_values must be a number"),
    "bytes-per-value-negative": (lambda: transformer_activation_bytes(1, 4, 2, 1, 1, bytes_per_value=-2), ValueError, r"bytes_per_value must be in \(0"),
    "bytes-per-value-inf": (lambda: transformer_activation_bytes(1, 4, 2, 1, 1, bytes_per_value=math.inf), ValueError, r"bytes_per_value must be a finite"),
    "mask-bytes-negative": (lambda: transformer_activation_bytes(1, 4, 2, 1, 1, mask_bytes=-1), ValueError, r"mask_bytes must be in \[0"),
    "batch-zero": (lambda: transformer_activation_bytes(1, 4, 2, 0, 1), ValueError, r"batch must be between 1"),
    "gpt-negative": (lambda: gpt_param_count(-1, 768, 50257, 1024), ValueError, r"n_layers must be between 1"),
    "gpt-str": (lambda: gpt_param_count(12, "768", 50257, 1024), TypeError, r"hidden must be an int"),
    "gpt-float": (lambda: gpt_param_count(12, 768, 50257.5, 1024), TypeError, r"vocab_size must be an int"),
    "allocate-model-str": (lambda: allocate_training_state("mlp"), TypeError, r"model must be a torch.nn.Module"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_numpy_counts_are_numbers():
    assert training_memory(np.int64(1000), "fp32").total == 16000.0
    assert gpt_param_count(np.int64(12), 768, 50257, 1024) == 124439808
    assert transformer_activation_bytes(np.int64(1), 4, 2, 1, 1) == 292.0


def test_issue20_allocate_training_state_leaves_the_global_rng_alone_and_is_seeded():
    state = torch.random.get_rng_state()
    a = allocate_training_state(make_mlp(seed=0), "mixed", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = allocate_training_state(make_mlp(seed=0), "mixed", seed=1)
    c = allocate_training_state(make_mlp(seed=0), "mixed", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a["grads"], b["grads"]))
    assert not torch.equal(a["grads"][0], c["grads"][0])
