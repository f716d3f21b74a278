"""The playground section of the dashboard: one prompt sent to up to three models side by side (the base, any
registered version, any alias as `model@alias`), each reply streamed in as it is generated, with the retrieval
sources it drew on.

The page only lists what may be called; static/playground.js sends each request to /v1/chat/completions with
the visitor's session (a developer key or above is needed: the API's refusal is shown under the reply).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from hone.web.core import Api, VisitorDep, render

router = APIRouter()
COLUMNS = 3  # models compared side by side at most
TEMPERATURES = (0.7, 1.0, 1.3)  # each column's starting temperature, so two columns of one model differ


def model_choices(served: list[dict], versions: list[dict]) -> list[str]:
    """The names a chat request may give: served models (the base first), registered versions and their aliases."""
    names = [m["id"] for m in served] + [v["name"] for v in versions]
    names += [f"{v['model']}@{alias}" for v in versions for alias in v["aliases"]]
    return list(dict.fromkeys(names))


@router.get("/playground")
async def playground(request: Request, visitor: VisitorDep, api: Api):
    """The form: models per column, an optional retrieval index, the prompt and sampling settings."""
    served = await api.get("/v1/models")
    versions = await api.get("/v1/registry/models")
    indexes = await api.get("/v1/indexes")
    return render(request, visitor, "playground/page.html", models=model_choices(served["data"], versions["data"]),
                  indexes=indexes["data"], columns=[(i + 1, TEMPERATURES[i]) for i in range(COLUMNS)])
