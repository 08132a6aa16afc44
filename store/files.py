"""A task's generated files in the database, for gateways on other nodes (docs/deploy.md)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from store.schema import task_files

MAX_FILE_BYTES = 8 << 20  # a bigger file stays on its node only
MAX_TASK_BYTES = 64 << 20
MAX_FILES = 5_000  # as many as the files API lists


class TaskFiles:
    """The ``task_files`` table: a snapshot of a task's workspace, replaced at each run's end."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def replace(self, task_id: str, files: Sequence[tuple[str, float, bytes]]) -> None:
        """The task's files are now ``(path, mtime, data)``, in one transaction."""
        with self._engine.begin() as c:
            c.execute(delete(task_files).where(task_files.c.task_id == task_id))
            if files:
                rows = [
                    {"task_id": task_id, "path": p, "size": len(d), "mtime": m, "data": d}
                    for p, m, d in files
                ]
                c.execute(insert(task_files), rows)

    def list(self, task_id: str) -> list[dict[str, object]] | None:
        """``[{"path", "size"}]`` sorted by path; None if no snapshot was ever taken."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(task_files.c.path, task_files.c.size)
                .where(task_files.c.task_id == task_id)
                .order_by(task_files.c.path)
            ).all()
        return [{"path": p, "size": int(s)} for p, s in rows] if rows else None

    def read(self, task_id: str, path: str) -> bytes | None:
        found = self.read_with_mtime(task_id, path)
        return found[0] if found is not None else None

    def read_with_mtime(self, task_id: str, path: str) -> tuple[bytes, float] | None:
        """A file's bytes and modification time, in one round trip (a zip needs both)."""
        with self._engine.connect() as c:
            row = c.execute(
                select(task_files.c.data, task_files.c.mtime).where(
                    task_files.c.task_id == task_id, task_files.c.path == path
                )
            ).one_or_none()
        return (bytes(row[0]), float(row[1] or 0)) if row is not None else None
