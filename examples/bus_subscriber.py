#!/usr/bin/env python3
"""Watch one metastream task on the ZeroMQ bus, using only pyzmq and msgpack.

    pip install pyzmq msgpack
    python bus_subscriber.py TASK_ID [--endpoint ipc:///path/to/run/bus-out.sock]

Prints ``ready`` once the subscription is live, then one line per message:
``<topic> <message as JSON>``. Stops after the task's final state. The bus is live only: start
this before the task runs, and use the REST log or the WebSocket for history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import msgpack
import zmq

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# The supervisor publishes a beacon on this topic twice a second; hearing one proves that our
# subscription has reached the bus's publishers, so nothing published from now on is missed.
BEACON = b"_sys/supervisor/"


def default_endpoint() -> str:
    """``METASTREAM_BUS_SUB``, else the default ipc socket under ``METASTREAM_HOME``."""
    if os.environ.get("METASTREAM_BUS_SUB"):
        return os.environ["METASTREAM_BUS_SUB"]
    home = os.path.abspath(os.environ.get("METASTREAM_HOME", "var"))
    return f"ipc://{home}/run/bus-out.sock"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task_id", help="the task's id: a 36-character UUID")
    parser.add_argument("--endpoint", default=default_endpoint(), help="the bus's XPUB endpoint")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this long (s)")
    parser.add_argument(
        "--ready-timeout", type=float, default=10, help="give up if the bus is silent this long"
    )
    args = parser.parse_args()
    if len(args.task_id) != 36:
        # Ids all have the same length, so a full id never matches another task's topics.
        parser.error("give the full 36-character task id")

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)  # the default (1000) drops messages during bursts
    # connect() succeeds even when nothing listens there: say where we look, and give up
    # below if not even the supervisor's beacon (twice a second) comes through.
    print(f"connecting to the bus at {args.endpoint}", file=sys.stderr, flush=True)
    sub.connect(args.endpoint)
    # Topics are "<task_id>/<kind>" (kind: event, state or heartbeat): prefix matching on the
    # task id gets exactly this task's messages. Use f"{task_id}/event" for events only.
    sub.setsockopt(zmq.SUBSCRIBE, args.task_id.encode())
    sub.setsockopt(zmq.SUBSCRIBE, BEACON)

    started = time.monotonic()
    deadline = started + args.timeout
    ready = False
    highest_event = 0
    final_at: float | None = None
    final_last_event = 0
    try:
        while True:
            # After the final state, wait briefly for events still in flight from the task
            # process (a different publisher than the supervisor that sent the state).
            until = deadline if final_at is None else min(deadline, final_at + 1.0)
            if not ready:
                until = min(until, started + args.ready_timeout)
            wait_ms = max(0, int((until - time.monotonic()) * 1000))
            if not sub.poll(wait_ms):
                if not ready:
                    path = args.endpoint.removeprefix("ipc://")
                    missing = args.endpoint.startswith("ipc://") and not os.path.exists(path)
                    print(
                        f"no answer from the bus at {args.endpoint} within "
                        f"{args.ready_timeout:g} s"
                        + (
                            " (the socket does not exist: is the stack running?)" if missing else ""
                        ),
                        file=sys.stderr,
                    )
                    return 1
                if final_at is None:
                    print("timed out", file=sys.stderr)
                    return 1
                return 0
            topic, body = sub.recv_multipart()
            if not ready:
                ready = True
                sub.setsockopt(zmq.UNSUBSCRIBE, BEACON)
                print("ready", flush=True)
            if topic.startswith(BEACON):
                continue
            msg = msgpack.unpackb(body)  # a map: the WebSocket field names plus "kind"
            print(topic.decode(), json.dumps(msg), flush=True)
            if msg["kind"] == "event":
                highest_event = max(highest_event, msg["event_id"])
            elif msg["kind"] == "state" and msg["status"] in TERMINAL:
                final_at = time.monotonic()
                final_last_event = msg.get("last_event_id", 0)
            if final_at is not None and highest_event >= final_last_event:
                return 0
    except KeyboardInterrupt:
        return 130
    finally:
        sub.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
