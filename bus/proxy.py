"""The XSUB/XPUB forwarder every publisher and subscriber of a stack connects to."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from bus import curve

log = logging.getLogger("metastream.bus")

# Gaps are refilled from the event log, but every drop costs a database read, so the proxy
# buffers generously before its high-water mark starts dropping.
PROXY_HWM = 200_000


class Proxy:
    """An XSUB/XPUB proxy running in a background thread, in a context of its own.

    Stopping terminates that context, which makes the blocking proxy call return; this proved
    more reliable than ``proxy_steerable``'s TERMINATE, which was intermittently missed.
    """

    def __init__(self, frontend: str, backend: str, keys: Path | None = None) -> None:
        self.frontend_endpoint = frontend  # publishers connect (XSUB binds)
        self.backend_endpoint = backend  # subscribers connect (XPUB binds)
        self._ctx = zmq.Context()
        self._keys = keys  # CURVE keys: tcp endpoints then admit only authorized clients
        self._auth: ThreadAuthenticator | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 5.0) -> None:
        """Bind both sides and forward in a thread; raises if binding fails."""
        if self._keys is not None:
            self._auth = curve.start_authenticator(self._ctx, self._keys)
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
        self._ready.set()
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:
            pass  # stop() terminated our context: the normal way out
        finally:
            for sock in (xsub, xpub):
                sock.close(linger=0)

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


def serve(frontend: str, backend: str) -> None:
    """Run the proxy until SIGINT or SIGTERM."""
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
    proxy = Proxy(frontend, backend, keys)
    proxy.start()
    log.info("bus proxy up: publishers -> %s, subscribers -> %s", frontend, backend)
    print(f"bus: publishers connect to {frontend}; subscribers connect to {backend}", flush=True)
    received = signal.sigwait(stop_signals)
    log.info("bus proxy stopping on %s", signal.Signals(received).name)
    proxy.stop()
