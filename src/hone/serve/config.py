"""`serve.yaml`: which base and adapters to serve, per-model options, batching and protection limits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hone.settings import read_yaml_mapping, resolve_relative, validate
from hone.store.tables import DEFAULT_PROJECT

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelOptions(Section):
    """Per served model (the base or an adapter): traffic capture and a retrieval index."""

    capture: bool = Field(False, description="Store each request/response pair (PII masked) for feedback.")
    index: str | None = Field(None, description="An entry of `indexes`, or the path of a `hone index build` "
                              "index, whose passages are injected into every request.")
    top_k: int = Field(3, ge=1, le=50, description="Passages injected from the index per request.")


class IndexEntry(Section):
    """A retrieval index requests may name, and the project whose keys may name it."""

    path: Path = Field(description="A `hone index build` index.")
    project: str = Field(DEFAULT_PROJECT, description="Only this project's keys may name it; to others it does "
                         "not exist.")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        """`name: path` is short for `name: {path: path}` (the default project's)."""
        return {"path": value} if isinstance(value, str | Path) else value


class Limits(Section):
    """What one request may ask for; beyond these the server answers with a 4xx error naming the limit."""

    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_tokens: int = Field(2048, ge=1, description="The highest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request does not say.")
    max_concurrent_requests: int = Field(64, ge=1, description="Beyond this, requests get 429.")
    request_timeout_s: float = Field(300.0, gt=0, description="A request still generating after this gets 504.")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="The largest file POST /v1/files "
                                  "takes (413 above it).")


class Jobs(Section):
    """The fine-tuning jobs API: which bases clients may name, and the worker inside the server."""

    bases: dict[str, str] = Field(default_factory=dict, description="Names a job's `model` may use -> catalog "
                                  "name or local model folder, e.g. gpt-4o-mini-2024-07-18: smollm2-135m-instruct. "
                                  "Catalog names and the served base are always accepted.")
    worker: bool = Field(True, description="Run one job worker inside the server (`hone worker` runs more).")
    lease_s: float = Field(30.0, ge=1, description="A job whose worker is silent this long is taken over.")
    poll_s: float = Field(1.0, gt=0, le=60, description="How often the worker reads a running job's progress.")


class ServeConfig(Section):
    """The whole server configuration; CLI flags override its keys."""

    base: str = Field("smollm2-135m-instruct", description="Catalog name, model folder or .gguf file.")
    base_id: str | None = Field(None, description="Name clients use for the base; default: `base`.")
    adapters: dict[str, Path] = Field(default_factory=dict, description="Adapter name -> run dir or adapter.")
    adapter_roots: list[Path] = Field(default_factory=list, description="Folders POST /v1/load_lora_adapter may "
                                      "load from (run dirs or adapters under them); none: it loads nothing by path.")
    models: dict[str, ModelOptions] = Field(default_factory=dict, description="Options per served model name.")
    indexes: dict[str, IndexEntry] = Field(default_factory=dict, description="Retrieval indexes requests may "
                                           "name: name -> path (the default project's) or {path, project}.")
    max_adapters: int = Field(8, ge=1, description="Adapters held in memory at once (LRU).")
    max_batch: int = Field(16, ge=1, description="Sequences decoded together in one forward pass.")
    limits: Limits = Limits()
    jobs: Jobs = Jobs()
    api_key_required: bool = Field(False, description="Refuse to start without API keys.")
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu' or 'cuda:N'.")
    threads: int | None = Field(None, ge=1, description="CPU threads for the model; default: PyTorch's choice.")
    incremental_detokenize: bool = Field(True, description="Decode each generated token once (speed switch); "
                                         "false decodes the whole reply again at every token.")
    merge_single_adapter: bool = Field(True, description="While every running request uses one adapter (always "
                                       "so for a lone request), decode with a copy of the weights it changes with "
                                       "the adapter merged in, so it costs what the base costs per token (speed "
                                       "switch). The copy is kept only while it takes at most half the free "
                                       "memory; merged weights are rounded to the base dtype, as `hone export "
                                       "--merge` rounds them, so a reply can differ at a near tie.")
    database: str | None = Field(None, description="SQLAlchemy URL for API keys and capture; default SQLite.")
    capture_fine_tuned: bool = Field(True, description="Capture (PII masked) every request to a registered "
                                     "fine-tuned model or MODEL@ALIAS: the monitor, drift and the retraining loop "
                                     "read this traffic. The base and configured adapters follow `models:`.")

    @model_validator(mode="after")
    def _check_names(self) -> ServeConfig:
        for name in self.adapters:
            if not MODEL_NAME.match(name):
                raise ValueError(f"adapters: name {name!r} must be letters, digits and ._:/- (at most 128)")
            if name == self.served_base:
                raise ValueError(f"adapters: {name!r} is the base model's name; give the adapter another")
        unknown = set(self.models) - set(self.adapters) - {self.served_base}
        if unknown:
            raise ValueError(f"models: {', '.join(sorted(unknown))} is neither the base "
                             f"({self.served_base!r}) nor an adapter ({', '.join(self.adapters) or 'none'})")
        return self

    @property
    def served_base(self) -> str:
        """The model id clients send for the base model."""
        return self.base_id or self.base

    def job_bases(self) -> dict[str, str]:
        """Every name a fine-tuning job may give as its base: `jobs.bases` and the served base."""
        return {self.served_base: self.base, **self.jobs.bases}

    def options(self, name: str) -> ModelOptions:
        """The options of served model `name` (defaults when it has none)."""
        return self.models.get(name) or ModelOptions()

    def project_indexes(self, project: str) -> list[str]:
        """The names of the indexes `project`'s requests may name."""
        return [name for name, entry in self.indexes.items() if entry.project == project]


def load_serve_config(path: Path | None = None, adapters: dict[str, Path] | None = None,
                      **overrides) -> ServeConfig:
    """Read `path` (if given), add `adapters`, apply non-None `overrides`, validate; problems name their key.

    Relative paths in the file are taken relative to the file, those passed in relative to the current folder.
    """
    raw = read_yaml_mapping(path, "serve config") if path else {}
    if path:
        _resolve_paths(raw, path)
    if adapters:
        raw["adapters"] = {**(raw.get("adapters") or {}), **adapters}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return validate(ServeConfig, raw, str(path or "serve settings"), "serve config")


def _resolve_paths(raw: dict, path: Path) -> None:
    if isinstance(raw.get("adapter_roots"), list):
        raw["adapter_roots"] = [resolve_relative(Path(p), path) if isinstance(p, str) else p
                                for p in raw["adapter_roots"]]
    for key in ("adapters", "indexes"):
        if isinstance(raw.get(key), dict):
            raw[key] = {name: resolve_relative(Path(p), path) if isinstance(p, str) else p
                        for name, p in raw[key].items()}
    for entry in raw["indexes"].values() if isinstance(raw.get("indexes"), dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = resolve_relative(Path(entry["path"]), path)
    for options in (raw.get("models") or {}).values() if isinstance(raw.get("models"), dict) else ():
        index = options.get("index") if isinstance(options, dict) else None
        if isinstance(index, str) and index not in (raw.get("indexes") or {}):
            options["index"] = str(resolve_relative(Path(index), path))
