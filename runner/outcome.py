"""How a task that ended by itself ended: one decision for the watcher and for recovery."""

from __future__ import annotations

from core.status import TaskStatus
from runner.process import describe_exit


def outcome(
    returncode: int | None,
    recorded_exit: int | None,
    error: str | None,
    *,
    lost: bool,
    unknown_exit: str = "failed (exit status unknown)",
) -> tuple[TaskStatus, str]:
    """How a task that ended by itself ended: its final status and message.

    ``returncode`` is what the supervisor saw (None when it could not reap the process: an
    adopted one, or one that died while no supervisor ran); ``recorded_exit`` and ``error``
    are what the task wrote itself. ``lost``: it died while no supervisor watched.
    ``unknown_exit``: what the process's handle says of an exit nobody could read
    (``TaskProcess.unknown_exit``).
    A cancel is known from the supervisor's own stop request, never from an exit code: a task
    may exit with any code by itself.
    """
    rc = returncode if returncode is not None else recorded_exit
    if rc == 0:
        return (
            TaskStatus.COMPLETED,
            "Completed (while the supervisor was down)" if lost else "Completed",
        )
    if lost:
        text = "Task process was lost while the supervisor was down"
    elif rc is None:
        text = f"Task process {unknown_exit}"
    else:
        text = f"Task process failed ({describe_exit(rc)})"
    return TaskStatus.FAILED, f"{text}: {error}" if error else text
