"""The datasets section of the dashboard: upload a file and see its problems by line, browse prepared dataset
versions with their curation reports, and page through examples as the model sees them (trained tokens marked)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from hone.web.core import Api, ApiFailure, VisitorDep, checked_form, path_part, redirect, render

router = APIRouter()
PAGE = 10  # examples per page in the browser


def _dated(objects: list[dict]) -> list[dict]:
    """The API's objects with `created`: their Unix `created_at` as the ISO time the `when` macro shows."""
    return [{**item, "created": datetime.fromtimestamp(item["created_at"], UTC).isoformat()} for item in objects]


def _pages(listing: dict, base: str) -> dict:
    """Links to the previous and next page of a rendered-example listing (None at either end)."""
    offset, limit = listing["offset"], listing["limit"]
    joiner = "&" if "?" in base else "?"
    return {"previous": f"{base}{joiner}offset={max(offset - limit, 0)}" if offset > 0 else None,
            "next": f"{base}{joiner}offset={offset + limit}" if listing["has_more"] else None,
            "first": offset + 1 if listing["data"] else 0, "last": offset + len(listing["data"])}


@router.get("/datasets")
async def datasets(request: Request, visitor: VisitorDep, api: Api):
    """The upload form, the project's uploaded files and its prepared dataset versions."""
    files = await api.get("/v1/files", purpose="fine-tune", limit=100)
    versions = await api.get("/v1/datasets")
    return render(request, visitor, "datasets/list.html", files=_dated(files["data"]),
                  versions=_dated(versions["data"]))


@router.post("/datasets/upload")
async def upload(request: Request, visitor: VisitorDep, api: Api):
    """Forward the chosen file to POST /v1/files (purpose fine-tune), then show its problems."""
    fields = await checked_form(request, visitor)
    chosen = fields.get("file")
    if not isinstance(chosen, UploadFile) or not chosen.filename:
        raise ApiFailure(400, "file: choose a JSONL file to upload", param="file")
    stored = await api.post("/v1/files", files={"file": (chosen.filename, chosen.file, "application/jsonl")},
                            data={"purpose": "fine-tune"})
    return redirect(f"/datasets/files/{path_part(stored['id'])}")


@router.get("/datasets/files/{file_id}")
async def file_page(request: Request, file_id: str, visitor: VisitorDep, api: Api,
                    offset: str = "0"):
    """An uploaded file: its validation problems by line and field, then its examples as the model sees them.
    `offset` goes to the API as given, so a bad one gets the API's own message."""
    part = path_part(file_id)
    stored = await api.get(f"/v1/files/{part}")
    problems = await api.get(f"/v1/files/{part}/problems")
    examples = await api.get(f"/v1/datasets/files/{part}/examples", offset=offset, limit=PAGE)
    return render(request, visitor, "datasets/file.html", file=_dated([stored])[0], problems=problems["data"],
                  examples=examples, pages=_pages(examples, f"/datasets/files/{part}"))


@router.get("/datasets/{dataset_id}")
async def dataset_page(request: Request, dataset_id: str, visitor: VisitorDep, api: Api,
                       split: str = "train", offset: str = "0"):
    """A prepared dataset version: its curation report, then one split's examples as the model sees them."""
    part = path_part(dataset_id)
    version = await api.get(f"/v1/datasets/{part}")
    examples = await api.get(f"/v1/datasets/{part}/examples", split=split, offset=offset, limit=PAGE)
    return render(request, visitor, "datasets/version.html", dataset=_dated([version])[0], split=split,
                  examples=examples, pages=_pages(examples, f"/datasets/{part}?split={path_part(split)}"))
