"""``GET /api/nodes``: the supervisors sharing the database (several nodes, docs/deploy.md)."""

from __future__ import annotations

from datetime import UTC

import anyio
from fastapi import APIRouter

from gateway.api import StoreDep
from gateway.models import NodeList, NodeOut

router = APIRouter(prefix="/api")


@router.get("/nodes", response_model=NodeList)
async def list_nodes(store: StoreDep) -> NodeList:
    """Every node that ever ran on this database; empty on SQLite (one node, no table rows)."""
    registry = store.nodes
    if registry is None:
        return NodeList(nodes=[])
    rows = await anyio.to_thread.run_sync(registry.all)
    return NodeList(
        nodes=[
            NodeOut(
                name=r.name,
                state=r.state,  # type: ignore[arg-type]
                heartbeat_age=round(float(r.age), 3),
                capacity=r.capacity,
                running=r.running,
                control=r.control,
                started_at=r.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            )
            for r in rows
        ]
    )
