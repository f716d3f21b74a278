"""Scores for one model reply against its reference, and their aggregates over a test set.

Each metric is a small pure function returning a fraction in [0, 1] (or None when it does not apply).
`score_reply` turns them into percentages so per-example scores and aggregates share one scale.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from functools import lru_cache
from statistics import mean
from typing import Any

METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "chrf", "json_valid", "json_fields", "output_tokens")
PERCENT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "chrf", "json_valid", "json_fields")
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


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the reply equals the reference after whitespace normalisation, else 0.0.

    A JSON reference is compared as parsed JSON, so key spacing and line breaks do not matter.
    """
    expected = parse_json_document(reference)
    if expected is not None:
        return float(parse_json_document(prediction) == expected)
    return float(normalize_whitespace(prediction) == normalize_whitespace(reference))


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


def score_reply(prediction: str, reference: str, output_tokens: int) -> dict[str, float | int | None]:
    """Every metric for one reply: the fraction metrics in percent (0-100), plus its length in tokens."""
    fractions = {"exact_match": exact_match(prediction, reference),
                 "token_f1": token_f1(prediction, reference),
                 "rouge_l": rouge_l(prediction, reference),
                 "bleu": bleu(prediction, reference),
                 "chrf": chrf(prediction, reference),
                 "json_valid": json_valid(prediction, reference),
                 "json_fields": json_fields(prediction, reference)}
    scores: dict[str, Any] = {name: None if value is None else round(100 * value, 2)
                              for name, value in fractions.items()}
    scores["output_tokens"] = output_tokens
    return scores


def aggregate(scores: list[dict]) -> dict[str, float | None]:
    """Mean of each metric over the examples where it applies; None when it applies to none."""
    means = {}
    for name in METRICS:
        values = [item[name] for item in scores if item[name] is not None]
        means[name] = round(mean(values), 2) if values else None
    return means


def deltas(finetuned: dict, base: dict) -> dict[str, float | None]:
    """Fine-tuned minus base for each aggregate metric (None when either side is None)."""
    both = [name for name in METRICS if finetuned[name] is not None and base[name] is not None]
    return {name: round(finetuned[name] - base[name], 2) if name in both else None for name in METRICS}
