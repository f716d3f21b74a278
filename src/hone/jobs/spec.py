"""What a fine-tuning job asks for: OpenAI's request body, its "auto" values, and the `hone train` config it becomes.

The body is OpenAI's (`model`, `training_file`, `method` supervised or dpo with `n_epochs`, `batch_size`,
`learning_rate_multiplier`, `beta`, each also "auto"; the deprecated top-level `hyperparameters` too).
hone's own settings travel in `hone` (the SDK's `extra_body={"hone": {...}}`) and are validated by the
same schema as `hone train`, so a typo gets "did you mean".
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from hone.errors import HoneError, NotFoundError, RequestError
from hone.models.catalog import CATALOG
from hone.train.config import TrainConfig, parse_config

Auto = Literal["auto"]
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
# Learning rate that learning_rate_multiplier 1 means, by training method (LoRA-family adapters learn at
# a much higher rate than whole-model fine-tuning); a base may have its own row in BASE_LEARNING_RATES.
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "dpo": 5e-5, "full": 2e-5}
BASE_LEARNING_RATES: dict[str, dict[str, float]] = {"smollm2-135m-instruct": {"full": 5e-5}}
# "auto" epochs follow OpenAI's published rule: 3 epochs, more for tiny sets, fewer for huge ones.
AUTO_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_AUTO_EPOCHS = 3, 100, 25_000, 25
AUTO_MAX_BATCH = 8  # on a CPU or one GPU, 8 examples per step is fast; fewer keeps small sets at ~16 steps/epoch
# Settings a client may not set through `hone`: they name server paths or are set by the job itself.
SERVER_ONLY = {"base_model", "output_dir", "run_name", "data.train", "data.eval", "tracking.uri",
               "tracking.experiment"}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def settings_schema(schema: type[BaseModel], name: str, prefix: str = "") -> type[BaseModel]:
    """`schema` with every field optional and the server-only ones left out, for the `hone` field's documentation
    and type checks; unknown keys pass through to the `hone train` validation, which answers "did you mean"."""
    fields: dict[str, Any] = {}
    for key, info in schema.model_fields.items():
        if prefix + key in SERVER_ONLY:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = settings_schema(annotation, f"{name}{annotation.__name__}", f"{prefix}{key}.")
        fields[key] = (annotation | None, Field(None, description=info.description))
    return create_model(name, __config__=ConfigDict(extra="allow"), **fields)


class JobEval(BaseModel):
    """What a job checks after training: the fine-tune against the base, k-shot and RAG prompting on held-out
    examples, plus the forgetting probes; the verdict lands on the job."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Evaluate after training (off: the job ends when training does).")
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the training file held out for the "
                                    "evaluation when no validation file is given (10 to 100 examples).")
    max_examples: int = Field(100, ge=1, le=2000, description="Held-out examples evaluated at most.")
    probe_limit: int = Field(30, ge=0, le=500, description="General-knowledge probes asked of base and fine-tune.")


JOB_ONLY = {"eval"}  # keys of `hone` that are the job's, not `hone train`'s
HoneSettings = create_model("HoneSettings", __base__=settings_schema(TrainConfig, "HoneTrainSettings"),
                            eval=(JobEval | None, Field(None, description=JobEval.__doc__)))


def job_eval(hone: dict[str, Any]) -> JobEval:
    """The job's evaluation settings (defaults when the client gave none)."""
    try:
        return JobEval.model_validate(hone.get("eval") or {})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise RequestError(f"hone.eval.{key}: {first['msg']}", param=f"hone.eval.{key}", code="invalid_value") from None


class Hyperparameters(Body):
    """OpenAI's hyperparameters; each may be "auto" (chosen from the data when the job starts)."""

    n_epochs: int | Auto | None = Field(None, description="Passes over the training data (1-50).")
    batch_size: int | Auto | None = Field(None, description="Examples per optimizer step (1-256).")
    learning_rate_multiplier: float | Auto | None = Field(
        None, description="Scales the base's documented default learning rate for the method (0 < x <= 10).")
    beta: float | Auto | None = Field(None, description="DPO only: how far the model may move from the base.")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value):
        if isinstance(value, int) and not 1 <= value <= 50:
            raise ValueError("n_epochs must be between 1 and 50")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value):
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("batch_size must be between 1 and 256")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, value):
        if isinstance(value, float | int) and not 0 < value <= 10:
            raise ValueError("learning_rate_multiplier must be above 0 and at most 10")
        return value

    @field_validator("beta")
    @classmethod
    def _beta(cls, value):
        if isinstance(value, float | int) and not 0 < value <= 2:
            raise ValueError("beta must be above 0 and at most 2")
        return value


class MethodSettings(Body):
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(Body):
    """OpenAI's `method`: supervised fine-tuning or DPO on preference pairs."""

    type: Literal["supervised", "dpo"]
    supervised: MethodSettings | None = None
    dpo: MethodSettings | None = None

    @model_validator(mode="after")
    def _one_section(self) -> Method:
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"method.{other} is given but method.type is {self.type!r}")
        if self.type == "supervised" and self.supervised and self.supervised.hyperparameters.beta is not None:
            raise ValueError("beta applies to method.type 'dpo' only")
        return self

    @property
    def hyperparameters(self) -> Hyperparameters:
        section = getattr(self, self.type)
        return section.hyperparameters if section else Hyperparameters()


class JobRequest(Body):
    """The body of `POST /v1/fine_tuning/jobs` (and `hone jobs create`)."""

    model: str = Field(description="Base model: a catalog name or an alias from the server's config.")
    training_file: str = Field(description="A file id uploaded with purpose 'fine-tune'.")
    validation_file: str | None = Field(None, description="A file id for eval loss during training.")
    suffix: str | None = Field(None, description="Up to 40 letters, digits, '-' or '_' added to the model name.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, description="Up to 16 key-value pairs to tag and filter jobs.")
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated: use method.")
    integrations: list[dict[str, str]] | None = Field(None, description="Not supported: hone records runs in MLflow.")
    hone: HoneSettings | None = Field(None, description="hone's own settings, validated by the `hone train` "
                                      "schema: method (lora/qlora/dora/full), lora.r, training.packing, ...")

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value):
        if value is not None and not SUFFIX.match(value):
            raise ValueError("suffix must be 1-40 letters, digits, '-' or '_', starting with a letter or digit")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value):
        if value is not None:
            if len(value) > 16:
                raise ValueError("metadata holds at most 16 pairs")
            for key, item in value.items():
                if len(key) > 64 or len(item) > 512:
                    raise ValueError(f"metadata key {key[:64]!r}: keys hold at most 64 characters, values 512")
        return value

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value):
        if value:
            raise ValueError("integrations (e.g. Weights & Biases) are not supported: hone records every run in "
                             "MLflow on your own machine; remove integrations")
        return value

    @model_validator(mode="after")
    def _one_way_to_say_it(self) -> JobRequest:
        if self.method is not None and self.hyperparameters is not None:
            raise ValueError("hyperparameters: give them inside method (the top-level field is deprecated), "
                             "not both")
        return self

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    @property
    def chosen(self) -> Hyperparameters:
        """The hyperparameters as the client gave them (unset ones are None)."""
        if self.method is not None:
            return self.method.hyperparameters
        return self.hyperparameters or Hyperparameters()


def resolve_base(name: str, aliases: dict[str, str]) -> str:
    """The base model a job's `model` names: an alias from the server config, or a catalog name.

    Never a path: a client must not make the server read folders it names.
    """
    if name in aliases:
        return aliases[name]
    if name in CATALOG:
        return name
    known = sorted({*aliases, *CATALOG})
    raise NotFoundError(f"The model '{name}' does not exist or you do not have access to it; bases for "
                        f"fine-tuning here: {', '.join(known)}", param="model", code="model_not_found")


def _flatten(raw: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        keys += _flatten(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return keys


def check_hone_settings(settings: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The client's `hone` settings as given (unset keys left out), refusing those only the server may set."""
    hone = settings.model_dump(exclude_unset=True) if isinstance(settings, BaseModel) else dict(settings or {})
    replay = hone.get("replay")
    if isinstance(replay, dict) and replay.get("source", "self") != "self":
        raise RequestError("hone.replay.source may only be 'self' (the base model's own answers) in a job: a file "
                           "on the server is not the client's to name", param="hone.replay.source",
                           code="invalid_value", hint="upload the general examples into the training file instead")
    for key in _flatten(hone):
        if any(key == forbidden or key.startswith(forbidden + ".") for forbidden in SERVER_ONLY):
            raise RequestError(f"hone.{key} is set by the server for each job and cannot be given",
                               param=f"hone.{key}", code="invalid_value",
                               hint="choose the base with `model` and the data with training_file/validation_file")
    return hone


def auto_epochs(examples: int) -> int:
    """OpenAI's rule: 3 epochs, raised so tiny sets see ~100 examples, lowered so huge ones see ~25,000."""
    if examples * AUTO_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, examples)))
    if examples * AUTO_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // examples)
    return AUTO_EPOCHS


def auto_batch_size(examples: int) -> int:
    """8 where the data allows, fewer for small sets so an epoch still has about 16 optimizer steps."""
    return max(1, min(AUTO_MAX_BATCH, examples // 16))


def base_learning_rate(base: str, method: str) -> float:
    """The learning rate learning_rate_multiplier 1 stands for (see DEFAULT_LEARNING_RATES)."""
    return BASE_LEARNING_RATES.get(base, {}).get(method, DEFAULT_LEARNING_RATES[method])


def _merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def hone_method(request: JobRequest, hone: dict[str, Any]) -> str:
    """The `hone train` method: dpo for DPO jobs, else hone.method (default lora)."""
    chosen = hone.get("method")
    if request.method_type == "dpo":
        if chosen not in (None, "dpo"):
            raise RequestError(f"hone.method {chosen!r} does not apply to method.type 'dpo' (DPO trains a LoRA "
                               "adapter on preference pairs)", param="hone.method", code="invalid_value")
        return "dpo"
    if chosen == "dpo":
        raise RequestError("hone.method 'dpo' needs method.type 'dpo'", param="hone.method", code="invalid_value")
    return chosen or "lora"


def resolved_hyperparameters(request: JobRequest, base: str, method: str, examples: int) -> dict[str, Any]:
    """Every hyperparameter with "auto" and unset values replaced by what the job will use."""
    given = request.chosen
    values: dict[str, Any] = {
        "n_epochs": given.n_epochs if isinstance(given.n_epochs, int) else auto_epochs(examples),
        "batch_size": given.batch_size if isinstance(given.batch_size, int) else auto_batch_size(examples),
        "learning_rate_multiplier": (float(given.learning_rate_multiplier)
                                     if isinstance(given.learning_rate_multiplier, float | int) else 1.0),
    }
    if request.method_type == "dpo":
        values["beta"] = float(given.beta) if isinstance(given.beta, float | int) else 0.1
    values["learning_rate"] = values["learning_rate_multiplier"] * base_learning_rate(base, method)
    return values


def method_object(request: JobRequest, hyperparameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's `method` object for the job: as asked ("auto" kept) until the resolved values are known."""
    if hyperparameters is None:
        shown = request.chosen.model_dump(exclude_none=True)
        shown = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
                 **({"beta": "auto"} if request.method_type == "dpo" else {}), **shown}
    else:
        shown = {k: v for k, v in hyperparameters.items() if k != "learning_rate"}
    return {"type": request.method_type, request.method_type: {"hyperparameters": shown}}


def train_config(request: JobRequest, base: str, hone: dict[str, Any], training_path: Path,
                 validation_path: Path | None, job_dir: Path, seed: int,
                 hyperparameters: dict[str, Any] | None = None) -> TrainConfig:
    """The `hone train` config of the job, validated by its schema (problems name `hone.KEY`).

    Without `hyperparameters` (at create, before the data is counted) the method's defaults stand in.
    """
    method = hone_method(request, hone)
    raw = _merge({"training": {}, "data": {}}, {k: v for k, v in hone.items() if k != "method" and k not in JOB_ONLY})
    raw.update(base_model=base, method=method, output_dir=str(job_dir), run_name="run")
    raw["data"].update(train=str(training_path), **({"eval": str(validation_path)} if validation_path else {}))
    raw["training"]["seed"] = seed
    if hyperparameters is not None:
        raw["training"].update(epochs=hyperparameters["n_epochs"], batch_size=hyperparameters["batch_size"],
                               lr=hyperparameters["learning_rate"])
        if "beta" in hyperparameters:
            raw.setdefault("dpo", {})["beta"] = hyperparameters["beta"]
    try:
        return parse_config(raw, source="hone")
    except HoneError as error:
        param = _first_key(error.message)
        raise RequestError(error.message.replace("\n", " "), param=param, code="invalid_value",
                           hint=error.hint) from None


def _first_key(message: str) -> str | None:
    """`hone.KEY` from the first line of a config error ("hone: training.lr: ...")."""
    match = re.search(r"hone: ([A-Za-z0-9_.]+):", message)
    return f"hone.{match.group(1)}" if match else "hone"
