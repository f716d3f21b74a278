"""FastAPI dependencies the routers share: what the application holds for them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hone.serve.server import ModelServer


def model_server(request: Request) -> ModelServer:
    """The model server this application serves (set by `create_app`)."""
    return request.app.state.server


CurrentServer = Annotated[ModelServer, Depends(model_server)]
