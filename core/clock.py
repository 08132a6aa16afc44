"""Wall-clock time as the contract writes it: ISO 8601 UTC with a ``Z`` suffix."""

from __future__ import annotations

import time

_second_cache: tuple[int, str] = (-1, "")
_ms_cache: tuple[int, str] = (-1, "")


def utcnow() -> str:
    """Now as ISO 8601 UTC with a ``Z`` suffix (millisecond precision)."""
    # Every event is stamped: the text is made once per millisecond (a busy task emits
    # hundreds of events in one), the date and time once per second.
    global _second_cache, _ms_cache
    ms = int(time.time() * 1000)
    cached_ms, text = _ms_cache
    if ms == cached_ms:
        return text
    second, frac = divmod(ms, 1000)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    text = f"{prefix}.{frac:03d}Z"
    _ms_cache = (ms, text)
    return text
