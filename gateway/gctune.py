"""The gateway's garbage-collector settings: keep its pauses off the live fan-out.

With 1,000 connections the gateway holds hundreds of thousands of long-lived objects (each
connection's protocol, stream, listener, task...). CPython's full collection walks all of
them: measured here, 0.2-0.7 s with the gateway stopped (a p99 of seconds for every client of
every task), and with the default thresholds it ran every few seconds while one task streamed
at 20 events/s, because every young collection promoted whatever short-lived objects were
alive at that moment (each parked connection's timer and future, living up to a second).

- What start-up built (modules, the app, its routes) is never garbage: frozen out of every
  collection (``gc.freeze``).
- Young collections run every ``YOUNG`` allocations instead of 700, so fewer short-lived
  objects are alive when one runs and fewer are promoted; the middle generation is collected
  every ``MIDDLE`` young ones, and the old one only after ``OLD`` middle ones (CPython adds its
  own rule: only once the objects promoted since the last full collection are a quarter of
  those it kept). Cyclic garbage is young almost always and is still found young; what
  reaches the old generation waits longer for a full collection, which costs memory only.
"""

from __future__ import annotations

import gc

YOUNG = 10_000
MIDDLE = 10
OLD = 100


def tune() -> None:
    """Freeze what exists now and raise the thresholds (once per gateway process)."""
    gc.collect()  # what start-up left as garbage is freed now, not frozen forever
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
