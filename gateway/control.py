"""Client of the supervisor's request channel (DEALER, correlated replies, timeouts)."""

from __future__ import annotations

import asyncio
import contextlib
import os

import zmq
import zmq.asyncio

from bus.auth import BusKeys
from bus.messages import ControlRequest, Reply, control_encoder, reply_decoder


class SupervisorUnavailable(Exception):
    """The supervisor did not answer in time (or is not connected)."""


class ControlClient:
    """Sends control requests and awaits the matching reply."""

    def __init__(
        self, endpoint: str, ctx: zmq.asyncio.Context, keys: BusKeys | None = None
    ) -> None:
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:  # the supervisor admits trusted keys only (runner/control.py)
            self._sock.curve_secretkey = keys.secret
            self._sock.curve_publickey = keys.public
            self._sock.curve_serverkey = keys.server
        # Queue only to a live connection: with no supervisor we fail fast instead of
        # delivering a stale command minutes later.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.connect(endpoint)
        self._pending: dict[bytes, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                continue
            fut = self._pending.pop(frames[0], None)
            if fut is not None and not fut.done():
                fut.set_result(reply_decoder.decode(frames[1]))

    async def request(self, msg: ControlRequest, timeout: float) -> Reply:
        req_id = os.urandom(8)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            try:
                await self._sock.send_multipart([req_id, control_encoder.encode(msg)], zmq.NOBLOCK)
            except zmq.Again as exc:
                raise SupervisorUnavailable("supervisor is not reachable") from exc
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError as exc:
                raise SupervisorUnavailable(
                    f"supervisor did not answer within {timeout:g} s"
                ) from exc
        finally:
            self._pending.pop(req_id, None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._sock.close(linger=0)
