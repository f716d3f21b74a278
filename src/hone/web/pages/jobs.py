"""The jobs section of the dashboard."""

from fastapi import APIRouter

router = APIRouter()
