"""The declarative base every hone table derives from; its metadata is what the migrations must produce."""

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every hone table."""
