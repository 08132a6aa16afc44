"""The one protocol module: every message that crosses a ZeroMQ socket.

Bus messages (task processes and the supervisor publish, gateways and third parties subscribe)
are MessagePack maps whose keys are the WebSocket field names plus ``kind``, so any msgpack
library decodes them. Each is sent as ``[topic, body]`` where the topic is
``<task_id>/<kind>``: task ids are fixed-length UUIDs, so subscribing to a task id matches that
task's messages and no other's. Control messages (gateway -> supervisor) travel on a separate
DEALER/ROUTER channel as ``[request_id, body]``.

New fields must get defaults so that old peers keep decoding newer messages.
"""

from __future__ import annotations

from typing import Any

import msgspec

# The domain model lives in ``core``; these names stay importable from here for older callers
# (``X as X`` marks a re-export).
from core.clock import utcnow as utcnow
from core.ids import SYSTEM_TOPIC_PREFIX as SYSTEM_TOPIC_PREFIX
from core.ids import TASK_ID_LENGTH as TASK_ID_LENGTH
from core.ids import is_task_id as is_task_id
from core.ids import new_task_id as new_task_id
from core.status import TERMINAL, TaskStatus
from core.task import TaskRow

TERMINAL_STATUSES = TERMINAL
STATUSES = tuple(TaskStatus)


# --- bus: task process / supervisor -> subscribers -------------------------------------------
# ``gc=False``: messages never form reference cycles, and at tens of thousands per second
# keeping them out of the cyclic collector takes its pauses off the event path.


class Event(msgspec.Struct, tag="event", tag_field="kind", kw_only=True, gc=False):
    """One agent event; ``event_id`` is 1, 2, 3... per task."""

    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: dict[str, Any] = {}


class State(msgspec.Struct, tag="state", tag_field="kind", kw_only=True, gc=False):
    """A task's state; published on every change."""

    task_id: str
    status: str
    progress: float = 0.0
    current_agent: str | None = None
    last_message: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    # Bus-only: the id of the task's last persisted event when this state was written, so a
    # subscriber holding a final state knows which events must precede it.
    last_event_id: int = 0
    # Bus-only: increases with every state change of the task; order states by it.
    version: int = 0


# Bucket bounds of the event-log statistics a task process reports in its heartbeats: fixed
# here so both ends agree (a task process runs no metrics server; the supervisor exports them).
WRITE_SECONDS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
BATCH_SIZE_BOUNDS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000)


class WriteStats(msgspec.Struct, array_like=True, gc=False):
    """A task process's event-log writes so far (cumulative, for the supervisor's metrics).

    Buckets count observations per bound (not cumulative), plus one past the last bound.
    """

    batches: int = 0
    events: int = 0  # persisted
    published: int = 0  # of those, sent on the bus (none while nobody subscribes)
    write_seconds: float = 0.0
    write_buckets: list[int] = []
    batch_buckets: list[int] = []
    first_event_at: float = 0.0  # wall-clock time the first event was persisted (0: none yet)


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="kind", kw_only=True, gc=False):
    """Liveness of a task process, sent every heartbeat interval."""

    task_id: str
    last_event_id: int
    pid: int
    sent_at: float
    stats: WriteStats | None = None


class Lease(msgspec.Struct, tag="lease", tag_field="kind", kw_only=True):
    """A gateway's claim that it has ``watchers`` clients on a task, valid for ``ttl`` s."""

    task_id: str
    gateway_id: str
    watchers: int
    ttl: float


# --- bus: the supervisor's process lifecycle, on ``_sys/process/<kind>`` ------------------
# For operators and tests (circus publishes the same): a task process was spawned, a stop
# sequence ended, a process was re-adopted after a supervisor restart, the zygote restarted.
# ``at`` is the supervisor's wall clock (ISO 8601 UTC), ``node`` its node name.
PROCESS_TOPIC_PREFIX = SYSTEM_TOPIC_PREFIX + b"process/"


class Spawned(msgspec.Struct, tag="spawned", tag_field="kind", kw_only=True):
    """A task process started (``warm``: forked from the zygote; else a fresh interpreter)."""

    task_id: str
    pid: int
    node: str
    at: str
    warm: bool = False


class Stopped(msgspec.Struct, tag="stopped", tag_field="kind", kw_only=True):
    """A stop sequence the supervisor ran ended; ``how`` is the step that ended the process.

    ``how``: ``asked`` (it exited after SIGINT), ``terminated`` (after SIGTERM to its group),
    ``killed`` (SIGKILL), or ``exited`` (it was gone before the sequence began).
    """

    task_id: str
    pid: int
    node: str
    at: str
    how: str
    status: str  # the status the task ends with (CANCELLED, FAILED)
    reason: str


class Readopted(msgspec.Struct, tag="readopted", tag_field="kind", kw_only=True):
    """A restarted supervisor took over a task process its predecessor left running."""

    task_id: str
    pid: int
    node: str
    at: str


class ZygoteRestarted(msgspec.Struct, tag="zygote_restarted", tag_field="kind", kw_only=True):
    """The zygote (warm-start fork server) died and is being restarted; tasks start cold."""

    node: str
    at: str
    restarts: int  # how many times since the supervisor started


ProcessLifecycle = Spawned | Stopped | Readopted | ZygoteRestarted
BusMessage = Event | State | Heartbeat | Lease | Spawned | Stopped | Readopted | ZygoteRestarted
LEASE_TOPIC = SYSTEM_TOPIC_PREFIX + b"lease"


def process_topic(msg: ProcessLifecycle) -> bytes:
    """``_sys/process/<kind>``: subscribe to ``_sys/process/`` for all of them."""
    return PROCESS_TOPIC_PREFIX + str(msg.__struct_config__.tag).encode()


# --- control: gateway -> supervisor ----------------------------------------------------------


class StartTask(msgspec.Struct, tag="start", tag_field="kind"):
    """Run the task (idempotent while it runs)."""

    task_id: str


class CancelTask(msgspec.Struct, tag="cancel", tag_field="kind"):
    """Stop the task and its whole process tree."""

    task_id: str
    reason: str = "Cancelled by user"


class Ping(msgspec.Struct, tag="ping", tag_field="kind"):
    """Liveness probe of the supervisor."""


class FollowUpTask(msgspec.Struct, tag="follow_up", tag_field="kind"):
    """Start a new run of a COMPLETED task: MetaGPT incremental mode on its workspace."""

    task_id: str
    requirement: str


class ResumeTask(msgspec.Struct, tag="resume", tag_field="kind"):
    """Continue a CANCELLED or FAILED task from its serialized team (its last round)."""

    task_id: str


ControlRequest = StartTask | CancelTask | Ping | FollowUpTask | ResumeTask


class Reply(msgspec.Struct, tag="reply", tag_field="kind"):
    """The supervisor's answer to one control request."""

    ok: bool
    status: str | None = None
    error: str | None = None


# --- codecs, built once ----------------------------------------------------------------------

bus_encoder = msgspec.msgpack.Encoder()
bus_decoder = msgspec.msgpack.Decoder(BusMessage)
control_encoder = bus_encoder
control_decoder = msgspec.msgpack.Decoder(ControlRequest)
reply_decoder = msgspec.msgpack.Decoder(Reply)
json_encoder = msgspec.json.Encoder()


def topic(task_id: str, kind: str) -> bytes:
    """The bus topic of a task's message of the given kind."""
    return f"{task_id}/{kind}".encode()


def task_id_of(topic_frame: bytes) -> str:
    """The task id a topic frame starts with."""
    return topic_frame[:TASK_ID_LENGTH].decode("ascii", errors="replace")


def state_of(row: TaskRow) -> State:
    """The bus/WebSocket state of a stored task."""
    return State(
        task_id=row.id,
        status=row.status,
        progress=row.progress,
        current_agent=row.current_agent,
        last_message=row.last_message,
        started_at=row.started_at,
        completed_at=row.completed_at,
        last_event_id=row.last_event_id,
        version=row.state_version,
    )


def event_data_json(ev: Event) -> bytes:
    """The event's WebSocket ``data`` object as JSON (also what the event log stores)."""
    return json_encoder.encode(msgspec.structs.asdict(ev))


# The state's WebSocket ``data`` fields (the seed's): everything but the bus-only extras.
STATE_FIELDS = tuple(f for f in State.__struct_fields__ if f not in ("last_event_id", "version"))


def state_data(st: State) -> dict[str, Any]:
    """The state's WebSocket ``data`` object: exactly the seed's fields."""
    return {f: getattr(st, f) for f in STATE_FIELDS}


def ws_frame(msg_type: str, data_json: bytes) -> bytes:
    """A WebSocket message ``{"type": ..., "data": ...}`` around pre-encoded data."""
    return b'{"type":"' + msg_type.encode() + b'","data":' + data_json + b"}"
