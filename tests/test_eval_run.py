import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.eval import evaluate, load_eval_config
from hone.eval.generate import generate_replies
from hone.eval.metrics import METRICS
from hone.models import load_model, load_tokenizer

TEST_CHATS = [
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "name of order 123?"},
     {"role": "assistant", "content": '{"name": "value", "id": 123}'}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}],
    [{"role": "user", "content": "the quick brown fox"},
     {"role": "assistant", "content": "jumps over the lazy dog"}],
    [{"role": "user", "content": "refund my order"},
     {"role": "assistant", "content": "refund <b>issued</b> & done"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "world"}],
    [{"role": "user", "content": "id?"}, {"role": "assistant", "content": '{"id": 7}'}],
]


def make_run_dir(base: Path, folder: Path) -> Path:
    """A run directory like `hone train` writes: config.yaml naming the base, and a LoRA adapter that
    changes the model's outputs."""
    from peft import LoraConfig, get_peft_model

    model = load_model(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(folder / "adapter")
    (folder / "config.yaml").write_text(f"base_model: {base}\nmethod: lora\n")
    return folder


def write_chats(path: Path, chats: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in chats))
    return path


@pytest.fixture(scope="module")
def tiny_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run_dir(tiny_model_dir, tmp_path_factory.mktemp("run") / "tiny-run")


@pytest.fixture
def test_file(tmp_path) -> Path:
    return write_chats(tmp_path / "test.jsonl", TEST_CHATS)


def test_evaluate_scores_base_and_finetuned_and_writes_both_reports(tiny_model_dir, tiny_run_dir, test_file,
                                                                    tmp_path):
    report = evaluate(adapter=tiny_run_dir, data=test_file, out=tmp_path / "out", batch_size=4,
                      forgetting={"limit": 12, "max_new_tokens": 8}, show_progress=False)

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["aggregates"] == report["aggregates"]
    assert set(saved["aggregates"]) == {"base", "fine-tuned"} and saved["baseline"] == "base"
    assert saved["config"]["base"] == str(tiny_model_dir)  # read from the run's config.yaml
    assert saved["models"]["fine-tuned"]["adapter_fingerprint"] and saved["models"]["base"]["fingerprint"]
    assert len(saved["examples"]) == 6
    first = saved["examples"][0]
    assert first["reference"] == '{"name": "value", "id": 123}'
    assert first["prompt"][-1] == {"role": "user", "content": "name of order 123?"}
    assert first["outputs"]["base"]["scores"]["json_valid"] is not None  # JSON reference: validity applies
    assert saved["examples"][1]["outputs"]["base"]["scores"]["json_valid"] is None
    assert all(e["outputs"][n]["scores"]["perplexity"] > 1 for e in saved["examples"] for n in ("base", "fine-tuned"))
    texts = [(e["outputs"]["base"]["text"], e["outputs"]["fine-tuned"]["text"]) for e in saved["examples"]]
    assert any(base != tuned for base, tuned in texts), "the adapter must change the replies"
    comparison = saved["comparisons"]["fine-tuned"]
    for metric in METRICS:
        base, tuned = saved["aggregates"]["base"][metric], saved["aggregates"]["fine-tuned"][metric]
        interval = comparison[metric]
        assert (interval is None) == (base is None or tuned is None), metric
        if interval is not None:
            assert interval["ci_low"] <= interval["delta"] <= interval["ci_high"]
            if metric != "latency_s":  # batch wall times, rounded per example
                assert interval["delta"] == pytest.approx(tuned - base, abs=0.02), metric
    assert "mcnemar" in comparison["exact_match"]  # right/wrong metric
    assert "mcnemar" not in comparison["output_tokens"]

    forgetting = saved["forgetting"]
    assert forgetting["probes"] == 12 and set(forgetting["models"]) == {"base", "fine-tuned"}
    assert forgetting["models"]["base"]["text_perplexity"] > 1 and forgetting["changes"]["fine-tuned"]["token_f1"]
    assert saved["verdict"]["decision"] in {"SHIP", "NOT WORTH IT", "REGRESSION"}
    assert saved["verdict"]["candidate"] == "fine-tuned" and saved["verdict"]["reasons"]

    tokenizer = load_tokenizer(str(tiny_model_dir))
    longest = max(len(tokenizer(chat[-1]["content"])["input_ids"]) for chat in TEST_CHATS)
    assert saved["config"]["max_new_tokens"] == math.ceil(1.5 * longest)
    assert all(e["outputs"][key]["tokens"] <= saved["config"]["max_new_tokens"]
               for e in saved["examples"] for key in ("base", "fine-tuned"))

    html = (tmp_path / "out" / "report.html").read_text()
    assert "<table>" in html and "<th>fine-tuned</th>" in html and "<th>change vs base (95% CI)</th>" in html
    assert "Verdict: " in html and "<svg" in html and "Forgetting" in html
    assert "refund &lt;b&gt;issued&lt;/b&gt; &amp; done" in html and "<b>issued</b>" not in html
    assert not re.search(r"(src|href)=\"?https?:|<link|<script|url\(https?:", html)  # self-contained


def test_evaluate_without_adapter_scores_only_the_base(tiny_model_dir, test_file, tmp_path):
    report = evaluate(base=str(tiny_model_dir), data=test_file, out=tmp_path / "out", limit=2,
                      max_new_tokens=4, show_progress=False)
    assert set(report["aggregates"]) == {"base"}
    assert report["comparisons"] == {} and report["forgetting"] is None
    assert report["verdict"]["decision"] == "INCOMPLETE"
    assert [e["index"] for e in report["examples"]] == [0, 1]
    assert "change vs base" not in (tmp_path / "out" / "report.html").read_text()


def test_batched_generation_matches_one_at_a_time_in_input_order(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype=torch.float32)
    texts = ["hello world refund order", "the", "fox jumps", "dog"]
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    batched = generate_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, show_progress=False)
    single = generate_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=1, show_progress=False)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]


def test_cli_json_prints_exactly_one_object(tiny_run_dir, test_file, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--adapter", str(tiny_run_dir), "--data", str(test_file),
                                      "--out", str(tmp_path / "out"), "--limit", "3", "--max-new-tokens", "4",
                                      "--no-forgetting", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"verdict", "aggregates", "comparisons", "forgetting", "judge", "warnings", "paths"} <= set(payload)
    assert set(payload["aggregates"]) == {"base", "fine-tuned"}
    assert payload["forgetting"] is None
    assert Path(payload["paths"]["html"]).is_file()


def test_cli_config_file_values_are_overridden_by_flags(tiny_run_dir, test_file, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"adapter: {tiny_run_dir}\ndata: {test_file.name}\nout: {tmp_path / 'out'}\n"
                      "limit: 4\nmax_new_tokens: 3\nforgetting:\n  limit: 6\n")
    result = CliRunner().invoke(app, ["eval", str(config), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "fine-tuned" in result.stdout and "report.html" in result.stdout
    assert "primary metric: json_fields (1 of 1 references are JSON objects)" in " ".join(result.stdout.split())
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["config"]["limit"] == 1 and len(saved["examples"]) == 1
    assert saved["config"]["max_new_tokens"] == 3
    assert saved["forgetting"]["probes"] == 6
    assert saved["config"]["data"] == str(test_file)  # resolved next to the config file


def test_config_typo_is_reported_with_a_suggestion(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("base: x\ndata: test.jsonl\nout: out\nmax_tokens: 5\n")
    with pytest.raises(HoneError, match="max_tokens: unknown key; did you mean 'max_new_tokens'"):
        load_eval_config(config, {})
    with pytest.raises(HoneError, match="data: Field required"):
        load_eval_config(None, {"base": "x", "out": "out"})
    with pytest.raises(HoneError, match="give base"):
        load_eval_config(None, {"data": "t.jsonl", "out": "out"})


def test_test_conversation_needs_a_prompt_before_the_reference(tiny_model_dir, tmp_path):
    data = write_chats(tmp_path / "bad.jsonl", [TEST_CHATS[1], [{"role": "assistant", "content": "orphan"}]])
    with pytest.raises(HoneError, match=r"bad\.jsonl:2: the test file's conversation needs a prompt"):
        evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out", show_progress=False)


def test_broken_test_file_is_reported_by_line_and_field(tiny_model_dir, tmp_path):
    trailing_user = [*TEST_CHATS[1], {"role": "user", "content": "and then?"}]
    data = write_chats(tmp_path / "bad.jsonl", [TEST_CHATS[1], trailing_user])
    with pytest.raises(HoneError, match=r"bad\.jsonl:2: messages\[2\]\.role: the conversation ends with"):
        evaluate(base=str(tiny_model_dir), data=data, out=tmp_path / "out", show_progress=False)


def test_run_dir_without_adapter_is_a_clear_error(tiny_model_dir, test_file, tmp_path):
    run = tmp_path / "interrupted-run"
    run.mkdir()
    (run / "config.yaml").write_text(f"base_model: {tiny_model_dir}\n")
    with pytest.raises(HoneError, match="has no usable adapter") as error:
        evaluate(adapter=run, data=test_file, out=tmp_path / "out", show_progress=False)
    assert f"hone train --resume {run}" in str(error.value)


def test_base_replies_do_not_depend_on_the_adapters_evaluated_with_it(tiny_model_dir, tiny_run_dir, test_file,
                                                                       tmp_path):
    alone = evaluate(base=str(tiny_model_dir), data=test_file, out=tmp_path / "alone", max_new_tokens=6,
                     forgetting={"enabled": False}, show_progress=False)
    listed_after = evaluate(base=str(tiny_model_dir), data=test_file, out=tmp_path / "mixed", max_new_tokens=6,
                            candidates=[{"name": "fine-tuned", "adapter": tiny_run_dir}, {"name": "base"}],
                            forgetting={"limit": 6, "max_new_tokens": 4}, show_progress=False)
    texts = [[e["outputs"]["base"]["text"] for e in report["examples"]] for report in (alone, listed_after)]
    assert texts[0] == texts[1]
    assert list(listed_after["aggregates"]) == ["fine-tuned", "base"]  # config order kept in the report
