"""Artifacts: the files a task wrote into its workspace, confined to that workspace.

Hidden paths (any component starting with ``.``) are MetaGPT's private state (its config, logs,
git metadata) and are never listed or served.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import anyio
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from gateway.api import SettingsDep, StoreDep, _task_or_404

router = APIRouter(prefix="/api")
MAX_LISTED = 5_000


def _visible(rel: PurePosixPath) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def list_files(root: Path) -> list[dict[str, object]]:
    """Regular files under ``root`` (not following symlinks), sorted by path."""
    found: list[dict[str, object]] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if not _visible(rel) or full.is_symlink() or not full.is_file():
                continue
            found.append({"path": str(rel), "size": full.stat().st_size})
            if len(found) >= MAX_LISTED:
                return found
    return found


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None if it would leave it."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or not _visible(rel):
        return None
    candidate = root / rel
    # Refuse symlinks anywhere on the way, and anything resolving outside the root.
    probe = root
    for part in rel.parts:
        probe = probe / part
        if probe.is_symlink():
            return None
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return None
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        return None
    return resolved


@router.get("/tasks/{task_id}/files")
async def task_files(task_id: str, store: StoreDep, cfg: SettingsDep) -> dict[str, object]:
    await _task_or_404(store, task_id)
    files = await anyio.to_thread.run_sync(list_files, cfg.task_dir(task_id))
    return {"task_id": task_id, "files": files}


@router.get("/tasks/{task_id}/files/{path:path}")
async def task_file(task_id: str, path: str, store: StoreDep, cfg: SettingsDep) -> FileResponse:
    await _task_or_404(store, task_id)
    found = await anyio.to_thread.run_sync(resolve_inside, cfg.task_dir(task_id), path)
    if found is None:
        raise HTTPException(404, detail="File not found")
    return FileResponse(found, media_type="text/plain; charset=utf-8")
