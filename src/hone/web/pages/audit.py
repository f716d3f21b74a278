"""The audit section of the dashboard."""

from fastapi import APIRouter

router = APIRouter()
