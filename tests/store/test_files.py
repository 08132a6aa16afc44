"""Shared workspaces on PostgreSQL: fenced incremental shares, hidden files kept but unserved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.status import TaskStatus
from store import Store
from store.files import TaskFiles
from tests.pgserver import PgServer

pytestmark = pytest.mark.postgres
NOW = "2026-01-01T00:00:00Z"
META = {"run_no": 1, "node": "a", "final": False, "taken_at": NOW}
TEAM = ".metastream/team/team.json"
RUN = ".metastream/team/run.json"


@pytest.fixture
def store(pg_server: PgServer) -> Iterator[Store]:
    s = Store(pg_server.create_database())
    s.create_schema()
    s.create_task("t1", "r", False, {}, NOW)
    yield s
    s.close()


def _files(store: Store) -> TaskFiles:
    files = store.files
    assert files is not None
    return files


def test_shares_bump_the_generation_and_change_only_what_they_name(store: Store) -> None:
    files = _files(store)
    assert files.snapshot("t1") is None and files.list("t1") is None
    put = [("app/main.py", 1.5, b"print(1)"), (TEAM, 2.0, b"{}"), (RUN, 2.0, b"{}")]
    assert files.share("t1", 0, put, [], META) == 1
    snap = files.snapshot("t1")
    assert snap is not None and (snap.generation, snap.epoch, snap.files, snap.bytes) == (
        1,
        0,
        3,
        12,
    )
    assert files.has_checkpoint("t1")
    # The second share sends one changed file and drops the checkpoint: nothing else moves.
    assert files.share("t1", 0, [("app/main.py", 3.0, b"print(2)")], [TEAM, RUN], META) == 2
    assert files.stored("t1") == {"app/main.py": (8, 3.0)}
    assert not files.has_checkpoint("t1")
    assert list(files.read_all("t1")) == [("app/main.py", 3.0, b"print(2)")]


def test_hidden_files_are_stored_for_the_next_run_but_never_served(store: Store) -> None:
    files = _files(store)
    put = [("a.py", 1.0, b"a"), (TEAM, 1.0, b"team"), ("p/.git/HEAD", 1.0, b"ref")]
    files.share("t1", 0, put, [], META)
    assert files.list("t1") == [{"path": "a.py", "size": 1}]
    assert files.read("t1", TEAM) is None and files.read("t1", "p/.git/HEAD") is None
    assert files.read("t1", "a.py") == b"a"
    assert {p for p, _m, _d in files.read_all("t1")} == {"a.py", TEAM, "p/.git/HEAD"}


def test_a_share_from_a_taken_over_run_is_refused(store: Store) -> None:
    files = _files(store)
    assert files.share("t1", 0, [("a.py", 1.0, b"old run")], [], META) == 1
    store.transition("t1", TaskStatus.QUEUED, queued_at=NOW)
    nodes = store.nodes
    assert nodes is not None and nodes.claim("b", 1) == ["t1"]  # epoch 0 -> 1
    assert files.share("t1", 0, [("a.py", 9.0, b"stale")], ["x"], META) is None
    assert files.read("t1", "a.py") == b"old run"
    snap = files.snapshot("t1")
    assert snap is not None and snap.generation == 1
    assert files.share("t1", 1, [("a.py", 2.0, b"new run")], [], {**META, "node": "b"}) == 2
    assert files.read("t1", "a.py") == b"new run"


def test_a_large_share_goes_in_bounded_statements(store: Store) -> None:
    files = _files(store)
    big = [(f"f{i}.bin", 1.0, bytes([i]) * (3 << 20)) for i in range(5)]  # 15 MiB
    assert files.share("t1", 0, big, [], META) == 1
    assert files.stored("t1") == {p: (3 << 20, 1.0) for p, _m, _d in big}
    assert files.read("t1", "f4.bin") == bytes([4]) * (3 << 20)
