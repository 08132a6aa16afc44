"""Several nodes on PostgreSQL: claims never overlap, node names, fencing of a stale run."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from core.status import Fenced, TaskStatus, TransitionError
from store import Store
from store.nodes import Nodes, NodeTaken
from tests.pgserver import PgServer

pytestmark = pytest.mark.postgres
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def store(pg_server: PgServer) -> Iterator[Store]:
    s = Store(pg_server.create_database())
    s.create_schema()
    yield s
    s.close()


def _queued(store: Store, n: int) -> list[str]:
    ids = []
    for i in range(n):
        tid = f"t{i:02d}"
        store.create_task(tid, "r", False, {}, NOW)
        store.transition(tid, TaskStatus.QUEUED, queued_at=f"2026-01-01T00:00:{i:02d}Z")
        ids.append(tid)
    return ids


def test_concurrent_claims_take_disjoint_tasks_up_to_their_slots(store: Store) -> None:
    ids = _queued(store, 10)
    nodes = store.nodes
    assert isinstance(nodes, Nodes)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda n: nodes.claim(f"n{n}", 3), range(4)))
    taken = [t for c in claims for t in c]
    assert sorted(taken) == ids and len(set(taken)) == 10  # each exactly once
    assert all(len(c) <= 3 for c in claims)
    for n, c in enumerate(claims):
        for tid in c:
            row = store.get_task(tid)
            assert row is not None and row.node == f"n{n}" and row.epoch == 1


def test_a_live_node_name_is_refused_and_free_again_once_stopped(store: Store) -> None:
    nodes = store.nodes
    assert nodes is not None
    nodes.register("a", "boot-1", "elsewhere:1", 2, "ipc://x", ttl=30)
    with pytest.raises(NodeTaken, match="node name 'a' is in use by a live supervisor"):
        nodes.register("a", "boot-2", "here:2", 2, "ipc://y", ttl=30)
    nodes.stopped("a", "boot-1")
    nodes.register("a", "boot-2", "here:2", 2, "ipc://y", ttl=30)
    assert [(n.name, n.boot_id, n.state) for n in nodes.all()] == [("a", "boot-2", "up")]


def test_a_taken_over_run_can_write_nothing_more(store: Store) -> None:
    (tid,) = _queued(store, 1)
    nodes = store.nodes
    assert nodes is not None
    assert nodes.claim("b", 1) == [tid]
    store.transition(tid, TaskStatus.RUNNING, at_epoch=1)
    task = Store(store.url, epoch=1)  # the task process's connection, at its run's epoch
    try:
        task.append_events(tid, [(1, b'{"n":1}'), (2, b'{"n":2}')])
        task.save_state(tid, {"exit_code": None})
        row = nodes.take_over(tid, "b", 1, "node b lost", NOW)
        assert row is not None and row["last_event_id"] == 2 and row["epoch"] == 2
        with pytest.raises(psycopg.Error, match="stale run epoch"):  # COPY, a raw connection
            task.append_events(tid, [(3, b'{"n":3}')])
        with pytest.raises(sa_exc.DBAPIError, match="stale run epoch"):
            task.save_state(tid, {"exit_code": 0})
        # The old run's supervisor is fenced too: its end is not written.
        with pytest.raises(TransitionError):
            store.transition(tid, TaskStatus.COMPLETED, (TaskStatus.FAILED,), at_epoch=1)
        assert store.last_event_id(tid) == 2
        final = store.get_task(tid)
        assert final is not None and final.status == TaskStatus.FAILED
        assert final.last_message == "node b lost" and final.exit_code is None
    finally:
        task.close()


def test_a_takeover_waits_for_a_write_under_way_and_counts_it(store: Store) -> None:
    """The race of a paused node: its write passed the fence but had not committed yet."""
    (tid,) = _queued(store, 1)
    nodes = store.nodes
    assert nodes is not None
    nodes.claim("b", 1)
    store.transition(tid, TaskStatus.RUNNING, at_epoch=1)
    store.append_events(tid, [(1, b"{}")])
    with psycopg.connect(store.url, options="-c metastream.epoch=1") as task:
        task.execute("INSERT INTO events (task_id, event_id, data) VALUES (%s, 2, '{}')", (tid,))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            taking = pool.submit(nodes.take_over, tid, "b", 1, "node b lost", NOW)
            with pytest.raises(concurrent.futures.TimeoutError):
                taking.result(timeout=1.0)  # it waits for the write's transaction
            task.commit()
            row = taking.result(timeout=10)
    assert row is not None and row["last_event_id"] == 2 == store.last_event_id(tid)


def test_a_lost_node_s_claimed_tasks_become_claimable_and_its_old_claim_is_void(
    store: Store,
) -> None:
    ids = _queued(store, 2)
    nodes = store.nodes
    assert nodes is not None
    assert nodes.claim("b", 2) == ids
    assert nodes.release_queued("b") == 2
    assert nodes.claim("a", 5) == ids
    # b, back, cannot start what it had claimed: its epoch is gone (a's claim is epoch 3).
    with pytest.raises(Fenced, match="run epoch 1 is stale"):
        store.transition(ids[0], TaskStatus.RUNNING, at_epoch=1)
    row = store.transition(ids[0], TaskStatus.RUNNING, at_epoch=3)
    assert row.node == "a" and row.epoch == 3
