"""``GET /api/tasks/{id}/archive``: the task's workspace as a zip, streamed.

Built race-free: every directory and file is opened relative to its parent's descriptor with
``O_NOFOLLOW``, starting from the workspace's own descriptor, so a symlink swapped in while we
walk is refused by the kernel instead of followed out of the workspace. Symlinks, hard links
(a second name for a file that may live outside), special files and hidden paths (MetaGPT's
private state, as in gateway/files.py) are skipped.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from core.workspace import _DIR_FLAGS, _FILE_FLAGS, _servable
from gateway.api import SettingsDep, StoreDep, _task_or_404
from gateway.files import from_store
from store.files import TaskFiles

router = APIRouter(prefix="/api")
MAX_FILES = 5_000
CHUNK = 64 * 1024


class _Sink:
    """A write-only stream whose bytes the generator hands out as they are produced."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes, /) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _walk(
    dir_fd: int, prefix: str, budget: list[int], root_dev: int
) -> Iterator[tuple[str, int, os.stat_result]]:
    """(path, open file descriptor, its stat) for each regular single-link file, sorted."""
    for name in sorted(os.listdir(dir_fd)):
        if name.startswith(".") or budget[0] <= 0:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we walk
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # replaced by a link or gone: not ours to follow
            try:
                yield from _walk(sub, f"{prefix}{name}/", budget, root_dev)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            opened = os.fstat(fd)
            # What we opened must be what GET /files serves: a regular file with one name (no
            # hard link), on the workspace's device.
            if not _servable(opened, root_dev):
                os.close(fd)
                continue
            budget[0] -= 1
            yield f"{prefix}{name}", fd, opened


def zip_stream(root: Path) -> Iterator[bytes]:
    """The zip of ``root``'s visible files, produced a piece at a time."""
    sink = _Sink()
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        root_fd = None
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if root_fd is not None:
            try:
                root_dev = os.fstat(root_fd).st_dev
                for path, fd, st in _walk(root_fd, "", [MAX_FILES], root_dev):
                    with contextlib.closing(os.fdopen(fd, "rb")) as src:
                        info = zipfile.ZipInfo(path, time.localtime(st.st_mtime)[:6])
                        info.compress_type = zipfile.ZIP_DEFLATED
                        info.external_attr = (stat.S_IFREG | 0o644) << 16
                        with zf.open(info, "w") as dst:
                            while chunk := src.read(CHUNK):
                                dst.write(chunk)
                                if sink.offset and len(sink.parts) > 16:
                                    yield sink.take()
                    yield sink.take()
            finally:
                os.close(root_fd)
    yield sink.take()


def zip_shared(shared: TaskFiles, task_id: str) -> Iterator[bytes]:
    """The zip of a task's files as its node copied them into the database (docs/deploy.md),
    one file read at a time."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for entry in (shared.list(task_id) or [])[:MAX_FILES]:
            path = str(entry["path"])
            found = shared.read_with_mtime(task_id, path)
            if found is None:
                continue  # replaced by a newer run meanwhile
            data, mtime = found
            info = zipfile.ZipInfo(path, time.localtime(mtime)[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
            yield sink.take()
    yield sink.take()


@router.get("/tasks/{task_id}/archive", response_class=StreamingResponse)
async def task_archive(task_id: str, store: StoreDep, cfg: SettingsDep) -> StreamingResponse:
    """The whole workspace as a zip (what `GET /files` lists), streamed as it is built."""
    await _task_or_404(store, task_id)
    name = f"task-{task_id[:8]}.zip"
    workspace, shared = cfg.task_dir(task_id), await from_store(store, cfg, task_id)
    # Another node ran it: its files as that node copied them into the database.
    body = zip_shared(shared, task_id) if shared is not None else zip_stream(workspace)
    return StreamingResponse(
        body,  # a sync iterator: Starlette runs it in a thread
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
