"""/v1/reviews."""

from fastapi import APIRouter

router = APIRouter(tags=["reviews"])
