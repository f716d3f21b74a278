"""The Python API behind `hone data prepare`: raw files in, an immutable, versioned dataset folder out.

ingest -> clean -> PII scrub -> exact dedup -> near dedup -> quality filters -> decontaminate -> split
-> replay (train only) -> write train/val/test JSONL, manifest.json and report.html.
PII is scrubbed before deduplication so that no later step, report or log ever sees raw personal data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import hone
from hone.data.curate.clean import CleanSettings, clean_examples
from hone.data.curate.decontaminate import decontaminate
from hone.data.curate.dedup import dedup_against, exact_dedup, near_dedup
from hone.data.curate.documents import document_files, read_documents
from hone.data.curate.filters import QualitySettings, quality_filter
from hone.data.curate.pii import PiiSettings, mask_problems, scrub_examples
from hone.data.curate.readiness import readiness
from hone.data.curate.replay import ReplaySettings, replay_examples
from hone.data.curate.split import split_examples
from hone.data.curate.steps import StepReport
from hone.data.formats import Example, Problem, load_chat_examples, read_dataset
from hone.errors import HoneError
from hone.models.loading import sha256_file
from hone.settings import read_yaml_mapping, resolve_relative, validate

SPLITS = ("train", "val", "test")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(Section):
    path: Path = Field(description="A data file (any supported format) or a folder of .txt/.md documents.")
    columns: dict[str, str] | None = Field(None, description="CSV: hone field -> column name.")
    words_per_chunk: int = Field(300, ge=20, description="Documents: words per training sample.")


class DedupSettings(Section):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word shingles that counts as near.")
    shingle_words: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=16)
    against: list[Path] = Field(default_factory=list, description="Data the model already has: examples that "
                                "repeat one of these files (exactly or near) are removed.")


class DecontaminateSettings(Section):
    against: list[Path] = Field(default_factory=list, description="Eval/test files to protect.")
    n: int = Field(13, ge=4, description="Shared word n-gram length that counts as contamination.")
    turns: list[Literal["system", "user", "assistant"]] = Field(["user"], min_length=1,
                                                                description="Which turns are compared.")


class SplitSettings(Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 0
    stratify: str | None = Field(None, description="'assistant' (the reply is the label) or "
                                 "'assistant.FIELD' (a field of a JSON reply).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSettings:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {self.train + self.val + self.test:g}")
        return self


class TaskSettings(Section):
    type: Literal["style", "format", "vocabulary", "classification", "instruction"] = "format"


class PrepareConfig(Section):
    inputs: list[InputSpec] = Field(min_length=1)
    out: Path
    model: str = Field("smollm2-135m-instruct", description="Base model used by replay: self.")
    clean: CleanSettings = CleanSettings()
    pii: PiiSettings | None = PiiSettings()
    dedup: DedupSettings = DedupSettings()
    quality: QualitySettings = QualitySettings()
    decontaminate: DecontaminateSettings = DecontaminateSettings()
    split: SplitSettings = SplitSettings()
    replay: ReplaySettings | None = None
    task: TaskSettings = TaskSettings()
    strict: bool = Field(False, description="Stop at the first broken input line instead of reporting it.")

    @model_validator(mode="after")
    def _labels_for_classification(self) -> PrepareConfig:
        if self.task.type == "classification" and not self.split.stratify:
            raise ValueError("task.type 'classification' is judged per class: set split.stratify to 'assistant' "
                             "(the reply is the label) or 'assistant.FIELD' (a field of a JSON reply)")
        return self


def load_prepare_config(path: Path, overrides: dict[str, Any] | None = None) -> PrepareConfig:
    """Read a `hone data prepare` YAML; relative paths are taken relative to the file."""
    raw = read_yaml_mapping(path, "data prepare config") | (overrides or {})
    config = validate(PrepareConfig, raw, str(path), "data prepare config")
    for spec in config.inputs:
        spec.path = resolve_relative(spec.path, path)
    config.decontaminate.against = [resolve_relative(p, path) for p in config.decontaminate.against]
    config.dedup.against = [resolve_relative(p, path) for p in config.dedup.against]
    if isinstance(config.replay, ReplaySettings) and config.replay.source != "self":
        config.replay.source = str(resolve_relative(Path(config.replay.source), path))
    return config


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ingest(config: PrepareConfig) -> tuple[list[Example], list[dict], list[Problem]]:
    """Read every input into canonical chat examples; returns examples, source records and problems."""
    examples, sources, problems = [], [], []
    for spec in config.inputs:
        if spec.path.is_dir():
            found, issues = read_documents(spec.path, spec.words_per_chunk)
            record = {"path": str(spec.path), "format": "documents", "examples": len(found),
                      "files": {str(p.relative_to(spec.path)): sha256_file(p) for p in document_files(spec.path)}}
        else:
            dataset = read_dataset(spec.path, spec.columns)
            if dataset.format == "dpo":
                raise HoneError(f"{spec.path}: preference pairs (DPO) are not curated by `hone data prepare` yet",
                                hint="prepare chat, prompt/completion, alpaca, sharegpt or CSV data")
            found, issues = list(dataset.examples), list(dataset.problems)
            record = {"path": str(spec.path), "format": dataset.format, "sha256": sha256_file(spec.path),
                      "lines_read": dataset.lines_read, "examples": len(found)}
        errors = [p for p in issues if p.severity == "error"]
        if config.strict and errors:
            first = errors[0]
            raise HoneError(f"{spec.path}:{first.line}: {first.field}: {first.message}",
                            hint="fix the line, or run without --strict to skip and report broken lines")
        record["broken_lines"] = len(errors)
        examples.extend(found)
        sources.append(record)
        problems.extend(Problem(p.line, f"{spec.path}:{p.field}" if p.field else str(spec.path), p.message,
                                p.severity) for p in issues)
    return examples, sources, problems


def label_of(example: Example, stratify: str) -> str:
    """The stratification label: the reply, or one field of a JSON reply."""
    reply = next((m["content"] for m in reversed(example.messages) if m["role"] == "assistant"), "")
    if stratify == "assistant":
        return reply.strip()
    field = stratify.removeprefix("assistant.")
    try:
        return str(json.loads(reply).get(field))
    except (ValueError, RecursionError, AttributeError):  # not JSON, too deep, or not an object
        return "<not JSON>"


def to_record(example: Example) -> dict:
    """One output line: the canonical chat messages (and tools) plus where the example came from."""
    tools = {key: value for key, value in (("tools", example.tools),
                                           ("parallel_tool_calls", example.parallel_tool_calls)) if value is not None}
    return {"messages": example.messages, **tools,
            "metadata": {"source": example.source, "line": example.line, **(example.lineage or {})}}


def write_split(folder: Path, name: str, examples: list[Example]) -> dict:
    text = "".join(json.dumps(to_record(e), ensure_ascii=False, sort_keys=True) + "\n" for e in examples)
    path = folder / f"{name}.jsonl"
    path.write_text(text, encoding="utf-8")
    return {"examples": len(examples), "sha256": sha256_bytes(text.encode("utf-8"))}


def run_steps(config: PrepareConfig, examples: list[Example]) -> tuple[list[Example], list[StepReport]]:
    """Clean, scrub, deduplicate, filter and decontaminate, in that order."""
    reports = []
    examples, report = clean_examples(examples, config.clean)
    reports.append(report)
    if config.pii is not None:
        examples, report = scrub_examples(examples, config.pii)
        reports.append(report)
    if config.dedup.exact:
        examples, report = exact_dedup(examples)
        reports.append(report)
    if config.dedup.near:
        d = config.dedup
        examples, report = near_dedup(examples, threshold=d.threshold, shingle_words=d.shingle_words,
                                      num_perm=d.num_perm)
        reports.append(report)
    if config.dedup.against:
        d = config.dedup
        existing, _ = clean_examples([e for path in d.against for e in load_chat_examples(path)], config.clean)
        if config.pii is not None:  # compared as the examples are: a repeat is a repeat whether or not it holds PII
            existing, _ = scrub_examples(existing, config.pii)
        examples, report = dedup_against(examples, existing, threshold=d.threshold, shingle_words=d.shingle_words,
                                         num_perm=d.num_perm)
        reports.append(report)
    examples, report = quality_filter(examples, config.quality)
    reports.append(report)
    if config.decontaminate.against:
        d = config.decontaminate
        protected = [e for path in d.against for e in load_chat_examples(path)]
        examples, report = decontaminate(examples, protected, n=d.n, roles=tuple(d.turns))
        reports.append(report)
    return examples, reports


def prepare(config: PrepareConfig, *, force: bool = False) -> dict:
    """Build the dataset version in `config.out`; returns its manifest (the dataset id is its content hash)."""
    examples, sources, problems = ingest(config)
    if config.pii is not None:  # a broken line's message may quote a value; the report gets it masked
        problems = mask_problems(problems, config.pii)
    ingested = len(examples)
    examples, reports = run_steps(config, examples)
    stratify = (lambda e: label_of(e, config.split.stratify)) if config.split.stratify else None
    fractions = {name: getattr(config.split, name) for name in SPLITS}
    splits = split_examples(examples, fractions=fractions, seed=config.split.seed, stratify=stratify)
    if config.replay is not None:
        extra, report = replay_examples(config.replay, len(splits["train"]), config.model, config.split.seed)
        splits["train"] = splits["train"] + extra
        reports.append(report)
    labels = [label_of(e, config.split.stratify) for e in examples] if config.split.stratify else None
    verdict = readiness(config.task.type, len(examples), labels)
    return write_dataset(config, splits, sources, problems, reports, verdict, ingested, force)


def write_dataset(config: PrepareConfig, splits: dict[str, list[Example]], sources: list[dict],
                  problems: list[Problem], reports: list[StepReport], verdict: dict, ingested: int,
                  force: bool) -> dict:
    """Write the files into a staging folder, then move it into place as one immutable version."""
    from hone.data.curate.report import render_report

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, os.getpid()), dir=out.parent))
    try:
        files = {f"{name}.jsonl": write_split(staging, name, splits[name]) for name in SPLITS}
        dataset_id = sha256_bytes("".join(files[f"{n}.jsonl"]["sha256"] for n in SPLITS).encode())
        manifest = {
            "dataset_id": dataset_id,
            "hone_version": hone.__version__,
            "config": config.model_dump(mode="json"),
            "sources": sources,
            "counts": {"ingested": ingested, **{name: len(splits[name]) for name in SPLITS},
                       "broken_lines": sum(1 for p in problems if p.severity == "error")},
            # per-example detail (removals, clusters) lives in report.json; the manifest stays small
            "steps": [{"name": r.name, "params": r.params, "counts": r.counts, "removed": len(r.removed)}
                      for r in reports],
            "files": files,
            "readiness": verdict,
        }
        details = {"problems": [p.to_dict() for p in problems], "steps": [r.to_dict() for r in reports]}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (staging / "report.json").write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n")
        (staging / "report.html").write_text(render_report(manifest, details), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a dataset version is meant to be shared
        _move_into_place(staging, out, dataset_id, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _staging_prefix(out: Path, pid: int) -> str:
    """Staging folders are named after `out`, the owner's pid and host, so a later run can tell when they are stale."""
    return f".{out.name}.staging-{pid}@{socket.gethostname()}-"


def _is_running(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if os.name != "posix":
        return True  # no safe liveness probe (os.kill would stop it): treat as running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders that earlier runs for `out` left when killed; returns what was removed.

    Only folders named by `_staging_prefix` for this `out` and this host whose owner process is gone.
    """
    # The names `_staging_prefix` gives, plus mkdtemp's random letters.
    pattern = re.compile(rf"\.{re.escape(out.name)}\.staging-(\d+)@{re.escape(socket.gethostname())}-[a-z0-9_]+")
    removed = []
    for folder in out.parent.iterdir():
        found = pattern.fullmatch(folder.name)
        if found and folder.is_dir() and not _is_running(int(found.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _move_into_place(staging: Path, out: Path, dataset_id: str, force: bool) -> None:
    """A dataset version is immutable: an existing folder is replaced only when it is the same version."""
    existing = out / "manifest.json"
    if out.exists():
        same = existing.is_file() and json.loads(existing.read_text()).get("dataset_id") == dataset_id
        if not (same or force):
            raise HoneError(f"{out} already holds a different dataset version",
                            hint="choose a new --out folder (dataset versions are immutable), or pass --force")
        shutil.rmtree(out)
    staging.rename(out)
