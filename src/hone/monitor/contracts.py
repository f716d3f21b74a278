"""Output contracts: what a model's replies must look like (a JSON Schema, one of a label set, or a regex), and the
checks the monitor and the canary run on every captured reply: format validity, refusals, empty and cut-off replies.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

# Phrases of a model declining to answer; matched at the start of the reply, case-insensitively.
REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|assist|answer|provide|do)|"
                     r"i cannot|i'?m (not able|unable)|i am (not able|unable)|as an ai\b|i won'?t be able)",
                     re.IGNORECASE)


# A JSON Schema document: an object whose keys are the schema's keywords, its values any JSON.
SchemaDocument = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null", "array", "object"]}})]


class OutputContract(BaseModel):
    """The shape a model's replies must have; give one of the three (or none: no format check)."""

    model_config = ConfigDict(extra="forbid")

    json_schema: SchemaDocument | None = Field(None, description="Replies are JSON valid under this schema.")
    labels: list[str] | None = Field(None, description="Replies are exactly one of these labels (trimmed).")
    regex: str | None = Field(None, description="Replies match this regular expression in full.")

    @model_validator(mode="after")
    def _one_kind(self) -> OutputContract:
        if sum(x is not None for x in (self.json_schema, self.labels, self.regex)) > 1:
            raise ValueError("give one of json_schema, labels and regex")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"regex does not compile: {error}") from None
        return pattern

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict | None) -> dict | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as error:
                raise ValueError(f"json_schema is not a valid JSON Schema: {error.message}") from None
        return schema

    @property
    def defined(self) -> bool:
        return any(x is not None for x in (self.json_schema, self.labels, self.regex))


@lru_cache(maxsize=64)
def _validator(schema_json: str):
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def format_valid(text: str, contract: OutputContract) -> bool | None:
    """Whether `text` keeps `contract` (None when the contract defines nothing to check)."""
    if contract.json_schema is not None:
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return _validator(json.dumps(contract.json_schema, sort_keys=True)).is_valid(value)
    if contract.labels is not None:
        return text.strip() in contract.labels
    if contract.regex is not None:
        return re.fullmatch(contract.regex, text.strip(), flags=re.DOTALL) is not None
    return None


def is_refusal(text: str) -> bool:
    """Whether the reply opens by declining to answer."""
    return REFUSAL.match(text) is not None


def is_empty(text: str) -> bool:
    return not text.strip()


def is_truncated(finish_reason: str | None) -> bool:
    """Whether generation stopped at the token limit rather than where the model ended its reply."""
    return finish_reason == "length"
