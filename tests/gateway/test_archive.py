"""The workspace as a zip: what the files endpoint would serve, nothing else."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import httpx

from gateway.archive import zip_stream
from metastream.stack import Stack
from tests.helpers import create_task


def _workspace(ws: Path, outside: Path) -> None:
    (ws / "proj" / "src").mkdir(parents=True)
    (ws / "proj" / "src" / "main.py").write_text("print('hi')\n")
    (ws / "proj" / "big.bin").write_bytes(os.urandom(300_000))
    (ws / ".metagpt").mkdir()
    (ws / ".metagpt" / "config2.yaml").write_text("api_key: secret\n")
    (ws / "proj" / ".hidden").write_text("secret\n")
    outside.write_text("outside secret\n")
    os.symlink(outside, ws / "proj" / "link.txt")
    os.symlink(outside.parent, ws / "proj" / "linkdir")
    os.link(outside, ws / "proj" / "hardlink.txt")
    os.mkfifo(ws / "proj" / "fifo")


def test_archive_holds_the_visible_files_only(stack: Stack, api: httpx.Client) -> None:
    task = create_task(api)
    ws = stack.home / "tasks" / task["id"]
    _workspace(ws, stack.home / "outside.txt")

    r = api.get(f"/api/tasks/{task['id']}/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f'filename="task-{task["id"][:8]}.zip"' in r.headers["content-disposition"]
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.testzip() is None
    assert sorted(zf.namelist()) == ["proj/big.bin", "proj/src/main.py"]
    assert zf.read("proj/src/main.py") == b"print('hi')\n"
    assert zf.read("proj/big.bin") == (ws / "proj" / "big.bin").read_bytes()
    assert b"secret" not in r.content
    # The listing's files, less the hard link (gateway/files.py lists it; a second name
    # may belong to a file outside the workspace, so the archive leaves it out).
    listed = {f["path"] for f in api.get(f"/api/tasks/{task['id']}/files").json()["files"]}
    assert listed - {"proj/hardlink.txt"} == set(zf.namelist())
    assert api.get("/api/tasks/00000000-0000-4000-8000-000000000000/archive").status_code == 404


def test_empty_or_missing_workspace_is_an_empty_zip(tmp_path: Path) -> None:
    for root in (tmp_path / "missing", tmp_path):
        zf = zipfile.ZipFile(io.BytesIO(b"".join(zip_stream(root))))
        assert zf.namelist() == []


def test_a_workspace_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "secret.txt").write_text("secret\n")
    os.symlink(real, tmp_path / "ws")
    zf = zipfile.ZipFile(io.BytesIO(b"".join(zip_stream(tmp_path / "ws"))))
    assert zf.namelist() == []


def test_it_streams_in_pieces(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}.bin").write_bytes(os.urandom(200_000))
    pieces = [p for p in zip_stream(tmp_path) if p]
    assert len(pieces) > 5  # not one buffer built before the first byte goes out
    zf = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert sorted(zf.namelist()) == [f"f{i}.bin" for i in range(5)]
