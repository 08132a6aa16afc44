"""Tables of the task store."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("requirement", Text, nullable=False),
    Column("test_mode", Boolean, nullable=False, default=False),
    Column("options", Text, nullable=False, default="{}"),  # JSON: synthetic spec, policies...
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("current_agent", String(64)),
    Column("last_message", Text),
    Column("created_at", String(32), nullable=False),
    Column("created_ns", BigInteger, nullable=False, index=True),  # exact order, newest first
    Column("queued_at", String(32)),
    Column("started_at", String(32)),
    Column("completed_at", String(32)),
    Column("last_event_id", Integer, nullable=False, default=0),
    # Bumped by every state write, so subscribers can drop a state older than one they have.
    Column("state_version", Integer, nullable=False, default=0),
    Column("run_count", Integer, nullable=False, default=0),
    Column("node", String(64)),
    Column("pid", Integer),
    Column("pid_create_time", Float),
    Column("exit_code", Integer),
    Column("error", Text),  # the task process's own account of a failure
    # Several nodes (issue 15): bumped when a node claims the task and when its run is taken
    # over; writes of an older run are refused (store/migrations 0003, runner/nodes.py).
    Column("epoch", Integer, nullable=False, server_default="0"),
    Column("cancel_request", Text),  # a cancel asked at another node's gateway, not yet done
)

# One row per event; ``data`` is the event's JSON object exactly as sent on the WebSocket, and
# ``body`` the same event as the task put it on the bus (MessagePack; NULL for rows logged
# before migration 0006), so replay never re-encodes, in either format.
events = Table(
    "events",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column("event_id", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("body", LargeBinary, nullable=True),
    sqlite_with_rowid=False,
)

# One row per run of a task: the first, each follow-up and each resume. Written only by the
# supervisor (trusted), so a task process never vouches for its own run's bounds.
runs = Table(
    "runs",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column("run_no", Integer, primary_key=True),  # 1, 2, 3... per task
    Column("kind", String(16), nullable=False),  # start | retry | follow_up | resume
    Column("requirement", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("first_event_id", Integer),  # the id the run's first event gets
    Column("last_event_id", Integer),  # set when the run ends
    Column("created_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("ended_at", String(32)),
    sqlite_with_rowid=False,
)

# One row per supervisor (node) of a PostgreSQL deployment; its heartbeat is the database's
# clock, so nodes' clocks need not agree.
nodes = Table(
    "nodes",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("boot_id", String(64), nullable=False),  # this run of the supervisor
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("heartbeat", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("running", Integer, nullable=False),
    Column("control", Text, nullable=False),
    Column("state", String(16), nullable=False),  # up | stopped | lost
)

# A task's workspace, copied in by its supervisor at each checkpoint and at each run's end, so
# that every gateway can serve its files and any node can run its next run (store.files).
# Hidden paths (the serialized team, the project's .git) are kept for the latter, never served.
task_files = Table(
    "task_files",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# Which snapshot ``task_files`` holds for a task (store.files.Snapshot): one row per task.
task_shares = Table(
    "task_shares",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column("generation", Integer, nullable=False),  # bumped by every share
    Column("epoch", Integer, nullable=False),  # the run epoch it was taken at
    Column("run_no", Integer, nullable=False),
    Column("node", String(64), nullable=False),
    Column("final", Boolean, nullable=False),  # taken at its run's end
    Column("taken_at", String(32), nullable=False),
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

# A task's own record of how it ended (``exit_code``, ``error``, ``state_version``: JSON
# values), on a server database: the SQLite log's ``meta`` table. Written by the task (its
# database role reaches its own rows only, store.taskroles), read by the supervisor.
task_meta = Table(
    "task_meta",
    metadata,
    Column("task_id", String(36), primary_key=True),
    Column("key", String(32), primary_key=True),
    Column("value", LargeBinary),
    sqlite_with_rowid=False,
)
