"""``python -m runner.task TASK_ID``: run one task and publish its events.

Exit codes: 0 completed, 1 failed (reason stored in the task's ``error``), 3 cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.exc import DBAPIError

from bus.client import Publisher
from bus.messages import state_of
from core import logs, settings
from runner.task.outbox import Outbox
from runner.task.workload import Cancelled
from store import Store

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
log = logging.getLogger("metastream.task")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m runner.task TASK_ID", file=sys.stderr)
        return 2
    task_id = argv[0]
    logs.setup("task", task_id=task_id)  # here, not at import: forks of the zygote come here too
    cfg = settings.load()
    # Two connections at most: the event writer and the task-row writer (README: sizing).
    store = Store(cfg.db_url, cfg.events_dir, pool_size=2, max_overflow=0)
    try:
        row = store.get_task(task_id)
    except DBAPIError as exc:
        print(f"task {task_id}: {store.unavailable(exc)}", file=sys.stderr)
        return 2
    if row is None:
        print(f"task {task_id} not found", file=sys.stderr)
        return 2
    publisher = Publisher(cfg.bus_pub, track_interest=True)
    outbox = Outbox(
        store,
        publisher,
        task_id,
        first_event_id=max(row.last_event_id, store.last_event_id(task_id)) + 1,
        state=msgspec.structs.replace(state_of(row), status="RUNNING"),
        heartbeat_interval=cfg.heartbeat_interval,
        max_log_bytes=cfg.task_max_log_bytes,
    )

    def ask_to_stop(signum: int, _frame: Any) -> None:
        # Record and wake: workloads poll ``cancelled`` (and wait on it instead of sleeping).
        outbox.cancelled.set()

    signal.signal(signal.SIGINT, ask_to_stop)
    signal.signal(signal.SIGTERM, ask_to_stop)
    log.info("task %s started (pid %d)", task_id, os.getpid())
    outbox.start()
    code = EXIT_OK
    try:
        _run_workload(row.options, row.requirement, row.test_mode, cfg.task_dir(task_id), outbox)
        outbox.set_state(progress=1.0, last_message="Completed")
        outbox.record(exit_code=EXIT_OK)
    except Cancelled:
        code = EXIT_CANCELLED
        # Recorded, not only returned: a re-adopted task's exit status is not its
        # supervisor's to get (it is not its child), so the row is where it learns it.
        outbox.record(exit_code=EXIT_CANCELLED)
    except Exception as exc:  # any failure of the workload ends the task FAILED, with its reason
        code = EXIT_FAILED
        reason = f"{type(exc).__name__}: {exc}"
        log.error("task failed: %s", reason, exc_info=True)
        outbox.emit("System", "ERROR", {"message": reason, "error_type": type(exc).__name__})
        outbox.record(error=reason[:2000], exit_code=EXIT_FAILED)
    finally:
        outbox.close()
        publisher.close()
        store.close()
    log.info("task %s ends with exit code %d", task_id, code)
    return code


def _run_workload(
    options: dict[str, Any], requirement: str, test_mode: bool, workspace: Path, out: Outbox
) -> None:
    if options.get("synthetic") is not None:
        from runner.task import synthetic

        synthetic.run(msgspec.convert(options["synthetic"], synthetic.SyntheticSpec), out)
        return
    from runner.task import metagpt_task

    metagpt_task.run(requirement, test_mode, options, workspace, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
