"""Shared fixtures: a real stack on a free port under tmp_path, and polling helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from metastream.stack import Stack
from store import Store
from tests.pgserver import PgServer, pg_bin

# Every test stack starts a fork server; pre-importing MetaGPT there costs ~8 s of CPU per
# stack, which only tests/runner/test_forkserver.py needs (it turns it back on). Synthetic
# tasks are still forked warm; MetaGPT tasks elsewhere start cold, as they would without it.
os.environ.setdefault("METASTREAM_WARM_METAGPT", "0")


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(env: dict[str, str] | None = None, name: str = "home") -> Stack:
        s = Stack(tmp_path / name, env=env)
        stacks.append(s)
        return s.start()

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> int:
    """Gateway processes on the stack's port: 1, or an indirect parameter (helpers.WORKERS)."""
    return int(getattr(request, "param", 1))


@pytest.fixture
def stack(stack_factory: Callable[..., Stack], workers: int) -> Stack:
    env = {"METASTREAM_GATEWAY_WORKERS": str(workers)} if workers > 1 else None
    return stack_factory(env=env)


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


@pytest.fixture
def backend_stack(
    stack_factory: Callable[..., Stack], stack_env: dict[str, str], workers: int
) -> Stack:
    """A stack on each store backend (``stack_env``), with ``workers`` gateway processes."""
    env = dict(stack_env)
    if workers > 1:
        env["METASTREAM_GATEWAY_WORKERS"] = str(workers)
    return stack_factory(env)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (skipped when PostgreSQL is missing)."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    server = PgServer(bindir).init()
    server.start()
    yield server
    server.close()


# Tests that take a backend run once per store; the PostgreSQL runs carry the `postgres` mark.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database on each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db.sqlite"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
def db_store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    """A store with its schema on each backend (``db_url``), SQLite event logs under tmp_path."""
    s = Store(db_url, tmp_path / "events")
    s.create_schema()
    yield s
    s.close()


@pytest.fixture(params=BACKENDS)
def stack_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A stack's environment for each backend (SQLite in its home, or a new PostgreSQL database)."""
    if request.param == "sqlite":
        return {}
    server: PgServer = request.getfixturevalue("pg_server")
    return {"METASTREAM_DB_URL": server.create_database()}
