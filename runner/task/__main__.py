"""``python -m runner.task TASK_ID``: run one task and publish its events.

Exit codes: 0 completed, 1 failed (reason stored in the task's ``error``), 3 cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from bus.client import Publisher
from core import logs, settings
from runner import sandbox
from runner.task import spec as task_spec
from runner.task.outbox import Outbox
from runner.task.workload import Cancelled

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
log = logging.getLogger("metastream.task")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m runner.task TASK_ID", file=sys.stderr)
        return 2
    task_id = argv[0]
    # Before anything of the task's: on failure the task does not run at all.
    try:
        sandbox.apply_from_env()
    except sandbox.SandboxError as exc:
        print(f"task {task_id}: {exc}", file=sys.stderr)
        return 2
    logs.setup("task", task_id=task_id)  # here, not at import: forks of the zygote come here too
    cfg = settings.load()
    spec_path = os.environ.get(task_spec.SPEC_ENV, "")
    try:
        spec = task_spec.read(Path(spec_path))
    except (OSError, msgspec.DecodeError) as exc:
        print(f"task {task_id}: no task spec ({spec_path!r}): {exc}", file=sys.stderr)
        return 2
    store: task_spec.OwnLog | task_spec.SharedLog = (
        task_spec.SharedLog(spec.db_url, spec.epoch)
        if spec.db_url
        else task_spec.OwnLog(cfg.events_dir)
    )
    publisher = Publisher(cfg.bus_pub, track_interest=True)
    outbox = Outbox(
        store,
        publisher,
        task_id,
        first_event_id=max(spec.last_event_id, store.last_event_id(task_id)) + 1,
        state=msgspec.structs.replace(spec.state, status="RUNNING"),
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
        if spec.options.get("synthetic") is None:
            # The thread's marker: which run of the conversation these events belong to.
            outbox.emit(
                "System",
                "run_started",
                {"run": spec.run_no, "kind": spec.run_kind, "requirement": spec.run_requirement},
            )
        _run_workload(spec, cfg.task_dir(task_id), outbox)
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


def _run_workload(spec: task_spec.TaskSpec, workspace: Path, out: Outbox) -> None:
    options = spec.options
    if options.get("synthetic") is not None:
        from runner.task import synthetic

        synthetic.run(
            msgspec.convert(options["synthetic"], synthetic.SyntheticSpec), out, spec.test_hooks
        )
        return
    from runner.task import metagpt_task

    metagpt_task.run(spec, workspace, out)


def _exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's finalisation, as a forked task does.

    Everything of the task is committed and published by now. A cold interpreter that
    imported MetaGPT then spends seconds joining its library threads and freeing its heap,
    with heartbeats already stopped: the supervisor judged a completed task unresponsive.
    """
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main(sys.argv[1:]))
