"""``python -m runner.forkserver_zygote FD``: the zygote that forks pre-imported task processes.

It imports what a task process needs (and MetaGPT, unless told not to), freezes the heap so
that its forks share it copy-on-write, then serves the supervisor over the socket ``FD``:
each fork request becomes one task process in its own session, used for that task only. It
reports every fork's pid and, once reaped, its exit status. It holds no zmq context and no
thread when it forks: neither survives a fork.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any

import msgspec

log = logging.getLogger("metastream.forkserver")
HEADER = struct.Struct("!I")
MAX_FRAME = 16 * 1024 * 1024


# --- protocol (shared with runner.forkserver) ---------------------------------------------


class Fork(msgspec.Struct, tag="fork"):
    """Supervisor -> zygote: start a task process."""

    id: int
    task_id: str
    env: dict[str, str]
    cwd: str
    log_path: str


class Ready(msgspec.Struct, tag="ready"):
    """Zygote -> supervisor: imports done, forks are warm from now on."""

    pid: int
    metagpt: bool


class Forked(msgspec.Struct, tag="forked"):
    id: int
    pid: int = 0
    create_time: float = 0.0
    error: str | None = None


class Exited(msgspec.Struct, tag="exited"):
    pid: int
    returncode: int


Message = Fork | Ready | Forked | Exited
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def frame(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    return _decoder.decode(body)


def unframe(buf: bytearray) -> list[Message]:
    """Decode and remove the complete frames at the start of ``buf``."""
    out: list[Message] = []
    while len(buf) >= HEADER.size:
        (n,) = HEADER.unpack_from(buf)
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes")
        if len(buf) < HEADER.size + n:
            break
        out.append(decode(bytes(buf[HEADER.size : HEADER.size + n])))
        del buf[: HEADER.size + n]
    return out


# --- the zygote ---------------------------------------------------------------------------


def warm_up(metagpt: bool) -> bool:
    """Import what task processes run, then freeze the heap; True if MetaGPT is imported."""
    import runner.task.__main__
    import runner.task.metagpt_task
    import runner.task.synthetic  # noqa: F401 - imported to be shared by every fork

    loaded = False
    if metagpt:
        try:
            from runner.metagpt_flow import preimport

            preimport()
            loaded = True
        except Exception:  # a broken MetaGPT must not cost synthetic tasks their warm start
            log.exception("MetaGPT pre-import failed: MetaGPT tasks will import it themselves")
    extra = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if extra:
        raise RuntimeError(f"threads after the imports would not survive fork: {extra}")
    # Collect once, then move every object to the permanent generation: the forks' collectors
    # never write to these pages, so they stay shared.
    gc.collect()
    gc.freeze()
    return loaded


class Zygote:
    """The fork loop: one request at a time, children reaped and reported as they exit."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.stopping = False
        self.children: set[int] = set()

    def serve(self, ready: Ready) -> None:
        signal.set_wakeup_fd(self.wake_w)  # SIGCHLD wakes the select below
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)
        self.sock.sendall(frame(ready))
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self.wake_r, selectors.EVENT_READ)
        buf = bytearray()
        while not self.stopping:
            events = sel.select(timeout=1.0)
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 512):
                    pass
            self._reap()
            if any(key.fileobj is self.sock for key, _ in events):
                data = self.sock.recv(1 << 16)
                if not data:
                    log.info("supervisor gone: fork server exits")
                    return
                buf += data
                for msg in unframe(buf):
                    if isinstance(msg, Fork):
                        self.sock.sendall(frame(self._fork(msg)))
        log.info("fork server stopping")

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            rc = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
            self.sock.sendall(frame(Exited(pid=pid, returncode=rc)))

    def _fork(self, req: Fork) -> Forked:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            log_fd = os.open(req.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            return Forked(id=req.id, error=f"cannot open the log: {exc}")
        sync_r, sync_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(log_fd)
            os.close(sync_r)
            os.close(sync_w)
            return Forked(id=req.id, error=f"fork failed: {exc}")
        if pid == 0:  # the task process
            os.close(sync_r)
            self._become_task(req, log_fd, sync_w)  # never returns
        os.close(log_fd)
        os.close(sync_w)
        # Wait for its setsid(): only then does its process group exist for killpg.
        os.read(sync_r, 1)
        os.close(sync_r)
        self.children.add(pid)
        try:
            import psutil

            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:  # already gone: its exit report follows
            created = 0.0
        return Forked(id=req.id, pid=pid, create_time=created)

    def _become_task(self, req: Fork, log_fd: int, sync_w: int) -> None:
        code = 1
        try:
            os.setsid()  # own session and group, like a cold start: killpg reaches its tree
            os.write(sync_w, b"x")
            os.close(sync_w)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.sock.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(devnull)
            os.close(log_fd)
            os.environ.clear()
            os.environ.update(req.env)
            os.chdir(req.cwd)
            # `random` re-seeds itself after fork (os.register_at_fork); numpy does not.
            if "numpy" in sys.modules:
                sys.modules["numpy"].random.seed()
            from runner.task.__main__ import main

            code = main([req.task_id])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:
            # Die of SIGINT as a cold interpreter would: the supervisor sees -SIGINT.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # whatever happens: report it and exit, never return
            traceback.print_exc()
        finally:
            # No atexit handlers: those registered in the zygote are not this process's.
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    metagpt = os.environ.get("METASTREAM_WARM_METAGPT", "1") != "0"
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    loaded = warm_up(metagpt)
    log.info("fork server ready (pid %d, MetaGPT %s)", os.getpid(), "loaded" if loaded else "no")
    Zygote(sock).serve(Ready(pid=os.getpid(), metagpt=loaded))
    return 0


if __name__ == "__main__":
    from core import logs

    logs.setup("zygote")
    sys.exit(main(sys.argv[1:]))
