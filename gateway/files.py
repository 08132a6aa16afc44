"""Artifacts: the files a task wrote into its workspace, confined to that workspace.

Hidden paths (any component starting with ``.``) are MetaGPT's private state (its config, logs,
git metadata) and are never listed or served.

A path is opened race-free: one component at a time from the workspace's directory fd, every
directory with ``O_DIRECTORY|O_NOFOLLOW`` and the file with ``O_NOFOLLOW``, so a symlink swapped
in anywhere on the way between a check and the open is never followed (a check-then-open on
path names could be raced with ``renameat2(RENAME_EXCHANGE)``). The response is streamed from
that fd, with the size taken from the same fd (``fstat``), so headers and body always agree.
Files with more than one hard link or on another device are refused: a hard link made inside
the workspace to a file elsewhere would otherwise be served.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath

import anyio
from fastapi import APIRouter, HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api import SettingsDep, StoreDep, _task_or_404

router = APIRouter(prefix="/api")
MAX_LISTED = 5_000
CHUNK = 256 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted must not hang the worker thread.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Whatever the OS says about a bad name is "not found" to the client.
_NOT_FOUND_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EACCES,
    errno.EPERM,
    errno.ENXIO,
    errno.EISDIR,
    errno.EINVAL,
}


def _visible(rel: PurePosixPath) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def _servable(st: os.stat_result, root_dev: int) -> bool:
    """A regular file with one link, on the workspace's own device."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_dev == root_dev


def list_files(root: Path) -> list[dict[str, object]]:
    """Servable files under ``root`` (not following symlinks), sorted by path."""
    found: list[dict[str, object]] = []
    try:
        root_dev = os.stat(root, follow_symlinks=False).st_dev
    except OSError:
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if not _visible(rel):
                continue
            try:
                st = os.stat(full, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if not _servable(st, root_dev):
                continue
            found.append({"path": str(rel), "size": st.st_size})
            if len(found) >= MAX_LISTED:
                return found
    return found


def open_inside(root: Path, relative: str) -> tuple[int, int] | None:
    """``(fd, size)`` of the servable file ``relative`` names inside ``root``, or None."""
    rel = PurePosixPath(relative)
    if (
        "\x00" in relative
        or rel.is_absolute()
        or not rel.parts
        or ".." in rel.parts
        or not _visible(rel)
    ):
        return None
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR_FLAGS))
        root_dev = os.fstat(fds[0]).st_dev
        for part in rel.parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        fd = os.open(rel.parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
    except OSError as exc:
        if exc.errno in _NOT_FOUND_ERRNOS:
            return None
        raise
    finally:
        for d in fds:
            os.close(d)
    st = os.fstat(fd)
    if not _servable(st, root_dev):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd, st.st_size


class FdResponse(Response):
    """Streams exactly ``size`` bytes of an open file and closes it, however the send ends."""

    def __init__(self, fd: int, size: int, media_type: str) -> None:
        # Not Response.__init__: there is no body in memory; these are what FastAPI reads.
        self.fd = fd
        self.size = size
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", media_type.encode()),
            (b"content-length", str(size).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            offset = 0
            while offset < self.size:
                want = min(CHUNK, self.size - offset)
                chunk = await anyio.to_thread.run_sync(os.pread, self.fd, want, offset)
                if not chunk:
                    # The file shrank after fstat: break the response off rather than
                    # send a body shorter than its Content-Length as if it were whole.
                    raise OSError(errno.EIO, "file shrank while being served")
                offset += len(chunk)
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": offset < self.size}
                )
            if self.size == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)


@router.get("/tasks/{task_id}/files")
async def task_files(task_id: str, store: StoreDep, cfg: SettingsDep) -> dict[str, object]:
    await _task_or_404(store, task_id)
    files = await anyio.to_thread.run_sync(list_files, cfg.task_dir(task_id))
    return {"task_id": task_id, "files": files}


@router.get("/tasks/{task_id}/files/{path:path}", response_model=None)
async def task_file(task_id: str, path: str, store: StoreDep, cfg: SettingsDep) -> FdResponse:
    await _task_or_404(store, task_id)
    opened = await anyio.to_thread.run_sync(open_inside, cfg.task_dir(task_id), path)
    if opened is None:
        raise HTTPException(404, detail="File not found")
    return FdResponse(*opened, media_type="text/plain; charset=utf-8")
