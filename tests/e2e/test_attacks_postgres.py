"""The trust boundary on PostgreSQL, attacked from inside real task processes (issue 20).

With a server database a task process must hold credentials, so it holds a role of its own
(store.taskroles) that row-level security confines to its own rows. An attacker task (the
``run_python`` test hook) tries, with the URL its spec gave it, everything the stack's URL
would allow; a victim streaming beside it must end exactly as it would have alone. Then: no
task role outlives its task, even across a supervisor killed mid-task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from sqlalchemy.engine import make_url

from metastream.stack import Stack
from store.taskroles import PREFIX, database_tag
from tests.helpers import create_task, log_events, poll_for, wait_status
from tests.pgserver import PASSWORD, USER, PgServer

pytestmark = pytest.mark.postgres

VICTIM_EVENTS = 150

# Runs inside the attacker task. Each attempt records ["ok", result] or ["refused", SQLSTATE].
PROBE = """
import os, psycopg
from pathlib import Path
from runner.task import spec as task_spec
V, STACK_USER, STACK_PASSWORD = {victim!r}, {user!r}, {password!r}
spec = task_spec.read(Path(os.environ["METASTREAM_TASK_SPEC"]))
url = spec.db_url
user = url.split("//")[1].split(":")[0]
tag = user.split("_")[2] if user.startswith("metastream_task_") else "none"
res = {{}}

def attempt(name, fn):
    try:
        res[name] = ["ok", fn()]
    except psycopg.Error as exc:  # a refused login has no SQLSTATE on the client: its words
        auth = "password authentication failed" in str(exc)
        res[name] = ["refused", exc.sqlstate or ("auth" if auth else str(exc)[:200])]

def q(*statements, params=None, target=None):
    with psycopg.connect(target or url, autocommit=True) as c:
        for stmt in statements:
            cur = c.execute(stmt, params)
        return cur.fetchall() if cur.description else None

own = os.path.basename(os.getcwd())
attempt("own_events", lambda: q("SELECT count(*) FROM events WHERE task_id = %s", params=(own,)))
attempt("read_victim_events",
        lambda: q("SELECT count(*) FROM events WHERE task_id = %s", params=(V,)))
attempt("read_all_events", lambda: q("SELECT count(DISTINCT task_id) FROM events"))
attempt("insert_victim_event",
        lambda: q("INSERT INTO events VALUES (%s, 100000, '{{}}')", params=(V,)))
attempt("insert_victim_next_event", lambda: q(
    "INSERT INTO events SELECT %s, unnest(ARRAY[{next_id}]), unnest(ARRAY['{{}}'::bytea])",
    params=(V,)))
attempt("update_own_events", lambda: q("UPDATE events SET data = 'x'"))
attempt("delete_events", lambda: q("DELETE FROM events"))
attempt("read_tasks", lambda: q("SELECT id, status FROM tasks"))
attempt("update_tasks",
        lambda: q("UPDATE tasks SET status = 'FAILED', progress = 0 WHERE id = %s", params=(V,)))
attempt("read_runs", lambda: q("SELECT * FROM runs"))
attempt("read_victim_meta",
        lambda: q("SELECT count(*) FROM task_meta WHERE task_id = %s", params=(V,)))
attempt("record_victim_outcome", lambda: q(
    "INSERT INTO task_meta VALUES (%s, 'exit_code', '1') "
    "ON CONFLICT (task_id, key) DO UPDATE SET value = '1'", params=(V,)))
attempt("create_table", lambda: q("CREATE TABLE planted (x int)"))
attempt("create_function", lambda: q("CREATE FUNCTION planted() RETURNS int AS 'SELECT 1' "
                                     "LANGUAGE sql"))
attempt("disable_rls", lambda: q("ALTER TABLE events DISABLE ROW LEVEL SECURITY"))
attempt("drop_policy", lambda: q("DROP POLICY task_own_rows ON events"))
attempt("read_pg_authid", lambda: q("SELECT rolname, rolpassword FROM pg_authid"))
attempt("read_server_file", lambda: q("SELECT pg_read_file('pg_hba.conf')"))
attempt("copy_to_program", lambda: q("COPY (SELECT 1) TO PROGRAM 'true'"))
attempt("set_session_authorization", lambda: q("SET SESSION AUTHORIZATION " + STACK_USER))
attempt("group_role_reads_victim", lambda: q(
    "SET ROLE " + '"metastream_tasks_' + tag + '"',
    "SELECT count(*) FROM events WHERE task_id = '" + V + "'"))
# The fence runs as the stack's role: a temporary "tasks" of the task's own must not be read.
attempt("temp_tasks_fools_fence", lambda: q(
    "CREATE TEMP TABLE tasks (id text, epoch int)",
    "INSERT INTO tasks VALUES ('" + own + "', 424242)",
    "SET metastream.epoch = '424242'",
    "INSERT INTO events SELECT '" + own + "', 900000, '{{}}'::bytea"))
# Allowed to any role; the object it owns must not keep the role from being dropped.
attempt("own_large_object", lambda: q("SELECT lo_create(0) > 0"))
attempt("create_role", lambda: q("CREATE ROLE planted_" + own.replace("-", "") + " NOLOGIN"))
victim_role = "metastream_task_" + tag + "_" + V
attempt("login_as_victim", lambda: q("SELECT 1", target=url.replace(user, victim_role, 1)))
attempt("login_as_stack_with_own_password",
        lambda: q("SELECT 1", target=url.replace(user, STACK_USER, 1)))
try:  # unreadable to itself in uid mode (not dumpable after the uid change): nothing to leak
    environ = open("/proc/self/environ", "rb").read().decode(errors="replace")
except PermissionError:
    environ = ""
leaks = {{
    "env": STACK_PASSWORD in str(dict(os.environ)) or "METASTREAM_DB_URL" in os.environ,
    "proc_environ": STACK_PASSWORD in environ or "METASTREAM_DB_URL" in environ,
    "spec": STACK_PASSWORD in url or user == STACK_USER,
}}
out.emit("System", "ATTACK", {{"results": res, "leaks": leaks}})
"""

# What the role may do (its own rows); everything else must be refused or see nothing.
ALLOWED_OK = {
    "own_events",
    "read_victim_events",
    "read_all_events",
    "read_victim_meta",
    "group_role_reads_victim",
    "own_large_object",
}


@pytest.fixture(params=["uid-cold", "landlock-warm"])
def pg_stack(
    request: pytest.FixtureRequest, stack_factory: Any, pg_server: PgServer
) -> Iterator[tuple[Stack, str]]:
    mode, path = request.param.split("-")
    url = pg_server.create_database()
    env = {
        "METASTREAM_DB_URL": url,
        "METASTREAM_SANDBOX": mode,
        "METASTREAM_TEST_HOOKS": "1",
        "METASTREAM_WARM": "1" if path == "warm" else "0",
        "METASTREAM_HEARTBEAT_TIMEOUT": "30",  # a cold start on a loaded CI machine
    }
    stack: Stack = stack_factory(env=env)
    if path == "warm":
        poll_for(lambda: "fork server ready" in stack.log("forkserver"), 60, what="the zygote")
    yield stack, url


def _task_roles(url: str) -> list[str]:
    """The task roles of this database (roles are cluster-wide; other tests' are not ours)."""
    mine = f"{PREFIX}{database_tag(str(make_url(url).database))}_"
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (mine,)
        ).fetchall()
    return [r[0] for r in rows]


def _probe(api: httpx.Client) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Start a victim, run PROBE in an attacker beside it; (report, its JSON, victim)."""
    victim = create_task(api, synthetic={"events": VICTIM_EVENTS, "rate": 30})
    api.post(f"/api/tasks/{victim['id']}/run").raise_for_status()
    # It has events to steal (and its next id is one the attacker tries to take).
    poll_for(lambda: len(log_events(api, victim["id"])) >= 10, 60, what="victim events")
    next_id = len(log_events(api, victim["id"])) + 5
    code = PROBE.format(victim=victim["id"], user=USER, password=PASSWORD, next_id=next_id)
    attacker = create_task(api, synthetic={"events": 1, "run_python": code})
    api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
    done = wait_status(api, attacker["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    assert done["status"] == "COMPLETED", (done["last_message"], done.get("error"))
    reports = [e for e in log_events(api, attacker["id"]) if e["event_type"] == "ATTACK"]
    assert len(reports) == 1, reports
    report = reports[0]["payload"]
    return report, json.dumps(report, indent=1), victim


def test_a_task_reaches_only_its_own_rows(pg_stack: tuple[Stack, str]) -> None:
    stack, url = pg_stack
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        report, shown, victim = _probe(api)
        res = report["results"]
        assert report["leaks"] == {"env": False, "proc_environ": False, "spec": False}, shown
        assert {k for k, (how, _) in res.items() if how == "ok"} == ALLOWED_OK, shown
        assert res["own_events"][1] == [[0]]  # its own rows are there to read (none yet)
        # What it may read of the others: nothing.
        assert res["read_victim_events"][1] == [[0]], shown
        assert res["read_all_events"][1] == [[0]], shown
        assert res["read_victim_meta"][1] == [[0]], shown
        assert res["group_role_reads_victim"][1] == [[0]], shown
        # The refusals are the server's, not a typo in the probe.
        for name in ("insert_victim_event", "insert_victim_next_event", "record_victim_outcome"):
            assert res[name] == ["refused", "42501"], shown  # row-level security
        for name in ("update_tasks", "read_tasks", "read_runs", "create_table", "disable_rls"):
            assert res[name] == ["refused", "42501"], shown
        assert res["temp_tasks_fools_fence"] == ["refused", "MS409"], shown  # the real row
        assert res["login_as_victim"] == ["refused", "auth"], shown  # wrong password
        assert res["login_as_stack_with_own_password"] == ["refused", "auth"], shown

        # The victim: every event exactly once, in order, nothing forged, its normal end.
        final = wait_status(api, victim["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        assert final["status"] == "COMPLETED" and final["exit_code"] == 0, final
        assert final["progress"] == 1.0 and final["last_event_id"] == VICTIM_EVENTS
        events = log_events(api, victim["id"])
        assert [e["event_id"] for e in events] == list(range(1, VICTIM_EVENTS + 1))
        assert all(e["event_type"] == "MESSAGE" for e in events)
    # No role outlives its task.
    poll_for(lambda: _task_roles(url) == [], 10, what="the task roles dropped")
    assert psutil.pid_exists(stack.procs["supervisor"].pid)


def test_the_probe_finds_the_holes_with_the_stacks_own_role(
    stack_factory: Any, pg_server: PgServer
) -> None:
    """The probe is real: with METASTREAM_DB_TASK_ROLES=0 a task holds the stack's role."""
    url = pg_server.create_database()
    env = {
        "METASTREAM_DB_URL": url,
        "METASTREAM_DB_TASK_ROLES": "0",
        "METASTREAM_SANDBOX": "uid",
        "METASTREAM_TEST_HOOKS": "1",
        "METASTREAM_WARM": "0",
    }
    stack: Stack = stack_factory(env=env)
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        report, shown, _victim = _probe(api)
    res = report["results"]
    holes = {k for k, (how, _) in res.items() if how == "ok"}
    assert {"insert_victim_event", "update_tasks", "read_tasks", "create_table"} <= holes, shown
    assert res["read_victim_events"][1][0][0] > 0, shown
    assert report["leaks"]["spec"], shown  # the stack's own credentials
    assert _task_roles(url) == []  # none made


def test_no_task_role_outlives_a_supervisor_crash(stack_factory: Any, pg_server: PgServer) -> None:
    url = pg_server.create_database()
    stack: Stack = stack_factory(env={"METASTREAM_DB_URL": url, "METASTREAM_WARM": "0"})
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        adopted = create_task(api, synthetic={"events": 300, "rate": 50})
        lost = create_task(api, synthetic={"events": 100_000, "rate": 50})
        for t in (adopted, lost):
            api.post(f"/api/tasks/{t['id']}/run").raise_for_status()
        for t in (adopted, lost):
            poll_for(lambda t=t: len(log_events(api, t["id"])) > 5, 60, what="events")
        assert len(_task_roles(url)) == 2
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pid FROM tasks WHERE id = %s", (lost["id"],)).fetchone()
        assert row is not None and row[0]
        stack.kill("supervisor")
        psutil.Process(row[0]).kill()  # dies while nobody watches: its role is stale
        stack.start_component("supervisor")
        stack.wait_healthy()
        ended = wait_status(api, lost["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=30)
        assert ended["status"] == "FAILED", ended
        # The re-adopted task kept its role (swept are only the dead's) and ends complete.
        final = wait_status(api, adopted["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
        assert final["status"] == "COMPLETED" and final["exit_code"] == 0, final
        assert [e["event_id"] for e in log_events(api, adopted["id"])] == list(range(1, 301))
    poll_for(lambda: _task_roles(url) == [], 10, what="no task roles left")


# Runs inside the attacker task: TCP to the gateway (allowed to nobody) and to the database.
CONNECT = """
import socket
res = {{}}
for name, port in (("gateway", {gateway}), ("database", {database})):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        res[name] = "ok"
    except OSError as exc:
        res[name] = exc.errno
    finally:
        s.close()
out.emit("System", "ATTACK", {{"results": res}})
"""


@pytest.mark.parametrize("mode", ["uid", "landlock"])
def test_a_restricted_task_connects_only_to_the_ports_it_needs(
    stack_factory: Any, pg_server: PgServer, mode: str
) -> None:
    url = pg_server.create_database()
    env = {
        "METASTREAM_DB_URL": url,
        "METASTREAM_SANDBOX": mode,
        "METASTREAM_TASK_NETWORK": "restricted",
        "METASTREAM_TEST_HOOKS": "1",
        "METASTREAM_WARM": "0",
    }
    stack: Stack = stack_factory(env=env)
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        code = CONNECT.format(gateway=stack.port, database=pg_server.port)
        task = create_task(api, synthetic={"events": 50, "run_python": code})
        api.post(f"/api/tasks/{task['id']}/run").raise_for_status()
        final = wait_status(api, task["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        # It wrote its events through the database's port, and reached nothing else.
        assert final["status"] == "COMPLETED", (final["last_message"], final.get("error"))
        events = log_events(api, task["id"])
        report = next(e for e in events if e["event_type"] == "ATTACK")["payload"]["results"]
        assert report == {"gateway": 13, "database": "ok"}, report  # EACCES from Landlock
        assert len(events) == 51
