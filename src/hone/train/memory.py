"""How much memory a training run will need, estimated before it starts, and whether it fits; and how the
process keeps the memory a step frees for the next one.

The model is built on PyTorch's meta device (no weights are read or allocated) with the run's adapter
config, so parameter counts are exact; activations follow the usual per-layer estimate for a transformer
block with fused attention and are calibrated against measured runs; packed CPU runs add the score matrices
that their attention of short examples keeps (`hone.train.packing.matmul_attention`).
"""

from __future__ import annotations

import ctypes

import torch

from hone.errors import HoneError
from hone.models import available_memory, frozen_dtype
from hone.train.config import TrainConfig
from hone.train.packing import MATMUL_ATTENTION_MAX_LENGTH

GIB = 1024**3
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
ADAM_BYTES_PER_TRAINABLE = 4 + 4 + 8  # fp32 weight, its gradient, two Adam moments
# Saved activations per token per layer and hidden unit: 34 values in the frozen dtype (attention inputs,
# the SwiGLU MLP's wide intermediates, norms) plus 32 bytes that stay fp32 (LoRA inputs and outputs). Fitted,
# with the fixed runtime cost (Python, torch, allocator), to the peak RSS of SmolLM2-135M LoRA steps at
# 1,176 and 2,352 tokens per micro-batch: 4.81 / 8.50 GiB with fp32 weights, 3.30 / 5.68 GiB with bf16.
ACTIVATION_VALUES, ACTIVATION_FP32_BYTES = 34, 32
RUNTIME_BYTES = int(0.45 * GIB)
NF4_BITS = 4.127  # 4-bit weights plus double-quantized scales per 64-weight block
LOSS_CHUNK_TOKENS = 2048  # target tokens whose logits, softmax and gradient the estimate counts (fitted)


def _meta_model(config: TrainConfig, dtype: torch.dtype):
    """The run's model (base + adapter) on the meta device: shapes and dtypes, no memory."""
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM

    from hone.models import local_model_dir

    model_config = AutoConfig.from_pretrained(str(local_model_dir(config.base_model)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32 if config.method == "full"
                                                 else dtype)
    if config.method == "full":
        return model.requires_grad_(True), model_config
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, target_modules=config.lora.target_modules,
                      use_dora=config.method == "dora", task_type="CAUSAL_LM")
    return with_lora(model, lora), model_config


def with_lora(model, lora):
    """PEFT's model with `lora` added; a target that names no layer of the model is the user's to fix."""
    from peft import get_peft_model

    from hone.models.loading import peft_quietly

    try:
        with peft_quietly():
            return get_peft_model(model, lora)
    except ValueError as error:
        raise HoneError(f"lora.target_modules: {error}",
                        hint="use 'all-linear' or names of linear layers such as q_proj, v_proj") from None


def _qlora_frozen_bytes(model) -> int:
    """Frozen weights under QLoRA: the decoder's linear layers in 4-bit NF4 with double-quantized block scales
    (~4.13 bits a weight), everything else (embeddings, norms) upcast to float32 for training."""
    quantized = {id(module.weight) for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and "lora_" not in name and not name.endswith("lm_head")}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return int(sum(p.numel() * (NF4_BITS / 8 if id(p) in quantized else 4) for p in frozen))


def estimate_memory(config: TrainConfig, dtype: torch.dtype, batch_tokens: int, scores_length: int = 0) -> dict:
    """Bytes for frozen weights, trainable state, activations of the largest micro-batch (`batch_tokens`
    tokens including padding), the loss chunk and the runtime; and their total. `scores_length`: the keys each
    token's attention scores span where attention keeps its score matrices (0: fused attention keeps none)."""
    model, model_config = _meta_model(config, dtype)
    frozen = _qlora_frozen_bytes(model) if config.method == "qlora" else sum(
        p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    element = torch.tensor([], dtype=dtype).element_size()
    per_unit = ACTIVATION_VALUES * element + ACTIVATION_FP32_BYTES
    activations = batch_tokens * model_config.num_hidden_layers * model_config.hidden_size * per_unit
    # the attention's softmax output, per head
    activations += (batch_tokens * model_config.num_hidden_layers * model_config.num_attention_heads
                    * scores_length * element)
    loss_chunk = min(batch_tokens, LOSS_CHUNK_TOKENS) * model_config.vocab_size * 4 * 3  # logits, softmax, grad
    parts = {"frozen_weights": frozen, "trainable_state": trainable * ADAM_BYTES_PER_TRAINABLE,
             "activations": activations, "loss_chunk": loss_chunk, "runtime": RUNTIME_BYTES}
    return {"bytes": parts, "total_bytes": sum(parts.values()), "trainable_parameters": trainable,
            "total_gib": round(sum(parts.values()) / GIB, 2)}


def _what_to_lower(estimate: dict, available: int, fsdp: bool, device: str) -> str:
    """The advice of a run that does not fit: FSDP when the frozen weights alone are too big for one GPU."""
    if device.startswith("cuda") and estimate["bytes"]["frozen_weights"] > available and not fsdp:
        return ("the frozen weights alone need more than one device holds: shard them across GPUs with "
                "training.distributed: fsdp and --nproc N (or use method qlora)")
    return ("lower training.batch_size (and raise training.grad_accum to keep the effective batch), lower "
            "data.max_length, or use a smaller lora.r")


def fit_warning(estimate: dict, available: int, fsdp: bool = False, device: str = "cpu") -> str | None:
    """A warning naming what to change when the estimate exceeds the available memory, else None."""
    if estimate["total_bytes"] <= available:
        return None
    return (f"this run needs about {estimate['total_gib']:.1f} GiB but only {available / GIB:.1f} GiB is free: "
            + _what_to_lower(estimate, available, fsdp, device))


def shard_estimate(estimate: dict, world_size: int) -> dict:
    """Each process's share under FSDP: the frozen weights are sharded across the processes (one layer is gathered
    at a time, about one layer's worth more, left in the runtime allowance)."""
    parts = dict(estimate["bytes"])
    parts["frozen_weights"] = parts["frozen_weights"] // world_size
    total = sum(parts.values())
    return estimate | {"bytes": parts, "total_bytes": total, "total_gib": round(total / GIB, 2)}


def memory_plan(config: TrainConfig, longest_example: int, device: str = "cpu", world_size: int = 1) -> dict:
    """The memory estimate for one process's largest possible micro-batch (its share of batch_size x the longest
    example) on the device that trains, the memory free there now, and a warning when the run will not fit."""
    fsdp = config.training.distributed == "fsdp" and world_size > 1
    per_process = -(-config.training.batch_size // world_size)  # each process runs its share of a micro-batch
    # Packed CPU runs keep attention scores for examples up to MATMUL_ATTENTION_MAX_LENGTH tokens.
    t = config.training
    scores = min(longest_example, MATMUL_ATTENTION_MAX_LENGTH) if (
        t.packing and t.matmul_attention and device == "cpu") else 0
    estimate = estimate_memory(config, frozen_dtype(device, config.training.precision),
                               per_process * longest_example, scores)
    if fsdp:
        estimate = shard_estimate(estimate, world_size)
    free = available_memory(device)
    return estimate | {"device": device, "available_gib": round(free / GIB, 2),
                       "warning": fit_warning(estimate, free, fsdp, device)}


def refuse_if_it_cannot_fit(plan: dict) -> None:
    """On a GPU a run that does not fit fails minutes later with an out-of-memory error: refuse it before loading,
    with the estimate, the free memory and what to lower. (On the CPU the system may swap: a warning.)"""
    if plan["warning"] and plan["device"].startswith("cuda"):
        raise HoneError(f"the run does not fit on {plan['device']}: {plan['warning']}",
                        hint="or run `hone train CONFIG --dry-run` to see the estimate's parts")


def keep_freed_memory() -> None:
    """Have glibc's malloc keep the memory a training step frees for the next step instead of returning it to
    the system, whose fresh pages then fault in one by one (7% of a LoRA step on the 2-core CPU). Does nothing
    with another C library."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks up to 32 MB come from the reusable heap
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap's free top is never handed back
