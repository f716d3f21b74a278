import json

import pytest

from hone.errors import HoneError
from hone.eval.config import MetricsConfig, StyleRules
from hone.eval.metrics import (
    Scorer,
    aggregate,
    bleu,
    chrf,
    classification_summary,
    exact_match,
    find_label,
    json_fields,
    json_valid,
    load_json_schema,
    normalize_answer,
    reading_grade,
    rouge_l,
    style_violations,
    token_f1,
)


def test_exact_match_ignores_surrounding_and_repeated_whitespace_but_not_case():
    assert exact_match("  Refund  issued.\n", "Refund issued.") == 1.0
    assert exact_match("refund issued.", "Refund issued.") == 0.0


def test_exact_match_compares_json_references_as_parsed_objects():
    reference = '{"name": "Ada", "id": 7}'
    assert exact_match('{"id":7,\n "name":"Ada"}', reference) == 1.0
    assert exact_match('{"id": 8, "name": "Ada"}', reference) == 0.0
    assert exact_match("not json", reference) == 0.0


def test_normalize_answer_drops_case_punctuation_and_articles():
    assert normalize_answer("The Cat, sat on a mat!") == "cat sat on mat"


def test_token_f1_matches_hand_computed_value():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: P = 2/2, R = 2/3, F1 = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "cat") == 0.0


def test_token_f1_counts_repeated_tokens_once_per_match():
    # [cat, cat, cat] vs [cat, dog]: one common token, P = 1/3, R = 1/2, F1 = 0.4
    assert token_f1("cat cat cat", "cat dog") == pytest.approx(0.4)


def test_rouge_l_matches_hand_computed_value():
    # LCS of [the, cat, sat] and [the, cat, was, sat] is 3: P = 3/3, R = 3/4, F = 6/7
    assert rouge_l("the cat sat", "the cat was sat") == pytest.approx(6 / 7)
    assert rouge_l("completely different", "the cat sat") == 0.0


def test_bleu_matches_hand_computed_value_and_chrf_bounds():
    # n-gram precisions 5/6, 3/5, 1/4 and (no 4-gram match, exponential smoothing) 1/(2*3); equal lengths
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu("the cat sat on the mat", "the cat is on the mat") == pytest.approx(expected)
    assert bleu("same words here", "same words here") == pytest.approx(1.0)
    assert chrf("identical", "identical") == pytest.approx(1.0) and chrf("abc", "xyz") == 0.0


def test_json_fields_counts_matching_fields_of_the_reference():
    reference = '{"category": "billing", "order_id": "ORD-1", "urgency": "high", "sentiment": null}'
    assert json_fields('{"category": "billing", "order_id": null, "urgency": "high", "sentiment": null}',
                       reference) == 0.75
    assert json_fields("not json", reference) == 0.0
    assert json_fields('{"a": 1}', "[1, 2]") is None


def test_json_valid_applies_only_to_json_references():
    assert json_valid('{"a": 1}', '{"b": 2}') == 1.0
    assert json_valid("{'a': 1}", '{"b": 2}') == 0.0
    assert json_valid('{"a": 1}', "plain text answer") is None
    assert json_valid("42", "[1, 2]") == 0.0  # a bare number is not the JSON document asked for


def scorer(**settings) -> Scorer:
    return Scorer(MetricsConfig(**settings))


def test_scorer_reports_percentages():
    scores = scorer(readability=False).score("the cat sat", "a cat sat down")
    assert scores == {"exact_match": 0.0, "token_f1": 80.0, "rouge_l": pytest.approx(57.14, abs=0.01),
                      "bleu": pytest.approx(39.43, abs=0.01), "chrf": pytest.approx(40.49, abs=0.01),
                      "accuracy": None, "json_valid": None, "json_schema": None, "json_fields": None,
                      "style_pass": None, "readability_grade": None}


def test_aggregate_means_skip_inapplicable_examples_and_use_the_geometric_mean_for_perplexity():
    score = scorer(readability=False).score
    base = aggregate([score("x", '{"a": 1}') | {"perplexity": 2.0}, score("cat", "cat") | {"perplexity": 8.0}])
    tuned = aggregate([score('{"a": 1}', '{"a": 1}'), score("cat", "cat")])
    assert base["exact_match"] == 50.0 and tuned["exact_match"] == 100.0
    assert base["json_valid"] == 0.0 and tuned["json_valid"] == 100.0  # only the JSON example counts
    assert base["perplexity"] == pytest.approx(4.0) and tuned["perplexity"] is None
    assert aggregate([score("cat", "cat")])["json_valid"] is None


def test_exact_match_normalisation_options():
    assert exact_match("The Refund!", "refund", ("case", "punctuation", "articles")) == 1.0
    assert exact_match("The Refund!", "refund", ("case", "punctuation")) == 0.0
    assert exact_match("Refund", "refund", ("whitespace",)) == 0.0
    assert exact_match("a  b", "a b", ()) == 0.0


def test_labels_are_found_as_whole_words_earliest_first_or_in_a_json_field():
    labels = ["billing", "technical", "shipping"]
    assert find_label("Billing", labels) == "billing"
    assert find_label("This is technical, not billing.", labels) == "technical"
    assert find_label("rebilling issue", labels) is None  # not a whole word
    assert find_label('{"category": "shipping", "note": "billing"}', labels, field="category") == "shipping"
    assert find_label('{"category": "refunds"}', labels, field="category") is None
    assert find_label("not json", labels, field="category") is None


def test_classification_summary_matches_hand_computed_macro_f1_and_confusion():
    labels = ["a", "b"]
    expected = ["a", "a", "b", "b", None]
    predicted = ["a", "b", "b", None, "a"]
    summary = classification_summary(predicted, expected, labels)
    # a: P 1/1, R 1/2 -> F1 2/3; b: P 1/2, R 1/2 -> F1 1/2; macro 7/12
    assert summary["accuracy"] == 50.0 and summary["macro_f1"] == pytest.approx(58.33, abs=0.01)
    assert summary["confusion"] == [[1, 1, 0], [0, 1, 1]]
    assert summary["unlabelled_replies"] == 1 and summary["unlabelled_references"] == 1


def test_json_schema_validity(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "required": ["category"],
                                "properties": {"category": {"enum": ["billing", "technical"]}}}))
    score = scorer(json_schema=path, readability=False).score
    assert score('{"category": "billing"}', "x")["json_schema"] == 100.0
    assert score('{"category": "other"}', "x")["json_schema"] == 0.0
    assert score("not json", "x")["json_schema"] == 0.0
    path.write_text('{"type": "no-such-type"}')
    with pytest.raises(HoneError, match="not a valid JSON Schema"):
        load_json_schema(path)


def test_style_rules_name_every_broken_rule():
    rules = StyleRules(max_chars=20, must_match=["^[A-Z]"], must_not_match=[r"\.$"])
    assert style_violations("Fine reply", rules) == []
    assert style_violations("lowercase reply that is too long.", rules) == [
        "max_chars 20", "must_match '^[A-Z]'", "must_not_match '\\\\.$'"]
    assert scorer(style=rules, readability=False).score("Ok.", "x")["style_pass"] == 0.0
    with pytest.raises(ValueError, match="does not compile"):
        StyleRules(must_match=["("])


def test_reading_grade_is_flesch_kincaid_and_skips_json():
    # 2 sentences, 6 words, 6 syllables: 0.39 * 3 + 11.8 * 1 - 15.59
    assert reading_grade("The cat sat. The dog ran.") == pytest.approx(0.39 * 3 + 11.8 - 15.59, abs=0.01)
    assert reading_grade("Photosynthesis fundamentally transforms electromagnetic radiation.") > 12
    assert reading_grade('{"a": "b"}') is None and reading_grade("123") is None
