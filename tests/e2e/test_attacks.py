"""The trust boundary, attacked from inside real task processes (issue 20).

An attacker task runs hostile Python (the ``run_python`` test hook, on only because these
stacks set METASTREAM_TEST_HOOKS=1) after its sandbox is applied, on the cold and the warm
path, with a uid of its own (``uid``) and confined by Landlock alone (``landlock``, forced:
tests run as root). Each attempt is reported in an ATTACK event and checked from outside too;
the victim task running beside it must end exactly as it would have alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import zmq

from bus import auth
from metastream import settings
from metastream.stack import Stack
from tests.helpers import collect, create_task, log_events, poll_for, wait_status

# Each test starts sandboxed stacks and cold tasks: more than the suite's 120 s on a loaded
# machine (the attacker's own wait allows 90 s).
pytestmark = pytest.mark.timeout(300)

VICTIM_EVENTS = 150
TOKEN = "attack-suite-token-5e1f"

# Runs inside the attacker task; VICTIM, HOME, PIDS are filled in. Every attempt records
# "ok" or the error it met.
PROBE = """
import json, os, signal, socket
V, H, PIDS = {victim!r}, {home!r}, {pids!r}
res = {{}}

def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as exc:
        res[name] = f"{{type(exc).__name__}}: {{exc.errno}}"

def read(path, n=1):
    with open(path, "rb") as f:
        return f.read(n)

def write(path):
    with open(path, "ab") as f:
        f.write(b"planted")

attempt("list_victim_workspace", lambda: os.listdir(f"{{H}}/tasks/{{V}}"))
attempt("plant_in_victim_workspace", lambda: write(f"{{H}}/tasks/{{V}}/planted.txt"))
attempt("list_workspaces", lambda: os.listdir(f"{{H}}/tasks"))
attempt("read_store", lambda: read(f"{{H}}/data/metastream.db"))
attempt("write_store", lambda: write(f"{{H}}/data/metastream.db"))
attempt("read_victim_log", lambda: read(f"{{H}}/data/events/{{V}}/events.db"))
attempt("write_victim_log", lambda: write(f"{{H}}/data/events/{{V}}/events.db"))
attempt("read_logs", lambda: read(f"{{H}}/logs/gateway.log"))
attempt("read_bus_internals", lambda: os.listdir(f"{{H}}/run"))
for who, pid in PIDS.items():
    attempt(f"environ_{{who}}", lambda: read(f"/proc/{{pid}}/environ", 1 << 16))
    attempt(f"mem_{{who}}", lambda: read(f"/proc/{{pid}}/mem"))
    attempt(f"signal_{{who}}", lambda: os.kill(pid, signal.SIGCONT))
import zmq
from bus.messages import CancelTask, control_encoder
zctx = zmq.Context()

def cancel_victim(curve):
    # Landlock does not cover unix sockets: in landlock mode the socket is reachable.
    s = zctx.socket(zmq.DEALER)
    s.linger = 0
    if curve:  # its own key pair, and the server's real public key (not a secret)
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.curve_serverkey = {control_key!r}
    s.connect({control!r})
    s.send_multipart([b"1", control_encoder.encode(CancelTask(task_id=V, reason="forged"))])
    if not s.poll(2000):
        raise TimeoutError("no reply")

attempt("cancel_victim_plain", lambda: cancel_victim(False))
attempt("cancel_victim_curve", lambda: cancel_victim(True))
attempt("own_workspace", lambda: write("mine.txt"))
with open("/proc/self/cmdline", "rb") as f:
    cmdline = f.read().decode(errors="replace")
import resource
names = ("NOFILE", "CORE", "AS", "NPROC")
limits = {{n: resource.getrlimit(getattr(resource, "RLIMIT_" + n))[0] for n in names}}
no_new_privs = [l for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0].split()[1]
out.emit("System", "ATTACK", {{"results": res, "warm": "forkserver_zygote" in cmdline,
    "limits": limits, "no_new_privs": no_new_privs, "uid": os.getuid()}})
"""
# What must have succeeded (the probe is not just failing everything).
ALLOWED = {"own_workspace"}


def _sandboxed_stack(stack_factory: Any, mode: str, warm: bool) -> Stack:
    env = {
        "METASTREAM_SANDBOX": mode,
        "METASTREAM_TEST_HOOKS": "1",
        "METASTREAM_WARM": "1" if warm else "0",
        "METASTREAM_API_TOKEN": TOKEN,
        # Not about liveness: a cold interpreter on a loaded CI machine may take > 5 s.
        "METASTREAM_HEARTBEAT_TIMEOUT": "30",
    }
    s: Stack = stack_factory(env=env)
    if warm:
        poll_for(lambda: "fork server ready" in s.log("forkserver"), 60, what="the zygote")
    return s


@pytest.fixture(params=["uid-cold", "uid-warm", "landlock-cold", "landlock-warm"])
def attacked(request: pytest.FixtureRequest, stack_factory: Any) -> Iterator[tuple[Stack, str]]:
    mode, path = request.param.split("-")
    yield _sandboxed_stack(stack_factory, mode, path == "warm"), path


def _task_pid(api: httpx.Client, stack: Stack, task_id: str) -> int:
    from store import Store

    db = Store(f"sqlite:///{stack.home / 'data' / 'metastream.db'}")
    try:
        return poll_for(
            lambda: (r := db.get_task(task_id)) is not None and r.pid, 20, what="the pid"
        )
    finally:
        db.close()


def _attack(
    api: httpx.Client, stack: Stack, code: str, path: str, sandboxed: bool = True
) -> tuple[dict[str, Any], int]:
    """Run ``code`` in a new task on ``path`` (cold/warm); its ATTACK results and its pid."""
    attacker = create_task(api, synthetic={"events": 1, "run_python": code})
    api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
    pid = _task_pid(api, stack, attacker["id"])
    # A cold task's start and its probes took over 30 s once with three suites on 2 cores.
    final = wait_status(api, attacker["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=90)
    assert final["status"] == "COMPLETED", final
    reports = [e for e in log_events(api, attacker["id"]) if e["event_type"] == "ATTACK"]
    assert len(reports) == 1, reports
    payload = reports[0]["payload"]
    assert payload["warm"] == (path == "warm"), "not on the path under test"
    if not sandboxed:
        return payload["results"], pid
    # Property 5: the documented default limits, and no way back to privileges.
    assert payload["no_new_privs"] == "1"
    limits = payload["limits"]
    assert limits["NOFILE"] == 1024 and limits["CORE"] == 0
    assert limits["AS"] == 16_384 * 1024 * 1024
    if payload["uid"] >= 200_000:  # its own uid: the process count is the task's alone
        assert limits["NPROC"] == 512
    elif payload["uid"] != 0:  # the user's uid (landlock): 512 more than the user had
        assert limits["NPROC"] > 512
    return payload["results"], pid


def _probe(
    stack: Stack, path: str, sandboxed: bool = True
) -> tuple[dict[str, Any], httpx.Client, dict[str, Any]]:
    """Start a victim, run PROBE in an attacker beside it; (results, api, victim)."""
    api = httpx.Client(base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    victim = create_task(api, synthetic={"events": VICTIM_EVENTS, "rate": 30})
    api.post(f"/api/tasks/{victim['id']}/run").raise_for_status()
    pids = {
        "gateway": stack.procs["gateway"].pid,
        "supervisor": stack.procs["supervisor"].pid,
        "bus": stack.procs["bus"].pid,
        "victim": _task_pid(api, stack, victim["id"]),
    }
    cfg = settings.load(stack.env)
    code = PROBE.format(
        victim=victim["id"],
        home=str(stack.home),
        pids=pids,
        control=cfg.control,
        control_key=zmq.curve_public(auth.control_server_secret(auth.load_master(stack.home))),
    )
    report, _attacker_pid = _attack(api, stack, code, path, sandboxed)
    return report, api, victim


def test_a_task_touches_only_its_own_workspace(attacked: tuple[Stack, str]) -> None:
    stack, path = attacked
    report, api, victim = _probe(stack, path)
    try:
        succeeded = {name for name, result in report.items() if result == "ok"}
        assert succeeded == ALLOWED, json.dumps(report, indent=1)
        # The planted file is not there to be served.
        r = api.get(f"/api/tasks/{victim['id']}/files/planted.txt")
        assert r.status_code == 404
        assert not (stack.home / "tasks" / victim["id"] / "planted.txt").exists()

        # The victim is untouched: every event, in order, and its normal end.
        final = wait_status(api, victim["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        assert final["status"] == "COMPLETED", final
        assert [e["event_id"] for e in log_events(api, victim["id"])] == list(
            range(1, VICTIM_EVENTS + 1)
        )
        assert psutil.pid_exists(stack.procs["supervisor"].pid)
        assert psutil.pid_exists(stack.procs["gateway"].pid)
    finally:
        api.close()
    _assert_private(stack.home)


def test_the_probe_finds_the_holes_when_the_sandbox_is_off(stack_factory: Any) -> None:
    """The probe is real: without the sandbox, the file attacks of the issue succeed."""
    stack = _sandboxed_stack(stack_factory, "off", warm=False)
    report, api, _victim = _probe(stack, "cold", sandboxed=False)
    api.close()
    holes = {name for name, result in report.items() if result == "ok"}
    assert {
        "plant_in_victim_workspace",
        "list_victim_workspace",
        "read_store",
        "write_victim_log",
        "signal_victim",
    } <= holes, json.dumps(report, indent=1)
    # The bus and control channel keep their own checks, sandbox or not.
    assert "cancel_victim_curve" not in holes


def _assert_private(home: Path) -> None:
    """Nothing under METASTREAM_HOME is open to other users (property 7)."""
    for p in [home, *home.rglob("*")]:
        if p.is_symlink() or p.is_socket():
            continue
        mode = p.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


def test_the_test_hook_is_refused_unless_switched_on(api: httpx.Client) -> None:
    r = api.post(
        "/api/tasks", json={"requirement": "x", "synthetic": {"events": 1, "run_python": "1"}}
    )
    assert r.status_code == 422
    assert "METASTREAM_TEST_HOOKS" in r.text


# Runs inside the attacker task for SECONDS: forges, with its own key and with a key of its
# own making, everything a task could tell the others about other tasks.
FORGE = """
import os, time, zmq
from bus.client import Publisher
from bus.messages import Event, Heartbeat, Lease, State, bus_encoder, topic
V, HUNG, KILLED, SECONDS = {victim!r}, {hung!r}, {killed!r}, {seconds!r}
mine = Publisher(os.environ["METASTREAM_BUS_PUB"])  # the attacker's own key, from its env
ctx = zmq.Context()
other = ctx.socket(zmq.PUB)  # a key pair of its own making
other.curve_publickey, other.curve_secretkey = zmq.curve_keypair()
other.curve_serverkey = os.environ["METASTREAM_BUS_SERVER_KEY"].encode()
other.connect(os.environ["METASTREAM_BUS_PUB"])
end = time.monotonic() + SECONDS
n = 0
while time.monotonic() < end:
    n += 1
    for sock in (mine, other):
        send = sock.send if sock is mine else (lambda t, b: other.send_multipart([t, b]))
        for i in range(1, 400, 7):
            ev = Event(event_id=i, task_id=V, timestamp="forged", agent_role="Forger",
                       event_type="FORGED", payload={{"forged": True}})
            send(topic(V, "event"), bus_encoder.encode(ev))
        send(topic(V, "state"), bus_encoder.encode(State(
            task_id=V, status="RUNNING", progress=0.01, last_message="forged", version=10**9)))
        send(topic(V, "state"), bus_encoder.encode(State(
            task_id=V, status="FAILED", last_message="forged end", version=10**9 + 1)))
        send(topic(HUNG, "heartbeat"), bus_encoder.encode(Heartbeat(
            task_id=HUNG, last_event_id=10**6, pid=1, sent_at=time.time())))
        lease = Lease(task_id=KILLED, gateway_id="forged", watchers=5, ttl=60.0)
        send(b"_sys/lease", bus_encoder.encode(lease))
    time.sleep(0.05)
out.emit("System", "ATTACK", {{"results": {{"rounds": n}}, "warm": False, "limits": None}})
"""


@pytest.mark.parametrize("mode", ["uid", "landlock"])
def test_forged_bus_messages_are_dropped(stack_factory: Any, mode: str) -> None:
    fast = {
        "METASTREAM_HEARTBEAT_INTERVAL": "0.3",
        "METASTREAM_HEARTBEAT_TIMEOUT": "2",
        "METASTREAM_LEASE_TTL": "1",
        "METASTREAM_STOP_ASK_TIMEOUT": "1",
        "METASTREAM_STOP_TERM_TIMEOUT": "1",
    }
    stack: Stack = stack_factory(
        env={"METASTREAM_SANDBOX": mode, "METASTREAM_TEST_HOOKS": "1", **fast}
    )
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        victim = create_task(api, synthetic={"events": VICTIM_EVENTS, "rate": 25})
        hung = create_task(api, synthetic={"events": 100, "rate": 50, "hang_after": 3})
        killed = create_task(
            api, synthetic={"events": 100_000, "rate": 50}, disconnect_policy="kill"
        )
        code = FORGE.format(victim=victim["id"], hung=hung["id"], killed=killed["id"], seconds=8)
        attacker = create_task(api, synthetic={"events": 1, "run_python": code})

        async def watch() -> Any:
            stream = asyncio.create_task(collect(stack.ws_url, victim["id"], timeout=60))
            api.post(f"/api/tasks/{victim['id']}/run").raise_for_status()
            api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
            await asyncio.to_thread(wait_status, api, attacker["id"], {"RUNNING"})
            # While it forges: a task that hangs, and one whose only client comes and goes.
            for t in (hung, killed):
                api.post(f"/api/tasks/{t['id']}/run").raise_for_status()
            await collect(stack.ws_url, killed["id"], stop_after_events=3, timeout=20)
            return await stream

        got = asyncio.run(watch())
        # The victim's client saw exactly the real stream and its true end.
        assert got.event_ids == list(range(1, VICTIM_EVENTS + 1))
        assert all(e["event_type"] == "MESSAGE" for e in got.of("event"))
        assert all(s["last_message"] not in ("forged", "forged end") for s in got.of("state"))
        assert got.of("state")[-1]["status"] == "COMPLETED" and got.close_code == 1000
        events = log_events(api, victim["id"])
        assert [e["event_id"] for e in events] == list(range(1, VICTIM_EVENTS + 1))
        assert all(e["event_type"] == "MESSAGE" for e in events)
        final = api.get(f"/api/tasks/{victim['id']}").json()
        assert final["status"] == "COMPLETED" and final["progress"] == 1.0

        # Forged heartbeats did not keep the hung task alive, nor leases the unwatched one.
        ended = wait_status(api, hung["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=20)
        assert ended["status"] == "FAILED" and "no heartbeat" in ended["last_message"], ended
        ended = wait_status(api, killed["id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout=20)
        assert ended["status"] == "CANCELLED" and "policy kill" in ended["last_message"], ended
        assert wait_status(api, attacker["id"], {"COMPLETED", "FAILED"})["status"] == "COMPLETED"
        rounds = [e for e in log_events(api, attacker["id"]) if e["event_type"] == "ATTACK"]
        assert rounds and rounds[0]["payload"]["results"]["rounds"] > 10
    # The proxy counted what it dropped, by reason.
    poll_for(
        lambda: (
            "a sender published for another task" in stack.log("bus")
            and "a task published on a _sys/ topic" in stack.log("bus")
        ),
        10,
        what="the bus's drop log",
    )


# The attacker ruins its own event log (the one file it may write), then carries on.
SELF_DAMAGE = """
import os
own = os.path.basename(os.getcwd())
path = os.path.join({events!r}, own, "events.db")
out.flush()
for name in (path, path + "-wal"):
    if os.path.exists(name):
        size = os.path.getsize(name)
        with open(name, "r+b") as f:
            f.write((b"not a database any more" * (size // 23 + 1))[:size])
try:
    out.emit("System", "AFTER", {{}})
except RuntimeError:
    pass  # its own writer may notice: the task fails, which is its own business
"""


@pytest.mark.parametrize("mode", ["uid", "landlock"])
def test_a_task_that_ruins_its_own_log_hurts_only_itself(stack_factory: Any, mode: str) -> None:
    stack: Stack = stack_factory(env={"METASTREAM_SANDBOX": mode, "METASTREAM_TEST_HOOKS": "1"})
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        victim = create_task(api, synthetic={"events": VICTIM_EVENTS, "rate": 50})
        code = SELF_DAMAGE.format(events=str(stack.home / "data" / "events"))
        attacker = create_task(api, synthetic={"events": 5, "run_python": code})

        async def watch() -> Any:
            stream = asyncio.create_task(collect(stack.ws_url, victim["id"], timeout=60))
            api.post(f"/api/tasks/{victim['id']}/run").raise_for_status()
            api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
            return await stream

        got = asyncio.run(watch())
        assert got.event_ids == list(range(1, VICTIM_EVENTS + 1)) and got.close_code == 1000
        # The attacker still ends (never stuck RUNNING), and reading its log is a clear error.
        ended = wait_status(api, attacker["id"], {"COMPLETED", "FAILED", "CANCELLED"})
        assert ended["status"] in ("FAILED", "COMPLETED"), ended
        r = api.get(f"/api/tasks/{attacker['id']}/events")
        assert r.status_code == 502 and "unreadable" in r.json()["detail"], r.text
        assert api.get("/healthz").json()["supervisor"] == "ok"
        assert [e["event_id"] for e in log_events(api, victim["id"])] == list(
            range(1, VICTIM_EVENTS + 1)
        )
    for name in ("bus", "supervisor", "gateway"):
        assert stack.procs[name].poll() is None, f"{name} died: {stack.log(name)[-2000:]}"


# The attacker writes a row into its own log (the one file it may write) that, spliced into a
# batch frame or the REST page, would be a second message: a final state it never had.
FORGE_ROW = """
import json, os, sqlite3
own = os.path.basename(os.getcwd())
out.emit("System", "BEFORE", {{}})
out.emit("System", "BEFORE", {{}})
out.flush()
event = {{"event_id": 3, "task_id": own, "timestamp": "t", "agent_role": "r", "event_type": "E",
          "payload": {{}}}}
state = {{"type": "state", "data": {{"task_id": own, "status": "FAILED", "progress": 0.0,
          "current_agent": None, "last_message": "forged", "started_at": None,
          "completed_at": None}}}}
row = json.dumps(event, separators=(",", ":"))[:-1] + "}}}}," + json.dumps(state)[:-1]
db = sqlite3.connect(os.path.join({events!r}, own, "events.db"))
db.execute("INSERT INTO events (event_id, data) VALUES (3, ?)", (row.encode(),))
db.commit()
"""


def test_a_row_a_task_forges_in_its_own_log_is_an_error_not_a_message(stack_factory: Any) -> None:
    stack: Stack = stack_factory(env={"METASTREAM_SANDBOX": "uid", "METASTREAM_TEST_HOOKS": "1"})
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        code = FORGE_ROW.format(events=str(stack.home / "data" / "events"))
        attacker = create_task(api, synthetic={"events": 0, "run_python": code})
        api.post(f"/api/tasks/{attacker['id']}/run").raise_for_status()
        ended = wait_status(api, attacker["id"], {"COMPLETED", "FAILED", "CANCELLED"}, timeout=90)
        assert ended["status"] == "COMPLETED", ended
        for fmt in ("batch", "json"):
            got = asyncio.run(collect(stack.ws_url, attacker["id"], timeout=30, fmt=fmt))
            assert got.close_code == 1011, (fmt, got)
            assert "event 3's JSON is not that event's" in got.of("error")[0]["message"]
            assert got.event_ids == [1, 2], (fmt, got)  # the rows before it: intact
            assert all(s.get("last_message") != "forged" for s in got.of("state")), got
        # The REST page: the events before it, "has_more", and the next page says what is wrong.
        page = api.get(f"/api/tasks/{attacker['id']}/events").json()
        assert [e["event_id"] for e in page["events"]] == [1, 2] and page["has_more"], page
        r = api.get(f"/api/tasks/{attacker['id']}/events", params={"after": page["next_after"]})
        assert r.status_code == 502 and "event 3's JSON" in r.json()["detail"], r.text
        assert "closing a stream of task" in stack.log("gateway")
