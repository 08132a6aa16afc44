"""A task's workspace across nodes: shared at each checkpoint and run end, restored on claim.

PostgreSQL only (SQLite is one node: nothing here runs). The supervisor (trusted) copies the
workspace into ``task_files`` (store/files.py), the task never does:

- **When**: whenever the task's serialized team (``.metastream/team/run.json``, rewritten after
  each completed round) changed, at most every ``interval`` seconds, and once more at the run's
  end; in threads of their own (two), never on the event loop. The supervisor's tick looks (a
  stat, in those threads): no message from the task is trusted or needed. Only files whose size
  or mtime changed since the last share are sent. A node lost mid-run thus leaves its last
  completed round in the store.
- **What**: every regular one-link file of the workspace, hidden ones too (the serialized team,
  the project's ``.git`` and ``.dependencies.json``, which MetaGPT's incremental mode reads),
  except ``.metagpt/`` (MetaGPT's config and logs, rebuilt by every run); within the bounds of
  store.files. The files API never shows the hidden ones.
- **Fencing**: a share carries its run's epoch and is refused once the run was taken over.
- **Restore**: before a run starts, a node whose workspace is missing or older than the stored
  snapshot replaces it with the snapshot. "Older" is told by a marker this node keeps outside
  the workspace (``<data>/shares/<task id>``, store.files): the snapshot generation its disk is
  known to be at. It is written after a restore and after each share a run here made; it is
  removed when a run here was taken over (its later local writes were refused by the store).
  Marker equal to the stored generation: this disk is current (it may hold more: files too big
  to share, MetaGPT's logs); anything else: restore. The gateway serves a task's files from
  this disk by the same rule, else from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc as sa_exc

from core.clock import utcnow
from core.settings import Settings
from core.workspace import open_inside, walk_files
from runner.metagpt_flow.checkpoint import RUN_JSON, checkpoint_dir, has_checkpoint
from store import Store, StoreError
from store.files import (
    CHECKPOINT,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TASK_BYTES,
    read_marker,
    visible,
    write_marker,
)

if TYPE_CHECKING:
    from runner.supervisor import Running

log = logging.getLogger("metastream.share")
SKIP = (".metagpt",)  # rebuilt by every run: MetaGPT's config file and its own logs
SHARE_INTERVAL = 2.0  # seconds between two checkpoint shares of one task, at least
RUN_REL, TEAM_REL = CHECKPOINT[1], CHECKPOINT[0]
Stat = tuple[int, float]  # size, mtime
T = TypeVar("T")


@dataclass
class Collected:
    """What a share sends: changed files, removed paths, and the workspace as it is now."""

    put: list[tuple[str, float, bytes]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    now: dict[str, Stat] = field(default_factory=dict)
    skipped: int = 0
    consistent: bool = True  # the serialized team's two files are of one save


def collect(workspace: Path, base: dict[str, Stat], final: bool = False) -> Collected:
    """The files of ``workspace`` that differ from ``base`` (what the store holds).

    The serialized team is two files, ``team.json`` written before ``run.json``: read
    ``run.json`` first, and a ``team.json`` newer than it is of the next save, half written
    (``consistent`` False: try again). At a run's end (``final``) the process is gone and
    cannot finish that save: the stored pair is kept instead.
    """
    out = Collected()
    entries = walk_files(workspace, hidden=True, skip=SKIP, limit=4 * MAX_FILES)
    # The serialized team first, then what clients see, then the rest: what the bounds keep.
    rank = {RUN_REL: 0, TEAM_REL: 1}
    entries.sort(key=lambda e: (rank.get(e[0], 2 if visible(e[0]) else 3), e[0]))
    total = 0
    for rel, st in entries:
        if len(out.now) >= MAX_FILES or st.st_size > MAX_FILE_BYTES:
            out.skipped += 1
            continue
        if total + st.st_size > MAX_TASK_BYTES:
            out.skipped += 1
            continue
        if base.get(rel) == (st.st_size, st.st_mtime):
            out.now[rel] = (st.st_size, st.st_mtime)
            total += st.st_size
            continue
        read = _read(workspace, rel)
        if read is None:
            continue  # gone or replaced meanwhile: the next share sees it
        data, mtime = read
        out.now[rel] = (len(data), mtime)
        out.put.append((rel, mtime, data))
        total += len(data)
    team, run = out.now.get(TEAM_REL), out.now.get(RUN_REL)
    if team is not None and run is not None and team[1] > run[1]:
        out.consistent = False
        if final:  # keep the stored pair (or none), never a mixed one
            out.put = [p for p in out.put if p[0] not in CHECKPOINT]
            for rel in CHECKPOINT:
                if rel in base:
                    out.now[rel] = base[rel]
                else:
                    out.now.pop(rel, None)
            out.consistent = True
    out.drop = sorted(set(base) - set(out.now))
    return out


def _read(workspace: Path, rel: str) -> tuple[bytes, float] | None:
    """The file's bytes and the mtime of what was read (its own inode's)."""
    opened = open_inside(workspace, rel, hidden=True)
    if opened is None:
        return None
    fd, size = opened
    try:
        if size > MAX_FILE_BYTES:
            return None
        mtime = os.fstat(fd).st_mtime
        data = os.pread(fd, size, 0)
        return (data, mtime) if len(data) == size else None
    finally:
        os.close(fd)


def restore(workspace: Path, rows: Iterable[tuple[str, float, bytes]]) -> tuple[int, int]:
    """Replace ``workspace`` with ``rows`` (built aside, then swapped in): files, bytes."""
    parent = workspace.parent
    staging, old = parent / f".{workspace.name}.restore", parent / f".{workspace.name}.old"
    for d in (staging, old):
        if d.exists():
            shutil.rmtree(d)
    staging.mkdir(parents=True, mode=0o700)
    try:
        files, size = _write_all(staging, rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if workspace.exists():
        os.rename(workspace, old)
    os.rename(staging, workspace)
    if old.exists():
        shutil.rmtree(old)
    return files, size


def _write_all(top: Path, rows: Iterable[tuple[str, float, bytes]]) -> tuple[int, int]:
    files = size = 0
    for path, mtime, data in rows:
        rel = PurePosixPath(path)
        if "\x00" in path or rel.is_absolute() or not rel.parts or ".." in rel.parts:
            raise OSError(f"a stored file has a bad path: {path!r}")
        target = top.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.utime(target, (mtime, mtime), follow_symlinks=False)
        files, size = files + 1, size + len(data)
    return files, size


@dataclass
class _Run:
    """One run's sharing: its epoch, what the store holds, the generation it is at."""

    epoch: int
    run_no: int | None = None
    base: dict[str, Stat] | None = None
    generation: int | None = None  # the store's snapshot this workspace is at, as far as known
    stamp: tuple[int, int] | None = None  # run.json's (inode, mtime ns) last shared
    due: float = 0.0
    busy: asyncio.Task[None] | None = None
    closed: bool = False
    fenced: bool = False  # a share was refused: the run was taken over


class WorkspaceShare:
    """The supervisor's part: restore before a launch, share on checkpoints and at the end."""

    def __init__(
        self,
        cfg: Settings,
        store: Store,
        node: str,
        interval: float = SHARE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.store, self.node = cfg, store, node
        self.files = store.files  # None on SQLite: one node, nothing to share
        self.interval = interval
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Threads of their own: copying a large workspace must not hold up the supervisor's
        # database calls (asyncio's default pool, a few threads on a small machine).
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="share")

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the marker: which snapshot this node's workspace is at ---------------------------

    def marker(self, task_id: str) -> int | None:
        return read_marker(self.cfg.data_dir, task_id)

    def _set_marker(self, task_id: str, generation: int | None) -> None:
        write_marker(self.cfg.data_dir, task_id, generation)

    def _local_current(self, task_id: str, generation: int) -> bool:
        return self.marker(task_id) == generation and self.cfg.task_dir(task_id).is_dir()

    # --- before a run ---------------------------------------------------------------------

    async def before_launch(self, task_id: str, epoch: int | None, run_no: int) -> None:
        """Bring the workspace up to the stored snapshot (raises StoreError, OSError)."""
        if self.files is None or epoch is None:
            return
        run = self._runs[task_id] = _Run(epoch=epoch, run_no=run_no)
        run.generation = await self._in_pool(self._prepare, task_id)

    def _prepare(self, task_id: str) -> int | None:
        assert self.files is not None
        try:
            snap = self.files.snapshot(task_id)
            if snap is None or self._local_current(task_id, snap.generation):
                return snap.generation if snap is not None else None
            began = time.perf_counter()
            self._set_marker(task_id, None)  # half restored is no known generation
            files, size = restore(self.cfg.task_dir(task_id), self.files.read_all(task_id))
        except sa_exc.SQLAlchemyError as exc:
            why = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise StoreError(
                f"the task's workspace could not be read from the store: {why}"
            ) from exc
        self._set_marker(task_id, snap.generation)
        log.info(
            "task %s: workspace restored from the store (generation %d of node %s, run %d: "
            "%d files, %d bytes, %.0f ms)",
            task_id, snap.generation, snap.node, snap.run_no, files, size,
            (time.perf_counter() - began) * 1000,
        )  # fmt: skip
        return snap.generation

    def can_resume(self, task_id: str) -> bool:
        """Whether the workspace the next run gets holds a serialized team."""
        local = self.cfg.task_dir(task_id)
        if self.files is None:
            return has_checkpoint(local)
        snap = self.files.snapshot(task_id)
        if snap is None or self._local_current(task_id, snap.generation):
            return has_checkpoint(local)
        return self.files.has_checkpoint(task_id)

    # --- during a run ---------------------------------------------------------------------

    def poll(self, runs: Iterable[Running]) -> None:
        """Share the runs whose serialized team changed (each at most every ``interval``)."""
        if self.files is None:
            return
        now = self._clock()
        for r in runs:
            if r.epoch is None or r.finished:
                continue
            run = self._runs.get(r.task_id)
            if run is None:  # re-adopted after a restart of this supervisor
                run = self._runs[r.task_id] = _Run(epoch=r.epoch)
            if run.closed or run.busy is not None or now < run.due:
                continue
            run.busy = asyncio.create_task(self._checkpointed(r.task_id, run))
            self._background.add(run.busy)
            run.busy.add_done_callback(self._background.discard)

    async def _checkpointed(self, task_id: str, run: _Run) -> None:
        try:
            await self._in_pool(self._share_if_changed, task_id, run)
        except (OSError, StoreError, sa_exc.SQLAlchemyError) as exc:
            run.due = self._clock() + self.interval  # a database down: not every tick
            log.warning("task %s: checkpoint not shared (next try later): %s", task_id, exc)
        finally:
            run.busy = None

    def _share_if_changed(self, task_id: str, run: _Run) -> None:
        try:
            st = os.stat(checkpoint_dir(self.cfg.task_dir(task_id)) / RUN_JSON)
        except OSError:
            return  # no round completed yet
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == run.stamp:
            return
        if self._share(task_id, run, final=False):
            run.stamp = stamp
            run.due = self._clock() + self.interval

    def _share(self, task_id: str, run: _Run, final: bool) -> bool:
        """One share; False if it must be tried again (or was refused)."""
        assert self.files is not None
        began = time.perf_counter()
        if run.base is None:
            run.base = self.files.stored(task_id)
        if run.run_no is None:
            row = self.store.get_task(task_id)
            run.run_no = row.run_count if row is not None else 0
        got = collect(self.cfg.task_dir(task_id), run.base, final)
        if not got.consistent:
            return False  # caught between team.json and run.json: at the next tick
        if not (got.put or got.drop or final):
            return True  # the store has it all already (a restored workspace, say)
        meta: dict[str, Any] = dict(
            run_no=run.run_no, node=self.node, final=final, taken_at=utcnow()
        )
        generation = self.files.share(task_id, run.epoch, got.put, got.drop, meta)
        if generation is None:
            run.closed = run.fenced = True
            log.warning("task %s: not shared: its run was taken over", task_id)
            return False
        run.base, run.generation = got.now, generation
        # This disk is at this generation (or past it, as the run goes on): what the gateway
        # here serves, and no restore if the next run starts here too.
        self._set_marker(task_id, generation)
        log.info(
            "task %s: workspace shared (generation %d%s): %d changed files, %d bytes, "
            "%d removed, %d kept on this node only, %.0f ms",
            task_id, generation, ", run end" if final else "", len(got.put),
            sum(len(d) for _p, _m, d in got.put), len(got.drop), got.skipped,
            (time.perf_counter() - began) * 1000,
        )  # fmt: skip
        return True

    # --- after a run ----------------------------------------------------------------------

    async def at_end(self, task_id: str, epoch: int | None, ours: bool) -> None:
        """The run's last share (``ours``: the run still owned the task), and the marker."""
        if self.files is None or epoch is None:
            return
        run = self._runs.pop(task_id, None) or _Run(epoch=epoch)
        run.closed = True
        if run.busy is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await run.busy
        if ours and not run.fenced:
            try:
                await self._in_pool(self._share, task_id, run, True)
            except (OSError, StoreError, sa_exc.SQLAlchemyError) as exc:
                log.warning("task %s: files not shared at the run's end: %s", task_id, exc)
        # Ours: this workspace is at least as new as the last generation its run shared.
        # Taken over: what this node has is not what the store has (its later writes were
        # refused there), so the next run here restores.
        mark = None if run.fenced or not ours else run.generation
        await self._in_pool(self._set_marker, task_id, mark)
