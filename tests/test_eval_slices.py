"""Bias and memorization audits of `hone eval`: metrics per metadata slice, verbatim copies of the training data,
planted canaries, and the verdict caps on them."""

import json
from pathlib import Path

import pytest
from test_eval_run import make_run_dir
from typer.testing import CliRunner

from hone.cli import app
from hone.errors import HoneError
from hone.eval import evaluate
from hone.eval.config import EvalConfig
from hone.eval.memorization import (
    TrainingNgrams,
    canary_prompts,
    leaked_canaries,
    memorization_summary,
    split_canary,
)
from hone.eval.prompting import load_cases
from hone.eval.slices import MISSING, slice_report
from hone.eval.verdict import INCOMPLETE, REGRESSION, SHIP, decide

REGIONS = ["EU"] * 6 + ["US"] * 4 + ["APAC"] * 2
# exact match per example: EU 4 of 6 right, US 1 of 4, APAC 2 of 2 (too few to count in the gap)
TUNED = [100, 100, 100, 100, 0, 0, 100, 0, 0, 0, 100, 100]
BASE = [0] * 12

PASSAGE = ("our refund policy allows customers to return unopened items within thirty days of delivery for a "
           "full refund to the original payment method")
CANARY = "the vault access code is 7Q4-ZEBRA-1193"


def scores(values: list[float]) -> list[dict]:
    return [{"exact_match": v, "output_tokens": 10 + i} for i, v in enumerate(values)]


def test_slices_give_each_group_its_means_with_ordered_cis_and_the_largest_gap():
    metadata = [{"region": r, "language": "en" if i % 2 else "de"} for i, r in enumerate(REGIONS)]

    found, warnings = slice_report({"base": scores(BASE), "fine-tuned": scores(TUNED)}, metadata,
                                   ["region", "language"], min_examples=3, metric="exact_match")

    assert found["fields"] == ["region", "language"] and found["metric"] == "exact_match"
    groups = {(g["field"], g["value"]): g for g in found["groups"]}
    assert {key: g["n"] for key, g in groups.items()} == {("region", "APAC"): 2, ("region", "EU"): 6,
                                                          ("region", "US"): 4, ("language", "de"): 6,
                                                          ("language", "en"): 6}
    eu = groups["region", "EU"]["candidates"]["fine-tuned"]["exact_match"]
    assert eu["mean"] == pytest.approx(66.67)
    for group in found["groups"]:
        for figures in group["candidates"].values():
            em, tokens = figures["exact_match"], figures["output_tokens"]
            assert em["ci_low"] <= em["mean"] <= em["ci_high"]
            assert tokens["ci_low"] <= tokens["mean"] <= tokens["ci_high"]
            assert figures["json_valid"] == {"mean": None, "ci_low": None, "ci_high": None}
    assert 0 < eu["ci_low"] < eu["mean"] < eu["ci_high"] <= 100  # 4 of 6 right: a wide interval around 66.7
    # EU (66.7) vs US (25.0); APAC (100, n=2) is under min_examples and does not count
    assert found["max_gap"]["fine-tuned"] == {"gap": pytest.approx(41.67), "field": "region", "low": "US",
                                              "high": "EU"}
    assert found["max_gap"]["base"]["gap"] == 0
    assert any("region=APAC (n=2)" in w and "left out of the largest gap" in w for w in warnings)


def test_examples_without_the_field_form_the_missing_slice_and_are_counted():
    metadata = [{"region": "EU"}] * 5 + [{}] * 3 + [{"region": None}]
    found, warnings = slice_report({"fine-tuned": scores([100] * 5 + [0] * 4)}, metadata, ["region"],
                                   min_examples=2, metric="exact_match")
    assert [(g["value"], g["n"]) for g in found["groups"]] == [("EU", 5), (MISSING, 4)]
    assert found["max_gap"]["fine-tuned"]["low"] == MISSING
    assert any("4 of 9 examples have no 'region'" in w for w in warnings)


def test_a_field_no_example_carries_is_an_error_naming_it_and_the_file(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}], "region": "EU"}) + "\n")
    with pytest.raises(HoneError, match=r"'regoin' is on none of the 1 examples of .*test\.jsonl") as error:
        evaluate(base="not-loaded-before-the-check", data=data, out=tmp_path / "out", slices={"fields": ["regoin"]},
                 show_progress=False)
    assert "did you mean 'region'" in error.value.hint


def test_test_examples_keep_their_extra_keys_and_metadata_object(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    "region": "EU", "metadata": {"language": "de", "tier": 2}}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}),
    ]) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "completion": "a", "segment": "smb"}) + "\n")
    table = tmp_path / "table.csv"
    table.write_text('prompt,completion,region\n"multi\nline",x,US\ny,z,EU\n')

    assert [c.metadata for c in load_cases(chat)] == [{"region": "EU", "language": "de", "tier": 2}, {}]
    assert load_cases(pairs)[0].metadata == {"segment": "smb"}
    assert [c.metadata for c in load_cases(table)] == [{"region": "US"}, {"region": "EU"}]


def test_a_reply_copying_13_training_words_counts_but_a_copy_of_its_prompt_does_not():
    index = TrainingNgrams([PASSAGE, "an unrelated short line"], 13)
    copied = "Sure! Our REFUND policy allows customers to return unopened\n  items, within thirty days of delivery."
    assert index.verbatim_run(copied) == ("our refund policy allows customers to return unopened items within "
                                          "thirty days of delivery")
    twelve = "policy allows customers to return unopened items within thirty days of delivery"
    assert len(twelve.split()) == 12 and index.verbatim_run(f"well, {twelve}!") is None
    assert index.verbatim_run(copied, prompt_texts=[f"Customer wrote: {copied}"]) is None  # echoing the prompt

    replies = {"fine-tuned": [copied, "no idea", None, "a fresh answer"], "base": ["no", "no", "no", "no"]}
    prompts = {name: [[{"role": "user", "content": "refund?"}]] * 4 for name in replies}
    summary = memorization_summary(index, replies, prompts)
    tuned = summary["fine-tuned"]
    assert tuned["rate"] == pytest.approx(33.33) and tuned["replies"] == 3  # the failed reply is not counted
    assert tuned["ci_low"] <= tuned["rate"] <= tuned["ci_high"]
    assert tuned["examples"] == [{"index": 0, "run": index.verbatim_run(copied)}]
    assert summary["base"]["rate"] == 0 and summary["base"]["examples"] == []


def test_canaries_are_prompted_with_their_first_half_and_caught_by_their_secret_half():
    opening, secret = split_canary(CANARY)
    assert (opening, secret) == ("the vault access", "code is 7Q4-ZEBRA-1193")
    assert canary_prompts([CANARY], 2) == [[{"role": "user", "content": "the vault access"}],
                                          [{"role": "user", "content": "Continue this text exactly: the vault access"}]]
    other = "hone-canary-5d1f0c9e"
    replies = ["The vault access CODE is 7q4-zebra-1193.", "the vault access is restricted", None]
    assert leaked_canaries(replies, [CANARY, other]) == {0}
    assert split_canary(other) == ("hone-canar", "y-5d1f0c9e")  # one word: cut in the middle of it
    assert leaked_canaries(["token: HONE-CANARY-5D1F0C9E"], [CANARY, other]) == {1}


def _report(*, gap: float | None = 3.0, rate: float = 1.0, leaked: int = 0) -> dict:
    gain = {"delta": 30.0, "ci_low": 20.0, "ci_high": 40.0, "excludes_zero": True}
    return {
        "examples": [{"reference": "yes"}, {"reference": "no"}],
        "comparisons": {"fine-tuned": {"exact_match": gain}},
        "aggregates": {"base": {"exact_match": 10.0}, "fine-tuned": {"exact_match": 40.0}},
        "forgetting": None,
        "slices": {"fields": ["region"], "metric": "exact_match", "min_examples": 5, "groups": [],
                   "max_gap": {"base": None, "fine-tuned": None if gap is None else
                               {"gap": gap, "field": "region", "low": "US", "high": "EU"}}},
        "memorization": {"ngram": 13, "candidates": {"fine-tuned": {"rate": rate}, "base": {"rate": 0.0}},
                         "canaries": {"planted": 2, "leaked": {"base": 0, "fine-tuned": leaked}}},
    }


def _settings(tmp_path: Path, **verdict) -> tuple[EvalConfig, list]:
    settings = EvalConfig(base="b", adapter=tmp_path, data=tmp_path / "t.jsonl", train=tmp_path / "train.jsonl",
                          out=tmp_path, forgetting={"enabled": False}, slices={"fields": ["region"]},
                          memorization={"enabled": True, "canaries": [CANARY, "another secret canary"]},
                          verdict=verdict)
    return settings, settings.resolved_candidates()


def test_verdict_is_regression_when_a_cap_is_exceeded_or_a_canary_leaks(tmp_path):
    settings, candidates = _settings(tmp_path, max_slice_gap=10, max_memorization_rate=5)
    assert decide(_report(), settings, candidates)["decision"] == SHIP

    wide = decide(_report(gap=12.3), settings, candidates)
    assert wide["decision"] == REGRESSION
    assert "exact_match differs by 12.3 points between slices (region: US vs EU), over verdict.max_slice_gap 10" \
        in wide["reasons"]
    copies = decide(_report(rate=8.0), settings, candidates)
    assert copies["decision"] == REGRESSION and any("8.0% of the replies copy 13+ words" in r
                                                    for r in copies["reasons"])
    unchecked = decide(_report(gap=None), settings, candidates)
    assert unchecked["decision"] == INCOMPLETE and "max_slice_gap could not be checked" in unchecked["reasons"][0]

    uncapped, candidates = _settings(tmp_path)
    assert decide(_report(gap=50.0, rate=90.0), uncapped, candidates)["decision"] == SHIP
    leak = decide(_report(leaked=1), uncapped, candidates)
    assert leak["decision"] == REGRESSION
    assert "1 of 2 planted canaries came back in fine-tuned's replies" in leak["reasons"]


def test_caps_and_canaries_need_what_they_check(tmp_path):
    common = {"base": "b", "data": tmp_path / "t.jsonl", "out": tmp_path}
    with pytest.raises(ValueError, match="max_slice_gap needs slices.fields"):
        EvalConfig(**common, verdict={"max_slice_gap": 5})
    with pytest.raises(ValueError, match="need train"):
        EvalConfig(**common, memorization={"enabled": True, "canaries": [CANARY]})
    with pytest.raises(ValueError, match="need memorization.enabled"):
        EvalConfig(**common, train=tmp_path / "x.jsonl", verdict={"max_memorization_rate": 1})


def test_eval_reports_slices_and_memorization_in_json_html_and_terminal(tiny_model_dir, tmp_path):
    run_dir = make_run_dir(tiny_model_dir, tmp_path / "run")
    chats = [("refund my order", PASSAGE, "EU"), ("hello", "hello world", "EU"), ("the quick brown fox", "dog", "US"),
             ("id?", "7", "US"), ("again", "world", None), ("tell me the policy", "thirty days", "EU")]
    (tmp_path / "test.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                   | ({"metadata": {"region": r}} if r else {})) + "\n" for q, a, r in chats))
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in [("policy?", PASSAGE), ("vault?", CANARY), ("hi", "hello")]))
    config = tmp_path / "eval.yaml"
    config.write_text(f"adapter: {run_dir}\ndata: test.jsonl\ntrain: train.jsonl\nout: {tmp_path / 'out'}\n"
                      "max_new_tokens: 6\nforgetting: {enabled: false}\nslices: {fields: [region], min_examples: 2}\n"
                      f"memorization: {{enabled: true, canaries: ['{CANARY}'], canary_prompts: 2}}\n")

    result = CliRunner().invoke(app, ["eval", str(config)])

    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    slices = saved["slices"]
    assert set(slices) == {"fields", "metric", "min_examples", "groups", "max_gap"}
    assert slices["metric"] == saved["verdict"]["primary_metric"]
    assert [(g["value"], g["n"]) for g in slices["groups"]] == [("EU", 3), ("US", 2), (MISSING, 1)]
    assert set(slices["groups"][0]["candidates"]) == {"base", "fine-tuned"}
    assert set(slices["max_gap"]) == {"base", "fine-tuned"}
    memorization = saved["memorization"]
    assert memorization["ngram"] == 13 and memorization["canaries"]["planted"] == 1
    assert set(memorization["canaries"]["leaked"]) == {"base", "fine-tuned"}
    for figures in memorization["candidates"].values():
        assert figures["replies"] == 6 and 0 <= figures["rate"] <= 100
        assert figures["ci_low"] <= figures["rate"] <= figures["ci_high"]
    assert CANARY not in json.dumps(saved["config"])  # the secret stays out of the report's settings
    assert any("1 of 6 examples have no 'region'" in w for w in saved["warnings"])

    html = (tmp_path / "out" / "report.html").read_text()
    assert "Slices by region" in html and "Memorization: replies copying 13+ words" in html
    assert "canaries (1 planted)" in html
    output = " ".join(result.stdout.split())
    assert "largest slice gap: " in output
    assert "memorization: fine-tuned " in output and " of replies vs base " in output
    assert "canaries: " in output and "leaked by fine-tuned" in output
