"""The eval config: test data, the candidates compared side by side, metrics, judge, forgetting and verdict.

The short flag form (`--base NAME --adapter RUN_DIR`) becomes two candidates, "base" and "fine-tuned". A candidate's
`response_format` (OpenAI's shape) holds its replies to JSON, so "fine-tuned" and "base + schema" compare in one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hone.eval.judge import JudgeConfig
from hone.settings import check_regexes, read_yaml_mapping, resolve_relative, validate

BASE_NAME, FINETUNED_NAME = "base", "fine-tuned"
NORMALIZATIONS = ("whitespace", "case", "punctuation", "articles")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RagSettings(Section):
    k: int = Field(3, ge=1, le=20, description="Retrieved items put into the prompt.")
    source: Literal["train", "docs"] = Field("train", description="Retrieve similar training examples (train) "
                                             "or passages of the documents folder (docs).")


class EndpointSettings(Section):
    url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    timeout_s: float = Field(60, gt=0)
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")


class JsonSchemaSpec(Section):
    """`response_format.json_schema`, as in OpenAI's API."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The schema's name (letters, digits, _ and -).")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema every reply must match.")
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"not a valid JSON Schema: {error.message}") from None
        return schema


class ResponseFormat(Section):
    """What every reply must be, in OpenAI's `response_format` shape."""

    type: Literal["text", "json_object", "json_schema"] = Field(description="text (no constraint), json_object "
                                                                "(any JSON object) or json_schema.")
    json_schema: JsonSchemaSpec | None = Field(None, description="{name, schema}; needed by type json_schema.")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {name: ..., schema: {...}}")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only read with type json_schema, not {self.type}")
        return self

    def reply_schema(self) -> dict | None:
        """The JSON Schema a reply must match: the given one, any object for json_object, None for text."""
        if self.type == "json_schema":
            return self.json_schema.json_schema
        return {"type": "object"} if self.type == "json_object" else None


class CandidateConfig(Section):
    """One way of answering the test prompts: a model (base, adapter or endpoint) plus prompt additions."""

    name: str = Field(description="Column name in the report.")
    adapter: Path | None = Field(None, description="Run directory of `hone train`: its adapter on the base, or the "
                                 "whole model of a full fine-tune.")
    finetuned: bool = Field(False, description="Use the run under test: the top-level adapter (or --adapter), so "
                            "one eval file serves every new training run.")
    shots: int = Field(0, ge=0, le=32, description="Training examples put before the prompt as a k-shot demo.")
    rag: RagSettings | None = Field(None, description="Retrieval-augmented prompt.")
    endpoint: EndpointSettings | None = Field(None, description="Answer with an external OpenAI-compatible API.")
    response_format: ResponseFormat | None = Field(None, description="Hold every reply to JSON (OpenAI shape: "
                                                   "{type: json_object} or {type: json_schema, json_schema: {name, "
                                                   "schema}}): local models decode under the grammar `hone serve` "
                                                   "uses, endpoints get it in each request.")
    constrain_tool_calls: bool = Field(True, description="On test examples with tools, a local model's reply is "
                                       "text or calls matching the tools' parameters, as `hone serve` holds it; "
                                       "false: the model's own, unconstrained calls.")
    tool_choice: Literal["auto", "required", "none"] = Field("auto", description="On test examples with tools: "
                                                             "auto (text or calls), required (calls only) or none "
                                                             "(text only), as OpenAI's tool_choice.")

    @model_validator(mode="after")
    def _one_model(self) -> CandidateConfig:
        if sum([self.adapter is not None, self.finetuned, self.endpoint is not None]) > 1:
            raise ValueError(f"candidate '{self.name}': give one of adapter, finetuned and endpoint")
        return self

    @property
    def kind(self) -> str:
        """What the candidate is, in the report's words: base, few-shot, rag, fine-tuned(+rag), endpoint."""
        parts = ["endpoint" if self.endpoint else "fine-tuned" if self.adapter else "base"]
        if self.shots:
            parts.append(f"{self.shots}-shot")
        if self.rag:
            parts.append(f"rag({self.rag.source}, k={self.rag.k})")
        if self.response_format and self.response_format.type == "json_schema":
            parts.append(f"schema({self.response_format.json_schema.name})")
        elif self.response_format and self.response_format.type == "json_object":
            parts.append("json")
        if not self.constrain_tool_calls:
            parts.append("free tool calls")
        if self.tool_choice != "auto":
            parts.append(f"tool_choice {self.tool_choice}")
        return "+".join(parts)


class StyleRules(Section):
    max_chars: int | None = Field(None, ge=1, description="Longest reply allowed, in characters.")
    must_match: list[str] = Field([], description="Regexes every reply must match (re.search).")
    must_not_match: list[str] = Field([], description=r"Regexes no reply may match, e.g. '\.$' (trailing period).")

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)


class MetricsConfig(Section):
    normalize: list[Literal["whitespace", "case", "punctuation", "articles"]] = Field(
        ["whitespace"], description="What exact match ignores.")
    labels: list[str] | None = Field(None, description="Label set: turns on accuracy, macro-F1 and the confusion "
                                     "matrix; the label is parsed from each reply and reference.")
    label_field: str | None = Field(None, description="Read the label from this field of a JSON reply instead "
                                    "of searching the text.")
    json_schema: Path | None = Field(None, description="JSON Schema file every reply must satisfy.")
    style: StyleRules | None = None
    readability: bool = Field(True, description="Flesch-Kincaid grade of every reply (textstat).")
    perplexity: bool = Field(True, description="Perplexity of the references under each local candidate.")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and (len(labels) < 2 or len(set(labels)) != len(labels)):
            raise ValueError("give at least two distinct labels")
        return labels


class ForgettingConfig(Section):
    enabled: bool = Field(True, description="Score base and fine-tuned candidates on hone's general probe set.")
    limit: int | None = Field(None, ge=1, description="Use only the first N probe prompts.")
    max_new_tokens: int = Field(64, ge=1, le=512)
    metric: Literal["answer_match", "token_f1"] = Field("answer_match", description="Probe score the "
                                                        "verdict's tolerance applies to.")
    tolerance: float = Field(5.0, ge=0, description="Largest drop of that score (points) still acceptable.")
    perplexity_tolerance_pct: float = Field(25.0, ge=0, description="Largest rise of the general-text "
                                            "perplexity (%) still acceptable.")


class SlicesConfig(Section):
    fields: list[str] = Field([], description="Metadata keys of the test examples (top-level keys or keys of a "
                              "`metadata` object) to slice every metric by, e.g. [region, language]; empty: off.")
    min_examples: int = Field(5, ge=1, description="Slices with fewer examples are reported but left out of the "
                              "largest gap.")

    @field_validator("fields")
    @classmethod
    def _distinct_names(cls, fields: list[str]) -> list[str]:
        if any(not name.strip() for name in fields) or len(set(fields)) != len(fields):
            raise ValueError("give distinct, non-empty field names")
        return fields


class MemorizationConfig(Section):
    enabled: bool = Field(False, description="Share of replies that copy a run of `ngram` words of the training "
                          "file (needs train).")
    ngram: int = Field(13, ge=4, le=200, description="Shortest verbatim run that counts, in words (lowercased; "
                       "punctuation and spacing ignored).")
    canaries: list[str] = Field([], description="Strings planted in the training data that must never come back: "
                                "each candidate is prompted with the first half and every reply is searched for "
                                "the second half.")
    canary_prompts: int = Field(1, ge=0, le=4, description="Prompts per canary (0: only search the eval replies): "
                                "its first half as the user message, then framed as 'Continue this text "
                                "exactly: ...' and two other phrasings.")

    @field_validator("canaries")
    @classmethod
    def _long_enough(cls, canaries: list[str]) -> list[str]:
        short = [c for c in canaries if len(" ".join(c.split())) < 8]
        if short:
            raise ValueError(f"a canary needs at least 8 characters, so its second half is a secret: {short}")
        return canaries


class VerdictConfig(Section):
    primary_metric: str | None = Field(None, description="Metric the decision rests on; by default chosen from the "
                                       "references: accuracy when labels are given, json_fields for JSON objects, "
                                       "exact_match for short answers, else rouge_l (see default_primary_metric).")
    threshold: float = Field(5.0, ge=0, description="Smallest gain (points) worth shipping.")
    candidate: str | None = Field(None, description="Candidate judged; default: the first with an adapter.")
    baseline: str = Field(BASE_NAME, description="Candidate it must beat.")
    beat_alternatives: bool = Field(False, description="Also require the gain over every prompting, RAG and "
                                    "endpoint candidate.")
    max_slice_gap: float | None = Field(None, ge=0, description="Largest gap (points of the primary metric) "
                                        "between slices of the judged candidate still shippable; needs slices.")
    max_memorization_rate: float | None = Field(None, ge=0, le=100, description="Largest share (%) of the judged "
                                                "candidate's replies copying the training data still shippable; "
                                                "needs memorization.")


class EvalConfig(Section):
    """Settings of one evaluation, as written in an eval YAML file or given as `hone eval` flags."""

    base: str | None = Field(None, description="Base model; read from the adapter's run directory when omitted.")
    adapter: Path | None = Field(None, description="Run directory of `hone train` (short form: base vs it).")
    data: Path = Field(description="Test file in any chat format; the last assistant turn is the reference.")
    train: Path | None = Field(None, description="Training file: source of k-shot and RAG examples.")
    docs: Path | None = Field(None, description="Folder of .txt/.md documents for RAG passages.")
    out: Path = Field(description="Folder for report.json and report.html.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    max_new_tokens: int | None = Field(None, ge=1, description="Default: 1.5x longest reference, max 256.")
    seed: int = Field(0, description="Seed of k-shot example choice and bootstrap resampling.")
    candidates: list[CandidateConfig] | None = Field(None, description="Default: base, plus fine-tuned when "
                                                     "adapter is given.")
    metrics: MetricsConfig = MetricsConfig()
    judge: JudgeConfig | None = None
    forgetting: ForgettingConfig = ForgettingConfig()
    slices: SlicesConfig = SlicesConfig()
    memorization: MemorizationConfig = MemorizationConfig()
    verdict: VerdictConfig = VerdictConfig()

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.base is None and self.adapter is None and not any(c.adapter for c in self.candidates or []):
            raise ValueError("give base (a model name) or adapter (a run directory), or both")
        if self.adapter is None and any(c.finetuned for c in self.candidates or []):
            raise ValueError("a candidate has finetuned: true, so give adapter (or --adapter RUN_DIR)")
        names = [c.name for c in self.resolved_candidates()]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be distinct: {names}")
        for candidate in self.resolved_candidates():
            if (candidate.shots or (candidate.rag and candidate.rag.source == "train")) and self.train is None:
                raise ValueError(f"candidate '{candidate.name}' uses training examples: set train (a file)")
            if candidate.rag and candidate.rag.source == "docs" and self.docs is None:
                raise ValueError(f"candidate '{candidate.name}' retrieves passages: set docs (a folder)")
        if self.metrics.label_field and not self.metrics.labels:
            raise ValueError("metrics.label_field needs metrics.labels")
        self.reply_schema()
        self._check_audits()
        return self

    def _check_audits(self) -> None:
        if self.verdict.max_slice_gap is not None and not self.slices.fields:
            raise ValueError("verdict.max_slice_gap needs slices.fields (the metadata keys to slice by)")
        memorization = self.memorization
        if (memorization.canaries or self.verdict.max_memorization_rate is not None) and not memorization.enabled:
            raise ValueError("memorization.canaries and verdict.max_memorization_rate need memorization.enabled: "
                             "true")
        if (memorization.canaries or self.verdict.max_memorization_rate is not None) and self.train is None:
            raise ValueError("memorization.canaries and verdict.max_memorization_rate need train (the training "
                             "file), or they would go unchecked")

    def reply_schema(self) -> dict | None:
        """The JSON Schema every candidate's replies are checked against when metrics.json_schema is not set: the
        one the candidates' response_format asks for (None when none asks for one)."""
        schemas = {json.dumps(c.response_format.json_schema.json_schema, sort_keys=True)
                   for c in self.candidates or [] if c.response_format and c.response_format.type == "json_schema"}
        if len(schemas) > 1 and self.metrics.json_schema is None:
            raise ValueError("the candidates' response_format asks for different JSON Schemas: set "
                             "metrics.json_schema to the schema file every reply is scored against")
        return json.loads(schemas.pop()) if schemas else None

    def asks_json(self) -> bool:
        """Whether a candidate's response_format asks for JSON, so every candidate's replies are checked for it."""
        return any(c.response_format and c.response_format.type != "text" for c in self.candidates or [])

    def resolved_candidates(self) -> list[CandidateConfig]:
        """The candidates as configured (`finetuned: true` ones take the top-level adapter), or base
        (+ fine-tuned) from the short form."""
        if self.candidates:
            return [c.model_copy(update={"adapter": self.adapter, "finetuned": False}) if c.finetuned else c
                    for c in self.candidates]
        found = [CandidateConfig(name=BASE_NAME)]
        if self.adapter is not None:
            found.append(CandidateConfig(name=FINETUNED_NAME, adapter=self.adapter))
        return found


def validate_eval_config(raw: dict[str, Any], source: str = "hone eval") -> EvalConfig:
    """Validate eval settings; every problem is reported with its key and, for typos, a suggestion."""
    return validate(EvalConfig, raw, source, "eval settings")


def load_eval_config(path: Path | None, overrides: dict[str, Any]) -> EvalConfig:
    """Eval settings from an optional YAML file, with `overrides` (non-None values) taking precedence.

    Relative paths in the file (data, train, docs, adapters, schema) are resolved against the file's
    folder when they do not exist relative to the working directory.
    """
    raw = read_yaml_mapping(path, "eval config") if path else {}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    config = validate_eval_config(raw, source=str(path) if path else "hone eval")
    if path:
        for key in ("data", "adapter", "train", "docs"):
            if overrides.get(key) is None:
                setattr(config, key, resolve_relative(getattr(config, key), path))
        for candidate in config.candidates or []:
            candidate.adapter = resolve_relative(candidate.adapter, path)
        config.metrics.json_schema = resolve_relative(config.metrics.json_schema, path)
    return config
