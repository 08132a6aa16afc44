"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from store import TaskRow
from store.runs import RunKind, RunRow

# The configured maximum (METASTREAM_MAX_REQUIREMENT) is checked by the route, not here:
# field constraints are fixed when the class is built, the limit is per gateway.
MAX_REQUIREMENT = 20_000


def _integral(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; strict mode alone would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Request models are strict (no true -> 1, no "1" -> 1) except for this one JSON rule.
JsonInt = Annotated[int, BeforeValidator(_integral)]


class SyntheticIn(BaseModel):
    """A synthetic workload (see CONTRACT)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    events: JsonInt = Field(ge=0, le=10_000_000)
    rate: float = Field(0.0, ge=0, le=1_000_000, description="events per second, 0 = max")
    payload_bytes: JsonInt = Field(0, ge=0, le=1_000_000)
    exit_after: Annotated[int, Field(ge=0), BeforeValidator(_integral)] | None = None
    exit_code: JsonInt = Field(1, ge=0, le=255)
    hang_after: Annotated[int, Field(ge=0), BeforeValidator(_integral)] | None = None
    spawn_children: JsonInt = Field(0, ge=0, le=16)
    crash: Literal["exception", "segv", "kill", "oom"] | None = None
    # Left out of the OpenAPI schema: not part of the public API (a client that sends it
    # without the hook on gets a 422 naming it).
    run_python: SkipJsonSchema[str | None] = Field(
        None,
        max_length=100_000,
        description="TEST HOOK: Python run in the task process after its sandbox; refused "
        "(422) unless METASTREAM_TEST_HOOKS=1, which only the test suite sets",
    )


class TaskCreate(BaseModel):
    """``POST /api/tasks``."""

    # Strict: a body the schema rejects (``"grace_seconds": false``) is not quietly coerced,
    # and an unknown field (``"on_disconnect"`` for ``disconnect_policy``) is refused by name
    # rather than ignored: the task would silently run without the option its creator meant.
    model_config = ConfigDict(strict=True, extra="forbid")

    requirement: str = Field(
        min_length=1,
        description="at most METASTREAM_MAX_REQUIREMENT characters (default 20,000)",
    )
    test_mode: bool = False
    synthetic: SyntheticIn | None = None
    use_qa: bool = False
    n_round: JsonInt = Field(10, ge=1, le=50)
    investment: float = Field(3.0, gt=0, le=100)
    disconnect_policy: Literal["continue", "kill", "grace"] | None = Field(
        None, description="what happens when the last client leaves (server default if unset)"
    )
    grace_seconds: float | None = Field(None, ge=0, le=86_400)
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86_400)
    memory_limit_mb: float | None = Field(None, gt=0, le=1_000_000)
    scripted_fault: Literal["http500", "garbage", "slow"] | None = Field(
        None, description="make the offline scripted LLM fail (fault drills)"
    )
    pace: Literal["fast", "demo"] | None = Field(
        None,
        description="how fast the offline scripted LLM streams: demo reads at a human pace",
    )


# Which LLM a task runs on, decided when it is created (``TaskOut.llm``).
LLM_MODES = ("scripted", "configured", "synthetic")


def llm_mode(body: TaskCreate, llm_base_url: str) -> str:
    """ "synthetic" (no LLM), "scripted" (test mode, or no real LLM set up) or "configured"."""
    if body.synthetic is not None:
        return "synthetic"
    return "scripted" if body.test_mode or not llm_base_url else "configured"


class MessageIn(BaseModel):
    """``POST /api/tasks/{id}/messages``: the next requirement of the conversation."""

    model_config = ConfigDict(strict=True, extra="forbid")

    requirement: str = Field(
        min_length=1,
        pattern=r"\S",  # not only whitespace
        description="at most METASTREAM_MAX_REQUIREMENT characters (default 20,000)",
    )


class RunOut(BaseModel):
    """One run of a task: the first, a follow-up, a resume (``GET /api/tasks/{id}``).

    The store's ``RunRow`` under its API names (``run_no`` is ``run``; tests/gateway/
    test_models.py checks that the fields agree).
    """

    # Read from the row by its own names; also by the field names (a re-validated answer).
    model_config = ConfigDict(populate_by_name=True)

    run: int = Field(validation_alias="run_no")
    kind: RunKind
    requirement: str
    status: str
    first_event_id: int | None
    last_event_id: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None

    @classmethod
    def of(cls, r: RunRow) -> RunOut:
        return cls.model_validate(r, from_attributes=True)


class TaskOut(BaseModel):
    """A task and its current state."""

    model_config = ConfigDict(populate_by_name=True)  # (as RunOut's)

    id: str
    task_id: str = Field(validation_alias="id")  # the seed's name for it
    requirement: str
    test_mode: bool
    status: str
    progress: float
    current_agent: str | None
    last_message: str | None
    created_at: str
    started_at: str | None
    completed_at: str | None
    last_event_id: int
    exit_code: int | None = None
    options: dict[str, Any] = {}
    llm: str | None = Field(
        None,
        description='"scripted" (the offline scripted LLM: test mode, or no real LLM '
        'configured), "configured" (METASTREAM_LLM_BASE_URL) or "synthetic" (no LLM)',
    )
    # The conversation's runs, oldest first; only on single-task answers (None in lists).
    runs: list[RunOut] | None = None
    node: str | None = Field(
        None, description="the node that runs or last ran it (null: queued, not yet claimed)"
    )
    run_count: int = Field(0, description="task processes started for it so far")

    @classmethod
    def of(cls, row: TaskRow, runs: list[RunRow] | None = None) -> TaskOut:
        out = cls.model_validate(row, from_attributes=True)  # the row's fields, by name
        out.llm = _llm_of(row)
        out.runs = None if runs is None else [RunOut.of(r) for r in runs]
        return out


def _llm_of(row: TaskRow) -> str | None:
    recorded = row.options.get("llm")
    if recorded in LLM_MODES:
        return str(recorded)
    # Tasks created before the gateway recorded it.
    if row.options.get("synthetic") is not None:
        return "synthetic"
    return "scripted" if row.test_mode else None


class TicketOut(BaseModel):
    """A short-lived credential for one task's WebSocket (``?ticket=``)."""

    ticket: str
    expires_in: int = Field(description="seconds")


class TaskList(BaseModel):
    tasks: list[TaskOut]
    total: int
    limit: int
    offset: int


class EventOut(BaseModel):
    event_id: int
    task_id: str
    timestamp: str
    agent_role: str
    event_type: str
    payload: dict[str, Any]


class EventPage(BaseModel):
    task_id: str
    events: list[EventOut]
    next_after: int = Field(description="pass as ?after= to get the next page")
    has_more: bool


class ErrorOut(BaseModel):
    """An error answer: ``detail`` says what went wrong and, for a limit, which one."""

    detail: str


# Answers any route may give besides its own (documented so that clients and the schema fuzz
# test know them): auth, body size and creation rate come from middleware.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Host not allowed (METASTREAM_ALLOWED_HOSTS)"},
    403: {"model": ErrorOut, "description": "state change from a foreign Origin"},
    401: {"model": ErrorOut, "description": "missing or invalid API token"},
    404: {"model": ErrorOut, "description": "unknown task (or file)"},
    413: {"model": ErrorOut, "description": "request body too large (METASTREAM_MAX_BODY_BYTES)"},
    429: {"model": ErrorOut, "description": "too many tasks created (METASTREAM_CREATE_RATE)"},
}
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "the supervisor refused the command"},
    503: {"model": ErrorOut, "description": "the supervisor did not answer in time"},
}


class NodeOut(BaseModel):
    """One supervisor of a deployment on PostgreSQL (``GET /api/nodes``)."""

    name: str
    state: Literal["up", "stopped", "lost"]
    heartbeat_age: float = Field(description="seconds since its last heartbeat (database time)")
    capacity: int = Field(description="its METASTREAM_MAX_RUNNING")
    running: int
    control: str
    started_at: str


class NodeList(BaseModel):
    nodes: list[NodeOut]
