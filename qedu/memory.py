"""Where the memory of training goes: weights, gradients, master weights, optimizer states, activations.

Per parameter, Adam training stores (ZeRO, Rajbhandari et al. 2020, section 3.1, counts mixed
precision as 2 + 2 + 12 = 16 bytes)::

    recipe                 weights  grads  fp32 master  Adam m+v        total  activations
    fp32                      4       4        -          8              16     4 B/value
    mixed (fp16 or bf16)      2       2        4          8              16     2
    mixed + 8-bit Adam        2       2        4          2 + 8/block    10.03  2
    pure bf16                 2       2        -          4 (bf16 m, v)   8     2
    fp8 (TE-style)            1       2        4          8              15     2

Mixed precision saves no memory *per parameter*: it saves activations (and time). 8-bit Adam
and pure bf16 save optimizer memory. ``torch.autocast`` keeps fp32 weights and gradients and
casts weights per op, so its bill is 4 + 4 + 8 = 16 plus transient 16-bit copies. The fp8 row
keeps 16-bit activations; storing the inputs of fp8 matmuls in 1 byte would save at most
7 of the 34 ``sbh`` below.

Activations, per transformer layer (Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", eq. 1; no recomputation, no parallelism), with ``s`` sequence
length, ``b`` batch, ``h`` hidden size, ``a`` heads, ``B`` bytes per value and 1-byte dropout masks::

    attention:   5*s*b*h*B  (QKV input; Q, K; V; projection input)
               + 2*a*s*s*b*B  (softmax output, dropout output)  + a*s*s*b + s*b*h (masks)
    MLP:         9*s*b*h*B  (fc1 input, GELU input 4sbh, fc2 input 4sbh)  + s*b*h (mask)
    layer norms: 2*s*b*h*B
    total:       s*b*h*(16*B + 2) + a*s*s*b*(2*B + 1)   = s*b*h*(34 + 5*a*s/h) for B = 2

Without dropout the masks and the dropout output go: ``16*s*b*h*B + a*s*s*b*B``. Embeddings, the
final norm and the logits are left out (small next to ``L`` layers of a large model).

**Activation recomputation** (checkpointing) stores less and computes some of it again in the
backward pass (Korthikanti et al. 2022, section 5; ``recompute=`` below):

* ``"selective"``: recompute only the attention core (``Q K^T``, softmax, its dropout, the
  product with ``V``), whose ``a*s*s*b`` terms are the largest and cheapest to rebuild:
  ``s*b*h*(16*B + 2)`` per layer, ``34*s*b*h`` for B = 2. The extra forward work is the
  attention core's ``4*b*s*s*h`` FLOPs out of ``24*b*s*h*h + 4*b*s*s*h`` per layer.
* ``"full"``: keep only each layer's input (``s*b*h*B``, ``2*s*b*h`` for B = 2) and rerun the
  whole layer's forward pass in the backward pass: one extra forward, a third more compute for
  a step whose backward costs twice its forward. (While a layer is being recomputed its own
  activations exist again, one layer at a time; like the paper, the formula leaves that out.)

ZeRO (Rajbhandari et al. 2020) instead splits the per-parameter states over ``N`` data-parallel
GPUs; :func:`zero_memory` gives the bytes per GPU of its three stages.
:func:`measure_activation_bytes` checks the formula on :class:`TinyGPT`, whose layer is exactly
the one it assumes, by adding up the bytes autograd saves for the backward pass.

>>> round(training_memory(1e9, "mixed").total / 2**30, 1)   # 1B parameters, no activations
14.9
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import check_bool, check_count, check_int, check_module, check_real, check_seed
from qedu.models import TinyGPT  # lives in qedu.models; re-exported here for lesson 7

__all__ = ["Recipe", "RECIPES", "Memory", "training_memory", "transformer_activation_bytes", "gpt_param_count",
           "RECOMPUTE", "recompute_flops_overhead", "ZERO_STAGES", "zero_memory",
           "TinyGPT", "allocate_training_state", "measure_state_bytes", "measure_activation_bytes",
           "measure_cuda_peak"]


@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter (weights, grads, master, optimizer) and per activation value."""

    name: str
    weights: float
    grads: float
    master: float
    optimizer: float
    activation: float
    description: str

    @property
    def per_param(self) -> float:
        return self.weights + self.grads + self.master + self.optimizer


def _recipes(block_size: int = 256) -> dict[str, Recipe]:
    q8 = 2 + 2 * 4 / block_size  # one byte each for m and v, one float32 absmax per block each
    rows = [
        Recipe("fp32", 4, 4, 0, 8, 4, "everything fp32"),
        Recipe("mixed", 2, 2, 4, 8, 2, "fp16/bf16 weights, grads and activations; fp32 master weights and Adam"),
        Recipe("mixed_adam8bit", 2, 2, 4, q8, 2, "mixed precision with 8-bit block-wise Adam states"),
        Recipe("bf16_pure", 2, 2, 0, 4, 2, "bf16 weights, grads and Adam states; no fp32 copy"),
        Recipe("fp8", 1, 2, 4, 8, 2, "fp8 weight copies, bf16 grads and activations, fp32 master and Adam"),
    ]
    return {r.name: r for r in rows}


RECIPES = _recipes()


def _recipe(recipe, block_size: int = 256) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    table = _recipes(check_int(block_size, "block_size", 1))
    if recipe not in table:
        raise ValueError(f"recipe must be one of {sorted(table)} or a Recipe, got {recipe!r}.")
    return table[recipe]


@dataclass(frozen=True)
class Memory:
    """Bytes of each kind of training memory; ``total`` adds them up."""

    weights: float
    grads: float
    master: float
    optimizer: float
    activations: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.master + self.optimizer + self.activations

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "grads": self.grads, "master": self.master,
                "optimizer": self.optimizer, "activations": self.activations}


def training_memory(n_params: float, recipe="mixed", activation_values: float = 0.0, block_size: int = 256) -> Memory:
    """Bytes for ``n_params`` parameters trained with ``recipe`` (a name in ``RECIPES``).

    ``activation_values`` is a count of stored values (or use :func:`transformer_activation_bytes`
    and add bytes yourself); it is multiplied by the recipe's bytes per activation value.

    Raises:
        TypeError / ValueError: ``n_params`` or ``activation_values`` not a finite number >= 0
            (numpy numbers are fine), an unknown ``recipe``, ``block_size < 1``.

    >>> training_memory(1000, "fp32").as_dict()
    {'weights': 4000.0, 'grads': 4000.0, 'master': 0.0, 'optimizer': 8000.0, 'activations': 0.0}
    """
    n = check_count(n_params, "n_params", example="1e9")
    activation_values = check_count(activation_values, "activation_values", example="1e6")
    r = _recipe(recipe, block_size)
    memory = Memory(n * r.weights, n * r.grads, n * r.master, n * r.optimizer, activation_values * r.activation)
    _check_total(memory.total, "n_params and activation_values")
    return memory


def _check_total(total: float, names: str) -> None:
    if not math.isfinite(total):
        raise ValueError(f"the byte count overflows a float ({names} are far too large): check the sizes you passed.")


RECOMPUTE = ("none", "selective", "full")


def transformer_activation_bytes(n_layers: int, hidden: int, seq_len: int, batch: int, n_heads: int,
                                 bytes_per_value: float = 2, dropout: bool = True, mask_bytes: float = 1,
                                 recompute: str = "none") -> float:
    """Activation bytes of ``n_layers`` transformer layers (Korthikanti et al. 2022; module docstring).

    ``mask_bytes``: bytes per dropout-mask value. GPU kernels keep a 1-byte bool mask; torch's
    CPU dropout keeps a mask in the activation dtype (pass ``mask_bytes=bytes_per_value``).
    ``recompute``: "none", "selective" (no attention-core terms) or "full" (each layer's input only).

    Raises:
        TypeError / ValueError: sizes that are not ints >= 1 (numpy ints are fine), a
            ``bytes_per_value`` that is not a finite number > 0, a negative or infinite ``mask_bytes``.

    >>> transformer_activation_bytes(1, hidden=4, seq_len=2, batch=1, n_heads=1)   # 34*8 + 5*4
    292.0
    >>> [transformer_activation_bytes(1, 4, 2, 1, 1, recompute=r) for r in ("selective", "full")]  # 34*8, 2*8
    [272.0, 16.0]
    """
    L, h, s, b, a = (check_int(v, n, 1) for v, n in ((n_layers, "n_layers"), (hidden, "hidden"),
                                                    (seq_len, "seq_len"), (batch, "batch"), (n_heads, "n_heads")))
    B = check_real(bytes_per_value, "bytes_per_value", 0, lo_open=True, example="2")
    M = check_real(mask_bytes, "mask_bytes", 0, example="1")
    check_bool(dropout, "dropout")
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}.")
    if recompute == "full":  # only each layer's input is kept
        return float(L * s * b * h * B)
    if recompute == "selective":  # the attention core (every a*s*s*b term) is recomputed
        return float(L * s * b * h * ((16 * B + 2 * M) if dropout else 16 * B))
    if dropout:
        per_layer = s * b * h * (16 * B + 2 * M) + a * s * s * b * (2 * B + M)
    else:
        per_layer = s * b * h * 16 * B + a * s * s * b * B
    _check_total(float(L * per_layer), "the sizes and bytes_per_value")
    return float(L * per_layer)


def recompute_flops_overhead(hidden: int, seq_len: int, recompute: str = "selective") -> float:
    """Extra compute of a training step with ``recompute``, as a fraction of the step without it.

    A layer's forward pass costs ``24*b*s*h*h + 4*b*s*s*h`` FLOPs (the matmuls; Korthikanti et al.
    2022), the backward pass twice that, so a step costs 3 forwards. Full recomputation adds one
    forward (1/3); selective adds the attention core's ``4*b*s*s*h``, i.e. ``s / (3 * (6*h + s))``.

    >>> recompute_flops_overhead(4096, 2048, "full"), round(recompute_flops_overhead(4096, 2048), 4)
    (0.3333333333333333, 0.0256)
    """
    h, s = check_int(hidden, "hidden", 1), check_int(seq_len, "seq_len", 1)
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}.")
    forward = 24 * s * h * h + 4 * s * s * h  # per layer and sequence (b cancels)
    extra = {"none": 0.0, "full": forward, "selective": 4 * s * s * h}[recompute]
    return extra / (3 * forward)


ZERO_STAGES = {  # what each ZeRO stage splits over the data-parallel GPUs (Rajbhandari et al. 2020)
    0: "nothing (plain data parallelism: every GPU holds everything)",
    1: "optimizer states (Adam's m and v and the fp32 master weights)",
    2: "optimizer states and gradients",
    3: "optimizer states, gradients and the 16-bit weights",
}


def zero_memory(n_params: float, stage: int, n_gpus: int, recipe="mixed") -> Memory:
    """Per-GPU bytes of weights, gradients and optimizer states under ZeRO ``stage`` on ``n_gpus`` GPUs.

    Stage 1 divides the optimizer states (master copy + Adam) by ``n_gpus``, stage 2 the
    gradients too, stage 3 the weights too. For mixed precision with Adam (2 + 2 + 12 bytes)::

        stage 0: 16 N     stage 1: 4 N + 12 N / n_gpus     stage 2: 2 N + 14 N / n_gpus     stage 3: 16 N / n_gpus

    Activations are not split by ZeRO (use recomputation, or sequence/tensor parallelism).

    >>> [round(zero_memory(7.5e9, stage, 64).total / 1e9, 1) for stage in range(4)]   # the paper's Figure 1
    [120.0, 31.4, 16.6, 1.9]
    """
    if stage not in ZERO_STAGES or isinstance(stage, bool):
        raise ValueError(f"stage must be 0, 1, 2 or 3 (ZeRO stages; 0 = plain data parallelism), got {stage!r}.")
    n_gpus = check_int(n_gpus, "n_gpus", 1)
    m = training_memory(n_params, recipe)
    split = lambda b, from_stage: b / n_gpus if stage >= from_stage else b  # noqa: E731
    return Memory(weights=split(m.weights, 3), grads=split(m.grads, 2), master=split(m.master, 1),
                  optimizer=split(m.optimizer, 1))


def gpt_param_count(n_layers: int, hidden: int, vocab_size: int, seq_len: int) -> int:
    """Parameters of :class:`TinyGPT`: ``L * (12 h^2 + 13 h) + (V + s) * h + 2 h`` (tied output layer).

    Per layer: QKV ``3h^2 + 3h``, projection ``h^2 + h``, MLP ``8h^2 + 5h``, two layer norms ``4h``.

    Raises:
        TypeError / ValueError: an argument that is not an int >= 1 (numpy ints are fine).

    >>> gpt_param_count(12, 768, 50257, 1024)   # GPT-2 small
    124439808
    """
    L, h, V, s = (check_int(v, n, 1) for v, n in ((n_layers, "n_layers"), (hidden, "hidden"),
                                                 (vocab_size, "vocab_size"), (seq_len, "seq_len")))
    return L * (12 * h * h + 13 * h) + (V + s) * h + 2 * h


def _named_bytes(tensors) -> int:
    return sum(t.nbytes for t in tensors)


# dtypes of (weights, grads) each recipe allocates; True where an fp32 master copy exists
_LAYOUT = {
    "fp32": (torch.float32, torch.float32),
    "mixed": (torch.float16, torch.float16),
    "mixed_adam8bit": (torch.float16, torch.float16),
    "bf16_pure": (torch.bfloat16, torch.bfloat16),
    "fp8": (torch.float8_e4m3fn, torch.bfloat16),
}


def allocate_training_state(model: nn.Module, recipe="mixed", block_size: int = 256, *,
                            seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Allocate, on the CPU, the tensors ``recipe`` keeps for ``model``: a dict kind -> tensors.

    ``weights``: the parameters in the recipe's dtype; ``grads``: one tensor per parameter in
    the recipe's gradient dtype; ``master``: fp32 copies (if the recipe has them);
    ``optimizer``: the states of one real ``torch.optim.Adam`` step (``qedu.optim.Adam`` with
    8-bit dynamic states for "mixed_adam8bit") on the tensors the recipe updates. Adam's
    one-element ``step`` counters are left out. The caller's model is untouched, and so is
    torch's global random generator: the stand-in gradients are drawn from a generator seeded
    with ``seed``.
    """
    from qedu.optim import Adam as QAdam

    model = check_module(model)
    g = torch.Generator().manual_seed(check_seed(seed))
    r = _recipe(recipe, block_size)
    if r.name not in _LAYOUT:
        raise ValueError(f"allocate_training_state knows the recipes {sorted(_LAYOUT)}, got {r.name!r}.")
    weight_dtype, grad_dtype = _LAYOUT[r.name]
    params = [p.detach() for p in model.parameters()]
    weights = [p.to(weight_dtype) for p in params]
    grads = [torch.randn(p.shape, generator=g).to(grad_dtype) for p in params]
    masters = [p.float().clone() for p in params] if r.master else []
    updated = [t.clone() for t in (masters or weights)]  # what the optimizer steps on
    for p, g in zip(updated, grads):
        p.grad = g.to(p.dtype)
    optimizer = QAdam(updated, states="dynamic", block_size=block_size) if r.name == "mixed_adam8bit" else torch.optim.Adam(updated)
    optimizer.step()
    states = [t for s in optimizer.state.values() for k, t in s.items() if k != "step" and isinstance(t, torch.Tensor)]
    return {"weights": weights, "grads": grads, "master": masters, "optimizer": states}


def measure_state_bytes(model: nn.Module, recipe="mixed", block_size: int = 256) -> Memory:
    """Real ``nbytes`` of the tensors :func:`allocate_training_state` allocates, per kind."""
    state = allocate_training_state(model, recipe, block_size)
    return Memory(*(float(_named_bytes(state[k])) for k in ("weights", "grads", "master", "optimizer")))


def measure_activation_bytes(model: TinyGPT, idx: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass inside ``model.blocks`` on input ``idx``.

    Uses ``torch.autograd.graph.saved_tensors_hooks`` to see every saved tensor, counts each
    storage once (views share one) and skips parameters (they are counted as weights).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.no_grad():
        x = model.tok(idx) + model.pos(torch.arange(idx.shape[1], device=idx.device))
    x = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for block in model.blocks:
            x = block(x)
    return sum(seen.values())


def measure_cuda_peak(recipe: str = "mixed", n_layers: int = 4, hidden: int = 512, seq_len: int = 512, batch: int = 8,
                      n_heads: int = 8, vocab_size: int = 1024, fused_attention: bool = False) -> dict[str, float]:
    """Peak CUDA memory of TinyGPT training steps vs this module's estimate (needs a GPU).

    Recipes: "fp32", "mixed" (``torch.autocast`` with bf16) and "bf16_pure". ``measured`` is
    ``torch.cuda.max_memory_allocated`` over two steps (the second has Adam's states). The
    ``estimated`` bytes follow what each recipe really allocates:

    * weights + grads + Adam: 16 bytes per parameter for "fp32" and for autocast (which keeps
      fp32 weights and gradients; its 16-bit weight copies add 2 more), 8 for "bf16_pure";
    * activations: the formula without dropout (TinyGPT's default), with 4 bytes per value for
      "fp32" and 2 otherwise; autocast runs softmax in fp32, adding ``4*a*s*s*b`` per layer
      (the fp32 softmax output beside its bf16 copy);
    * logits: ``b*s*vocab`` values, kept in the model's dtype and as the fp32 log-softmax;
    * with ``fused_attention``: no ``s x s`` terms at all, only the kernel's fp32 log-sum-exp
      (``4*a*s*b`` bytes per layer).

    Allocator rounding, cuBLAS workspaces and temporaries of the backward pass are not in the
    estimate, so expect ``ratio`` somewhat above 1.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measure_cuda_peak needs a CUDA GPU; torch.cuda.is_available() is False here.")
    if recipe not in ("fp32", "mixed", "bf16_pure"):
        raise ValueError(f"recipe must be 'fp32', 'mixed' or 'bf16_pure' for measure_cuda_peak, got {recipe!r}.")
    device = torch.device("cuda")
    model = TinyGPT(vocab_size, seq_len, hidden, n_layers, n_heads, fused_attention=fused_attention).to(device)
    if recipe == "bf16_pure":
        model = model.to(torch.bfloat16)
    optimizer = torch.optim.Adam(model.parameters())
    idx = torch.randint(vocab_size, (batch, seq_len), device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step has the optimizer states allocated
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=recipe == "mixed"):
            logits = model(idx)
        loss = F.cross_entropy(logits.float().view(-1, vocab_size), idx.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        del logits, loss
    torch.cuda.synchronize()
    n = sum(p.numel() for p in model.parameters())
    B = 4 if recipe == "fp32" else 2
    per_param = {"fp32": 16, "mixed": 16 + 2, "bf16_pure": 8}[recipe]
    act = transformer_activation_bytes(n_layers, hidden, seq_len, batch, n_heads, B, dropout=False)
    if fused_attention:  # no s x s matrices; the kernel keeps one fp32 log-sum-exp per row and head
        act += n_layers * (4 * n_heads * seq_len * batch - n_heads * seq_len * seq_len * batch * B)
    elif recipe == "mixed":
        act += n_layers * 4 * n_heads * seq_len * seq_len * batch  # fp32 softmax outputs under autocast
    logits_bytes = batch * seq_len * vocab_size * (B + 4)
    estimated = float(n * per_param + act + logits_bytes)
    measured = float(torch.cuda.max_memory_allocated())
    return {"measured": measured, "estimated": estimated, "ratio": measured / estimated,
            "states": float(n * per_param), "activations": float(act), "logits": float(logits_bytes)}
