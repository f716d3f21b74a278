"""hone's tables: API keys, captured requests and the feedback given on them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hone.store.db import Base


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands datetimes back without their time zone."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


class ApiKey(Base):
    """A server API key: only its salted scrypt hash is stored, plus a short prefix to find it by."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class CapturedRequest(Base):
    """One served request and its answer, with PII already masked in both."""

    __tablename__ = "captured_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    request_json: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    usage_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)


class Feedback(Base):
    """A rating and/or corrected answer for a captured response; the latest one counts."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("captured_requests.response_id", ondelete="CASCADE"),
                                             index=True)
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    correction: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
