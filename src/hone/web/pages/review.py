"""The review section of the dashboard: review rounds, the blind side-by-side item page a reviewer works through
(never a candidate's or model's name on it), and a round's results with the export of its corrections."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request

from hone.web.core import Api, ApiFailure, VisitorDep, checked_form, path_part, redirect, render

router = APIRouter()
CHOICES = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie: equally good"), ("both_bad", "Both bad"))


def _number(fields: dict, name: str, default: int | None) -> int | None:
    """A whole-number form field (blank: `default`); a 400 page naming the field otherwise."""
    value = str(fields.get(name) or "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ApiFailure(400, f"{name}: give a whole number, not {value!r}", param=name)
    return int(value)


@router.get("/review")
async def rounds(request: Request, visitor: VisitorDep, api: Api):
    """The project's review rounds with the caller's progress, and the create-round form for developers."""
    found = await api.get("/v1/reviews", limit=100)
    versions = (await api.get("/v1/registry/models"))["data"] if visitor.can("developer") else []
    return render(request, visitor, "review/list.html", rounds=found["data"], versions=versions)


@router.post("/review")
async def create(request: Request, visitor: VisitorDep, api: Api):
    """Create a round from an evaluation (or a version's newest one) or from captured shadow traffic."""
    fields = await checked_form(request, visitor)
    source = fields.get("source") or "evaluation"
    body = {"source": source, "items": _number(fields, "items", 20), "repeats": _number(fields, "repeats", None),
            "seed": _number(fields, "seed", 0), "name": (fields.get("name") or "").strip() or None}
    if source == "traffic":
        body["model"] = (fields.get("model") or "").strip() or None
    elif (fields.get("evaluation") or "").strip():
        body["evaluation"] = fields["evaluation"].strip()
    else:
        body["model_version"] = (fields.get("model_version") or "").strip() or None
    made = await api.post("/v1/reviews", json=body)
    return redirect(f"/review/{path_part(made['id'])}")


@router.get("/review/{review_id}")
async def next_item(request: Request, review_id: str, visitor: VisitorDep, api: Api):
    """The reviewer's next item in their own blinded order: prompt, reply A and reply B, and the judgment form."""
    part = path_part(review_id)
    found = await api.get(f"/v1/reviews/{part}")
    queue = await api.get(f"/v1/reviews/{part}/next")
    return render(request, visitor, "review/item.html", round=found, queue=queue, choices=CHOICES)


@router.post("/review/{review_id}/items/{item_id}")
async def judge(request: Request, review_id: str, item_id: str, visitor: VisitorDep, api: Api):
    """Submit the judgment of one item, then go on to the next."""
    fields = await checked_form(request, visitor)
    if fields.get("choice") not in dict(CHOICES):
        raise ApiFailure(400, "choice: pick A, B, tie or both bad", param="choice")
    await api.post(f"/v1/reviews/{path_part(review_id)}/items/{path_part(item_id)}/judgment",
                   json={"choice": fields["choice"], "corrected_answer": fields.get("corrected_answer") or None,
                         "reason": fields.get("reason") or None})
    return redirect(f"/review/{path_part(review_id)}")


@router.get("/review/{review_id}/results")
async def results(request: Request, review_id: str, visitor: VisitorDep, api: Api):
    """Win rates with their CIs, reviewer agreement, self-consistency, judge agreement, and the export button."""
    part = path_part(review_id)
    found = await api.get(f"/v1/reviews/{part}")
    summary = await api.get(f"/v1/reviews/{part}/results")
    counts = {reviewer["reviewer"]: reviewer["judgments"] for reviewer in summary["reviewers"]}
    return render(request, visitor, "review/results.html", round=found, results=summary,
                  judgments_by_reviewer=counts)


@router.post("/review/{review_id}/export")
async def export(request: Request, review_id: str, visitor: VisitorDep, api: Api):
    """Export the corrections and preference pairs as training files, then show them on a page of their own (a
    reload shows them again rather than exporting twice)."""
    await checked_form(request, visitor)
    exported = await api.post(f"/v1/reviews/{path_part(review_id)}/export")
    made = {"corrections": exported["corrections_file"], "preferences": exported["preference_file"]}
    query = {kind: stored["id"] for kind, stored in made.items() if stored}
    if exported["corrections_dataset"]:
        query["dataset"] = exported["corrections_dataset"]
    return redirect(f"/review/{path_part(review_id)}/exported?{urlencode(query)}")


@router.get("/review/{review_id}/exported")
async def exported_files(request: Request, review_id: str, visitor: VisitorDep, api: Api,
                         corrections: str | None = None, preferences: str | None = None, dataset: str | None = None):
    """What an export wrote: each file and the dataset version as the API describes them (ids from the query are
    looked up in the visitor's project, so another project's ids answer 404)."""
    found = await api.get(f"/v1/reviews/{path_part(review_id)}")
    files = {kind: await api.get(f"/v1/files/{path_part(file_id)}")
             for kind, file_id in (("corrections", corrections), ("preferences", preferences)) if file_id}
    version = await api.get(f"/v1/datasets/{path_part(dataset)}") if dataset else None
    return render(request, visitor, "review/exported.html", round=found, files=files, dataset=version)
