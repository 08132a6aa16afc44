"""The WebSocket route: a thin handler over :class:`gateway.stream.TaskStream`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from gateway.stream import TaskStream

router = APIRouter()


@router.websocket("/ws/tasks/{task_id}")
async def task_stream(
    websocket: WebSocket,
    task_id: str,
    last_event_id: Annotated[int, Query(ge=0)] = 0,
    start: Annotated[bool, Query(description="auto-start a PENDING/FAILED task")] = True,
) -> None:
    state = websocket.app.state
    stream = TaskStream(
        websocket,
        task_id,
        last_event_id,
        store=state.store,
        hub=state.hub,
        control=state.control,
        cfg=state.settings,
        autostart=start,
    )
    await stream.run()
