"""Artifacts are confined to the task workspace."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from metastream.stack import Stack
from tests.helpers import create_task


def test_files_list_and_fetch_and_refuse_escapes(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api)
    ws = stack.home / "tasks" / task["id"]
    (ws / "proj" / "src").mkdir(parents=True)
    (ws / "proj" / "src" / "main.py").write_text("print('hi')\n")
    (ws / ".metagpt").mkdir()
    (ws / ".metagpt" / "config2.yaml").write_text("api_key: secret\n")
    secret = stack.home / "outside.txt"
    secret.write_text("outside")
    os.symlink(secret, ws / "proj" / "link.txt")
    os.symlink(stack.home, ws / "proj" / "linkdir")

    listed = api.get(f"/api/tasks/{task['id']}/files").json()["files"]
    assert listed == [{"path": "proj/src/main.py", "size": 12}]
    r = api.get(f"/api/tasks/{task['id']}/files/proj/src/main.py")
    assert r.status_code == 200 and r.text == "print('hi')\n"

    for bad in (
        "../../outside.txt",
        "proj/../../../outside.txt",
        "%2e%2e/%2e%2e/outside.txt",
        "..%2f..%2foutside.txt",
        "proj/link.txt",
        "proj/linkdir/outside.txt",
        ".metagpt/config2.yaml",
        "/etc/passwd",
        "proj/missing.py",
    ):
        r = api.get(f"/api/tasks/{task['id']}/files/{bad}")
        assert r.status_code in (400, 404), (bad, r.status_code, r.text)
        assert "outside" not in r.text and "secret" not in r.text
    assert api.get("/api/tasks/nope/files").status_code == 404


def test_open_inside_unit(tmp_path: Path) -> None:
    from gateway.files import open_inside

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_text("x")
    opened = open_inside(tmp_path, "a/b.txt")
    assert opened is not None and opened[1] == 1
    assert os.read(opened[0], 10) == b"x"
    os.close(opened[0])
    assert open_inside(tmp_path, "a/../a/b.txt") is None
    assert open_inside(tmp_path, "") is None
    assert open_inside(tmp_path, "a") is None  # a directory is not a file
    assert open_inside(tmp_path, "a/b.txt/c") is None
    os.mkfifo(tmp_path / "a" / "fifo")
    assert open_inside(tmp_path, "a/fifo") is None  # opened without blocking, then refused
