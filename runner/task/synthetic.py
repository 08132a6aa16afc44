"""The synthetic workload: N events at a given rate, with optional faults.

Used by tests, benchmarks and fault drills in place of MetaGPT (see CONTRACT "Synthetic
workload"). Payloads carry ``seq`` and the emit time ``t`` (Unix seconds) for latency checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgspec

from runner.task.workload import Cancelled, Emitter

ROLES = ("ProductManager", "Architect", "ProjectManager", "Engineer")

# A child that starts a grandchild and both sleep: a process tree for the supervisor to reap.
_CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)']); "
    "time.sleep(3600)"
)


class SyntheticSpec(msgspec.Struct, kw_only=True):
    """The ``synthetic`` object of a create request."""

    events: int = msgspec.field(default=10)
    rate: float = 0.0
    payload_bytes: int = 0
    exit_after: int | None = None
    exit_code: int = 1
    hang_after: int | None = None
    spawn_children: int = 0
    crash: str | None = None  # "exception", "segv", "kill", "oom": how exit_after dies
    # TEST HOOK: Python run inside the task process, after its sandbox, before the events
    # (the attack suite's way in). Refused unless the supervisor runs with
    # METASTREAM_TEST_HOOKS=1, which only tests set. ``out`` is the task's emitter.
    run_python: str | None = None


class TestHooksOff(RuntimeError):
    """``run_python`` without the supervisor's METASTREAM_TEST_HOOKS."""


def run(spec: SyntheticSpec, out: Emitter, test_hooks: bool = False) -> None:
    """Emit ``spec.events`` events; may exit, hang or crash as the spec says."""
    if spec.run_python is not None:
        if not test_hooks:
            raise TestHooksOff("run_python is a test hook: the supervisor has it off")
        exec(compile(spec.run_python, "<test hook>", "exec"), {"out": out})
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.DEVNULL)
        for _ in range(spec.spawn_children)
    ]
    if children:
        out.emit("System", "CHILDREN", {"pids": [c.pid for c in children]})
    pad = "x" * max(0, spec.payload_bytes - 40)
    n = spec.events
    start = time.monotonic()
    out.set_state(progress=0.0, current_agent=ROLES[0], last_message=f"synthetic: 0/{n} events")
    for seq in range(1, n + 1):
        if out.cancelled.is_set():
            raise Cancelled("cancel requested")
        if spec.rate > 0:
            delay = start + (seq - 1) / spec.rate - time.monotonic()
            if delay > 0 and out.cancelled.wait(delay):
                raise Cancelled("cancel requested")
        role = ROLES[(seq - 1) * len(ROLES) // n]
        out.emit(role, "MESSAGE", {"seq": seq, "t": time.time(), "pad": pad})
        out.set_state(
            progress=seq / n, current_agent=role, last_message=f"synthetic: {seq}/{n} events"
        )
        if spec.exit_after == seq:
            _die(spec, out)
        if spec.hang_after == seq:
            out.flush()
            out.stop_heartbeats()
            # Alive but silent until the supervisor kills us; a cancel still ends it politely.
            while not out.cancelled.wait(3600):
                pass
            raise Cancelled("cancel requested while hung")


def _die(spec: SyntheticSpec, out: Emitter) -> None:
    out.flush()
    match spec.crash:
        case "exception":
            raise RuntimeError(f"synthetic failure after {spec.exit_after} events")
        case "segv":
            import ctypes

            ctypes.string_at(0)  # a real segmentation fault
        case "kill":
            os.kill(os.getpid(), 9)
        case "oom":
            hog = []
            while True:  # until the memory limit (or the kernel) stops us
                # Written bytes, not bytearray(n): calloc'd pages would not count as resident.
                hog.append(b"\x01" * (50 * 1024 * 1024))
        case _:
            os._exit(spec.exit_code)
