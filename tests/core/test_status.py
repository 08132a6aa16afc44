"""The task status table (core.status): every move allowed or refused in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.status import TERMINAL, TRANSITIONS, TaskStatus, TransitionError, check, sources

S = TaskStatus


def test_values_are_the_contracts_strings() -> None:
    assert [s.value for s in S] == [
        "PENDING",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ]
    assert S.RUNNING == "RUNNING" and "FAILED" in TERMINAL


def test_the_table() -> None:
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed == {
        (S.PENDING, S.QUEUED),
        (S.PENDING, S.CANCELLED),
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.FAILED, S.QUEUED),  # a retry, or a resume
        (S.COMPLETED, S.QUEUED),  # a follow-up run
        (S.CANCELLED, S.QUEUED),  # a resume
    }
    assert set(TRANSITIONS) == set(S)
    assert {s for s in S if s.terminal} == {S.COMPLETED, S.FAILED, S.CANCELLED}
    assert sources(S.QUEUED) == (S.PENDING, S.COMPLETED, S.FAILED, S.CANCELLED)
    assert sources(S.PENDING) == ()  # only creation makes a PENDING task


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.CANCELLED, S.RUNNING),
        (S.PENDING, S.RUNNING),  # never without being queued
        (S.RUNNING, S.QUEUED),
        (S.FAILED, S.COMPLETED),
    ],
)
def test_a_move_the_table_forbids_raises_expected_x_got_y(frm: S, to: S) -> None:
    with pytest.raises(TransitionError, match=f"expected .*, got {frm}") as err:
        check("t1", (frm,), to)
    assert err.value.got == frm and err.value.to == to


def test_check_accepts_strings_and_refuses_unknown_statuses() -> None:
    assert check("t1", ("QUEUED",), "RUNNING") == (S.QUEUED,)
    with pytest.raises(ValueError, match="'DONE' is not a valid TaskStatus"):
        check("t1", ("RUNNING",), "DONE")


def test_the_readme_diagram_is_the_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    diagram = readme.split("```mermaid\nstateDiagram-v2\n", 1)[1].split("```", 1)[0]
    drawn = {
        (S(a), S(b.split(":")[0].strip()))
        for a, _, b in (line.strip().partition(" --> ") for line in diagram.splitlines())
        if a != "[*]" and not b.startswith("[*]")
    }
    assert drawn == {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
