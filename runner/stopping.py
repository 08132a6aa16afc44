"""The one stop sequence for any process we hold: ask, wait, SIGTERM the group, wait, SIGKILL.

Policy only: the order and the waits. How to signal a group, wait for an exit or reap what
is left is the handle's business (``runner.process``), whatever kind of process it is.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Literal

from runner.process import TaskProcess

StopHow = Literal["exited", "asked", "terminated", "killed"]
KILL_TIMEOUT = 2.0  # after SIGKILL: only a process in uninterruptible sleep takes longer


async def stop(
    proc: TaskProcess, ask_timeout: float, term_timeout: float, kill_timeout: float = KILL_TIMEOUT
) -> StopHow:
    """Stop ``proc`` and everything it started; return the step that ended it.

    A zero ``ask_timeout`` skips asking; zero for both goes straight to SIGKILL. "exited":
    it was gone before we asked.
    """
    strays = proc.descendants()  # before the leader dies: then they are re-parented
    how: StopHow = "exited"
    if not proc.exited:
        if ask_timeout > 0:
            proc.signal(signal.SIGINT)  # ask: the task flushes its log and exits
        if ask_timeout > 0 and await proc.wait(ask_timeout):
            how = "asked"
        else:
            if term_timeout > 0:
                proc.signal_group(signal.SIGTERM)
            if term_timeout > 0 and await proc.wait(term_timeout):
                how = "terminated"
            else:
                proc.signal_group(signal.SIGKILL)
                await proc.wait(kill_timeout)
                how = "killed"
    await asyncio.to_thread(proc.reap_leftovers, strays)
    return how
