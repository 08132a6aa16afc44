"""Persistence: tasks and their durable event log (SQLite by default, SQLAlchemy Core)."""

from store import migrate
from store.dburl import StoreError
from store.store import Store, TaskRow

__all__ = ["Store", "StoreError", "TaskRow", "migrate"]
