"""A task process's side of a server database: its events and its own outcome, nothing else.

The task connects with the URL its supervisor put in its spec: normally its own role
(store.taskroles), which row-level security confines to this task's rows of ``events`` and
``task_meta``, and which may not ``COPY`` (PostgreSQL refuses COPY FROM under RLS), so its
batches go as one ``INSERT ... SELECT unnest``. It never touches ``tasks`` or ``runs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from store import pg
from store.dburl import engine_url
from store.schema import events, task_meta
from store.taskroles import PREFIX


class TaskRows:
    """Append-only access to one task's events and its ``task_meta`` record."""

    local_commits = False  # a server round trip per commit: the outbox groups them

    def __init__(self, url: str, epoch: int | None = None) -> None:
        self._url = url
        # Two connections at most: the event writer and the outcome writer (README: sizing).
        # ``epoch``: the run's fencing epoch (several nodes; store.pg.make_engine).
        self._engine = pg.make_engine(url, pool_size=2, max_overflow=0, epoch=epoch)
        own_role = (engine_url(url).username or "").startswith(PREFIX)
        self._events = pg.EventTable(self._engine, url, copy=not own_role)

    def open_events(self, task_id: str) -> None:
        """Nothing to create: the table exists."""

    def append_events(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        if batch:
            self._events.append(task_id, batch, bodies)

    def last_event_id(self, task_id: str) -> int:
        q = select(func.max(events.c.event_id)).where(events.c.task_id == task_id)

        def read() -> int:
            with self._engine.connect() as c:
                return int(c.execute(q).scalar_one_or_none() or 0)

        return pg.retrying(self._url, read)

    def record(self, task_id: str, values: Mapping[str, object]) -> None:
        """Store outcome fields (``exit_code``, ``error``, ``state_version``), newest wins."""
        rows = [
            {"task_id": task_id, "key": k, "value": msgspec.json.encode(v)}
            for k, v in values.items()
        ]
        stmt = insert(task_meta).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[task_meta.c.task_id, task_meta.c.key],
            set_={"value": stmt.excluded.value},
        )

        def write() -> None:
            with self._engine.begin() as c:
                c.execute(stmt)

        pg.retrying(self._url, write)

    def close(self) -> None:
        self._engine.dispose()
