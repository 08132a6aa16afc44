"""Log records: plain or JSON lines, task ids found, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from core import logs

TID = "0b0f4c1e-5f0e-4a8e-9d51-3c2b1a0f9e77"
ENV = {
    "METASTREAM_LOG_FORMAT": "json",
    "METASTREAM_NODE": "n1",
    "METASTREAM_API_TOKEN": "tok-aaaa-1111,tok-bbbb-2222",
    "METASTREAM_TICKET_SECRET": "sekrit-9999",
}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    yield out
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _setup(out: io.StringIO, env: dict[str, str], task_id: str | None = None) -> None:
    logs.setup("gateway", task_id=task_id, environ=env)
    logging.getLogger().handlers[0].setStream(out)  # type: ignore[attr-defined]


def _lines(out: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_process_node_and_the_task_id_of_task_lines(captured) -> None:  # type: ignore[no-untyped-def]
    _setup(captured, ENV)
    log = logging.getLogger("metastream.x")
    log.info("task %s ended: %s", TID, "COMPLETED")
    log.warning("no task here: %d", 3)
    log.info("explicit", extra={"task_id": TID})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second, third, fourth = _lines(captured)
    assert first["message"] == f"task {TID} ended: COMPLETED" and first["task_id"] == TID
    assert first["process"] == "gateway" and first["node"] == "n1" and first["level"] == "INFO"
    assert first["time"].endswith("Z") and first["logger"] == "metastream.x"
    assert "task_id" not in second and second["message"] == "no task here: 3"
    assert third["task_id"] == TID
    assert "ValueError: boom" in fourth["exc"]


def test_a_task_process_puts_its_id_on_every_line(captured) -> None:  # type: ignore[no-untyped-def]
    _setup(captured, ENV, task_id=TID)
    logging.getLogger("metastream.task").info("starting")
    assert _lines(captured)[0]["task_id"] == TID


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_are_masked_in_both_formats(captured, fmt: str) -> None:  # type: ignore[no-untyped-def]
    _setup(captured, {**ENV, "METASTREAM_LOG_FORMAT": fmt})
    log = logging.getLogger("uvicorn.error")
    log.info(
        '%s - "WebSocket /ws/tasks/%s?ticket=v1.abc.def&start=false" [accepted]', "1.2.3.4", TID
    )
    log.info("token %s and %s", "tok-bbbb-2222", "sekrit-9999")
    log.info("db at postgresql://app:hunter22@db:5432/metastream")
    try:
        raise RuntimeError("bad token tok-aaaa-1111")
    except RuntimeError:
        log.exception("oops")
    text = captured.getvalue()
    for secret in ("v1.abc.def", "tok-aaaa-1111", "tok-bbbb-2222", "sekrit-9999", "hunter22"):
        assert secret not in text, secret
    assert "ticket=<redacted>&start=false" in text
    assert "postgresql://app:<redacted>@db:5432" in text


def test_a_bad_format_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="METASTREAM_LOG_FORMAT"):
        logs.log_format({"METASTREAM_LOG_FORMAT": "xml"})
