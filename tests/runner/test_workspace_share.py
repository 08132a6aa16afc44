"""Workspaces across nodes: what a share sends, a restore, and two nodes' supervisors' parts."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.settings import Settings, load
from core.status import TaskStatus
from runner.workspace_share import WorkspaceShare, collect, restore
from store import Store
from store.files import TaskFiles, local_is_current
from tests.pgserver import PgServer

NOW = "2026-01-01T00:00:00Z"
TEAM = ".metastream/team/team.json"
RUN = ".metastream/team/run.json"


def _write(root: Path, rel: str, text: str, mtime: float | None = None) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _workspace(root: Path) -> Path:
    _write(root, "calc/calc/main.py", "print('hi')")
    _write(root, "calc/.git/HEAD", "ref: refs/heads/master")
    _write(root, "calc/.dependencies.json", "{}")
    _write(root, ".metagpt/logs/metagpt.log", "MetaGPT's own log")
    _write(root, TEAM, '{"env": 1}', mtime=1000.0)
    _write(root, RUN, '{"rounds": 1}', mtime=1000.5)
    return root


def test_a_share_takes_hidden_files_but_not_metagpt_s_own(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws")
    got = collect(ws, {})
    assert got.consistent and got.drop == [] and got.skipped == 0
    paths = [p for p, _m, _d in got.put]
    # The serialized team first (the bounds keep it), then what clients see, then the rest.
    assert paths == [RUN, TEAM, "calc/calc/main.py", "calc/.dependencies.json", "calc/.git/HEAD"]
    assert dict((p, d) for p, _m, d in got.put)[TEAM] == b'{"env": 1}'


def test_only_changed_files_are_read_again_and_removed_ones_are_dropped(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws")
    first = collect(ws, {})
    assert collect(ws, first.now).put == []
    _write(ws, "calc/calc/main.py", "print('changed')")
    (ws / "calc/.dependencies.json").unlink()
    again = collect(ws, first.now)
    assert [p for p, _m, _d in again.put] == ["calc/calc/main.py"]
    assert again.drop == ["calc/.dependencies.json"]


def test_a_team_json_newer_than_run_json_is_half_a_save(tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws")
    first = collect(ws, {})
    _write(ws, TEAM, '{"env": 2}', mtime=2000.0)  # the next save's first half
    assert not collect(ws, first.now).consistent
    # At the run's end nothing will finish that save: the stored pair stays.
    final = collect(ws, first.now, final=True)
    assert final.consistent and final.put == [] and final.drop == []
    assert final.now[TEAM] == first.now[TEAM]
    _write(ws, RUN, '{"rounds": 2}', mtime=2000.5)
    assert {p for p, _m, _d in collect(ws, first.now).put} == {TEAM, RUN}


def test_a_restore_replaces_the_workspace_with_the_stored_files(tmp_path: Path) -> None:
    ws = tmp_path / "tasks" / "t1"
    _write(ws, "stale.py", "an older run's file")
    rows = [("calc/main.py", 1234.5, b"x = 1\n"), (TEAM, 99.0, b"{}")]
    assert restore(ws, iter(rows)) == (2, 8)
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file()) == [
        TEAM,
        "calc/main.py",
    ]
    assert (ws / "calc/main.py").stat().st_mtime == 1234.5
    assert (ws / "calc/main.py").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in ws.parent.iterdir()) == ["t1"]  # no staging left behind


def test_a_bad_stored_path_fails_the_restore_and_keeps_the_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "tasks" / "t1"
    _write(ws, "kept.py", "mine")
    for bad in ("../escape.py", "/abs.py", "a/../../x", "", "a\x00b"):
        with pytest.raises(OSError, match="bad path"):
            restore(ws, iter([("ok.py", 1.0, b""), (bad, 1.0, b"x")]))
        assert (ws / "kept.py").read_text() == "mine" and not (ws.parent / "escape.py").exists()
        assert sorted(p.name for p in ws.parent.iterdir()) == ["t1"]


# --- two nodes' supervisors on one PostgreSQL database ----------------------------------------


@pytest.fixture
def db(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_database()
    s = Store(url)
    s.create_schema()
    s.create_task("t1", "r", True, {}, NOW)
    s.close()
    yield url


class Node:
    """One node's home, store and WorkspaceShare."""

    def __init__(self, tmp: Path, name: str, url: str) -> None:
        self.cfg: Settings = load({"METASTREAM_HOME": str(tmp / name), "METASTREAM_DB_URL": url})
        self.cfg.ensure_dirs()
        self.store = Store(url)
        self.share = WorkspaceShare(self.cfg, self.store, name, interval=0.0)
        self.ws = self.cfg.task_dir("t1")

    def claim(self) -> int:
        """The task queued and claimed here (its epoch bumped): the new epoch."""
        row = self.store.get_task("t1")
        assert row is not None
        if row.status != TaskStatus.QUEUED:
            self.store.transition("t1", TaskStatus.QUEUED, queued_at=NOW, node=None)
        nodes = self.store.nodes
        assert nodes is not None and nodes.claim(self.share.node, 1) == ["t1"]
        row = self.store.get_task("t1")
        assert row is not None
        self.store.transition("t1", TaskStatus.RUNNING, at_epoch=row.epoch)
        return row.epoch

    def end(self, status: TaskStatus = TaskStatus.COMPLETED) -> None:
        self.store.transition("t1", status, (TaskStatus.RUNNING,))

    def poll(self, epoch: int) -> None:
        """One supervisor tick's share, waited for."""

        async def tick() -> None:
            run: Any = SimpleNamespace(task_id="t1", epoch=epoch, finished=False)
            self.share.poll([run])
            busy = self.share._runs["t1"].busy
            if busy is not None:
                await busy

        asyncio.run(tick())

    def files(self) -> TaskFiles:
        assert self.store.files is not None
        return self.store.files


@pytest.fixture
def nodes(tmp_path: Path, db: str) -> Iterator[tuple[Node, Node]]:
    a, b = Node(tmp_path, "a", db), Node(tmp_path, "b", db)
    yield a, b
    a.store.close()
    b.store.close()


@pytest.mark.postgres
def test_each_checkpoint_is_shared_and_another_node_restores_the_last(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 1))
    _workspace(a.ws)
    a.poll(epoch)
    snap = a.files().snapshot("t1")
    assert snap is not None and (snap.generation, snap.node, snap.final) == (1, "a", False)
    a.poll(epoch)  # the serialized team did not change: no share
    assert a.files().snapshot("t1").generation == 1  # type: ignore[union-attr]
    _write(a.ws, "calc/calc/round2.py", "two")
    _write(a.ws, TEAM, '{"env": 2}', mtime=3000.0)
    _write(a.ws, RUN, '{"rounds": 2}', mtime=3000.5)
    a.poll(epoch)
    assert a.files().snapshot("t1").generation == 2  # type: ignore[union-attr]
    _write(a.ws, "calc/calc/unfinished.py", "written after the last round")
    # Node a is lost here: its run ends FAILED elsewhere; b resumes on the last round.
    a.end(TaskStatus.FAILED)
    assert b.share.can_resume("t1") and not b.ws.exists()
    epoch_b = b.claim()
    asyncio.run(b.share.before_launch("t1", epoch_b, 2))
    assert (b.ws / TEAM).read_text() == '{"env": 2}'
    assert (b.ws / "calc/calc/round2.py").read_text() == "two"
    assert (b.ws / "calc/.git/HEAD").is_file() and not (b.ws / ".metagpt").exists()
    assert not (b.ws / "calc/calc/unfinished.py").exists()
    assert b.share.marker("t1") == 2


@pytest.mark.postgres
def test_the_node_that_ran_last_keeps_its_workspace_the_other_restores(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 1))
    _workspace(a.ws)
    a.end()
    asyncio.run(a.share.at_end("t1", epoch, ours=True))
    snap = a.files().snapshot("t1")
    assert snap is not None and snap.final and a.share.marker("t1") == snap.generation
    # Run 2 on a again: its own workspace is current, nothing restored (what was never shared,
    # here MetaGPT's own log directory, stays).
    (a.ws / ".metagpt" / "local-only.txt").write_text("not in the store")
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 2))
    assert (a.ws / ".metagpt" / "local-only.txt").exists()
    _write(a.ws, "calc/calc/feature.py", "run 2")
    a.end()
    asyncio.run(a.share.at_end("t1", epoch, ours=True))
    # Run 3 on b: restored; then run 4 on a: a's workspace is older now, restored too.
    epoch_b = b.claim()
    asyncio.run(b.share.before_launch("t1", epoch_b, 3))
    assert (b.ws / "calc/calc/feature.py").read_text() == "run 2"
    _write(b.ws, "calc/calc/feature3.py", "run 3")
    b.end()
    asyncio.run(b.share.at_end("t1", epoch_b, ours=True))
    # Each node's gateway serves from its disk only while that disk is current.
    assert local_is_current(b.files(), b.cfg.data_dir, b.ws, "t1")
    assert not local_is_current(a.files(), a.cfg.data_dir, a.ws, "t1")
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 4))
    assert local_is_current(a.files(), a.cfg.data_dir, a.ws, "t1")
    assert (a.ws / "calc/calc/feature3.py").read_text() == "run 3"
    assert not (a.ws / ".metagpt" / "local-only.txt").exists()


@pytest.mark.postgres
def test_a_taken_over_run_shares_nothing_and_its_node_restores_next_time(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 1))
    _workspace(a.ws)
    a.poll(epoch)
    # Taken over (a was paused): a's run ends FAILED elsewhere and b resumes it; the epoch
    # moved on twice, and a's late writes are refused.
    nodes = b.store.nodes
    assert nodes is not None
    assert nodes.take_over("t1", "a", epoch, "node a lost", NOW) is not None
    epoch_b = b.claim()
    assert epoch_b != epoch
    asyncio.run(b.share.before_launch("t1", epoch_b, 2))
    _write(a.ws, "calc/calc/late.py", "from the fenced run")
    _write(a.ws, RUN, '{"rounds": 9}', mtime=5000.0)
    a.poll(epoch)
    asyncio.run(a.share.at_end("t1", epoch, ours=False))
    assert "calc/calc/late.py" not in a.files().stored("t1")
    assert a.share.marker("t1") is None  # a's disk is not what the store has
    b.end()
    asyncio.run(b.share.at_end("t1", epoch_b, ours=True))
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 3))
    assert not (a.ws / "calc/calc/late.py").exists()


@pytest.mark.postgres
def test_resume_asks_the_store_when_this_disk_is_not_current(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    epoch = a.claim()
    asyncio.run(a.share.before_launch("t1", epoch, 1))
    _write(a.ws, "calc/main.py", "no round completed")
    a.end(TaskStatus.CANCELLED)
    asyncio.run(a.share.at_end("t1", epoch, ours=True))
    assert not a.share.can_resume("t1") and not b.share.can_resume("t1")
    # b has an older run's serialized team on its disk: the store's word counts, not b's disk.
    _workspace(b.ws)
    assert not b.share.can_resume("t1")
    _workspace(a.ws)
    assert a.share.can_resume("t1")  # a's own disk is current


def test_a_serialized_team_restored_elsewhere_points_at_its_new_workspace(tmp_path: Path) -> None:
    from runner.metagpt_flow.checkpoint import read_run, relocate

    old, new = "/srv/a/tasks/t1", tmp_path / "b" / "tasks" / "t1"
    team = {"context": {"kwargs": {"project_path": f"{old}/calc"}}, "other": f"{old}0/x"}
    _write(new, TEAM, json.dumps(team))
    _write(new, RUN, json.dumps({"rounds": 2, "workspace": old}))
    assert relocate(new)
    moved = json.loads((new / TEAM).read_text())
    assert moved["context"]["kwargs"]["project_path"] == f"{new}/calc"
    assert moved["other"] == f"{old}0/x"  # a longer name is another path
    assert read_run(new) == {"rounds": 2, "workspace": str(new)}
    assert not relocate(new)  # already here
