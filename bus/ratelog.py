"""A log line per problem, not per frame: a flood of bad frames must not flood the logs."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs the first occurrence, then at most one summary line per interval."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0
        self.total = 0

    def warning(self, msg: str, *args: object) -> None:
        self.total += 1
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            self._log.warning("%d similar messages suppressed", self._suppressed)
            self._suppressed = 0
        self._log.warning(msg, *args)
        self._next = now + self._interval
