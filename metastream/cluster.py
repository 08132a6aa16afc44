"""Several nodes as real processes on one machine: one bus, N supervisor+gateway homes.

For the cluster tests and benchmarks (and the shape of ``Procfile.cluster``): the bus runs on
``tcp://127.0.0.1`` with CURVE on both sides (publishers by the shared master's derived keys,
subscribers by the keys of ``METASTREAM_CURVE_DIR``), every node has a home of its own (no
shared files) and all share one PostgreSQL database.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from bus import auth, curve
from metastream.stack import Stack, free_port


def share_master(home: Path, master: bytes) -> None:
    """Give ``home`` the cluster's bus master (every node derives the same keys from it)."""
    keys = auth.keys_dir(home)
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys, 0o700)
    path = keys / auth.MASTER_FILE
    path.write_bytes(master)
    os.chmod(path, 0o600)


class Cluster:
    """A bus home and one home per node; ``nodes[name]`` is that node's :class:`Stack`."""

    def __init__(
        self,
        root: Path,
        db_url: str,
        names: tuple[str, ...] = ("a", "b"),
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.bus_ports = (free_port(), free_port())
        self.curve_dir = self.root / "curve"
        self.master = secrets.token_hex(32).encode()
        self.common = {
            "METASTREAM_DB_URL": db_url,
            "METASTREAM_BUS_PUB": f"tcp://127.0.0.1:{self.bus_ports[0]}",
            "METASTREAM_BUS_SUB": f"tcp://127.0.0.1:{self.bus_ports[1]}",
            curve.CURVE_ENV: str(self.curve_dir),
            **(env or {}),
        }
        self.bus = Stack(self.root / "bus", env=self.common, components=("bus",))
        self.nodes: dict[str, Stack] = {}
        for i, name in enumerate(names):
            node_env = {
                **self.common,
                "METASTREAM_NODE": name,
                # Two supervisors on one machine: disjoint task uids.
                "METASTREAM_SANDBOX_UID_BASE": str(200_000 + 1000 * i),
                "METASTREAM_SANDBOX_UID_COUNT": "1000",
            }
            self.nodes[name] = Stack(
                self.root / name, env=node_env, components=("supervisor", "gateway")
            )

    def start(self, timeout: float = 120.0) -> Cluster:
        curve.keygen(self.curve_dir)
        for stack in (self.bus, *self.nodes.values()):
            share_master(stack.home, self.master)
        self.bus.start()
        for stack in self.nodes.values():
            for d in (stack.home, stack.home / "logs"):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            for name in stack.components:
                stack.start_component(name)
        for stack in self.nodes.values():
            stack.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for stack in (*self.nodes.values(), self.bus):
            stack.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
