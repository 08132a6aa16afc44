"""A task's runs: the first one, follow-ups and resumes (see ``store.schema.runs``)."""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec
from sqlalchemy import Engine, func, insert, select, update

from store.schema import runs

# A run's kind, declared once: the REST answer (gateway.models.RunOut) has the same type.
RunKind = Literal["start", "retry", "follow_up", "resume"]
RUN_KINDS: tuple[str, ...] = get_args(RunKind)


class RunRow(msgspec.Struct, kw_only=True):
    """One run of a task.

    The REST answer's ``RunOut`` (gateway/models.py) is this row without ``task_id`` and with
    ``run_no`` as ``run``; tests/gateway/test_models.py checks that the two agree.
    """

    task_id: str
    run_no: int
    kind: RunKind
    requirement: str
    status: str
    first_event_id: int | None
    last_event_id: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None


class Runs:
    """Reads and writes of the runs table over the store's engines."""

    def __init__(self, write: Engine, read: Engine) -> None:
        self._write = write
        self._read = read

    def add(self, task_id: str, kind: str, requirement: str, status: str, now: str) -> RunRow:
        """Append the task's next run."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {RUN_KINDS}, not {kind!r}")
        with self._write.begin() as c:
            last = c.execute(
                select(func.max(runs.c.run_no)).where(runs.c.task_id == task_id)
            ).scalar_one_or_none()
            values = dict(
                task_id=task_id,
                run_no=int(last or 0) + 1,
                kind=kind,
                requirement=requirement,
                status=status,
                created_at=now,
            )
            c.execute(insert(runs).values(**values))
        found = self.latest(task_id)
        assert found is not None
        return found

    def update(self, task_id: str, run_no: int, **values: Any) -> None:
        with self._write.begin() as c:
            where = (runs.c.task_id == task_id, runs.c.run_no == run_no)
            c.execute(update(runs).where(*where).values(**values))

    def list(self, task_id: str) -> list[RunRow]:
        with self._read.connect() as c:
            rows = c.execute(
                select(runs).where(runs.c.task_id == task_id).order_by(runs.c.run_no)
            ).mappings()
            return [RunRow(**dict(r)) for r in rows]

    def latest(self, task_id: str) -> RunRow | None:
        with self._read.connect() as c:
            r = (
                c.execute(
                    select(runs)
                    .where(runs.c.task_id == task_id)
                    .order_by(runs.c.run_no.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return RunRow(**dict(r)) if r else None
