"""Watch leases: this gateway tells supervisors how many clients watch each task.

A lease is published at once when a task's watcher count changes and renewed every third of
its time to live, so a gateway that dies stops renewing and its clients count as gone.
"""

from __future__ import annotations

import asyncio
import uuid

from bus.client import Publisher
from bus.messages import LEASE_TOPIC, Lease
from gateway.hub import Hub


class LeaseKeeper:
    """Publishes this gateway's watch leases on the bus."""

    def __init__(self, publisher: Publisher, hub: Hub, ttl: float) -> None:
        self.gateway_id = uuid.uuid4().hex
        self._pub = publisher
        self._hub = hub
        self._ttl = ttl
        hub.on_change = self.changed

    def changed(self, task_id: str, watchers: int) -> None:
        self._pub.publish_system(
            LEASE_TOPIC,
            Lease(task_id=task_id, gateway_id=self.gateway_id, watchers=watchers, ttl=self._ttl),
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            for task_id, n in self._hub.watched().items():
                self.changed(task_id, n)
