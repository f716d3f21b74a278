"""Scores for one model reply against its reference, and their aggregates over a test set.

Each metric is a small pure function returning a fraction in [0, 1] (or None when it does not apply).
A `Scorer`, built from the eval config, turns them into percentages so per-example scores and
aggregates share one scale, and adds the configured checks (labels, JSON Schema, style, readability) and, on
test examples with tools, the tool-call scores (`hone.eval.tool_calls`).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from functools import lru_cache
from pathlib import Path
from statistics import mean
from typing import Any

from hone.errors import HoneError
from hone.eval.tool_calls import tool_call_scores

# name: (label in tables, short label, +1 higher is better / -1 lower is better / 0 neither)
METRIC_INFO = {
    "exact_match": ("exact match %", "EM", 1),
    "token_f1": ("token F1 %", "F1", 1),
    "rouge_l": ("ROUGE-L F %", "ROUGE-L", 1),
    "bleu": ("BLEU", "BLEU", 1),
    "chrf": ("chrF", "chrF", 1),
    "accuracy": ("label accuracy %", "label", 1),
    "json_valid": ("valid JSON %", "JSON", 1),
    "json_schema": ("matches JSON Schema %", "schema", 1),
    "json_fields": ("JSON fields correct %", "fields", 1),
    "style_pass": ("follows style rules %", "style", 1),
    "tool_name_accuracy": ("right tools called %", "tools", 1),
    "tool_arguments_exact": ("tool calls exactly right %", "calls", 1),
    "tool_argument_accuracy": ("tool arguments right %", "args", 1),
    "no_call_accuracy": ("calls a tool when it should %", "call?", 1),
    "tool_call_parse_rate": ("tool calls that parse %", "parse", 1),
    "judge_score": ("judge score (1-5)", "judge", 1),
    "readability_grade": ("reading grade (Flesch-Kincaid)", "grade", 0),
    "perplexity": ("reference perplexity", "ppl", -1),
    "output_tokens": ("output tokens (mean)", "tokens", 0),
    "latency_s": ("latency s (mean)", "s", -1),
}
METRICS = tuple(METRIC_INFO)
# Right/wrong metrics: each score is 0 or 100, so McNemar's test applies.
BINARY_METRICS = ("exact_match", "accuracy", "json_valid", "json_schema", "style_pass", "tool_name_accuracy",
                  "tool_arguments_exact", "no_call_accuracy", "tool_call_parse_rate")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_whitespace(text: str) -> str:
    """Strip the text and collapse every run of whitespace to one space."""
    return " ".join(text.split())


def parse_json_document(text: str) -> dict | list | None:
    """The parsed JSON object or array in `text`, or None when it is not one (scalars do not count)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict | list) else None


def normalize_for_match(text: str, ignore: tuple[str, ...] = ("whitespace",)) -> str:
    """The text with what exact match ignores taken out: whitespace runs, case, punctuation, articles."""
    if "case" in ignore:
        text = text.lower()
    if "punctuation" in ignore:
        text = text.translate(_PUNCTUATION)
    if "articles" in ignore:
        text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.IGNORECASE)
    return normalize_whitespace(text) if {"whitespace", "articles"} & set(ignore) else text.strip()


def exact_match(prediction: str, reference: str, ignore: tuple[str, ...] = ("whitespace",)) -> float:
    """1.0 when the reply equals the reference once the `ignore` normalisations are applied, else 0.0.

    A JSON reference is compared as parsed JSON, so key spacing and line breaks do not matter.
    """
    expected = parse_json_document(reference)
    if expected is not None:
        return float(parse_json_document(prediction) == expected)
    return float(normalize_for_match(prediction, ignore) == normalize_for_match(reference, ignore))


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return normalize_whitespace(_ARTICLES.sub(" ", text))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of bag-of-tokens precision and recall of the normalised texts."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words) from the rouge-score package.

    Its tokenizer keeps only ASCII letters and digits, so text in other scripts scores 0.
    """
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def bleu(prediction: str, reference: str) -> float:
    """Sentence-level BLEU (sacrebleu, exponential smoothing so short replies are not all zero), as 0-1."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100


def chrf(prediction: str, reference: str) -> float:
    """chrF (sacrebleu): character n-gram F-score, robust to inflection and tokenization, as 0-1."""
    import sacrebleu

    return sacrebleu.sentence_chrf(prediction, [reference]).score / 100


def json_valid(prediction: str, reference: str) -> float | None:
    """1.0 when the reply parses as a JSON object or array; None when the reference is not JSON itself."""
    if parse_json_document(reference) is None:
        return None
    return float(parse_json_document(prediction) is not None)


def json_fields(prediction: str, reference: str) -> float | None:
    """Share of the reference object's fields that the reply's JSON object has with equal values.

    None when the reference is not a JSON object; 0.0 when the reply is not one.
    """
    expected = parse_json_document(reference)
    if not isinstance(expected, dict) or not expected:
        return None
    predicted = parse_json_document(prediction)
    if not isinstance(predicted, dict):
        return 0.0
    return sum(key in predicted and predicted[key] == value for key, value in expected.items()) / len(expected)


def find_label(text: str, labels: list[str], field: str | None = None) -> str | None:
    """The label a reply gives: the JSON `field` when set, else the whole reply when it is a label, else the
    label that appears first as a whole word (case-insensitive). None when no label is found."""
    if field is not None:
        parsed = parse_json_document(text)
        value = parsed.get(field) if isinstance(parsed, dict) else None
        text = value if isinstance(value, str) else ""
    by_key = {normalize_answer(label): label for label in labels}
    whole = normalize_answer(text)
    if whole in by_key:
        return by_key[whole]
    found = []
    for label in labels:
        match = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, flags=re.IGNORECASE)
        if match:
            found.append((match.start(), -len(label), label))  # earliest, then longest ("high" vs "highest")
    return min(found)[2] if found else None


def classification_summary(predicted: list[str | None], expected: list[str | None], labels: list[str]) -> dict:
    """Accuracy, macro-F1 over the label set and the confusion matrix (rows: reference label; columns:
    predicted label, then "(none)" for replies without a label). Examples whose reference has no label
    are left out and counted."""
    pairs = [(p, e) for p, e in zip(predicted, expected, strict=True) if e is not None]
    columns = [*labels, None]
    matrix = [[sum(1 for p, e in pairs if e == row and p == col) for col in columns] for row in labels]
    f1s = []
    for i in range(len(labels)):
        true_pos = matrix[i][i]
        predicted_as = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        precision = true_pos / predicted_as if predicted_as else 0.0
        recall = true_pos / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    correct = sum(1 for p, e in pairs if p == e)
    return {"labels": labels, "examples": len(pairs),
            "accuracy": round(100 * correct / len(pairs), 2) if pairs else None,
            "macro_f1": round(100 * sum(f1s) / len(f1s), 2) if pairs else None,
            "per_label_f1": {label: round(100 * f1, 2) for label, f1 in zip(labels, f1s, strict=True)},
            "confusion": matrix, "unlabelled_replies": sum(1 for p, _ in pairs if p is None),
            "unlabelled_references": len(expected) - len(pairs)}


def json_schema_valid(prediction: str, validator) -> float:
    """1.0 when the reply is JSON that satisfies the schema of `validator` (a jsonschema validator)."""
    try:
        value = json.loads(prediction)
    except (json.JSONDecodeError, RecursionError):
        return 0.0
    return float(validator.is_valid(value))


def style_violations(prediction: str, rules) -> list[str]:
    """The style rules (a StyleRules config) the reply breaks, each named as in the config."""
    broken = []
    if rules.max_chars is not None and len(prediction) > rules.max_chars:
        broken.append(f"max_chars {rules.max_chars}")
    broken += [f"must_match {p!r}" for p in rules.must_match if not re.search(p, prediction)]
    broken += [f"must_not_match {p!r}" for p in rules.must_not_match if re.search(p, prediction)]
    return broken


def reading_grade(text: str) -> float | None:
    """Flesch-Kincaid grade level (textstat) of prose; None for text without words, such as bare JSON."""
    import textstat

    if parse_json_document(text) is not None or not re.search(r"[A-Za-z]{2}", text):
        return None
    return round(float(textstat.flesch_kincaid_grade(text)), 2)


def load_json_schema(path: Path):
    """A jsonschema validator for the schema file at `path`; a clear error when it is not a valid schema."""
    import jsonschema

    try:
        schema = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HoneError(f"metrics.json_schema: file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise HoneError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise HoneError(f"{path}: not a valid JSON Schema: {error.message}") from None
    return cls(schema)


class Scorer:
    """Scores replies with the metrics an eval config asks for; one instance serves every candidate.

    `reply_schema` is the JSON Schema the candidates' response_format asks for (used when metrics.json_schema is not
    set); with it, or `asks_json` (a candidate asks for a JSON object), every reply that is not expected to call a
    tool is scored on JSON validity, whatever its reference, so constrained and free candidates compare pairwise.
    """

    def __init__(self, settings, reply_schema: dict | None = None, asks_json: bool = False):
        self.settings = settings
        self.ignore = tuple(settings.normalize)
        if settings.json_schema:
            self.schema = load_json_schema(settings.json_schema)
        else:
            self.schema = json_schema_validator(reply_schema) if reply_schema is not None else None
        self.asks_json = asks_json or self.schema is not None

    def label_of(self, text: str) -> str | None:
        """The label found in a reply or reference (None without a label set)."""
        labels = self.settings.labels
        return find_label(text, labels, self.settings.label_field) if labels else None

    def score(self, prediction: str, reference: str,
              expected_calls: list[tuple[str, dict]] | None = None) -> dict[str, float | None]:
        """Every text metric of one reply, the fractions in percent (0-100); the tool-call metrics too when
        `expected_calls` is given (a test example with tools: the calls its answer makes, maybe none)."""
        wants_json = self.asks_json and not expected_calls
        fractions = {"exact_match": exact_match(prediction, reference, self.ignore),
                     "token_f1": token_f1(prediction, reference),
                     "rouge_l": rouge_l(prediction, reference),
                     "bleu": bleu(prediction, reference),
                     "chrf": chrf(prediction, reference),
                     "accuracy": None,
                     "json_valid": float(parse_json_document(prediction) is not None) if wants_json
                     else json_valid(prediction, reference),
                     "json_schema": json_schema_valid(prediction, self.schema)
                     if self.schema and not expected_calls else None,
                     "json_fields": json_fields(prediction, reference),
                     "style_pass": (not style_violations(prediction, self.settings.style))
                     if self.settings.style else None}
        if self.settings.labels:
            expected = self.label_of(reference)
            fractions["accuracy"] = None if expected is None else self.label_of(prediction) == expected
        if expected_calls is not None:
            fractions |= tool_call_scores(prediction, expected_calls)
        scores: dict[str, Any] = {name: None if value is None else round(100 * float(value), 2)
                                  for name, value in fractions.items()}
        scores["readability_grade"] = reading_grade(prediction) if self.settings.readability else None
        return scores


def json_schema_validator(schema: dict):
    """A jsonschema validator for `schema` (already checked when the config was read)."""
    import jsonschema

    return jsonschema.validators.validator_for(schema)(schema)


def aggregate(scores: list[dict]) -> dict[str, float | None]:
    """Mean of each metric over the examples where it applies (perplexity: geometric mean); None when it
    applies to none."""
    means = {}
    for name in METRICS:
        values = [item[name] for item in scores if item.get(name) is not None]
        if not values:
            means[name] = None
        elif name == "perplexity":
            means[name] = round(math.exp(mean(math.log(v) for v in values)), 3)
        else:
            means[name] = round(mean(values), 3 if name == "latency_s" else 2)
    return means
