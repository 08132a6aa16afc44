"""Per-task database roles on a real PostgreSQL server (store.taskroles, store.pgtask)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bus.messages import Event, bus_encoder, event_data_json, new_task_id, utcnow
from store import Store, StoreError
from store.pgtask import TaskRows
from store.taskroles import TaskRoles, role_name
from tests.pgserver import PgServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_server: PgServer) -> Iterator[Store]:
    s = Store(pg_server.create_database())
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def roles(store: Store) -> TaskRoles:
    found = store.task_roles()
    assert found is not None
    found.prepare()
    return found


def _task(store: Store) -> str:
    tid = new_task_id()
    store.create_task(tid, "x", False, {}, utcnow())
    return tid


def _refused(url: str, statement: str) -> str:
    """The SQLSTATE ``statement`` fails with, as the role of ``url``."""
    with psycopg.connect(url) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statement)
        assert info.value.sqlstate is not None
        return info.value.sqlstate


def _ev(task_id: str, i: int, **payload: int) -> Event:
    return Event(event_id=i, task_id=task_id, timestamp="ts", agent_role="r", event_type="E",
                 payload=payload)  # fmt: skip


def _event(task_id: str, i: int, **payload: int) -> bytes:
    return event_data_json(_ev(task_id, i, **payload))


def test_a_task_role_reaches_its_own_rows_only(store: Store, roles: TaskRoles) -> None:
    mine, other = _task(store), _task(store)
    secret = _event(other, 1, secret=1)
    store.append_events(other, [(1, secret)])
    url = roles.issue(mine)
    assert make_url(url).username == role_name(roles.tag, mine)
    rows = TaskRows(url)
    try:
        rows.append_events(mine, [(1, _event(mine, 1)), (2, _event(mine, 2))])  # unnest, not COPY
        body = bus_encoder.encode(_ev(mine, 3))
        rows.append_events(mine, [(3, _event(mine, 3))], [body])  # with its body
        assert rows.last_event_id(mine) == 3
        assert rows.last_event_id(other) == 0  # invisible, not an error
        rows.record(mine, {"exit_code": 0, "state_version": 7})
        rows.record(mine, {"exit_code": 1})  # newest wins
        with pytest.raises(Exception, match="row-level security"):
            rows.append_events(other, [(2, _event(other, 2, forged=1))])
        with pytest.raises(Exception, match="row-level security"):
            rows.record(other, {"exit_code": 0})
    finally:
        rows.close()
    assert store.task_outcome(mine) == {"exit_code": 1, "state_version": 7}
    assert store.task_outcome(other) == {"exit_code": None, "error": None}
    assert store.read_events(other, 0, 10) == [(1, secret)]
    assert store.read_event_bodies(mine, 1, 10) == [(2, None, _event(mine, 2)), (3, body, None)]

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM task_meta").fetchone() == (2,)  # its keys
        conn.execute("SET ROLE " + '"metastream_tasks_' + roles.tag + '"')
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    denied = "42501"  # insufficient_privilege
    assert _refused(url, "SELECT * FROM tasks") == denied
    assert _refused(url, f"UPDATE tasks SET status = 'FAILED' WHERE id = '{other}'") == denied
    assert _refused(url, "SELECT * FROM runs") == denied
    assert _refused(url, "UPDATE events SET data = 'x'") == denied
    assert _refused(url, "DELETE FROM events") == denied
    assert _refused(url, "CREATE TABLE planted (x int)") == denied
    assert _refused(url, "ALTER TABLE events DISABLE ROW LEVEL SECURITY") == denied
    assert _refused(url, "SELECT * FROM pg_authid") == denied
    assert _refused(url, "COPY events FROM STDIN") == "0A000"  # not supported under RLS
    roles.revoke(mine)


def test_a_revoked_role_cannot_log_in_and_a_reissued_one_has_a_new_password(
    store: Store, roles: TaskRoles
) -> None:
    tid = _task(store)
    first = roles.issue(tid)
    second = roles.issue(tid)  # the task runs again: same role, new password
    assert make_url(first).password != make_url(second).password
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(first).close()
    live = psycopg.connect(second)
    roles.revoke(tid)
    with pytest.raises(psycopg.Error):  # its session ended with it
        live.execute("SELECT 1")
    live.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(second).close()
    assert roles.existing() == []


def test_the_sweep_drops_stale_roles_of_this_database_only(
    pg_server: PgServer, store: Store, roles: TaskRoles
) -> None:
    live, stale = _task(store), _task(store)
    roles.issue(live)
    roles.issue(stale)
    neighbour = Store(pg_server.create_database())  # another stack on the same cluster
    neighbour.create_schema()
    theirs = neighbour.task_roles()
    assert theirs is not None
    theirs.prepare()
    try:
        theirs.issue(stale)
        assert roles.sweep(lambda: {live}) == [stale]
        assert roles.existing() == [live]
        assert theirs.existing() == [stale]
    finally:
        theirs.sweep(set)
        roles.sweep(set)
        neighbour.close()


def test_a_role_that_may_not_create_roles_is_told_so(pg_server: PgServer) -> None:
    name = f"plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
        conn.execute(f"CREATE DATABASE {name} OWNER {name}")
    url = f"postgresql://{name}:pw@127.0.0.1:{pg_server.port}/{name}"
    store = Store(url)
    try:
        store.create_schema()  # owning the database is enough for the schema
        roles = store.task_roles()
        assert roles is not None
        with pytest.raises(StoreError) as info:
            roles.prepare()
        message = str(info.value)
        assert "CREATEROLE" in message and "METASTREAM_DB_TASK_ROLES=0" in message
        assert "pw" not in message.replace("password", "")
    finally:
        store.close()


def test_a_schema_open_to_everyone_is_refused(store: Store) -> None:
    """Before PostgreSQL 15, PUBLIC could create tables in ``public``: so could a task."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    roles = store.task_roles()
    assert roles is not None
    with pytest.raises(StoreError, match="REVOKE CREATE ON SCHEMA public FROM PUBLIC"):
        roles.prepare()
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    roles.prepare()
