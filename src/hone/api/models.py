"""GET /v1/models: the base model and every adapter served on it, as OpenAI model objects."""

from __future__ import annotations

from fastapi import APIRouter

from hone.api.auth import Viewer
from hone.api.deps import CurrentServer
from hone.api.protocol import ModelList, ModelObject

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(server: CurrentServer, me: Viewer) -> ModelList:
    """The served models: the base first (no parent), then each adapter and each of the caller's project's
    fine-tuned models, with the base as parent."""
    return ModelList(data=[ModelObject(id=model.id, created=model.created or server.started, root=model.root,
                                       parent=model.parent, owned_by=model.owned_by)
                           for model in server.served_models(me.project)])
