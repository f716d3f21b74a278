import json

import pytest
import torch
from test_eval_run import make_run_dir
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.models.finetuned import load_for_inference


@pytest.fixture(scope="module")
def tiny_run_dir(tiny_model_dir, tmp_path_factory):
    return make_run_dir(tiny_model_dir, tmp_path_factory.mktemp("chat") / "run")


def test_chat_json_returns_the_reply_and_its_cost(tiny_model_dir):
    args = ["chat", "--model", str(tiny_model_dir), "hello", "--system", "Be brief.", "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == str(tiny_model_dir)
    assert isinstance(payload["reply"], str)
    assert 0 <= payload["tokens"] <= 8 and payload["seconds"] >= 0


def test_chat_streams_the_same_reply_as_text(tiny_model_dir):
    args = ["chat", "--model", str(tiny_model_dir), "the quick brown fox", "--max-new-tokens", "8"]
    streamed = CliRunner().invoke(app, args)
    assert streamed.exit_code == 0, streamed.output
    reply = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)["reply"]
    assert streamed.stdout.strip() == reply


def test_run_dir_loads_base_from_its_config_with_the_adapter(tiny_model_dir, tiny_run_dir):
    model, tokenizer, info = load_for_inference(tiny_run_dir)
    assert info.base == str(tiny_model_dir)
    assert info.adapter == tiny_run_dir / "adapter" and info.run_dir == tiny_run_dir
    assert model.active_adapters == ["default"]
    _, _, from_adapter_folder = load_for_inference(tiny_run_dir / "adapter")
    assert from_adapter_folder.run_dir == tiny_run_dir
    result = CliRunner().invoke(app, ["chat", "--model", str(tiny_run_dir), "hello", "--max-new-tokens", "4",
                                      "--json"])
    assert result.exit_code == 0, result.output


def test_run_dir_without_adapter_says_how_to_finish_it(tiny_model_dir, tmp_path):
    (tmp_path / "config.yaml").write_text(f"base_model: {tiny_model_dir}\n")
    with pytest.raises(HoneError, match=f"run directory {tmp_path} has no usable adapter") as error:
        load_for_inference(tmp_path)
    assert "adapter_model.safetensors" in str(error.value) and "hone train --resume" in str(error.value)


def test_run_dir_without_base_model_names_the_file_and_key(tmp_path):
    (tmp_path / "config.yaml").write_text("method: lora\n")
    with pytest.raises(HoneError, match=r"config\.yaml: no 'base_model' key"):
        load_for_inference(tmp_path)


@pytest.mark.parametrize("rows", [1, 4])
def test_the_last_position_logits_never_copy_the_vocabulary_matrix(tiny_model_dir, rows):
    from torch.profiler import profile

    from hone.models import load_model

    model = load_model(str(tiny_model_dir)).eval().requires_grad_(False)  # frozen, as under PEFT
    ids = torch.randint(5, 300, (rows, 12))
    with torch.inference_mode(), profile(record_shapes=True) as trace:
        last = model(input_ids=ids, logits_to_keep=1).logits
    with torch.inference_mode():
        torch.testing.assert_close(last, model(input_ids=ids).logits[:, -1:])
    vocab = model.lm_head.weight.shape[0]
    per_row = [event.input_shapes for event in trace.key_averages(group_by_input_shape=True)
               if event.key in {"aten::bmm", "aten::copy_"} and any(vocab in shape for shape in event.input_shapes)]
    assert not per_row  # one matmul with the vocabulary matrix, not a batch of per-row copies of it
