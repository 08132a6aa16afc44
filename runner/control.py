"""The supervisor's request channel: a ROUTER socket answering gateways' DEALERs."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from bus import auth
from bus.messages import (
    CancelTask,
    FollowUpTask,
    Ping,
    Reply,
    ResumeTask,
    StartTask,
    control_decoder,
    control_encoder,
)
from runner.supervisor import Supervisor

log = logging.getLogger("metastream.control")
MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    """Decodes requests, runs each as its own asyncio task, and replies."""

    def __init__(
        self,
        endpoint: str,
        supervisor: Supervisor,
        ctx: zmq.asyncio.Context,
        master: bytes | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.rejected = 0
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self._auth: AsyncioAuthenticator | None = None
        if master is not None:
            # A CURVE server admitting only the trusted key (gateways): a task process, which
            # may reach the socket (Landlock does not cover unix sockets), cannot talk to it.
            self._auth = AsyncioAuthenticator(ctx)
            self._auth.start()
            self._auth.configure_curve_callback(auth.CONTROL_DOMAIN, auth.TrustedOnly(master))
            secret = auth.control_server_secret(master)
            self._sock.curve_secretkey = secret
            self._sock.curve_publickey = zmq.curve_public(secret)
            self._sock.curve_server = True
            self._sock.zap_domain = auth.CONTROL_DOMAIN.encode()
        self._sock.bind(endpoint)
        self._inflight: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 3:
                self.rejected += 1
                log.warning("dropped a control frame with %d parts", len(frames))
                continue
            ident, req_id, body = frames
            task = asyncio.create_task(self._handle(ident, req_id, body))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _handle(self, ident: bytes, req_id: bytes, body: bytes) -> None:
        try:
            request = control_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.rejected += 1
            reply = Reply(ok=False, error=f"bad request: {exc}")
        else:
            reply = await self._dispatch(request)
        await self._sock.send_multipart([ident, req_id, control_encoder.encode(reply)])

    async def _dispatch(
        self, request: StartTask | CancelTask | Ping | FollowUpTask | ResumeTask
    ) -> Reply:
        match request:
            case FollowUpTask(task_id=task_id, requirement=requirement):
                return await self.supervisor.follow_up(task_id, requirement)
            case ResumeTask(task_id=task_id):
                return await self.supervisor.resume(task_id)
            case StartTask(task_id=task_id):
                return await self.supervisor.start(task_id)
            case CancelTask(task_id=task_id, reason=reason):
                return await self.supervisor.cancel(task_id, reason)
            case Ping():
                return Reply(ok=True, status="alive")

    def close(self) -> None:
        for t in self._inflight:
            t.cancel()
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
