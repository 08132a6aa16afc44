"""Event vocabulary of a MetaGPT task and the emitter interface the task process provides.

`agent_role` is the MetaGPT role class name ("ProductManager", "Architect", "ProjectManager",
"Engineer", "QaEngineer") or "System" for flow-level events. Event types and their payloads:

- FLOW_START (System): requirement (truncated), llm ("scripted" or "configured"), model,
  project_dir (a name inside the workspace), n_round, investment, use_qa. No key, no base URL,
  no server path: every client of the task sees it.
- ROUND (System): round, n_round, total_cost.
- MESSAGE: a message published to the environment: content (+ truncation fields), role,
  cause_by, sent_from, send_to, round.
- ACTION_START / ACTION_END: action (class name), file (per-file actions such as WriteCode and
  WriteCodeReview, else null); ACTION_END adds ok and duration_ms.
- NODE_FILLED: a structured ActionNode result: node (key, e.g. "WritePRD"), content (JSON text).
- LLM_STREAM: coalesced model output: text, chars (flushed every 50 ms or 2 kB per role).
- COST: one priced LLM call: prompt_tokens, completion_tokens, cost, total_cost,
  total_prompt_tokens, total_completion_tokens, max_budget, priced_as, priced.
- FILE_WRITTEN: path (relative to the task workspace, POSIX), kind (requirement/prd/design/
  task_list/code/test/doc/resource/other; requirement and summaries are "doc"), size (bytes),
  preview (first 400 chars), preview_truncated.
- LOG: a MetaGPT warning or error log line: level, message (at most 200 per run).
- ERROR: action, file, error (type and message) when an action raises; System ERROR with
  error when the flow fails.
- FLOW_END (System): ok, rounds, total_cost, files (code files written), project_dir, duration_ms.

Truncated text fields come with `truncated: true` and `original_chars`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

MESSAGE = "MESSAGE"
ACTION_START = "ACTION_START"
ACTION_END = "ACTION_END"
NODE_FILLED = "NODE_FILLED"
LLM_STREAM = "LLM_STREAM"
COST = "COST"
FILE_WRITTEN = "FILE_WRITTEN"
ROUND = "ROUND"
RESUMED = "RESUMED"  # a run continues from a serialized team
LOG = "LOG"
ERROR = "ERROR"
FLOW_START = "FLOW_START"
FLOW_END = "FLOW_END"
SYSTEM = "System"

MAX_TEXT_CHARS = 20_000


class Emitter(Protocol):
    """Where a run reports to; the task process provides the real one."""

    cancelled: threading.Event

    def emit(self, agent_role: str, event_type: str, payload: dict[str, Any]) -> int:
        """Record one event (thread-safe, non-blocking); returns its event_id."""
        ...

    def set_state(
        self,
        *,
        progress: float | None = None,
        current_agent: str | None = None,
        last_message: str | None = None,
    ) -> None:
        """Update the task state (thread-safe); None leaves a field unchanged."""
        ...


class FlowError(RuntimeError):
    """The MetaGPT flow failed; the message says where and why."""


class FlowCancelled(FlowError):
    """The run stopped because `emitter.cancelled` was set."""


class BudgetExceeded(FlowError):
    """The investment is spent before the flow finished."""


def truncate(text: str, limit: int = MAX_TEXT_CHARS) -> tuple[str, dict[str, Any]]:
    """Cut text to `limit` characters; the dict says whether and from how much."""
    if len(text) <= limit:
        return text, {}
    return text[:limit], {"truncated": True, "original_chars": len(text)}


def root_cause(exc: BaseException) -> BaseException:
    """Unwrap tenacity's RetryError to the exception of the last attempt."""
    last = getattr(exc, "last_attempt", None)
    if last is not None and getattr(last, "failed", False):
        inner = last.exception()
        if inner is not None:
            return root_cause(inner)
    return exc


def describe(exc: BaseException) -> str:
    """'Type: message' of the root cause, bounded in size."""
    cause = root_cause(exc)
    return f"{type(cause).__name__}: {cause}"[:2000]
