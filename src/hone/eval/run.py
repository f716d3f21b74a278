"""The Python API behind `hone eval`: score a base model and its fine-tuned adapter on held-out chats."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hone.data.formats import load_chat_examples
from hone.data.render import render_prompt
from hone.errors import HoneError
from hone.eval.generate import Generation, generate_replies
from hone.eval.metrics import METRICS, PERCENT_METRICS, aggregate, deltas, score_reply
from hone.eval.report import MODEL_LABELS, write_report
from hone.eval.stats import is_binary, mcnemar, paired_bootstrap_ci
from hone.models import fingerprint, frozen_dtype, load_model, load_tokenizer
from hone.models.finetuned import adapter_fingerprint, attach_adapter, default_device, read_run_dir
from hone.settings import read_yaml_mapping, resolve_relative, validate

MAX_NEW_TOKENS_CAP = 256


class EvalConfig(BaseModel):
    """Settings of one evaluation, as written in an eval YAML file or given as `hone eval` flags."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = Field(None, description="Base model; read from ADAPTER/config.yaml when omitted.")
    adapter: Path | None = Field(None, description="Run directory of `hone train` with the adapter to test.")
    data: Path = Field(description="Test file in any chat format; the last assistant turn is the reference.")
    out: Path = Field(description="Folder for report.json and report.html.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    max_new_tokens: int | None = Field(None, ge=1, description="Default: 1.5x longest reference, max 256.")

    @model_validator(mode="after")
    def _needs_a_model(self) -> EvalConfig:
        if self.base is None and self.adapter is None:
            raise ValueError("give base (a model name) or adapter (a run directory), or both")
        return self


def validate_eval_config(raw: dict[str, Any], source: str = "hone eval") -> EvalConfig:
    """Validate eval settings; every problem is reported with its key and, for typos, a suggestion."""
    return validate(EvalConfig, raw, source, "eval settings")


def load_eval_config(path: Path | None, overrides: dict[str, Any]) -> EvalConfig:
    """Eval settings from an optional YAML file, with `overrides` (non-None values) taking precedence.

    Relative data and adapter paths in the file are resolved against the file's folder when they do not
    exist relative to the working directory.
    """
    raw = read_yaml_mapping(path, "eval config") if path else {}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    config = validate_eval_config(raw, source=str(path) if path else "hone eval")
    if path:
        for key in ("data", "adapter"):
            if overrides.get(key) is None:
                setattr(config, key, resolve_relative(getattr(config, key), path))
    return config


@dataclass
class EvalCase:
    """One test conversation split into the prompt (all but the last turn) and the reference reply."""

    prompt: list[dict]
    reference: str


def load_test_cases(path: Path, limit: int | None = None) -> list[EvalCase]:
    """The first `limit` conversations of a test file, each split into prompt and reference reply."""
    cases = []
    for example in load_chat_examples(path)[:limit]:
        messages = example.messages
        if len(messages) < 2:
            raise HoneError(f"{path}:{example.line}: the conversation has only the assistant reply, so "
                            "there is no prompt to answer",
                            hint="put the user message (and any system message) before the expected reply")
        cases.append(EvalCase(prompt=[{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
                              reference=messages[-1]["content"]))
    return cases


def default_max_new_tokens(tokenizer, references: list[str]) -> int:
    """1.5x the longest reference in tokens, capped at 256: room to answer, no room to ramble forever."""
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references)
    return max(1, min(MAX_NEW_TOKENS_CAP, math.ceil(1.5 * longest)))


def _load(base: str | None, adapter: Path | None, device: str):
    """The model (with the adapter attached when given), its tokenizer, and a description of both."""
    run = read_run_dir(adapter) if adapter else None
    base = base or run.base
    model = load_model(base, dtype=frozen_dtype(device), device=device)
    models = {"base": {"name": base, "fingerprint": fingerprint(base)}}
    if run:
        model = attach_adapter(model, run.adapter_dir, base)
        models["finetuned"] = {"name": str(run.run_dir), "base": base, "adapter": str(run.adapter_dir),
                               "base_fingerprint": models["base"]["fingerprint"],
                               "adapter_fingerprint": adapter_fingerprint(run.adapter_dir)}
    model.eval()
    return model, load_tokenizer(base), models


def _timing(generations: list[Generation], seconds: float) -> dict[str, float | None]:
    tokens = sum(g.tokens for g in generations)
    return {"seconds": round(seconds, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}


@contextmanager
def _adapter_mode(model, key: str, has_adapter: bool):
    """One copy of the base weights serves both passes: the adapter is off for the base pass and merged
    into the weights for the fine-tuned pass, so decoding pays no per-layer LoRA overhead."""
    if not has_adapter:
        yield
    elif key == "base":
        with model.disable_adapter():
            yield
    else:
        model.merge_adapter()
        try:
            yield
        finally:
            model.unmerge_adapter()


def _generate_all(model, tokenizer, prompts: list[list[int]], keys: list[str], max_new_tokens: int,
                  batch_size: int, show_progress: bool) -> tuple[dict[str, list[Generation]], dict]:
    """Replies and timings of each evaluated model ("base", then "finetuned" when an adapter is loaded)."""
    outputs, timings = {}, {}
    for key in keys:
        began = time.perf_counter()
        with _adapter_mode(model, key, "finetuned" in keys):
            outputs[key] = generate_replies(model, tokenizer, prompts, max_new_tokens, batch_size,
                                            MODEL_LABELS[key], show_progress)
        timings[key] = _timing(outputs[key], time.perf_counter() - began)
    return outputs, timings


def evaluate(base: str | None = None, adapter: Path | None = None, data: Path | None = None,
             out: Path | None = None, *, limit: int | None = None, batch_size: int = 16,
             max_new_tokens: int | None = None, device: str | None = None,
             show_progress: bool = True) -> dict:
    """Generate greedy replies to every test prompt with the base model and, given a run directory as
    `adapter`, with base+adapter; score both against the references and write OUT/report.json and
    OUT/report.html. Returns the report, including its `paths`.
    """
    raw = {"base": base, "adapter": adapter, "data": data, "out": out, "limit": limit,
           "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    settings = validate_eval_config(raw)
    started = time.perf_counter()
    device = device or default_device()
    cases = load_test_cases(settings.data, settings.limit)
    model, tokenizer, models = _load(settings.base, settings.adapter, device)
    load_seconds = time.perf_counter() - started
    new_tokens = settings.max_new_tokens or default_max_new_tokens(tokenizer, [c.reference for c in cases])
    prompts = [render_prompt(tokenizer, case.prompt) for case in cases]

    outputs, timings = _generate_all(model, tokenizer, prompts, list(models), new_tokens, settings.batch_size,
                                     show_progress)
    timings |= {"load_s": round(load_seconds, 3), "total_s": round(time.perf_counter() - started, 3)}

    config = settings.model_dump(mode="json") | {
        "base": models["base"]["name"], "max_new_tokens": new_tokens, "examples": len(cases),
        "device": device, "dtype": str(model.dtype).removeprefix("torch.")}
    report = _build_report(config, models, cases, outputs, timings)
    report["paths"] = {name: str(path) for name, path in write_report(report, settings.out).items()}
    return report


def significance(examples: list[dict]) -> dict[str, dict | None]:
    """Per metric: the paired bootstrap 95% CI of fine-tuned minus base, and McNemar's test for
    right/wrong metrics (every score 0 or 100)."""
    result = {}
    for name in METRICS:
        pairs = [(e["outputs"]["base"]["scores"][name], e["outputs"]["finetuned"]["scores"][name]) for e in examples]
        base, tuned = [b for b, _ in pairs], [t for _, t in pairs]
        result[name] = paired_bootstrap_ci(base, tuned)
        both = [(b, t) for b, t in pairs if b is not None and t is not None]
        if result[name] and name in PERCENT_METRICS and is_binary([v for pair in both for v in pair]):
            result[name]["mcnemar"] = mcnemar([b == 100 for b, _ in both], [t == 100 for _, t in both])
    return result


def _build_report(config: dict, models: dict, cases: list[EvalCase], outputs: dict[str, list[Generation]],
                  timings: dict) -> dict:
    examples = []
    for index, case in enumerate(cases):
        replies = {}
        for key, generations in outputs.items():
            reply = generations[index]
            replies[key] = {"text": reply.text, "tokens": reply.tokens, "seconds": round(reply.seconds, 3),
                            "scores": score_reply(reply.text, case.reference, reply.tokens)}
        examples.append({"index": index, "prompt": case.prompt, "reference": case.reference,
                         "outputs": replies})
    aggregates = {key: aggregate([e["outputs"][key]["scores"] for e in examples]) for key in outputs}
    return {
        "config": config,
        "models": models,
        "aggregates": aggregates,
        "deltas": deltas(aggregates["finetuned"], aggregates["base"]) if "finetuned" in aggregates else None,
        "significance": significance(examples) if "finetuned" in aggregates else None,
        "timings": timings,
        "examples": examples,
    }
