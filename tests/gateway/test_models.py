"""The REST models against the store's rows they are made from."""

from __future__ import annotations

from typing import get_type_hints

import msgspec

from gateway.models import RunOut
from store.runs import RUN_KINDS, RunRow


def test_a_run_answer_has_the_run_rows_fields_under_their_api_names() -> None:
    row_fields = {f.name for f in msgspec.structs.fields(RunRow)} - {"task_id"}
    api_fields = {f.validation_alias or name for name, f in RunOut.model_fields.items()}
    assert api_fields == row_fields
    row_hints, api_hints = get_type_hints(RunRow), get_type_hints(RunOut)
    for name, f in RunOut.model_fields.items():
        assert api_hints[name] == row_hints[f.validation_alias or name], name


def test_a_run_row_becomes_its_answer() -> None:
    row = RunRow(
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
    out = RunOut.of(row).model_dump()
    assert out["run"] == 2 and out["kind"] == "follow_up" and "task_id" not in out
    assert "follow_up" in RUN_KINDS
