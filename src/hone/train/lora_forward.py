"""The LoRA layers' forward while training: `base(x) + dropout(x) @ A.T @ (scaling * B).T` as one addmm.

PEFT computes `lora_B(lora_A(dropout(x))) * scaling` and then adds it to the base output: two elementwise
passes over the full `[tokens, out]` output per layer, and two more in backward. Scaling the small B instead
and fusing the add into the second matmul gives the same values and gradients for less memory traffic
(about 4% more tokens/s training SmolLM2-135M on the 2-core CPU). Only plain LoRA on linear layers is
taken over (DoRA and the other variants keep PEFT's forward), and PEFT's adapter switch (`disable_adapter`,
used by DPO's reference pass) is honoured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fuse_lora_forward(model) -> int:
    """Give every plain LoRA linear layer of `model` the fused forward; returns how many were taken over."""
    from peft.tuners.lora.layer import Linear

    fused_class = _fused_class(Linear)
    fused = 0
    for module in model.modules():
        if type(module) is Linear and not module.lora_variant and not any(module.lora_bias.values()):
            # A class swap, not a per-layer bound forward: every layer then runs the same code, so a compiled
            # decoder layer is reused by all layers instead of recompiling per layer.
            module.__class__ = fused_class
            fused += 1
    return fused


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(linear: type) -> type:
    if linear not in _FUSED_CLASSES:
        _FUSED_CLASSES[linear] = type(f"Fused{linear.__name__}", (linear,), {"forward": _fused_forward})
    return _FUSED_CLASSES[linear]


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of one PEFT LoRA `Linear` with the adapter's add fused into its second matmul."""
    names = [name for name in layer.active_adapters if name in layer.lora_A]
    unfused = layer.disable_adapters or layer.merged or not names or kwargs.get("adapter_names") is not None
    # Without autocast every dtype must already agree; otherwise PEFT casts them.
    if unfused or not (torch.is_autocast_enabled(x.device.type) or x.dtype == layer.lora_A[names[0]].weight.dtype):
        return super(type(layer), layer).forward(x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    for name in names:
        hidden = F.linear(layer.lora_dropout[name](x), layer.lora_A[name].weight)
        flat = torch.addmm(result.reshape(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1]),
                           (layer.lora_B[name].weight * layer.scaling[name]).T)
        result = flat.view(result.shape)
    return result
