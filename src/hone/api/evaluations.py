"""/v1/evaluations."""

from fastapi import APIRouter

router = APIRouter(tags=["evaluations"])
