"""Following a task from the CLI: rendering (progress bar, one line per action) and the loops."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from bus.messages import TERMINAL_STATUSES
from core import settings
from metastream.subscribe import as_dict, stream, subscribe

EXIT_BY_STATUS = {"COMPLETED": 0, "FAILED": 1, "CANCELLED": 2}
EXIT_NO_FINAL_STATE = 3
# The supervisor's beacon comes twice a second: silence this long means no bus at the endpoint.
BUS_READY_TIMEOUT_S = 10.0
ROLE_WIDTH = 15
STYLE = {
    "ACTION_START": "cyan",
    "ACTION_END": "green",
    "FILE_WRITTEN": "bold green",
    "ERROR": "bold red",
    "LOG": "yellow",
    "COST": "magenta",
    "FLOW_START": "bold",
    "FLOW_END": "bold",
}
STATUS_STYLE = {"COMPLETED": "bold green", "FAILED": "bold red", "CANCELLED": "bold yellow"}
# LLM text arrives in many small chunks: a line each would drown the actions.
SKIPPED_IN_LINES = {"LLM_STREAM"}


def _clip(text: Any, width: int = 100) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def summarize(event_type: str, p: dict[str, Any]) -> str:
    """One short human line for an event's payload."""
    file = f" {p['file']}" if p.get("file") else ""
    match event_type:
        case "ACTION_START":
            return f"▶ {p.get('action', '?')}{file}"
        case "ACTION_END":
            mark = "✓" if p.get("ok", True) else "✗"
            return f"{mark} {p.get('action', '?')}{file} ({p.get('duration_ms', 0)} ms)"
        case "FILE_WRITTEN":
            return f"wrote {p.get('path')} ({p.get('size', 0)} B, {p.get('kind', 'file')})"
        case "MESSAGE" if "content" in p:
            cause = str(p.get("cause_by", "")).rsplit(".", 1)[-1]
            return f"message{f' [{cause}]' if cause else ''}: {_clip(p['content'])}"
        case "NODE_FILLED":
            return f"filled {p.get('node')}"
        case "COST":
            return f"cost ${p.get('cost', 0):.4f} (total ${p.get('total_cost', 0):.4f})"
        case "ROUND":
            return f"round {p.get('round')}/{p.get('n_round')}"
        case "LOG":
            return f"{p.get('level', 'log')}: {_clip(p.get('message', ''))}"
        case "ERROR":
            where = f" in {p['action']}{file}" if p.get("action") else ""
            return f"error{where}: {_clip(p.get('error') or p.get('message') or p)}"
        case "FLOW_START":
            return f"flow started (llm {p.get('llm')}, model {p.get('model')})"
        case "FLOW_END":
            return (
                f"flow ended ok={p.get('ok')} after {p.get('rounds')} rounds, "
                f"{len(p.get('files') or [])} code files, ${p.get('total_cost', 0):.4f}"
            )
    return _clip(json.dumps({k: v for k, v in p.items() if k != "pad"}, default=str), 80)


class Display:
    """Shows one followed task: JSON lines, or action lines plus a progress bar or state lines."""

    def __init__(self, task_id: str, json_mode: bool, out: IO[str] | None = None) -> None:
        self.task_id = task_id
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.final: dict[str, Any] | None = None
        self.events = 0
        self._bar: Progress | None = None
        self._bar_task: Any = None
        self._state: dict[str, Any] = {}
        self._conn = ""
        self._last_plain: tuple[Any, ...] = ()
        tty = sys.stderr.isatty()
        if not json_mode and tty:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[events]} events"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                # Our own lines go through the bar's console when stdout is that terminal too.
                redirect_stdout=False,
                redirect_stderr=False,
            )
        self._lines_to_bar = self._bar is not None and self.out.isatty()
        self._err = Console(stderr=True, highlight=False, soft_wrap=True)

    def __enter__(self) -> Display:
        if self._bar is not None:
            self._bar.start()
            self._bar_task = self._bar.add_task("connecting", total=1.0, events=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    # --- input -------------------------------------------------------------------------------

    def on_status(self, state: str, detail: str) -> None:
        """Connection status (connecting / live / reconnecting), shown apart from task status."""
        self._conn = "" if state == "live" else state
        if state == "reconnecting":
            self.note(f"connection lost: {detail}", "yellow")
        self._refresh()

    def handle(self, msg: dict[str, Any]) -> None:
        """One WebSocket-shaped message ``{"type", "data"}``."""
        kind, data = msg.get("type"), msg.get("data") or {}
        if kind == "state" and data.get("status") in TERMINAL_STATUSES:
            self.final = data
        if self.json_mode:
            self.out.write(json.dumps(msg, ensure_ascii=False, default=str) + "\n")
            self.out.flush()  # a script reading the pipe sees each message as it comes
            return
        if kind == "event":
            self.events += 1
            if data.get("event_type") not in SKIPPED_IN_LINES:
                self._event_line(data)
        elif kind == "state":
            self._state = data
            self._state_line(data)
        elif kind == "error":
            self.note(f"server: {data.get('message')}", "red")
        self._refresh()

    # --- output ------------------------------------------------------------------------------

    def _emit(self, text: Text) -> None:
        if self._lines_to_bar:
            assert self._bar is not None
            self._bar.console.print(text, highlight=False, soft_wrap=True)
        else:
            self.out.write(text.plain + "\n")
            self.out.flush()

    def note(self, text: str, style: str = "dim") -> None:
        """A remark for the human (stderr), never mixed into the JSON stream."""
        if self._bar is not None:
            self._bar.console.print(Text(text, style=style))
        else:
            self._err.print(Text(text), highlight=False)

    def _event_line(self, d: dict[str, Any]) -> None:
        stamp = str(d.get("timestamp", ""))[11:19]
        line = Text()
        line.append(f"{stamp} #{d.get('event_id', '?'):<5} ", style="dim")
        line.append(f"{d.get('agent_role', '?')!s:<{ROLE_WIDTH}} ", style="bold")
        kind = str(d.get("event_type", "?"))
        line.append(summarize(kind, d.get("payload") or {}), style=STYLE.get(kind, ""))
        self._emit(line)

    def _state_line(self, d: dict[str, Any]) -> None:
        status = d.get("status")
        progress = float(d.get("progress") or 0.0)
        final = status in TERMINAL_STATUSES
        # With a bar, states only move the bar; without one, print a line when something a
        # reader cares about changed (status, agent, or another tenth of progress).
        key = (status, d.get("current_agent"), int(progress * 10))
        if not final and (self._bar is not None or key == self._last_plain):
            return
        self._last_plain = key
        line = Text()
        line.append("── ", style="dim")
        line.append(f"{status}", style=STATUS_STYLE.get(str(status), "bold"))
        line.append(f" {progress:4.0%}")
        if d.get("current_agent"):
            line.append(f" {d['current_agent']}", style="bold")
        if d.get("last_message"):
            line.append(f" — {_clip(d['last_message'])}", style="dim")
        self._emit(line)

    def _refresh(self) -> None:
        if self._bar is None:
            return
        st = self._state
        parts = [self._conn or str(st.get("status") or "connecting")]
        if st.get("current_agent"):
            parts.append(str(st["current_agent"]))
        self._bar.update(
            self._bar_task,
            completed=float(st.get("progress") or 0.0),
            description=" · ".join(parts),
            events=self.events,
        )

    def exit_code(self) -> int:
        if self.final is None:
            return EXIT_NO_FINAL_STATE
        return EXIT_BY_STATUS.get(str(self.final.get("status")), EXIT_NO_FINAL_STATE)


async def _deadline(it: AsyncIterator[Any], timeout: float | None) -> AsyncIterator[Any]:
    """Iterate ``it`` but give up after ``timeout`` seconds overall (None: no limit)."""
    if timeout is None:
        async for x in it:
            yield x
        return
    end = time.monotonic() + timeout
    while True:
        try:
            async with asyncio.timeout(max(0.0, end - time.monotonic())):
                x = await anext(it)
        except StopAsyncIteration:
            return
        yield x


async def follow_ws(
    task_id: str,
    display: Display,
    *,
    url: str,
    token: str | None,
    last_event_id: int,
    retries: int,
    idle_timeout: float,
    timeout: float | None,
) -> int:
    """Follow over the WebSocket (with resume) until the final state; returns the exit code."""
    messages = stream(
        task_id,
        url,
        last_event_id,
        token,
        retries=retries,
        idle_timeout=idle_timeout,
        on_status=display.on_status,
    )
    try:
        async for msg in _deadline(messages, timeout):
            display.handle(msg)
    finally:
        await messages.aclose()
    return display.exit_code()


async def follow_bus(
    task_id: str, display: Display, *, endpoint: str | None, timeout: float | None
) -> int:
    """Follow over the bus (live only) until the final state; returns the exit code."""
    endpoint = endpoint or settings.load().bus_sub
    display.note(f"reading the bus at {endpoint}")
    messages = subscribe(
        task_id,
        endpoint,
        on_ready=lambda: display.note(f"subscribed to task {task_id} on the bus (live only)"),
        ready_timeout=BUS_READY_TIMEOUT_S,
    )
    try:
        async for msg in _deadline(messages, timeout):
            raw = as_dict(msg)
            if display.json_mode:
                display.out.write(json.dumps(raw, ensure_ascii=False, default=str) + "\n")
                display.out.flush()
                if raw["kind"] == "state" and raw["status"] in TERMINAL_STATUSES:
                    display.final = raw
                continue
            kind = raw.pop("kind")
            if kind == "heartbeat":
                continue
            display.handle({"type": kind, "data": raw})
    finally:
        await messages.aclose()
    return display.exit_code()
