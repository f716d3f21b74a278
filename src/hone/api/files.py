"""`/v1/files`: OpenAI's Files API for fine-tuning data; every upload is checked the moment it arrives."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from hone.api.auth import Developer, Viewer
from hone.api.errors import error_responses
from hone.jobs.files import FileObject, FileStore


class FileValidation(BaseModel):
    """hone's check of the file: whether a job may train on it, and the counts behind that."""

    usable: bool = Field(description="True when no line is broken and the file holds examples.")
    format: str | None = Field(description="Detected format: chat, dpo, prompt_completion, alpaca, sharegpt.")
    examples: int
    errors: int = Field(description="Lines that cannot be used; GET /v1/files/{id}/problems lists them.")
    warnings: int
    sha256: str


class FileModel(BaseModel):
    """OpenAI's file object, plus hone's validation."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    hone: FileValidation


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileModel]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileProblem(BaseModel):
    line: int = Field(description="1-based line of the file; 0 for the file as a whole.")
    field: str = Field(description="JSON path of the field at fault, e.g. messages[2].role; '' for the line.")
    message: str
    severity: Literal["error", "warning"]


class FileProblems(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileProblem]
    has_more: bool = False


def file_model(stored: FileObject) -> FileModel:
    return FileModel(id=stored.id, bytes=stored.bytes, created_at=stored.created_at, filename=stored.filename,
                     purpose=stored.purpose, status=stored.status, status_details=stored.status_details,
                     hone=FileValidation(usable=stored.usable, format=stored.format, examples=stored.examples,
                                         errors=stored.errors, warnings=stored.warnings, sha256=stored.sha256))


def file_store(request: Request) -> FileStore:
    """The file store this application uses (set by `create_app`)."""
    return request.app.state.files


Store = Annotated[FileStore, Depends(file_store)]
# A key sees only its own project's files; another project's answer 404.
router = APIRouter(prefix="/files", tags=["files"])


@router.post("", response_model=FileModel, responses=error_responses(400, 401, 413))
def upload(me: Developer, store: Store, request: Request,
           file: Annotated[UploadFile, File(description="JSONL, one example per line.")],
           purpose: Annotated[str, Form()]) -> FileModel:
    """Upload fine-tuning data (multipart); it is validated at once and stored once per content."""
    return file_model(store.upload(me.project, file.file, file.filename, purpose, request.app.state.max_upload_bytes,
                                   actor=me.actor))


@router.get("", response_model=FileList, responses=error_responses(400, 401))
def list_files(me: Viewer, store: Store, purpose: str | None = None,
               limit: Annotated[int | None, Query(ge=1, le=10_000)] = None, order: Literal["asc", "desc"] = "desc",
               after: str | None = None) -> FileList:
    found, has_more = store.list(me.project, purpose, limit, order, after)
    data = [file_model(f) for f in found]
    return FileList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FileModel, responses=error_responses(401, 404))
def retrieve(me: Viewer, store: Store, file_id: str) -> FileModel:
    return file_model(store.get(me.project, file_id))


@router.get("/{file_id}/problems", response_model=FileProblems, responses=error_responses(401, 404))
def problems(me: Viewer, store: Store, file_id: str) -> FileProblems:
    """Every problem hone found in the file, by line and field."""
    return FileProblems(data=[FileProblem(**p) for p in store.problems(me.project, file_id)])


FILE_BYTES = {200: {"description": "The file's bytes as uploaded (JSONL), or a job's results CSV",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("/{file_id}/content", response_class=FileResponse, responses={**FILE_BYTES, **error_responses(401, 404)})
def content(me: Viewer, store: Store, file_id: str) -> FileResponse:
    stored = store.get(me.project, file_id)
    media = "text/csv" if stored.purpose == "fine-tune-results" else "application/jsonl"
    return FileResponse(store.path(me.project, file_id), media_type=media, filename=stored.filename)


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(401, 404))
def delete(me: Developer, store: Store, file_id: str) -> FileDeleted:
    store.delete(me.project, file_id, actor=me.actor)
    return FileDeleted(id=file_id, deleted=True)

