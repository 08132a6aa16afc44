"""Per-run bookkeeping: turns hook callbacks into events and task state.

No MetaGPT import here: the hooks hand over plain values (names, strings, dicts).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from runner.metagpt_flow.events import (
    ACTION_END,
    ACTION_START,
    COST,
    ERROR,
    FILE_WRITTEN,
    LLM_STREAM,
    LOG,
    MESSAGE,
    NODE_FILLED,
    SYSTEM,
    Emitter,
    FlowCancelled,
    describe,
    truncate,
)

# Progress reached once each stage's output is published (by `cause_by` of the message).
STAGE_DONE = {
    "PrepareDocuments": 0.02,
    "WritePRD": 0.15,
    "WriteDesign": 0.30,
    "WriteTasks": 0.45,
}
ENGINEER_SPAN = (0.45, 0.95)  # the engineer's files fill this range; QA shares its end
STREAM_FLUSH_S = 0.05
STREAM_FLUSH_CHARS = 2048
PREVIEW_CHARS = 400
MAX_LOG_EVENTS = 200  # MetaGPT warns per call in some setups; the events would be noise


def _short_name(cause_by: str) -> str:
    return cause_by.rsplit(".", 1)[-1] if cause_by else ""


class FlowObserver:
    """Collects what one MetaGPT run does and reports it through the emitter."""

    def __init__(self, emitter: Emitter, workspace: Path, src_dirname: str, fast_fail: bool):
        self.emitter = emitter
        self.cancelled: threading.Event = emitter.cancelled
        self.workspace = workspace.resolve()
        self.src_dirname = src_dirname
        self.fast_fail = fast_fail
        self.progress = 0.0
        self.task_list: list[str] = []
        self.code_files: set[str] = set()
        self.first_error: tuple[str, str, BaseException] | None = None
        self.counts: dict[str, int] = {}
        self._stream: dict[str, list[Any]] = {}  # role -> [parts, chars, first_monotonic]
        self._log_events = 0
        self.round = 0
        self._llm_progress = time.monotonic()

    def llm_progress(self) -> None:
        """The LLM moved: a call started or finished, or text streamed (not a log line: a
        retry's warning is no progress)."""
        self._llm_progress = time.monotonic()

    def llm_idle(self) -> float:
        """Seconds since the LLM last made progress (the stall watchdog's measure)."""
        return time.monotonic() - self._llm_progress

    def recall(self) -> None:
        """A resumed run: take the task list and code already written from the project."""
        project = self.workspace / self.src_dirname
        for doc in sorted((project / "docs" / "task").glob("*.json")):
            with contextlib.suppress(json.JSONDecodeError, OSError):
                found = json.loads(doc.read_text())
                self.task_list = [
                    str(x) for x in found.get("Refined Task list") or found.get("Task list", [])
                ]
        src = project / self.src_dirname
        self.code_files = {name for name in self.task_list if (src / name).is_file()}

    # -- plumbing ---------------------------------------------------------------------------
    def emit(self, role: str, event_type: str, payload: dict[str, Any]) -> int:
        self.counts[event_type] = self.counts.get(event_type, 0) + 1
        return self.emitter.emit(role, event_type, payload)

    def advance(self, progress: float, role: str | None = None, text: str | None = None) -> None:
        """Move progress forward (never back) and update the task state."""
        self.progress = max(self.progress, min(progress, 1.0))
        self.emitter.set_state(progress=self.progress, current_agent=role, last_message=text)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise FlowCancelled("cancelled")

    # -- hook callbacks ---------------------------------------------------------------------
    def on_message(self, role: str, msg: Any) -> None:
        content, meta = truncate(str(getattr(msg, "content", "")))
        cause_by = str(getattr(msg, "cause_by", ""))
        self.emit(
            role,
            MESSAGE,
            {
                "content": content,
                **meta,
                "role": getattr(msg, "role", ""),
                "cause_by": cause_by,
                "sent_from": str(getattr(msg, "sent_from", "")),
                "send_to": sorted(str(x) for x in getattr(msg, "send_to", ()) or ()),
                "round": self.round,
            },
        )
        stage = STAGE_DONE.get(_short_name(cause_by))
        if stage is not None:
            self.advance(stage, role, f"{role}: {_short_name(cause_by)} done")

    def on_action_start(self, role: str, action: str, filename: str | None) -> None:
        self.llm_progress()
        self.flush_stream()
        self.emit(role, ACTION_START, {"action": action, "file": filename, "round": self.round})
        verb = {"WriteCode": "writing", "WriteCodeReview": "reviewing", "WriteTest": "testing"}
        text = f"{role}: {verb[action]} {filename}" if filename and action in verb else None
        self.advance(self.progress, role, text or f"{role}: {action}")

    def on_action_end(self, role: str, action: str, filename: str | None, dur: float) -> None:
        self.llm_progress()
        self.flush_stream()
        payload = {"action": action, "file": filename, "ok": True, "duration_ms": int(dur * 1000)}
        self.emit(role, ACTION_END, payload)

    def on_action_error(
        self, role: str, action: str, filename: str | None, exc: BaseException, dur: float
    ) -> None:
        self.flush_stream()
        if self.first_error is None:
            self.first_error = (role, action, exc)
        error = describe(exc)
        self.emit(
            role,
            ACTION_END,
            {"action": action, "file": filename, "ok": False, "duration_ms": int(dur * 1000)},
        )
        self.emit(role, ERROR, {"action": action, "file": filename, "error": error})

    def on_node_filled(self, role: str, key: str, content: dict[str, Any]) -> None:
        self.llm_progress()
        # Incremental mode (a follow-up) answers "Refined Task list" instead.
        for key in ("Task list", "Refined Task list"):
            if isinstance(content.get(key), list):
                self.task_list = [str(x) for x in content[key]]
        text, meta = truncate(json.dumps(content, ensure_ascii=False, default=str))
        self.emit(role, NODE_FILLED, {"node": key, "content": text, **meta})

    def on_file_saved(self, role: str, path: Path, content: str) -> None:
        try:
            rel = path.resolve().relative_to(self.workspace).as_posix()
        except ValueError:
            # Outside the workspace: report it rather than hide it, without the server's path.
            rel = f"<outside the workspace>/{path.name}"
        kind = self._file_kind(rel)
        data = content.encode("utf-8", "replace")
        self.emit(
            role,
            FILE_WRITTEN,
            {
                "path": rel,
                "kind": kind,
                "size": len(data),
                "preview": content[:PREVIEW_CHARS],
                "preview_truncated": len(content) > PREVIEW_CHARS,
            },
        )
        if kind == "task_list" and not self.task_list:
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                doc = json.loads(content)
                found = doc.get("Refined Task list") or doc.get("Task list", [])
                self.task_list = [str(x) for x in found]
        if kind == "code":
            self._on_code_file(role, rel)

    def _on_code_file(self, role: str, rel: str) -> None:
        name = rel.split(f"/{self.src_dirname}/", 1)[-1]
        if self.task_list and name in self.task_list:
            self.code_files.add(name)
            lo, hi = ENGINEER_SPAN
            frac = len(self.code_files) / len(self.task_list)
            done = f"{len(self.code_files)}/{len(self.task_list)}"
            self.advance(lo + (hi - lo) * frac, role, f"{role}: wrote {name} ({done} files)")

    def _file_kind(self, rel: str) -> str:
        parts = rel.split("/")
        inner = "/".join(parts[1:])
        if inner.startswith("docs/prd/"):
            return "prd"
        if inner.startswith("docs/system_design/"):
            return "design"
        if inner.startswith("docs/task/"):
            return "task_list"
        if inner.startswith("docs/"):
            return "doc"
        if inner.startswith("tests/"):
            return "test"
        if inner.startswith("resources/"):
            return "resource"
        if inner.startswith(f"{self.src_dirname}/"):
            return "code"
        return "other"

    def on_cost(self, role: str, payload: dict[str, Any]) -> None:
        self.llm_progress()
        self.emit(role, COST, payload)

    def on_stream(self, role: str, text: str) -> None:
        if not text:
            return
        self.llm_progress()
        entry = self._stream.setdefault(role, [[], 0, time.monotonic()])
        if not entry[0]:
            entry[2] = time.monotonic()
        entry[0].append(text)
        entry[1] += len(text)
        if entry[1] >= STREAM_FLUSH_CHARS:
            self._flush_role(role)

    def flush_stream(self, only_due: bool = False) -> None:
        """Emit buffered LLM text (all of it, or only buffers older than the flush interval)."""
        now = time.monotonic()
        for role, entry in list(self._stream.items()):
            if entry[0] and (not only_due or now - entry[2] >= STREAM_FLUSH_S):
                self._flush_role(role)

    def _flush_role(self, role: str) -> None:
        parts, chars, _ = self._stream.pop(role)
        self.emit(role, LLM_STREAM, {"text": "".join(parts), "chars": chars})

    def on_log(self, role: str, level: str, message: str) -> None:
        if self._log_events >= MAX_LOG_EVENTS:
            return
        self._log_events += 1
        # Clients see no server paths: the workspace is named as such.
        message = message.replace(str(self.workspace), "<workspace>")
        self.emit(role, LOG, {"level": level, "message": message[:2000]})

    def system(self, event_type: str, payload: dict[str, Any]) -> int:
        return self.emit(SYSTEM, event_type, payload)
