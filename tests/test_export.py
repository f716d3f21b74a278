"""Export: the merged model is standalone (transformers alone loads it) and computes what base + adapter did."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.models import fingerprint
from hone.models.finetuned import load_for_inference
from hone.models.loading import peft_quietly
from hone.registry.export import export_merged

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT = [{"role": "system", "content": "Reply in JSON."}, {"role": "user", "content": "hello world refund order 123"}]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A run directory whose adapter has random non-zero lora_B, so merging visibly changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with peft_quietly():
        adapter = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                                  init_lora_weights=False))
    adapter.save_pretrained(folder / "adapter")
    (folder / "config.yaml").write_text(yaml.safe_dump({"base_model": str(tiny_model_dir)}))
    return folder


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "merged"
    return out, export_merged(run_dir, out, gguf=True)


def chat_inputs(tokenizer) -> dict:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)


@torch.inference_mode()
def test_the_merged_folder_loads_with_transformers_and_matches_base_plus_adapter(run_dir, exported, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = exported
    reference, tokenizer, _ = load_for_inference(run_dir, dtype=torch.float32, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = chat_inputs(AutoTokenizer.from_pretrained(out))
    assert inputs["input_ids"].tolist() == chat_inputs(tokenizer)["input_ids"].tolist()
    expected = reference(**inputs).logits
    torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-4)
    assert (base(**inputs).logits - expected).abs().max() > 0.1  # the adapter matters, so the check can fail
    greedy = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    assert merged.generate(**inputs, **greedy).tolist() == reference.generate(**inputs, **greedy).tolist()


def test_eos_chat_template_and_provenance_are_in_the_folder(run_dir, exported, tiny_model_dir):
    from transformers import AutoTokenizer, GenerationConfig

    out, result = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == im_end
    assert GenerationConfig.from_pretrained(out).eos_token_id == im_end
    assert (out / "chat_template.jinja").is_file() and "<|im_start|>" in tokenizer.chat_template
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    manifest = json.loads((out / "hone_export.json").read_text())
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    assert manifest["adapter_sha256"] == hashlib.sha256(adapter_file.read_bytes()).hexdigest()
    assert manifest["base_fingerprint"] == fingerprint(str(tiny_model_dir))
    assert manifest["run_dir"] == str(run_dir.resolve()) and manifest["dtype"] == "fp32"
    assert result["size_bytes"] > 0 and result["gguf_bytes"] > 0


@torch.inference_mode()
def test_gguf_round_trips_through_transformers(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = exported
    folder, name = (out / result["gguf"]).parent, (out / result["gguf"]).name
    from_gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert gguf_tokenizer.chat_template == tokenizer.chat_template and gguf_tokenizer.eos_token == "<|im_end|>"
    inputs = chat_inputs(tokenizer)
    assert chat_inputs(gguf_tokenizer)["input_ids"].tolist() == inputs["input_ids"].tolist()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(from_gguf(**inputs).logits, merged(**inputs).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "saved"), [("bf16", "bfloat16"), ("fp16", "float16")])
@torch.inference_mode()
def test_half_precision_exports_and_their_gguf_hold_the_same_weights(run_dir, tmp_path, dtype, saved):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / dtype
    result = export_merged(run_dir, out, gguf=True, dtype=dtype)
    assert result["dtype"] == dtype
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert json.loads((out / "config.json").read_text())["dtype"] == saved
    from_gguf = AutoModelForCausalLM.from_pretrained(out / "gguf", gguf_file="model.gguf", dtype=torch.float32).eval()
    inputs = chat_inputs(AutoTokenizer.from_pretrained(out))
    # half precision widens to fp32 exactly, so both files must give identical logits
    torch.testing.assert_close(from_gguf(**inputs).logits, merged(**inputs).logits, atol=1e-6, rtol=0)


def test_a_non_empty_out_is_replaced_only_with_force(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(HoneError, match="is not empty"):
        export_merged(run_dir, out)
    assert (out / "notes.txt").read_text() == "keep me"
    export_merged(run_dir, out, force=True)
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or backup left behind
    with pytest.raises(HoneError, match="contains the run directory"):
        export_merged(run_dir, run_dir.parent, force=True)
    with pytest.raises(HoneError, match="--dtype 'int4'"):
        export_merged(run_dir, tmp_path / "other", dtype="int4")


def test_cli_export_json_and_the_merge_flag(run_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["export", str(run_dir), "--merge", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out"] == str(out.resolve())
    refused = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x")])
    assert isinstance(refused.exception, HoneError) and "--merge" in str(refused.exception)
    again = runner.invoke(app, ["export", str(run_dir), "--merge", "--out", str(out)])
    assert isinstance(again.exception, HoneError) and "--force" in str(again.exception)


@pytest.mark.real_model
@torch.inference_mode()
def test_export_of_a_smollm2_run_matches_and_its_gguf_keeps_the_tokenizer(shared_model_cache, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf.reader import read_gguf_metadata

    from hone.models import load_model

    run = tmp_path / "run"
    torch.manual_seed(5)
    with peft_quietly():
        adapter = get_peft_model(load_model("smollm2-135m-instruct"),
                                 LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:
            parameter.data *= 0.05  # a nudge, not noise: the merged model should still answer sensibly
    adapter.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text("base_model: smollm2-135m-instruct\n")

    out = tmp_path / "merged"
    result = export_merged(run, out, gguf=True)
    reference, tokenizer, _ = load_for_inference(run, dtype=torch.float32, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    inputs = AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True)
    torch.testing.assert_close(merged(**inputs).logits, reference(**inputs).logits, atol=2e-4, rtol=1e-4)
    greedy = {"max_new_tokens": 16, "do_sample": False}
    answer = merged.generate(**inputs, **greedy)
    assert answer.tolist() == reference.generate(**inputs, **greedy).tolist()
    reply = tokenizer.decode(answer[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in reply and reply.endswith("<|im_end|>")  # stopped by the exported generation config's EOS

    metadata, _ = read_gguf_metadata(str(out / result["gguf"]), ())
    assert metadata["tokenizer.ggml.pre"] == "smollm"  # from the bundled GGUF, so llama.cpp splits text the same
    assert metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert metadata["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
