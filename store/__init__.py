"""Persistence: tasks and their durable event log (SQLite by default, SQLAlchemy Core)."""

from store.store import Store, TaskRow

__all__ = ["Store", "TaskRow"]
