"""Logging set-up shared by every process: plain text (default) or one JSON object per line.

``METASTREAM_LOG_FORMAT=json`` makes each record ``{"time", "level", "process", "node",
"pid", "logger", "message"}`` plus ``task_id`` on task-scoped lines and ``exc`` with a
traceback, so the lines can be shipped to a log store as they are. Both formats pass through
:class:`Redactor`: API tokens, the ticket secret, WebSocket tickets in URLs and passwords in
database URLs never reach a log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from core.ids import TASK_ID_LENGTH, is_task_id
from core.settings import LOG_FORMATS

PLAIN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# Secrets that may show up in a logged URL or message whatever their value.
_URL_SECRETS = (
    (re.compile(r"([?&](?:ticket|token|access_token)=)[^&\s\"']+"), r"\1<redacted>"),
    (re.compile(r"(://[^:/@\s]*:)[^@/\s]+(@)"), r"\1<redacted>\2"),  # user:PASSWORD@host
)
_SECRET_ENV = ("METASTREAM_API_TOKEN", "METASTREAM_TICKET_SECRET", "METASTREAM_LLM_API_KEY")


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """The configured format; a bad value names the variable."""
    env = os.environ if environ is None else environ
    value = (env.get("METASTREAM_LOG_FORMAT") or "plain").strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"METASTREAM_LOG_FORMAT must be one of {LOG_FORMATS}, got {value!r}")
    return value


def node_name(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("METASTREAM_NODE") or socket.gethostname()


class Redactor(logging.Filter):
    """Masks secret values in every record's final message (both formats)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if environ is None else environ
        values: list[str] = []
        for name in _SECRET_ENV:
            values += [v.strip() for v in env.get(name, "").split(",") if len(v.strip()) >= 4]
        self._values = sorted(set(values), key=len, reverse=True)  # longest first

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "<redacted>")
        for pattern, replacement in _URL_SECRETS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a bad format string: the handler reports it as logging does
        if not getattr(record, "task_id", None):
            record.task_id = _task_id(record)  # before the args are folded into the message
        clean = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if clean != message or record.args:
            record.msg, record.args = clean, None  # formatted once, here
        return True


def _task_id(record: logging.LogRecord) -> str | None:
    """The task a record is about: its ``task_id`` extra, else a task id among its args."""
    found = getattr(record, "task_id", None)
    if found:
        return str(found)
    args = record.args
    if isinstance(args, tuple):
        for arg in args:
            if isinstance(arg, str) and len(arg) == TASK_ID_LENGTH and is_task_id(arg):
                return arg
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, process: str, node: str, task_id: str | None = None) -> None:
        super().__init__()
        self._process = process
        self._node = node
        self._task_id = task_id  # a task process: every line is about its task

    def format(self, record: logging.LogRecord) -> str:
        task_id = _task_id(record) or self._task_id
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self._process,
            "node": self._node,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if task_id:
            body["task_id"] = task_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exc"] = record.exc_text
        return json.dumps(body, ensure_ascii=False, default=str)


def setup(
    process: str,
    *,
    task_id: str | None = None,
    environ: Mapping[str, str] | None = None,
    level: int = logging.INFO,
) -> str:
    """Configure the root logger of this process; returns the format in use.

    Replaces handlers set before (a task forked from the zygote inherits the zygote's).
    """
    fmt = log_format(environ)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process, node_name(environ), task_id))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(Redactor(environ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return fmt


def announce(text: str, *, stream: Any = None) -> None:
    """A start-up line for people: printed as is in plain format, a log record in JSON."""
    if log_format() == "json":
        logging.getLogger("metastream").info("%s", text)
    else:
        print(text, file=stream or sys.stdout, flush=True)
