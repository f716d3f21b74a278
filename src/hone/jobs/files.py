"""Uploaded files (`POST /v1/files`, `hone files`): stored once per sha256, checked the moment they arrive.

A file's bytes live in `$HONE_HOME/files/objects/ab/<sha256>.jsonl`; a row per upload holds its name,
purpose, project and the validation outcome (format, example count, every problem by line), so a job
can refuse a broken file without reading it again and a user can see why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from hone import audit
from hone.data.formats import read_dataset
from hone.errors import HoneError, NotFoundError, RequestError
from hone.home import hone_home
from hone.jobs.ids import new_id, page_limit
from hone.store import engine_for, session
from hone.store.tables import StoredFile, utc_now

PURPOSES = ("fine-tune", "fine-tune-results")
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
SHOWN_PROBLEMS = 100  # problems kept per file; the counts cover all of them
COPY_CHUNK = 1 << 20


class FileTooLarge(RequestError):
    """An upload over the size limit (HTTP 413)."""

    status = 413


@dataclass
class FileObject:
    """An uploaded file as OpenAI's API shows it, plus hone's validation outcome."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None
    sha256: str
    format: str | None
    examples: int
    errors: int
    warnings: int

    @property
    def usable(self) -> bool:
        """True when training may use the file: it was read and no line is broken."""
        return self.status == "processed" and self.errors == 0 and self.examples > 0


def objects_dir() -> Path:
    path = hone_home() / "files" / "objects"
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_path(sha256: str) -> Path:
    """Where the bytes with this sha256 are kept."""
    return objects_dir() / sha256[:2] / f"{sha256}.jsonl"


def _to_object(row: StoredFile) -> FileObject:
    details = None
    if row.status == "error" or row.errors:
        details = (f"{row.errors} line(s) cannot be used; GET /v1/files/{row.id}/problems lists them"
                   if row.errors else "the file holds no usable example")
    return FileObject(id=row.id, bytes=row.bytes, created_at=int(row.created_at.timestamp()), filename=row.filename,
                      purpose=row.purpose, status=row.status, status_details=details, sha256=row.sha256,
                      format=row.format, examples=row.examples, errors=row.errors, warnings=row.warnings)


def _safe_filename(name: str | None) -> str:
    """The client's file name, kept only as a label: no folders, no control characters, at most 256 chars."""
    name = os.path.basename((name or "upload.jsonl").replace("\\", "/"))
    name = "".join(ch for ch in name if ch.isprintable())[:256]
    return name or "upload.jsonl"


def _stream_to_disk(source: BinaryIO | Iterable[bytes], max_bytes: int) -> tuple[Path, str, int]:
    """Copy an upload to a temporary file beside the store while hashing it; refuse it past `max_bytes`."""
    digest, size = hashlib.sha256(), 0
    handle = tempfile.NamedTemporaryFile(dir=objects_dir(), prefix=".upload-", delete=False)
    try:
        with handle:
            chunks = iter(lambda: source.read(COPY_CHUNK), b"") if hasattr(source, "read") else source
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"the file is larger than this server's upload limit of {max_bytes:,} bytes",
                                       param="file", code="file_too_large",
                                       hint="split the data, or raise limits.max_upload_bytes in serve.yaml")
                digest.update(chunk)
                handle.write(chunk)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name), digest.hexdigest(), size


def _keep(temporary: Path, sha256: str) -> Path:
    """Move the upload to its content address; identical bytes already there are kept as they are."""
    target = content_path(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        temporary.unlink(missing_ok=True)
    else:
        os.replace(temporary, target)
    return target


def without_server_path(message: str, path: Path, filename: str) -> str:
    """A problem message with the stored file's path (which a fix-it command quotes) told as the upload's name."""
    name = Path(filename)
    return message.replace(f"{path.parent}{os.sep}", "").replace(path.stem, name.stem)


def _validation(path: Path) -> dict:
    """Format, counts and problems of a fine-tuning file (no tokenizer: token lengths are checked per job)."""
    try:
        dataset = read_dataset(path)
    except HoneError as error:
        return {"status": "error", "format": None, "examples": 0, "errors": 1, "warnings": 0,
                "problems": [{"line": 0, "field": "", "message": error.message, "severity": "error"}]}
    problems = [p.to_dict() for p in dataset.problems]
    errors = sum(1 for p in problems if p["severity"] == "error")
    return {"status": "processed" if dataset.examples or errors else "error", "format": dataset.format,
            "examples": len(dataset.examples), "errors": errors, "warnings": len(problems) - errors,
            "problems": problems[:SHOWN_PROBLEMS]}


class FileStore:
    """Uploaded files of every project in hone's database; each call is scoped to one project."""

    def __init__(self, db_url: str | None = None):
        self.engine = engine_for(db_url)

    def upload(self, project: str, source: BinaryIO | Iterable[bytes], filename: str | None, purpose: str,
               max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, actor: str | None = None) -> FileObject:
        """Store an upload (a readable binary stream or byte chunks) and validate it at once."""
        if purpose not in PURPOSES[:1]:
            raise RequestError(f"purpose {purpose!r} is not supported for uploads", param="purpose",
                               code="invalid_value", hint="upload training and validation data with "
                               "purpose='fine-tune'")
        temporary, sha256, size = _stream_to_disk(source, max_bytes)
        if size == 0:
            temporary.unlink(missing_ok=True)
            raise RequestError("the file is empty", param="file", code="invalid_file",
                               hint="upload a JSONL file with one training example per line")
        path = _keep(temporary, sha256)
        name = _safe_filename(filename)
        outcome = _validation(path)
        for problem in outcome["problems"]:  # the client never learns where the server keeps its files
            problem["message"] = without_server_path(problem["message"], path, name)
        return self._add(project, name, purpose, sha256, size, outcome, actor)

    def add_result(self, project: str, filename: str, content: bytes, actor: str | None = None) -> FileObject:
        """Store a file hone wrote for the user (a job's results CSV) with purpose fine-tune-results."""
        temporary, sha256, size = _stream_to_disk([content], len(content) + 1)
        _keep(temporary, sha256)
        outcome = {"status": "processed", "format": "csv", "examples": 0, "errors": 0, "warnings": 0, "problems": []}
        return self._add(project, filename, "fine-tune-results", sha256, size, outcome, actor)

    def _add(self, project: str, filename: str, purpose: str, sha256: str, size: int, outcome: dict,
             actor: str | None) -> FileObject:
        row = StoredFile(id=new_id("file-"), project=project, purpose=purpose, filename=filename, bytes=size,
                         sha256=sha256, status=outcome["status"], format=outcome["format"],
                         examples=outcome["examples"], errors=outcome["errors"], warnings=outcome["warnings"],
                         validation_json=json.dumps(outcome["problems"]), created_at=utc_now())
        with session(self.engine) as db:
            db.add(row)
            audit.record(db, project=project, actor=actor, action="file.uploaded", object_type="file",
                         object_id=row.id, details={"filename": filename, "purpose": purpose, "bytes": size,
                                                    "sha256": sha256, "examples": row.examples, "errors": row.errors})
        return _to_object(row)

    def _row(self, db, project: str, file_id: str, param: str) -> StoredFile:
        row = db.get(StoredFile, file_id) if isinstance(file_id, str) else None
        if row is None or row.project != project or row.deleted_at is not None:
            raise NotFoundError(f"No such File object: {file_id}", param=param, code="file_not_found")
        return row

    def get(self, project: str, file_id: str, param: str = "file_id") -> FileObject:
        """The file `file_id` of `project`; NotFoundError (naming `param`) when there is none."""
        with session(self.engine) as db:
            return _to_object(self._row(db, project, file_id, param))

    def problems(self, project: str, file_id: str) -> list[dict]:
        """The file's problems by line and field (at most SHOWN_PROBLEMS; the object's counts cover all)."""
        with session(self.engine) as db:
            return json.loads(self._row(db, project, file_id, "file_id").validation_json)

    def path(self, project: str, file_id: str, param: str = "file_id") -> Path:
        """Where the file's bytes are on disk (for the worker and `/content`; never shown to a client)."""
        return content_path(self.get(project, file_id, param).sha256)

    def list(self, project: str, purpose: str | None = None, limit: int | None = None, order: str = "desc",
             after: str | None = None) -> tuple[list[FileObject], bool]:
        """A page of the project's files, newest first by default, after the file `after`; and whether more follow."""
        if order not in ("asc", "desc"):
            raise RequestError(f"order {order!r} must be 'asc' or 'desc'", param="order", code="invalid_value")
        limit = page_limit(limit, default=10_000, most=10_000)  # OpenAI's files list allows 10,000
        with session(self.engine) as db:
            query = select(StoredFile).where(StoredFile.project == project, StoredFile.deleted_at.is_(None))
            if purpose:
                query = query.where(StoredFile.purpose == purpose)
            ascending = order == "asc"
            if after:
                cursor = self._row(db, project, after, "after")
                newer = (StoredFile.created_at > cursor.created_at) | (
                    (StoredFile.created_at == cursor.created_at) & (StoredFile.id > cursor.id))
                older = (StoredFile.created_at < cursor.created_at) | (
                    (StoredFile.created_at == cursor.created_at) & (StoredFile.id < cursor.id))
                query = query.where(newer if ascending else older)
            keys = (StoredFile.created_at, StoredFile.id) if ascending else (StoredFile.created_at.desc(),
                                                                              StoredFile.id.desc())
            rows = db.scalars(query.order_by(*keys).limit(limit + 1)).all()
        return [_to_object(row) for row in rows[:limit]], len(rows) > limit

    def delete(self, project: str, file_id: str, actor: str | None = None) -> None:
        """Forget the file; its bytes go when no other upload holds the same content (jobs keep their own copy)."""
        with session(self.engine) as db:
            row = self._row(db, project, file_id, "file_id")
            row.deleted_at = utc_now()
            audit.record(db, project=project, actor=actor, action="file.deleted", object_type="file",
                         object_id=row.id, details={"sha256": row.sha256})
            still_used = db.scalar(select(StoredFile.id).where(StoredFile.sha256 == row.sha256,
                                                               StoredFile.deleted_at.is_(None),
                                                               StoredFile.id != row.id).limit(1))
        if still_used is None:
            content_path(row.sha256).unlink(missing_ok=True)


def remove_stale_uploads(max_age_s: float = 24 * 3600) -> int:
    """Delete temporary uploads that a crash left behind; returns how many went."""
    removed = 0
    for leftover in objects_dir().glob(".upload-*"):
        if time.time() - leftover.stat().st_mtime > max_age_s:
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed
