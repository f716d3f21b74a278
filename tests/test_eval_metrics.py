import pytest

from hone.eval.metrics import (
    aggregate,
    bleu,
    chrf,
    deltas,
    exact_match,
    json_fields,
    json_valid,
    normalize_answer,
    rouge_l,
    score_reply,
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


def test_score_reply_reports_percentages_and_length():
    scores = score_reply("the cat sat", "a cat sat down", output_tokens=3)
    assert scores == {"exact_match": 0.0, "token_f1": 80.0, "rouge_l": pytest.approx(57.14, abs=0.01),
                      "bleu": pytest.approx(39.43, abs=0.01), "chrf": pytest.approx(40.49, abs=0.01),
                      "json_valid": None, "json_fields": None, "output_tokens": 3}


def test_aggregate_means_skip_inapplicable_examples_and_deltas_subtract_base():
    base = aggregate([score_reply("x", '{"a": 1}', 1), score_reply("cat", "cat", 3)])
    tuned = aggregate([score_reply('{"a": 1}', '{"a": 1}', 5), score_reply("cat", "cat", 1)])
    assert base["exact_match"] == 50.0 and tuned["exact_match"] == 100.0
    assert base["json_valid"] == 0.0 and tuned["json_valid"] == 100.0  # only the JSON example counts
    assert deltas(tuned, base)["exact_match"] == 50.0
    assert deltas(tuned, base)["output_tokens"] == 1.0
    assert aggregate([score_reply("cat", "cat", 1)])["json_valid"] is None
