"""The REST models against the store's rows they are made from."""

from __future__ import annotations

from typing import get_type_hints

import msgspec

from core.status import TaskStatus
from core.task import TaskRow
from gateway.models import RunOut, TaskOut
from store.runs import RUN_KINDS, RunRow


def test_a_run_answer_has_the_run_rows_fields_under_their_api_names() -> None:
    row_fields = {f.name for f in msgspec.structs.fields(RunRow)} - {"task_id"}
    api_fields = {f.validation_alias or name for name, f in RunOut.model_fields.items()}
    assert api_fields == row_fields
    row_hints, api_hints = get_type_hints(RunRow), get_type_hints(RunOut)
    for name, f in RunOut.model_fields.items():
        assert api_hints[name] == row_hints[f.validation_alias or name], name


RUN = RunRow(
    task_id="t",
    run_no=2,
    kind="follow_up",
    requirement="more",
    status="RUNNING",
    first_event_id=10,
    last_event_id=None,
    created_at="2026-01-01T00:00:00Z",
    started_at=None,
    ended_at=None,
)


def test_a_run_row_becomes_its_answer() -> None:
    out = RunOut.of(RUN).model_dump()
    assert out["run"] == 2 and out["kind"] == "follow_up" and "task_id" not in out
    assert "follow_up" in RUN_KINDS


def test_answers_validate_again_from_their_own_dump() -> None:
    # A framework may re-validate a returned answer from its dump: the field names work too.
    answer = RunOut.of(RUN)
    assert RunOut.model_validate(answer.model_dump()) == answer


def test_a_task_answer_is_read_from_its_row() -> None:
    row = TaskRow(
        id="abc",
        requirement="r",
        test_mode=False,
        options={"synthetic": {"events": 3}},
        status=TaskStatus.RUNNING,
        progress=0.5,
        current_agent="Engineer",
        last_message="m",
        created_at="c",
        created_ns=1,
        queued_at=None,
        started_at="s",
        completed_at=None,
        last_event_id=7,
        state_version=3,
        run_count=1,
        node="n",
        pid=12,
        pid_create_time=1.0,
        exit_code=None,
        error=None,
    )
    out = TaskOut.of(row).model_dump(mode="json")
    assert out["id"] == out["task_id"] == "abc" and out["status"] == "RUNNING"
    assert (out["progress"], out["current_agent"], out["last_event_id"]) == (0.5, "Engineer", 7)
    assert out["llm"] == "synthetic" and out["runs"] is None
    assert "pid" not in out and "error" not in out  # the row's private columns stay private
