"""QLoRA on the tiny model: a 4-bit NF4 base during training, an adapter that loads on the full-precision base."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import torch
from test_train import assert_same_trainable_weights, make_config, resume_after_checkpoint

from hone.train.config import load_config
from hone.train.run import build_lora_model, train


def qlora_config(tmp_path, model_dir, **training):
    return load_config(make_config(tmp_path, model_dir, **training), ["method=qlora"])


def test_qlora_base_is_4bit_nf4_and_only_lora_weights_train(tmp_path, tiny_model_dir):
    model = build_lora_model(qlora_config(tmp_path, tiny_model_dir), torch.bfloat16)
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # prepare_model_for_kbit_training keeps the unquantized weights (norms, embeddings) in float32.
    assert {p.dtype for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit)} == {torch.float32}

    from hone.train.memory import estimate_memory

    packed = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)  # 2 weights/byte
    estimated = estimate_memory(qlora_config(tmp_path, tiny_model_dir), torch.bfloat16, 64)["bytes"]["frozen_weights"]
    assert packed <= estimated <= packed * 1.1  # the estimate adds the block scales


def test_qlora_adapter_loads_on_the_full_precision_base_and_lowers_its_loss(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from hone.models import load_model, load_tokenizer
    from hone.train.data import load_training_data
    from hone.train.loop import eval_loss

    config = qlora_config(tmp_path, tiny_model_dir, max_steps=8, eval_every=None)
    run_dir = train(config, show_progress=False)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    losses = [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    tokenizer = load_tokenizer(str(tiny_model_dir))
    held_out = load_training_data(config, tokenizer).eval
    base_loss = eval_loss(load_model(str(tiny_model_dir)), held_out, 8, tokenizer.pad_token_id)
    tuned = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(run_dir / "adapter"))
    tuned_loss = eval_loss(tuned.get_base_model(), held_out, 8, tokenizer.pad_token_id)
    quantized_loss = json.loads((run_dir / "summary.json").read_text())["best_eval_loss"]
    assert tuned_loss < base_loss - 0.1
    # Trained against 4-bit weights, the adapter still does about as well on the full-precision base.
    assert abs(tuned_loss - quantized_loss) < 0.05


def test_qlora_resume_continues_exactly(tmp_path, tiny_model_dir):
    straight = train(qlora_config(tmp_path, tiny_model_dir, max_steps=6, save_every=2, save_total_limit=20),
                     show_progress=False)
    resumed = resume_after_checkpoint(straight, tmp_path / "killed", kept=1)  # killed after step 2
    assert_same_trainable_weights(straight, resumed, step=6)
