"""The proxy forwards by topic prefix between real sockets."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from bus.proxy import Proxy


def test_proxy_forwards_only_subscribed_topics(tmp_path: Path) -> None:
    ctx = zmq.Context()
    front, back = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
    proxy = Proxy(front, back)
    proxy.start()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        pub.connect(front)
        sub.connect(back)
        sub.setsockopt(zmq.SUBSCRIBE, b"aaaa")
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        # PUB/SUB joins asynchronously: publish probes until one arrives (bounded), no sleeps.
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            pub.send_multipart([b"bbbb/x", b"other"])
            pub.send_multipart([b"aaaa/x", b"probe"])
            if sub.poll(50):
                got = sub.recv_multipart()
        assert got == [b"aaaa/x", b"probe"]
        pub.send_multipart([b"bbbb/x", b"not for us"])
        pub.send_multipart([b"aaaa/y", b"for us"])
        while True:
            frames = sub.recv_multipart()
            assert frames[0].startswith(b"aaaa")
            if frames[1] == b"for us":
                break
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        proxy.stop()
        ctx.term()
