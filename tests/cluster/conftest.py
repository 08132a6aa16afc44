"""A real cluster: one PostgreSQL, one bus on tcp://127.0.0.1 with CURVE, nodes a and b."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metastream.cluster import Cluster
from tests.pgserver import PgServer

# Short clocks so that a node's death is seen in seconds (the margins below allow for a
# loaded 2-core CI).
FAST = {
    "METASTREAM_HEARTBEAT_INTERVAL": "0.5",
    "METASTREAM_HEARTBEAT_TIMEOUT": "4",
    "METASTREAM_STOP_ASK_TIMEOUT": "1",
    "METASTREAM_STOP_TERM_TIMEOUT": "1",
    "METASTREAM_NODE_TTL": "4",
    "METASTREAM_MAX_RUNNING": "2",
    "METASTREAM_TEST_HOOKS": "1",  # a task that writes a file (synthetic run_python)
}


@pytest.fixture
def cluster_factory(pg_server: PgServer, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(env: dict[str, str] | None = None) -> Cluster:
        c = Cluster(tmp_path, pg_server.create_database(), env={**FAST, **(env or {})})
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory()
