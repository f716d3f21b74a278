"""/v1/datasets."""

from fastapi import APIRouter

router = APIRouter(tags=["datasets"])
