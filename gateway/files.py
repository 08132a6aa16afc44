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

import anyio
from fastapi import APIRouter, HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core.settings import Settings
from core.workspace import list_files, open_inside
from gateway.api import SettingsDep, StoreDep, _task_or_404
from store import Store
from store.files import TaskFiles, local_is_current

router = APIRouter(prefix="/api")
CHUNK = 256 * 1024


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


async def from_store(store: Store, cfg: Settings, task_id: str) -> TaskFiles | None:
    """The shared store (several nodes), unless this node's disk has the task's workspace as
    it is now: another node ran it, or ran a later run of it (docs/deploy.md)."""
    shared = store.files
    if shared is None:
        return None
    current = await anyio.to_thread.run_sync(
        local_is_current, shared, cfg.data_dir, cfg.task_dir(task_id), task_id
    )
    return None if current else shared


@router.get("/tasks/{task_id}/files")
async def task_files(task_id: str, store: StoreDep, cfg: SettingsDep) -> dict[str, object]:
    await _task_or_404(store, task_id)
    workspace = cfg.task_dir(task_id)
    shared = await from_store(store, cfg, task_id)
    if shared is not None:
        files = await anyio.to_thread.run_sync(shared.list, task_id) or []
    else:
        files = await anyio.to_thread.run_sync(list_files, workspace)
    return {"task_id": task_id, "files": files}


@router.get("/tasks/{task_id}/files/{path:path}", response_model=None)
async def task_file(
    task_id: str, path: str, store: StoreDep, cfg: SettingsDep
) -> FdResponse | Response:
    await _task_or_404(store, task_id)
    workspace = cfg.task_dir(task_id)
    shared = await from_store(store, cfg, task_id)
    if shared is not None:
        data = await anyio.to_thread.run_sync(shared.read, task_id, path)
        if data is None:
            raise HTTPException(404, detail="File not found")
        return Response(data, media_type="text/plain; charset=utf-8")
    opened = await anyio.to_thread.run_sync(open_inside, workspace, path)
    if opened is None:
        raise HTTPException(404, detail="File not found")
    return FdResponse(*opened, media_type="text/plain; charset=utf-8")
