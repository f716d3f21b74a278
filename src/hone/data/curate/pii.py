"""PII scrubbing with Microsoft Presidio, fully offline.

Presidio's defaults reach for the network twice: its spaCy engine downloads `en_core_web_lg` when it
is missing, and its email recognizer validates domains with tldextract, which fetches the public
suffix list. Here a blank spaCy pipeline (tokenizer only) drives the pattern recognizers, and email
domains are checked against tldextract's bundled suffix snapshot. When a spaCy model with NER is
installed (en_core_web_lg / md / sm), it is used and PERSON and LOCATION are detected too.

Modes: `mask` replaces each finding with its type (`<EMAIL_ADDRESS>`), `hash` with its type and a salted
hash (`<EMAIL_ADDRESS_3fa2b1c0d9>`, so the same person stays the same token across examples without
being readable), `drop` removes the whole example. Only counts and entity types are ever reported.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from hone.data.curate.steps import StepReport
from hone.data.formats import Example, Problem
from hone.errors import HoneError

PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
NER_ENTITIES = ("PERSON", "LOCATION")
NER_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm")
MIN_PHONE_DIGITS = 7  # the shortest subscriber numbers in use
# Every pattern entity needs a digit, an "@" or an IPv6 "::"; text without any is skipped unscanned.
_MAY_HOLD_PATTERN_PII = re.compile(r"[0-9@]|::")


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


class PiiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["mask", "hash", "drop"] = Field("mask", description="mask: <TYPE>; hash: <TYPE_salted-hash>; "
                                                  "drop: remove the example.")
    salt: str = Field("", description="Secret mixed into hashes (mode: hash); keep it out of version control.")
    entities: list[str] | None = Field(None, description="Entity types to find; default: every pattern type, "
                                       "plus PERSON and LOCATION when a spaCy NER model is installed.")
    ner_model: str | None = Field("auto", description="spaCy model for PERSON/LOCATION: 'auto' uses an "
                                  "installed en_core_web_lg/md/sm; null turns NER off.")
    score_threshold: float = Field(0.35, ge=0, le=1, description="Lowest Presidio confidence that counts "
                                   "(phone numbers without context score 0.4).")

    @model_validator(mode="after")
    def _salt_for_hash(self) -> PiiSettings:
        if self.mode == "hash" and not self.salt:
            raise ValueError("mode 'hash' needs a salt: set pii.salt to a secret string (unsalted hashes of "
                             "emails or phone numbers can be reversed by guessing)")
        return self


def installed_ner_model(setting: str | None) -> str | None:
    """The spaCy NER model to use (package name or folder), or None for the blank pattern-only pipeline."""
    import spacy.util

    if setting is None:
        return None
    if setting == "auto":
        return next((name for name in NER_MODELS if spacy.util.is_package(name)), None)
    if spacy.util.is_package(setting) or Path(setting).is_dir():
        return setting
    raise HoneError(f"pii.ner_model {setting!r} is neither an installed spaCy package nor a model folder",
                    hint="install the model's wheel (e.g. en_core_web_lg) or give the folder it was saved to; "
                    "'auto' uses one when installed, null turns NER off")


@lru_cache(maxsize=4)
def analyzer(ner_model: str | None):
    """A Presidio AnalyzerEngine that never touches the network."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    offline_suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # not-for-English recognizers are noise
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": ner_model or "blank"}])
    engine.nlp = {"en": spacy.load(ner_model) if ner_model else spacy.blank("en")}  # set, so load() never runs
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


@lru_cache(maxsize=1)
def anonymizer():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


class Scrubber:
    """Finds PII in texts and replaces it according to the settings, counting findings per type."""

    def __init__(self, settings: PiiSettings):
        self.settings = settings
        self.ner_model = installed_ner_model(settings.ner_model)
        default = PATTERN_ENTITIES + (NER_ENTITIES if self.ner_model else ())
        self.entities = list(settings.entities or default)
        self.patterns_only = not (set(self.entities) - set(PATTERN_ENTITIES))
        self.analyzer = analyzer(self.ner_model)
        self.operators = self._operators()

    def find(self, text: str) -> list:
        """Non-overlapping findings; where two overlap (an SSN also reads as a phone number), the surer wins."""
        if self.patterns_only and not _MAY_HOLD_PATTERN_PII.search(text):
            return []
        findings = self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                         score_threshold=self.settings.score_threshold)
        chosen = []
        for finding in sorted(findings, key=lambda f: (-f.score, f.start - f.end, f.start)):
            if finding.entity_type == "PHONE_NUMBER" and _digits(text[finding.start:finding.end]) < MIN_PHONE_DIGITS:
                continue  # short codes and ticket numbers ("Ticket 1680") are not phone numbers
            if all(finding.end <= other.start or finding.start >= other.end for other in chosen):
                chosen.append(finding)
        return sorted(chosen, key=lambda f: f.start)

    def _operators(self) -> dict:
        """Presidio operators per entity type: its placeholder, or its placeholder with a salted hash."""
        from presidio_anonymizer.entities import OperatorConfig

        if self.settings.mode == "hash":
            return {kind: OperatorConfig("custom", {"lambda": self._hasher(kind)}) for kind in self.entities}
        return {kind: OperatorConfig("replace", {"new_value": f"<{kind}>"}) for kind in self.entities}

    def replace(self, text: str, findings: list) -> str:
        return anonymizer().anonymize(text=text, analyzer_results=findings, operators=self.operators).text

    def _hasher(self, kind: str):
        salt = self.settings.salt.encode()
        return lambda value: f"<{kind}_{hashlib.sha256(salt + value.encode()).hexdigest()[:10]}>"


def scrub_examples(examples: list[Example], settings: PiiSettings) -> tuple[list[Example], StepReport]:
    """Replace (or drop examples with) PII in every turn; counts per entity type in the report."""
    scrubber = Scrubber(settings)
    params = {**settings.model_dump(exclude={"salt"}), "entities": scrubber.entities,
              "ner_model": scrubber.ner_model or "none (pattern recognizers only)"}
    report = StepReport("pii", params=params)
    kept = []
    for example in tqdm(examples, desc="pii scan", unit="ex", file=sys.stderr, disable=None):
        messages, found = [], []
        for message in example.messages:
            findings = scrubber.find(message["content"])
            found.extend(f.entity_type for f in findings)
            text = scrubber.replace(message["content"], findings) if findings and settings.mode != "drop" else None
            messages.append({**message, "content": text} if text is not None else message)
        for kind in found:
            report.count(kind)
        if found:
            report.count("examples_with_pii")
        if found and settings.mode == "drop":
            report.remove(example, "pii", "found " + ", ".join(sorted(set(found))))
            continue
        kept.append(Example(messages=messages, source=example.source, line=example.line, format=example.format))
    report.count("kept", len(kept))
    return kept, report


def mask_problems(problems: list[Problem], settings: PiiSettings) -> list[Problem]:
    """The problems with any PII in their messages masked by type (whatever the scrubbing mode)."""
    scrubber = Scrubber(settings.model_copy(update={"mode": "mask"}))
    masked = []
    for problem in problems:
        findings = scrubber.find(problem.message)
        message = scrubber.replace(problem.message, findings) if findings else problem.message
        masked.append(replace(problem, message=message))
    return masked
