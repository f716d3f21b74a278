"""The fused LoRA training forward: PEFT's values and gradients, PEFT's adapter switch, DoRA left to PEFT."""

from __future__ import annotations

import pytest
import torch

from hone.models import load_model
from hone.train.lora_forward import fuse_lora_forward


def peft_model(folder, seed: int = 0, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(str(folder)), LoraConfig(r=4, lora_alpha=12, target_modules="all-linear",
                                                                **lora))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)  # PEFT starts B at zero, which would hide a wrong scaling
    return model


def loss_and_grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def refuse_peft_forward(*args, **kwargs):
    raise AssertionError("the fused forward fell back to PEFT's")


@pytest.mark.parametrize("use_dora", [False, True])
def test_fused_forward_gives_peft_values_and_gradients(tiny_model_dir, use_dora, monkeypatch):
    from peft.tuners.lora.layer import Linear

    ids = torch.randint(5, 300, (3, 17))
    reference = loss_and_grads(peft_model(tiny_model_dir, use_dora=use_dora), ids)
    model = peft_model(tiny_model_dir, use_dora=use_dora)
    assert fuse_lora_forward(model) == (0 if use_dora else 14)  # 7 linear layers in each of 2 decoder layers
    if not use_dora:
        # every layer shares one fused class (so a compiled decoder layer serves them all) and runs its own path
        assert {type(m).__name__ for m in model.modules() if isinstance(m, Linear)} == {"FusedLinear"}
        monkeypatch.setattr(Linear, "forward", refuse_peft_forward)
    loss, grads = loss_and_grads(model, ids)
    torch.testing.assert_close(loss, reference[0])
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-4, atol=1e-6)


def test_fused_forward_honours_the_adapter_switch(tiny_model_dir):
    ids = torch.randint(5, 300, (2, 9))
    model = peft_model(tiny_model_dir)
    fuse_lora_forward(model)
    base = load_model(str(tiny_model_dir))
    with torch.no_grad():
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_fused_forward_under_bf16_autocast_stays_close_to_peft(tiny_model_dir):
    ids = torch.randint(5, 300, (2, 9))
    reference, model = peft_model(tiny_model_dir), peft_model(tiny_model_dir)
    fuse_lora_forward(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, fused = reference(input_ids=ids).logits, model(input_ids=ids).logits
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), expected.float(), rtol=0.05, atol=0.05)
