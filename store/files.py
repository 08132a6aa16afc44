"""A task's workspace in the database: served by every gateway, restored by any node.

Its supervisor shares the workspace at each checkpoint and at each run's end
(runner/workspace_share.py): only the files that changed since the last share are sent, and
the share is refused once the run it comes from was taken over (its epoch moved on).
Hidden paths (a component starting with ``.``: the serialized team, the project's ``.git``)
travel with the rest for the next run, and are never listed nor read for the files API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from store.schema import task_files, task_shares, tasks

MAX_FILE_BYTES = 8 << 20  # a bigger file stays on its node only
MAX_TASK_BYTES = 64 << 20
MAX_FILES = 5_000  # as many as the files API lists
CHECKPOINT = (".metastream/team/team.json", ".metastream/team/run.json")


def visible(path: str) -> bool:
    """Whether the files API may show ``path`` (core.workspace's rule: no hidden component)."""
    return not any(part.startswith(".") for part in PurePosixPath(path).parts)


def marker_path(data_dir: Path, task_id: str) -> Path:
    """Where a node records which snapshot generation its copy of the workspace is at."""
    return data_dir / "shares" / task_id


def read_marker(data_dir: Path, task_id: str) -> int | None:
    try:
        return int(marker_path(data_dir, task_id).read_text())
    except (OSError, ValueError):
        return None


def write_marker(data_dir: Path, task_id: str, generation: int | None) -> None:
    """Record (None: forget) the generation this node's workspace of the task is at."""
    path = marker_path(data_dir, task_id)
    if generation is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(generation))
    os.replace(tmp, path)


def local_is_current(files: TaskFiles, data_dir: Path, workspace: Path, task_id: str) -> bool:
    """Whether this node's copy of the workspace is at least as new as the store's."""
    if not workspace.is_dir():
        return False
    snap = files.snapshot(task_id)
    return snap is None or read_marker(data_dir, task_id) == snap.generation


@dataclass(frozen=True)
class Snapshot:
    """Which share of a task's workspace ``task_files`` holds."""

    generation: int
    epoch: int
    run_no: int
    node: str
    final: bool  # taken at its run's end (not at a checkpoint)
    taken_at: str
    files: int
    bytes: int


class TaskFiles:
    """The ``task_files`` and ``task_shares`` tables (PostgreSQL only)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def share(
        self,
        task_id: str,
        epoch: int,
        put: Sequence[tuple[str, float, bytes]],
        drop: Sequence[str],
        meta: dict[str, object],
    ) -> int | None:
        """Write changed files ``(path, mtime, data)``, remove ``drop``: the new generation.

        None (nothing written) when the task's epoch is no longer ``epoch``: its run was
        taken over, and the newer run's snapshot must stand. The task row is share-locked
        for the transaction, so a takeover waits for a share under way.
        """
        with self._engine.begin() as c:
            now = c.execute(
                select(tasks.c.epoch).where(tasks.c.id == task_id).with_for_update(read=True)
            ).scalar_one_or_none()
            if now != epoch:
                return None
            if drop:
                c.execute(
                    delete(task_files).where(
                        task_files.c.task_id == task_id, task_files.c.path.in_(list(drop))
                    )
                )
            for batch in _batches(put):
                ins = pg_insert(task_files).values(
                    [
                        {"task_id": task_id, "path": p, "size": len(d), "mtime": m, "data": d}
                        for p, m, d in batch
                    ]
                )
                c.execute(
                    ins.on_conflict_do_update(
                        index_elements=[task_files.c.task_id, task_files.c.path],
                        set_={k: ins.excluded[k] for k in ("size", "mtime", "data")},
                    )
                )
            files, size = c.execute(
                select(func.count(), func.coalesce(func.sum(task_files.c.size), 0)).where(
                    task_files.c.task_id == task_id
                )
            ).one()
            row = {**meta, "epoch": epoch, "files": int(files), "bytes": int(size)}
            ins = pg_insert(task_shares).values(task_id=task_id, generation=1, **row)
            generation = c.execute(
                ins.on_conflict_do_update(
                    index_elements=[task_shares.c.task_id],
                    set_={"generation": task_shares.c.generation + 1, **row},
                ).returning(task_shares.c.generation)
            ).scalar_one()
        return int(generation)

    def replace(self, task_id: str, files: Sequence[tuple[str, float, bytes]]) -> None:
        """The task's files are now ``(path, mtime, data)`` (no snapshot row; tests, tools)."""
        with self._engine.begin() as c:
            c.execute(delete(task_files).where(task_files.c.task_id == task_id))
            if files:
                rows = [
                    {"task_id": task_id, "path": p, "size": len(d), "mtime": m, "data": d}
                    for p, m, d in files
                ]
                c.execute(pg_insert(task_files), rows)

    def snapshot(self, task_id: str) -> Snapshot | None:
        with self._engine.connect() as c:
            row = (
                c.execute(select(task_shares).where(task_shares.c.task_id == task_id))
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return Snapshot(**{k: v for k, v in row.items() if k != "task_id"})

    def stored(self, task_id: str) -> dict[str, tuple[int, float]]:
        """Every stored file, hidden ones too: path -> (size, mtime)."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(task_files.c.path, task_files.c.size, task_files.c.mtime).where(
                    task_files.c.task_id == task_id
                )
            ).all()
        return {str(p): (int(s), float(m)) for p, s, m in rows}

    def has_checkpoint(self, task_id: str) -> bool:
        """Whether the stored workspace holds a serialized team (runner.metagpt_flow)."""
        with self._engine.connect() as c:
            n = c.execute(
                select(func.count()).where(
                    task_files.c.task_id == task_id, task_files.c.path.in_(CHECKPOINT)
                )
            ).scalar_one()
        return n == len(CHECKPOINT)

    def read_all(self, task_id: str) -> Iterator[tuple[str, float, bytes]]:
        """Every stored file, hidden ones too, one row at a time (a restore)."""
        with self._engine.connect() as c:
            result = c.execution_options(stream_results=True, yield_per=64).execute(
                select(task_files.c.path, task_files.c.mtime, task_files.c.data)
                .where(task_files.c.task_id == task_id)
                .order_by(task_files.c.path)
            )
            for p, m, d in result:
                yield str(p), float(m or 0), bytes(d)

    def list(self, task_id: str) -> list[dict[str, object]] | None:
        """``[{"path", "size"}]`` of the servable files, by path; None if never shared."""
        with self._engine.connect() as c:
            rows = c.execute(
                select(task_files.c.path, task_files.c.size)
                .where(task_files.c.task_id == task_id)
                .order_by(task_files.c.path)
            ).all()
        shown = [{"path": p, "size": int(s)} for p, s in rows if visible(p)]
        return shown if rows else None

    def read(self, task_id: str, path: str) -> bytes | None:
        found = self.read_with_mtime(task_id, path)
        return found[0] if found is not None else None

    def read_with_mtime(self, task_id: str, path: str) -> tuple[bytes, float] | None:
        """A servable file's bytes and modification time, in one round trip (a zip needs both)."""
        if not visible(path):
            return None  # MetaGPT's private state: kept for the next run, never served
        with self._engine.connect() as c:
            row = c.execute(
                select(task_files.c.data, task_files.c.mtime).where(
                    task_files.c.task_id == task_id, task_files.c.path == path
                )
            ).one_or_none()
        return (bytes(row[0]), float(row[1] or 0)) if row is not None else None


def _batches(
    put: Sequence[tuple[str, float, bytes]], limit: int = MAX_FILE_BYTES
) -> Iterator[Sequence[tuple[str, float, bytes]]]:
    """Statements of at most ``limit`` bytes of data (or one file): bounded statement sizes."""
    start, size = 0, 0
    for i, (_p, _m, d) in enumerate(put):
        if i > start and size + len(d) > limit:
            yield put[start:i]
            start, size = i, 0
        size += len(d)
    if start < len(put):
        yield put[start:]
