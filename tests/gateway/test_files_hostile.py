"""Hostile filesystem tricks against the artifacts endpoint (issue 21)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metastream.stack import Stack
from tests.helpers import create_task

SECRET = "root:x:0:0:SECRET-OUTSIDE\n"
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (``renameat2(RENAME_EXCHANGE)``)."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, httpx.Client]]:
    with Stack(tmp_path_factory.mktemp("files")) as s, httpx.Client(base_url=s.url) as c:
        yield s, c


def _workspace(stack: Stack, api: httpx.Client) -> tuple[str, Path]:
    task = create_task(api)
    ws = stack.home / "tasks" / task["id"]
    ws.mkdir(parents=True, exist_ok=True)
    return task["id"], ws


def test_symlink_swap_race_never_leaks_or_truncates(stack: Stack, api: httpx.Client) -> None:
    task_id, ws = _workspace(stack, api)
    outside = stack.home / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    (ws / "sub").mkdir()
    benign = "benign contents " * 4096  # big enough that a swap can land mid-response
    (ws / "sub" / "passwd").write_text(benign)
    os.symlink(outside, ws / "evil")
    try:
        exchange(ws / "sub", ws / "evil")
        exchange(ws / "sub", ws / "evil")
    except OSError as exc:  # pragma: no cover - depends on the file system
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unsupported here: {exc}")

    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            exchange(ws / "sub", ws / "evil")
            swaps += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    leaks = truncated = served = 0
    try:
        for _ in range(600):
            try:
                r = api.get(f"/api/tasks/{task_id}/files/sub/passwd")
            except httpx.HTTPError:
                truncated += 1  # the server broke the response off (length mismatch)
                continue
            if "SECRET-OUTSIDE" in r.text:
                leaks += 1
            elif r.status_code == 200:
                served += 1
                if r.text != benign:
                    truncated += 1
            else:
                assert r.status_code == 404, (r.status_code, r.text)
    finally:
        stop.set()
        thread.join(5)
    assert swaps > 100, swaps
    assert (leaks, truncated) == (0, 0), f"{leaks} leaks, {truncated} truncated of 600"
    assert served > 0  # the file is still served whenever the real directory is in place


def test_hard_link_to_outside_is_refused(stack: Stack, api: httpx.Client) -> None:
    task_id, ws = _workspace(stack, api)
    secret = stack.home / "secret.txt"
    secret.write_text(SECRET)
    os.link(secret, ws / "linked.txt")
    (ws / "own.txt").write_text("own\n")
    r = api.get(f"/api/tasks/{task_id}/files/linked.txt")
    assert r.status_code == 404 and "SECRET" not in r.text, (r.status_code, r.text)
    listed = api.get(f"/api/tasks/{task_id}/files").json()["files"]
    assert listed == [{"path": "own.txt", "size": 4}]
    assert api.get(f"/api/tasks/{task_id}/files/own.txt").text == "own\n"


@pytest.mark.parametrize(
    "path",
    ["a%00b", "own.txt%00", "%00", "x" * 300, "d/" + "y" * 5000, "/".join(["d"] * 3000)],
    ids=["nul", "trailing-nul", "only-nul", "name-too-long", "long-tail", "path-too-long"],
)
def test_bad_names_answer_404(shared: tuple[Stack, httpx.Client], path: str) -> None:
    stack, api = shared
    task_id, ws = _workspace(stack, api)
    (ws / "own.txt").write_text("own\n")
    (ws / "d").mkdir()
    r = api.get(f"/api/tasks/{task_id}/files/{path}")
    assert r.status_code == 404, (r.status_code, r.text[:200])
    assert r.json() == {"detail": "File not found"}
