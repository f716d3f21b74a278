"""GET /health: liveness and load, open without an API key (for load balancers and `hone serve` checks)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from hone.api.deps import CurrentServer
from hone.api.protocol import Health

router = APIRouter(tags=["admin"])


@router.get("/health")
async def health(server: CurrentServer) -> Health:
    """The served base, requests in flight and what the engine is doing."""
    return Health(model=server.base_id, in_flight=server.requests.in_flight, **asdict(server.engine.stats()))
