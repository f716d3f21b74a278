"""`/v1/datasets`: a project's prepared dataset versions, their curation reports, and examples rendered as the
model sees them (the trained tokens marked, as `hone train --dry-run` shows them), for versions and uploads.

Which versions a project has: dataset versions are folders `$HONE_HOME/datasets/NAME` written by
`hone data prepare --out $HONE_HOME/datasets/NAME --project P`, which appends `dataset.prepared` to the audit
log under P. A version belongs to every project whose log holds that entry for its id, while the folder the
entry names still holds that id. A folder no entry names, or one that now holds another version, is no
project's and is not shown. Answers carry file names and content hashes, never where anything lies on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from hone import audit
from hone.api.auth import Viewer
from hone.api.errors import error_responses
from hone.api.files import Store
from hone.data.formats import Example, PreferenceExample, read_dataset
from hone.data.render import render_chat
from hone.data.versions import curation_report, kept_version, read_manifest, version_examples
from hone.errors import HoneError, NotFoundError, RequestError
from hone.jobs.ids import page_limit

PREPARED = "dataset.prepared"
MOST_VERSIONS = 1_000  # audit entries read for the list; a project with more shows its newest
MOST_EXAMPLES = 50  # examples rendered per page
SHOWN_ROWS = 500  # broken lines and removed examples per report; the counts cover all

router = APIRouter(prefix="/datasets", tags=["datasets"])


class DatasetCounts(BaseModel):
    ingested: int = Field(description="Examples read from the inputs (broken lines not included).")
    train: int
    val: int
    test: int
    broken_lines: int = Field(description="Input lines that could not be used.")


class Readiness(BaseModel):
    """Whether the version is big enough for its task, and why."""

    verdict: str = Field(description="ready, thin or too small.")
    message: str
    task_type: str | None = None
    minimum: int | None = None
    recommended: list[int] | None = None
    warnings: list[str] = []


class DatasetSummary(BaseModel):
    """One prepared dataset version; its id is the content hash of its train/val/test files."""

    id: str
    object: Literal["dataset"] = "dataset"
    name: str = Field(description="The version's name: its folder name under $HONE_HOME/datasets.")
    created_at: int = Field(description="When it was prepared (its audit entry), in Unix seconds.")
    counts: DatasetCounts
    readiness: Readiness


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetSummary]
    has_more: bool = False


class DatasetInput(BaseModel):
    name: str = Field(description="The input's file name.")
    format: str
    examples: int
    broken_lines: int
    sha256: str


class CurationStep(BaseModel):
    name: str = Field(description="clean, pii, exact_dedup, near_dedup, quality, decontaminate or replay.")
    counts: dict[str, int]
    removed: int


class PiiReport(BaseModel):
    mode: str | None = Field(description="mask, hash or drop; null when the PII step was off.")
    found: dict[str, int] = Field(description="Findings per entity type, e.g. EMAIL_ADDRESS.")
    masked: dict[str, int] = Field(description="Findings replaced in the text (mode mask or hash).")
    examples_with_pii: int


class Duplicates(BaseModel):
    exact: int = Field(description="Examples removed as exact copies of a kept one.")
    near: int = Field(description="Examples removed as near copies (MinHash, Jaccard over word shingles).")


class BrokenLine(BaseModel):
    input: str = Field(description="The input's file name.")
    line: int = Field(description="1-based line of the input; 0 for the file as a whole.")
    field: str = Field(description="JSON path of the field at fault; '' for the whole line.")
    message: str
    severity: Literal["error", "warning"]


class RemovedExample(BaseModel):
    step: str
    input: str
    line: int
    reason: str
    detail: str


class Dataset(DatasetSummary):
    """A dataset version with its curation report."""

    inputs: list[DatasetInput]
    steps: list[CurationStep] = Field(description="Each curation step in the order it ran.")
    pii: PiiReport
    duplicates: Duplicates
    broken_lines: list[BrokenLine] = Field(description=f"At most {SHOWN_ROWS}; counts.broken_lines covers all.")
    removed: list[RemovedExample] = Field(description=f"At most {SHOWN_ROWS}; each step's `removed` covers all.")


class Segment(BaseModel):
    text: str
    trained: bool = Field(description="True when the loss is computed on these tokens.")


class RenderedExample(BaseModel):
    """One example as the model sees it: the chat template applied, the text split into trained and untrained runs."""

    object: Literal["dataset.example"] = "dataset.example"
    index: int = Field(description="0-based position in the split or file.")
    line: int = Field(description="The example's line in the input (for a version) or in the uploaded file.")
    tokens: int
    trained_tokens: int
    segments: list[Segment]


class RenderedExampleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RenderedExample]
    total: int = Field(description="Examples in the split or file.")
    offset: int
    limit: int
    has_more: bool


def _kept(project: str, db_url: str | None, dataset_id: str | None = None) -> Iterator[tuple[audit.AuditEntry, Path]]:
    """The project's `dataset.prepared` entries (of one id, when given), newest first, whose folder still holds
    the version they name, each with that folder."""
    for entry in audit.entries(MOST_VERSIONS, project, db_url, action=PREPARED, object_id=dataset_id):
        name = entry.details.get("out") if isinstance(entry.details, dict) else None
        folder = kept_version(name, entry.object_id) if isinstance(name, str) else None
        if folder is not None:
            yield entry, folder


def _summary(entry: audit.AuditEntry, folder: Path, counts: dict, readiness: dict) -> DatasetSummary:
    return DatasetSummary(id=entry.object_id, name=folder.name, counts=DatasetCounts(**counts),
                          created_at=int(datetime.fromisoformat(entry.created_at).timestamp()),
                          readiness=Readiness(**readiness))


def _find(project: str, db_url: str | None, dataset_id: str) -> tuple[audit.AuditEntry, Path]:
    """The project's version `dataset_id` and its folder; 404 for anything else, another project's included."""
    if len(dataset_id) == 64 and all(ch in "0123456789abcdef" for ch in dataset_id):
        found = next(_kept(project, db_url, dataset_id), None)
        if found is not None:
            return found
    raise NotFoundError(f"No such dataset version: {dataset_id}", param="dataset_id", code="dataset_not_found")


def _db(request: Request) -> str | None:
    return request.app.state.server.config.database


@router.get("", response_model=DatasetList, responses=error_responses(401))
def list_datasets(me: Viewer, request: Request) -> DatasetList:
    """The project's dataset versions, newest first (each id once, under its newest name)."""
    found: dict[str, DatasetSummary] = {}
    for entry, folder in _kept(me.project, _db(request)):
        if entry.object_id not in found:
            manifest = read_manifest(folder)  # the list needs no per-example detail (report.json)
            found[entry.object_id] = _summary(entry, folder, manifest["counts"], manifest.get("readiness", {}))
    return DatasetList(data=list(found.values()))


@router.get("/{dataset_id}", response_model=Dataset, responses=error_responses(401, 404))
def retrieve(me: Viewer, request: Request, dataset_id: str) -> Dataset:
    """One version with its curation report: counts per step, PII, duplicates, broken lines and readiness."""
    entry, folder = _find(me.project, _db(request), dataset_id)
    report = curation_report(folder)
    masked = report.pii_found if report.pii_mode in ("mask", "hash") else {}
    return Dataset(
        **_summary(entry, folder, report.counts, report.readiness).model_dump(),
        inputs=[DatasetInput(**vars(i)) for i in report.inputs],
        steps=[CurationStep(**vars(s)) for s in report.steps],
        pii=PiiReport(mode=report.pii_mode, found=report.pii_found, masked=masked,
                      examples_with_pii=report.examples_with_pii),
        duplicates=Duplicates(**report.duplicates),
        broken_lines=[BrokenLine(**vars(b)) for b in report.broken_lines[:SHOWN_ROWS]],
        removed=[RemovedExample(**vars(r)) for r in report.removed[:SHOWN_ROWS]],
    )


Offset = Annotated[int, Query(description="How many examples to skip.")]
Limit = Annotated[int | None, Query(description=f"Examples per page, 1 to {MOST_EXAMPLES} (default 10).")]


def _page(request: Request, examples: list[Example | PreferenceExample], offset: int,
          limit: int | None) -> RenderedExampleList:
    """One page of examples rendered with the server's base model tokenizer, as training renders them."""
    from hone.train.dry_run import marked_segments  # the runs `hone train --dry-run` prints

    size = page_limit(limit, default=10, most=MOST_EXAMPLES)
    if offset < 0:
        raise RequestError(f"offset {offset} is negative; skip 0 or more examples", param="offset",
                           code="invalid_value")
    tokenizer = request.app.state.server.tokenizer
    shown = []
    for index, example in enumerate(examples[offset:offset + size], start=offset):
        messages = (example.prompt + [example.chosen] if isinstance(example, PreferenceExample)
                    else example.messages)  # a preference pair is shown with its preferred reply
        try:
            rendered = render_chat(tokenizer, messages, getattr(example, "tools", None))
        except HoneError as error:
            raise RequestError(error.message, param="model", code="template_cannot_mask", hint=error.hint) from None
        segments = [Segment(text=text, trained=trained)
                    for text, trained in marked_segments(tokenizer, rendered.input_ids, rendered.trained)]
        shown.append(RenderedExample(index=index, line=example.line, tokens=len(rendered),
                                     trained_tokens=rendered.num_trained, segments=segments))
    return RenderedExampleList(data=shown, total=len(examples), offset=offset, limit=size,
                               has_more=offset + size < len(examples))


@router.get("/{dataset_id}/examples", response_model=RenderedExampleList, responses=error_responses(400, 401, 404))
def dataset_examples(me: Viewer, request: Request, dataset_id: str,
                     split: Literal["train", "val", "test"] = "train", offset: Offset = 0,
                     limit: Limit = None) -> RenderedExampleList:
    """A page of one split's examples as the model sees them, trained tokens marked."""
    _, folder = _find(me.project, _db(request), dataset_id)
    return _page(request, version_examples(folder, split), offset, limit)


@router.get("/files/{file_id}/examples", response_model=RenderedExampleList,
            responses=error_responses(400, 401, 404))
def file_examples(me: Viewer, store: Store, request: Request, file_id: str, offset: Offset = 0,
                  limit: Limit = None) -> RenderedExampleList:
    """A page of an uploaded file's usable examples as the model would see them (broken lines left out)."""
    path = store.path(me.project, file_id)
    try:
        examples = read_dataset(path).examples
    except HoneError:  # an unreadable file has no examples; GET /v1/files/{id}/problems says why
        examples = []
    return _page(request, examples, offset, limit)
