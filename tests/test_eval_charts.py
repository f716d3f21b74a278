import re
import xml.etree.ElementTree as ET

import matplotlib
import pytest

from hone.eval.charts import confusion_chart, delta_chart, forgetting_chart, length_chart

LABELS = ["billing", "refund", "shipping"]


def _comparison(delta: float, low: float, high: float) -> dict:
    return {"delta": delta, "ci_low": low, "ci_high": high, "excludes_zero": low > 0 or high < 0, "n": 40}


COMPARISONS = {
    "few-shot": {"token_f1": _comparison(2.0, -1.0, 5.0), "rouge_l": None, "bleu": None},
    "fine-tuned": {"token_f1": _comparison(14.0, 10.0, 18.0), "rouge_l": _comparison(-3.0, -6.0, -0.5),
                   "bleu": None},
}
METRIC_LABELS = {"token_f1": "token F1 %", "rouge_l": "ROUGE-L F %", "bleu": "BLEU"}


def _texts(svg: str) -> list[str]:
    """Every piece of text in the SVG, as a reader of the page would see it."""
    root = ET.fromstring(svg)
    return [element.text for element in root.iter() if element.tag.endswith("text") and element.text]


def _assert_embeddable_svg(svg: str) -> None:
    assert ET.fromstring(svg).tag.endswith("svg")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg
    assert svg.startswith("<svg")
    # Scales to the page's width and keeps its aspect ratio.
    assert 'width="100%"' in svg and re.search(r'viewBox="0 0 [\d.]+ [\d.]+"', svg)


CHARTS = {
    "delta": lambda: delta_chart(COMPARISONS, ["token_f1", "rouge_l", "bleu"], METRIC_LABELS, "base"),
    "confusion": lambda: confusion_chart(LABELS, [[5, 1, 0], [2, 7, 0], [0, 0, 9]], "Intent"),
    "length": lambda: length_chart({"base": [120, 80, 200], "fine-tuned": [30, 35, 41]}, [32, 38, 40]),
    "forgetting": lambda: forgetting_chart({"base": {"token F1": 31.0}, "fine-tuned": {"token F1": 29.5}}, "Skills"),
}


@pytest.mark.parametrize("name", CHARTS)
def test_every_chart_is_an_svg_element_that_can_be_inlined_in_html(name):
    _assert_embeddable_svg(CHARTS[name]())


@pytest.mark.parametrize("name", CHARTS)
def test_the_same_data_gives_byte_identical_svg(name):
    assert CHARTS[name]() == CHARTS[name]()


def test_delta_chart_names_candidates_and_drawn_metrics_and_skips_metrics_nobody_has():
    texts = _texts(CHARTS["delta"]())
    assert {"few-shot", "fine-tuned", "token F1 %", "ROUGE-L F %", "Change against base (95% CI)"} <= set(texts)
    assert "BLEU" not in texts


def test_delta_chart_marks_whether_the_interval_excludes_zero():
    texts = _texts(CHARTS["delta"]())
    assert {"CI excludes 0", "CI includes 0"} <= set(texts)


def test_delta_chart_leaves_out_the_baseline_itself():
    comparisons = {"base": {"token_f1": None}, **COMPARISONS}
    texts = _texts(delta_chart(comparisons, ["token_f1"], METRIC_LABELS, "base"))
    assert "base" not in texts


def test_confusion_chart_writes_labels_axes_and_every_count():
    texts = _texts(CHARTS["confusion"]())
    assert set(LABELS) | {"reference", "predicted", "Intent"} <= set(texts)
    assert {"5", "7", "9"} <= set(texts)


def test_confusion_chart_shows_replies_without_a_label_in_a_none_column():
    matrix = [[5, 1, 0, 4], [2, 7, 0, 0], [0, 0, 9, 13]]
    svg = confusion_chart(LABELS, matrix, "Intent")
    _assert_embeddable_svg(svg)
    assert {"(none)", "4", "13"} <= set(_texts(svg))


def test_confusion_chart_rejects_a_matrix_that_does_not_fit_the_labels():
    with pytest.raises(ValueError, match="3 rows"):
        confusion_chart(LABELS, [[1, 2], [3, 4]], "Intent")


def test_length_chart_labels_each_candidate_and_the_references():
    texts = " ".join(_texts(CHARTS["length"]()))
    assert all(name in texts for name in ("base", "fine-tuned", "reference", "Reply length (tokens)"))


def test_forgetting_chart_skips_missing_scores_and_labels_the_rest():
    scores = {"base": {"token F1": 31.0, "ROUGE-L": None}, "fine-tuned": {"token F1": 29.5, "ROUGE-L": 27.1}}
    texts = _texts(forgetting_chart(scores, "General skills"))
    assert {"base", "fine-tuned", "token F1", "ROUGE-L", "General skills", "31.0", "29.5", "27.1"} <= set(texts)


def test_nothing_to_draw_gives_an_empty_string():
    assert delta_chart({}, ["token_f1"], METRIC_LABELS, "base") == ""
    assert delta_chart({"fine-tuned": {"token_f1": None}}, ["token_f1"], METRIC_LABELS, "base") == ""
    assert confusion_chart([], [], "Intent") == ""
    assert confusion_chart(LABELS, [[0, 0, 0]] * 3, "Intent") == ""
    assert length_chart({}, None) == ""
    assert length_chart({"base": []}, [10, 12]) == ""
    assert forgetting_chart({}, "Skills") == ""
    assert forgetting_chart({"base": {"token F1": None}}, "Skills") == ""


def test_dollar_signs_in_names_stay_plain_text():
    svg = forgetting_chart({"$5 model": {"score": 1.0}}, "Cost $ and $ value")
    assert "$5 model" in _texts(svg)


def test_drawing_a_chart_leaves_the_callers_matplotlib_settings_alone():
    with matplotlib.rc_context({"svg.fonttype": "path", "font.size": 14}):
        CHARTS["delta"]()
        assert matplotlib.rcParams["svg.fonttype"] == "path" and matplotlib.rcParams["font.size"] == 14
