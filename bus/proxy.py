"""The XSUB/XPUB forwarder every publisher and subscriber of a stack connects to."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import msgspec
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from bus import auth, curve
from bus.messages import SYSTEM_TOPIC_PREFIX, TASK_ID_LENGTH
from bus.metrics import BusCounters, watch_sockets
from bus.ratelog import RateLimitedLog
from core import logs
from core.metrics import Registry, Server

log = logging.getLogger("metastream.bus")

# Gaps are refilled from the event log, but every drop costs a database read, so the proxy
# buffers generously before its high-water mark starts dropping.
PROXY_HWM = 200_000
PUBLISHERS_DOMAIN = "publishers"  # the ZAP domain of the XSUB side: any key may connect
DRAIN = 1000  # messages forwarded per wake-up, at most, before the other side's turn


class _StateStatus(msgspec.Struct):
    status: str = ""


_state_status = msgspec.msgpack.Decoder(_StateStatus)


class Proxy:
    """An XSUB/XPUB proxy running in a background thread, in a context of its own.

    Stopping terminates that context, which makes the blocking proxy call return; this proved
    more reliable than ``proxy_steerable``'s TERMINATE, which was intermittently missed.
    """

    def __init__(
        self, frontend: str, backend: str, keys: Path | None = None, master: bytes | None = None
    ) -> None:
        self.frontend_endpoint = frontend  # publishers connect (XSUB binds)
        self.backend_endpoint = backend  # subscribers connect (XPUB binds)
        self._ctx = zmq.Context()
        self._keys = keys  # CURVE keys: tcp endpoints then admit only authorized clients
        # With the bus master secret, every publisher is a CURVE client and each frame is
        # checked against its sender (see bus/auth.py); without it, a plain forwarder.
        self._master = master
        self._verifier = auth.Verifier(master) if master is not None else None
        self.forwarded = 0
        self.dropped: dict[str, int] = {}
        self._drop_logs: dict[str, RateLimitedLog] = {}  # per reason: each shows up once
        self._auth: ThreadAuthenticator | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Bumped by the forwarding loop and the socket monitors, exported by bus.metrics.
        self.counters = BusCounters()

    def start(self, timeout: float = 5.0) -> None:
        """Bind both sides and forward in a thread; raises if binding fails."""
        if self._keys is not None:
            self._auth = curve.start_authenticator(self._ctx, self._keys)
        if self._master is not None:
            if self._auth is None:
                self._auth = ThreadAuthenticator(self._ctx)
                self._auth.start()
            # Any key may connect to publish: what it may publish is checked frame by frame.
            self._auth.configure_curve(domain=PUBLISHERS_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        self._thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("bus proxy did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        xsub = self._ctx.socket(zmq.XSUB)
        xpub = self._ctx.socket(zmq.XPUB)
        try:
            for sock in (xsub, xpub):
                sock.setsockopt(zmq.SNDHWM, PROXY_HWM)
                sock.setsockopt(zmq.RCVHWM, PROXY_HWM)
                sock.setsockopt(zmq.LINGER, 0)
            for endpoint, sock in ((self.frontend_endpoint, xsub), (self.backend_endpoint, xpub)):
                _prepare_ipc(endpoint)
                if sock is xsub and self._master is not None:
                    xsub.curve_secretkey = auth.server_secret(self._master)
                    xsub.curve_publickey = auth.server_public(self._master)
                    xsub.curve_server = True
                    xsub.zap_domain = PUBLISHERS_DOMAIN.encode()
                else:
                    curve.serve_securely(sock, endpoint, self._keys)
                sock.bind(endpoint)
            if self.frontend_endpoint.startswith("ipc://"):
                # Task processes with uids of their own publish here. The socket sits in a
                # 0700 directory nobody else can enter; each task sees it bound into its mount
                # namespace (runner/sandbox.py), and the proxy checks every sender's key.
                os.chmod(self.frontend_endpoint[len("ipc://") :], 0o666)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            for sock in (xsub, xpub):
                sock.close(linger=0)
            return
        watch_sockets(self._ctx, {"publishers": xsub, "subscribers": xpub}, self.counters)
        self._ready.set()
        try:
            if self._verifier is None:
                zmq.proxy(xsub, xpub)
            else:
                self.counters.loop_counts = True  # ours counts what it forwards and refuses
                self._forward(xsub, xpub)
        except zmq.ContextTerminated:
            pass  # stop() terminated our context: the normal way out
        finally:
            for sock in (xsub, xpub):
                sock.close(linger=0)

    def _forward(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        """Forward subscriptions up and checked frames down, until the context ends.

        Each wake-up drains what is ready on each side (non-blocking) instead of polling per
        message. Only a message's first part is received as a zero-copy Frame (the sender's
        key is a property of it); the body is copied, and both go out with plain sends: half
        the cost of ``recv_multipart(copy=False)`` + ``send_multipart`` for bus-sized messages.
        """
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        nb, more, rcvmore = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.RCVMORE)
        allowed = self._allowed
        recv, has_more, send = xsub.recv, xsub.get, xpub.send
        while True:
            poller.poll()
            with contextlib.suppress(zmq.Again):
                while True:  # subscriptions, to the publishers (single frames)
                    xsub.send(xpub.recv(nb))
            try:
                for _ in range(DRAIN):
                    head = recv(nb, copy=False)
                    parts = [head.bytes]
                    while has_more(rcvmore):  # the parts of a message arrive together
                        parts.append(recv(nb))
                    if not allowed(str(head.get("User-Id")), parts):
                        continue
                    last = len(parts) - 1
                    for i, part in enumerate(parts):
                        send(part, more if i < last else 0)
            except zmq.Again:
                pass

    def _allowed(self, sender: str, parts: list[bytes]) -> bool:
        """Whether ``sender`` may publish this message on its topic; counts every drop."""
        assert self._verifier is not None
        if sender == self._verifier.trusted:
            self.forwarded += 1
            self.counters.frames_forwarded += 1
            return True
        topic = parts[0]
        if topic.startswith(SYSTEM_TOPIC_PREFIX):
            return self._drop("a task published on a _sys/ topic", sender, topic)
        task_id = topic[:TASK_ID_LENGTH].decode("ascii", errors="replace")
        if sender != self._verifier.expected(task_id):
            return self._drop("a sender published for another task", sender, topic)
        if topic.endswith(b"/state") and len(parts) == 2:
            try:
                status = _state_status.decode(parts[1]).status
            except (msgspec.DecodeError, msgspec.ValidationError):
                status = "RUNNING"  # undecodable: subscribers drop it themselves
            if status != "RUNNING":
                # A task reports its progress; its status (and end) is the supervisor's.
                return self._drop(f"a task published its own {status} state", sender, topic)
        self.forwarded += 1
        self.counters.frames_forwarded += 1
        return True

    def _drop(self, reason: str, sender: str, topic: bytes) -> bool:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.counters.frames_refused += 1
        logger = self._drop_logs.get(reason)
        if logger is None:
            logger = self._drop_logs[reason] = RateLimitedLog(log)
        logger.warning(
            "dropped a bus frame: %s (key %s, topic %r; %d so far)",
            reason,
            sender[:8],
            topic[:60],
            self.dropped[reason],
        )
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop forwarding and close the sockets."""
        if self._thread is None:
            return
        if self._auth is not None:
            self._auth.stop()  # its socket must close before the context can terminate
        self._ctx.term()  # returns once the proxy thread has closed its sockets
        self._thread.join(timeout)


def _prepare_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://") :])
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def serve(
    frontend: str,
    backend: str,
    metrics: bool = False,
    metrics_host: str = "",
    metrics_port: int = 0,
    master: bytes | None = None,
) -> None:
    """Run the proxy until SIGINT or SIGTERM (and its metrics server on ``metrics_port``).

    With the bus ``master`` secret, publishers must be CURVE clients and each frame is
    checked against its sender (bus/auth.py); without it, a plain forwarder.
    """
    # Block the stop signals before the proxy thread starts so that only this thread receives
    # them, then wait for one: the handler's only job is to wake us.
    keys = curve.curve_dir()
    endpoints = {"METASTREAM_BUS_PUB": frontend, "METASTREAM_BUS_SUB": backend}
    try:
        curve.check_endpoints(endpoints, keys, curve_capable=True)
    except curve.InsecureEndpoint as exc:
        raise SystemExit(f"bus: {exc}") from None
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    proxy = Proxy(frontend, backend, keys, master)
    proxy.start()
    registry = Registry(metrics)
    registry.collector(proxy.counters)
    server = Server(registry, metrics_host, metrics_port, "bus")
    # Once: announce() is a plain line, or a log record in JSON format (not both).
    logs.announce(f"bus: publishers connect to {frontend}; subscribers connect to {backend}")
    received = signal.sigwait(stop_signals)
    log.info("bus proxy stopping on %s", signal.Signals(received).name)
    server.close()
    proxy.stop()
