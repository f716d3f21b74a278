"""Did fine-tuning damage general ability? hone's general probe set, scored for the base model and each
fine-tuned candidate: short general questions with reference answers, and general prose for perplexity.

The probes ship with hone (hone/eval/probes/), so every evaluation measures forgetting the same way.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from importlib.resources import files
from itertools import zip_longest
from statistics import mean

from hone.data.render import RenderedExample, render_prompt
from hone.eval.generate import generate_replies
from hone.eval.metrics import normalize_answer, token_f1
from hone.eval.prompting import EvalCase
from hone.eval.stats import paired_bootstrap_ci
from hone.models.scoring import example_perplexities

SHORT_ANSWER_WORDS = 8  # references up to this long are checked for containment in the reply
TEXT_CHUNK_TOKENS = 256


def load_probes(limit: int | None = None) -> tuple[list[EvalCase], list[str]]:
    """The general probe prompts with their reference answers, and each one's category. With `limit`, the
    probes are taken from every category in turn, so a short run still covers all of them."""
    by_category: dict[str, list[EvalCase]] = defaultdict(list)
    lines = (files("hone.eval") / "probes" / "general_qa.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        record = json.loads(line)
        *prompt, reply = record["messages"]
        by_category[record["category"]].append(EvalCase(prompt=prompt, reference=reply["content"]))
    rounds = zip_longest(*by_category.values())
    picked = [(case, category) for row in rounds for case, category in zip(row, by_category, strict=True) if case]
    picked = picked[:limit]
    return [case for case, _ in picked], [category for _, category in picked]


def general_text_chunks(tokenizer, tokens_per_chunk: int = TEXT_CHUNK_TOKENS) -> list[RenderedExample]:
    """hone's general prose as plain-text token windows (no chat template), every token scored."""
    text = (files("hone.eval") / "probes" / "general_text.txt").read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [RenderedExample(input_ids=ids[i:i + tokens_per_chunk], trained=[True] * len(ids[i:i + tokens_per_chunk]),
                            text="") for i in range(0, len(ids), tokens_per_chunk)]


def answer_match(reply: str, reference: str) -> float | None:
    """100 when a short reference answer appears in the reply (normalised), else 0; None for long references,
    whose wording a correct reply need not repeat."""
    expected = normalize_answer(reference)
    if not expected or len(expected.split()) > SHORT_ANSWER_WORDS:
        return None
    return 100.0 * (f" {expected} " in f" {normalize_answer(reply)} ")


def _geometric_mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(math.exp(mean(math.log(v) for v in present)), 3) if present else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(mean(present), 2) if present else None


def score_probes(model, tokenizer, settings, batch_size: int = 16, label: str = "probes",
                 show_progress: bool = True) -> dict:
    """One model's answers to the general probes, their scores, and its perplexity on the general text."""
    cases, categories = load_probes(settings.limit)
    prompts = [render_prompt(tokenizer, case.prompt) for case in cases]
    replies = generate_replies(model, tokenizer, prompts, settings.max_new_tokens, batch_size, label, show_progress)
    texts = [reply.text for reply in replies]
    matches = [answer_match(text, case.reference) for text, case in zip(texts, cases, strict=True)]
    f1s = [round(100 * token_f1(text, case.reference), 2) for text, case in zip(texts, cases, strict=True)]
    by_category = defaultdict(list)
    for category, match in zip(categories, matches, strict=True):
        by_category[category].append(match)
    chunks = general_text_chunks(tokenizer)
    return {"replies": texts, "answer_match_scores": matches, "token_f1_scores": f1s,
            "answer_match": _mean(matches), "token_f1": _mean(f1s),
            "by_category": {c: _mean(v) for c, v in sorted(by_category.items())},
            "text_perplexity": _geometric_mean(example_perplexities(model, chunks, tokenizer.pad_token_id)),
            "text_tokens": sum(len(c) for c in chunks)}


def forgetting_summary(scored: dict[str, dict], settings, measured_as: dict[str, str]) -> dict:
    """Probe scores per model ("base" and one entry per fine-tuned adapter), each fine-tuned entry's change
    against the base with a paired bootstrap CI, and every probe with each model's reply.

    `measured_as` maps every fine-tuned candidate to the entry holding its adapter's scores.
    """
    cases, categories = load_probes(settings.limit)
    base = scored["base"]
    changes = {}
    for name, tuned in scored.items():
        if name == "base":
            continue
        rise = (None if not base["text_perplexity"] or tuned["text_perplexity"] is None
                else round(100 * (tuned["text_perplexity"] / base["text_perplexity"] - 1), 2))
        changes[name] = {"answer_match": paired_bootstrap_ci(base["answer_match_scores"], tuned["answer_match_scores"]),
                         "token_f1": paired_bootstrap_ci(base["token_f1_scores"], tuned["token_f1_scores"]),
                         "text_perplexity_rise_pct": rise}
    examples = [{"prompt": case.prompt, "reference": case.reference, "category": category,
                 "replies": {name: scored[name]["replies"][i] for name in scored}}
                for i, (case, category) in enumerate(zip(cases, categories, strict=True))]
    hidden = ("replies", "answer_match_scores", "token_f1_scores", "text_tokens")
    return {"probes": len(cases), "text_tokens": base["text_tokens"], "metric": settings.metric,
            "tolerance": settings.tolerance, "perplexity_tolerance_pct": settings.perplexity_tolerance_pct,
            "models": {name: {k: v for k, v in result.items() if k not in hidden} for name, result in scored.items()},
            "changes": changes, "measured_as": measured_as, "examples": examples}
