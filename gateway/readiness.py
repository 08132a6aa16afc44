"""``/readyz``: can this gateway serve? Store reachable, bus connected, a supervisor answering.

The bus check is end to end: the gateway publishes a beacon on a system topic of its own and
hears it back through the proxy on the same SUB socket its clients' streams come through (the
supervisor proves the bus the same way). ``/healthz`` stays a cheap liveness answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError

from bus.client import Publisher
from bus.messages import SYSTEM_TOPIC_PREFIX, Ping
from gateway.control import ControlClient, SupervisorUnavailable
from store import Store

BEACON_INTERVAL = 0.5
BUS_SILENCE = 2.0  # no beacon back for this long: the bus is down (or our link to it)
PROBE_TIMEOUT = 1.0  # each of the store and supervisor checks


class BusProbe:
    """Sends a beacon through the proxy every ``interval`` and notes when it comes back."""

    def __init__(
        self,
        publisher: Publisher,
        interval: float = BEACON_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = SYSTEM_TOPIC_PREFIX + b"gateway/" + uuid.uuid4().hex.encode()
        self._pub = publisher
        self._interval = interval
        self._clock = clock
        self._heard: float | None = None

    def heard(self) -> None:
        self._heard = self._clock()

    def silence(self) -> float | None:
        """Seconds since the beacon last came back; None if it never did."""
        return None if self._heard is None else self._clock() - self._heard

    def ok(self, max_silence: float = BUS_SILENCE) -> bool:
        silent = self.silence()
        return silent is not None and silent <= max_silence

    async def run(self) -> None:
        while True:
            self._pub.send(self.topic, b"")
            await asyncio.sleep(self._interval)


async def check(store: Store, control: ControlClient, probe: BusProbe) -> dict[str, Any]:
    """Every readiness check; ``ready`` is True when all pass, ``reasons`` says why not."""
    reasons: list[str] = []
    checks: dict[str, str] = {}
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            await anyio.to_thread.run_sync(store.ping, abandon_on_cancel=True)
        checks["store"] = "ok"
    except TimeoutError:
        checks["store"] = f"no answer within {PROBE_TIMEOUT:g} s"
    except (SQLAlchemyError, OSError) as exc:
        checks["store"] = f"unreachable: {type(exc).__name__}"
    silent = probe.silence()
    if probe.ok():
        checks["bus"] = "ok"
    elif silent is None:
        checks["bus"] = "not connected: our beacon never came back through the proxy"
    else:
        checks["bus"] = f"not connected: no beacon back through the proxy for {silent:.1f} s"
    try:
        await control.request(Ping(), PROBE_TIMEOUT)
        checks["supervisor"] = "ok"
    except SupervisorUnavailable as exc:
        checks["supervisor"] = f"unavailable: {exc}"
    for name, result in checks.items():
        if result != "ok":
            reasons.append(f"{name} {result}")
    return {"ready": not reasons, "checks": checks, "reasons": reasons}
