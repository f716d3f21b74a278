"""PII scrubbing: every kind masked with its own label, clean text untouched, the bundled NER model verified,
the user warned about what cannot be found, and corrections sent as feedback masked like requests."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from typer.testing import CliRunner

from hone.cli import app
from hone.data.curate import pii
from hone.data.curate.pii import PiiSettings, Scrubber, undetectable_kinds, undetectable_warning
from hone.errors import HoneError
from hone.monitor.capture import CaptureStore

# (sentence, planted value, the label it must get)
PLANTED = [
    ("Hi, this is Maria Gonzalez from the accounts team.", "Maria Gonzalez", "PERSON"),
    ("Hans Müller asked for a refund yesterday.", "Hans Müller", "PERSON"),
    ("I moved to London last month and need new invoices.", "London", "LOCATION"),
    ("Please post it to 10 Downing Street, London SW1A 2AA by Friday.", "10 Downing Street, London SW1A 2AA",
     "STREET_ADDRESS"),
    ("The tenant lives at 1600 Pennsylvania Avenue NW, Washington, DC 20500.",
     "1600 Pennsylvania Avenue NW, Washington, DC 20500", "STREET_ADDRESS"),
    ("Is postcode EC1A 1BB in your delivery area?", "EC1A 1BB", "UK_POSTCODE"),
    ("For the visa letter my passport number is C01X00T47.", "C01X00T47", "PASSPORT_NUMBER"),
    ("Passport No. 123456789, expiring next year.", "123456789", "PASSPORT_NUMBER"),
    ("I was born on 12 March 1985, the form rejects it.", "12 March 1985", "DATE_OF_BIRTH"),
    ("DOB: 04/11/1987", "04/11/1987", "DATE_OF_BIRTH"),
    ("Her birthday is July 4, 1979 so she is not a minor.", "July 4, 1979", "DATE_OF_BIRTH"),
    ("Refund to sort code 20-00-00, account 12345678 please.", "20-00-00", "UK_BANK_ACCOUNT"),
    ("Refund to sort code 20-00-00, account 12345678 please.", "12345678", "UK_BANK_ACCOUNT"),
    ("The card was declined although the CVV 123 is right.", "123", "CVV"),
    ("Security code: 4821", "4821", "CVV"),
    ("Write to bob at example dot com for the receipt.", "bob at example dot com", "EMAIL_ADDRESS"),
    ("Write to bob [at] example [dot] com for the receipt.", "bob [at] example [dot] com", "EMAIL_ADDRESS"),
    ("Send it to jane.doe@example.com today.", "jane.doe@example.com", "EMAIL_ADDRESS"),
    ("My SSN is 536-22-1234, the tax form needs it.", "536-22-1234", "US_SSN"),
    ("Social security number: 078-05-1120.", "078-05-1120", "US_SSN"),
    ("Employee record 219-09-9999 was updated.", "219-09-9999", "US_SSN"),
    ("Call me back on +1 415 555 0100 after five.", "+1 415 555 0100", "PHONE_NUMBER"),
    ("My new number is (415) 555-0100.", "(415) 555-0100", "PHONE_NUMBER"),
    ("My card 4111 1111 1111 1111 was charged twice.", "4111 1111 1111 1111", "CREDIT_CARD"),
    ("Wire the refund to DE89370400440532013000.", "DE89370400440532013000", "IBAN_CODE"),
    ("The supplier's account ES9121000418450200051332 rejected the transfer.", "ES9121000418450200051332",
     "IBAN_CODE"),
    ("The server at 192.168.17.42 rejects my login.", "192.168.17.42", "IP_ADDRESS"),
]
CLEAN = [
    "Please check order 12345 and tell me when it ships.",
    "We upgraded to version 3.8 last week.",
    "Ticket 1680 was closed by the night shift.",
    "Your invoice dated 04/11/2024 is attached.",
    "The plan costs $49.99 per month, billed annually.",
    "Error 502 appears after upgrading to 2.4.1.",
    "Your subscription renews on March 3, 2025.",
    "Look at example.com for the full changelog.",
    "Click at the dot in the corner to expand it.",
    "Clause 7.2 limits liability to 12 months of fees.",
    "The refund of 120 EUR was issued on 2024-06-30.",
    "Case 88231 was escalated to tier 2 support.",
    "Set the timeout to 120 and the batch size to 64.",
    "Meet me at the office at noon.",
    "Extract the ticket fields as JSON.",
    '{"category": "returns", "product": "Solstice Coffee Grinder", "order_id": "ORD-97969", "urgency": "high"}',
    "Thanks for the quick help, the Cascade Espresso Machine works again.",
]


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber(PiiSettings())  # NER on: the bundled en_core_web_sm, loaded once for the module


@pytest.fixture(scope="module")
def patterns_only() -> Scrubber:
    return Scrubber(PiiSettings(ner_model=None))


def covering_labels(findings: list, text: str, value: str) -> set[str]:
    start = text.index(value)
    return {f.entity_type for f in findings if f.start < start + len(value) and start < f.end}


@pytest.mark.parametrize(("text", "value", "kind"), PLANTED, ids=[f"{k}-{v}" for _, v, k in PLANTED])
def test_each_kind_is_masked_with_its_own_label(scrubber, text, value, kind):
    findings = scrubber.find(text)
    masked = scrubber.replace(text, findings)
    assert covering_labels(findings, text, value) == {kind}
    assert f"<{kind}>" in masked
    assert not any(part in masked for part in value.replace(",", " ").split() if any(c.isalnum() for c in part)
                   and part not in ("at", "dot", "[at]", "[dot]")), masked


def test_the_pattern_kinds_need_no_model(patterns_only):
    for text, value, kind in PLANTED:
        if kind not in pii.NER_ENTITIES:
            assert covering_labels(patterns_only.find(text), text, value) == {kind}, text


def test_an_ssn_is_labelled_us_ssn_and_phone_numbers_stay_phone_numbers(scrubber):
    assert scrubber.replace("SSN 536-22-1234", scrubber.find("SSN 536-22-1234")) == "SSN <US_SSN>"
    assert scrubber.replace("on file: 536-22-1234", scrubber.find("on file: 536-22-1234")) == "on file: <US_SSN>"
    text = "Call +1 415 555 0100 or (415) 555-0100."
    assert scrubber.replace(text, scrubber.find(text)) == "Call <PHONE_NUMBER> or <PHONE_NUMBER>."


@pytest.mark.parametrize("which", ["scrubber", "patterns_only"])
def test_ordinary_support_sentences_stay_unchanged(which, request):
    chosen = request.getfixturevalue(which)
    changed = {text: chosen.replace(text, found) for text in CLEAN if (found := chosen.find(text))}
    assert changed == {}


def test_auto_picks_the_bundled_model_folder_after_checking_its_metadata():
    folder = pii.bundled_ner_folder()
    assert folder is not None and (folder / "config.cfg").is_file()
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["version"], meta["license"], meta["lang"]) == ("3.8.0", "MIT", "en")
    assert pii.installed_ner_model("auto") in (str(folder), *pii.NER_MODELS)


@pytest.mark.parametrize(("field", "value"), [("license", "proprietary"), ("version", "3.7.1"), ("lang", "de")])
def test_a_tampered_model_folder_is_refused(tmp_path, field, value):
    copy = shutil.copytree(pii.bundled_ner_folder(), tmp_path / "model")
    pii.verify_model_folder(copy)  # an exact copy passes
    meta = json.loads((copy / "meta.json").read_text())
    meta[field] = value
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(HoneError, match=f"{field} is '{value}'") as error:
        pii.verify_model_folder(copy)
    assert "reinstall" in error.value.hint


def test_a_tampered_label_list_is_refused(tmp_path):
    copy = shutil.copytree(pii.bundled_ner_folder(), tmp_path / "model")
    meta = json.loads((copy / "meta.json").read_text())
    meta["labels"]["ner"].remove("PERSON")
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(HoneError, match="labels.ner"):
        pii.verify_model_folder(copy)


def test_undetectable_kinds_name_what_no_installed_model_can_find():
    assert undetectable_kinds(PiiSettings()) == []
    assert undetectable_kinds(PiiSettings(ner_model=None)) == ["PERSON", "LOCATION"]
    assert undetectable_kinds(PiiSettings(ner_model=None, entities=["EMAIL_ADDRESS"])) == []
    assert undetectable_warning(PiiSettings()) is None
    assert undetectable_warning(PiiSettings(ner_model=None)).startswith(
        "PERSON, LOCATION names will not be masked: pii.ner_model is null")


def test_prepare_warns_on_the_command_line_and_records_the_undetectable_kinds(tmp_path):
    data = tmp_path / "raw.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about the invoice page and its totals."},
                          {"role": "assistant", "content": f"Answer {i}: open billing, then invoices."}]}
            for i in range(12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "prepare.yaml"
    config.write_text(f"inputs: [{{path: {data}}}]\nout: {tmp_path / 'ds'}\npii: {{ner_model: null}}\n")

    result = CliRunner().invoke(app, ["data", "prepare", str(config), "--json"])

    assert result.exit_code == 0, result.output
    assert "warning: PERSON, LOCATION names will not be masked" in result.stderr
    manifest = json.loads(result.stdout)
    pii_step = next(step for step in manifest["steps"] if step["name"] == "pii")
    assert pii_step["params"]["undetectable"] == ["PERSON", "LOCATION"]


@pytest.fixture
def store(tmp_path) -> CaptureStore:
    store = CaptureStore(f"sqlite:///{tmp_path / 'capture.db'}")
    store.record(response_id="r1", model="support", request={"messages": [{"role": "user", "content": "hi"}]},
                 response_text="hello", usage={})
    return store


def test_corrections_sent_as_feedback_are_masked_like_requests(store):
    correction = ("Tell Maria Gonzalez to write to maria.g@example.com or bob at example dot com, "
                  "or call +1 415 555 0100.")
    store.feedback(response_id="r1", rating=None, correction=correction)
    with store.engine.connect() as db:
        (stored,) = db.exec_driver_sql("SELECT correction FROM feedback").one()
    assert stored == "Tell <PERSON> to write to <EMAIL_ADDRESS> or <EMAIL_ADDRESS>, or call <PHONE_NUMBER>."


def test_capture_warns_when_names_cannot_be_masked(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pii, "installed_ner_model", lambda setting: None)
    store = CaptureStore(f"sqlite:///{tmp_path / 'capture.db'}")
    with caplog.at_level(logging.WARNING, logger="hone.serve"):
        assert store.mask("mail jane.doe@example.com") == "mail <EMAIL_ADDRESS>"
    assert "PERSON, LOCATION names will not be masked" in caplog.text
