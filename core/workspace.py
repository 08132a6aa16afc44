"""A task's workspace as it may be shown: servable files, opened race-free.

Hidden paths (any component starting with ``.``) are MetaGPT's private state and are never
listed or served. A path is opened one component at a time from the workspace's directory fd,
every directory with ``O_DIRECTORY|O_NOFOLLOW`` and the file with ``O_NOFOLLOW``, so a symlink
swapped in on the way is never followed. Files with more than one hard link or on another
device are refused. Used by the gateway (files API) and the supervisor (copying a finished
task's files into a shared database for other nodes' gateways).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

MAX_LISTED = 5_000
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
    return [{"path": rel, "size": st.st_size} for rel, st in walk_files(root)]


def walk_files(
    root: Path, hidden: bool = False, skip: tuple[str, ...] = (), limit: int = MAX_LISTED
) -> list[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of the regular one-link files under ``root``, sorted.

    ``hidden``: hidden paths too (the supervisor copying a workspace for another node; never
    the files API); ``skip``: top-level entries left out.
    """
    found: list[tuple[str, os.stat_result]] = []
    try:
        root_dev = os.stat(root, follow_symlinks=False).st_dev
    except OSError:
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        top = Path(dirpath) == root
        dirnames[:] = sorted(
            d for d in dirnames if (hidden or not d.startswith(".")) and not (top and d in skip)
        )
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if (not hidden and not _visible(rel)) or (top and name in skip):
                continue
            try:
                st = os.stat(full, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if not _servable(st, root_dev):
                continue
            found.append((str(rel), st))
            if len(found) >= limit:
                return found
    return found


def open_inside(root: Path, relative: str, hidden: bool = False) -> tuple[int, int] | None:
    """``(fd, size)`` of the servable file ``relative`` names inside ``root``, or None.

    ``hidden``: a hidden path may be opened too (the supervisor's copy, never the files API).
    """
    rel = PurePosixPath(relative)
    if (
        "\x00" in relative
        or rel.is_absolute()
        or not rel.parts
        or ".." in rel.parts
        or not (hidden or _visible(rel))
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


def read_inside(root: Path, relative: str, limit: int) -> bytes | None:
    """The servable file's bytes (None if not servable or over ``limit`` bytes)."""
    opened = open_inside(root, relative)
    if opened is None:
        return None
    fd, size = opened
    try:
        if size > limit:
            return None
        data = os.pread(fd, size, 0)
        return data if len(data) == size else None
    finally:
        os.close(fd)
