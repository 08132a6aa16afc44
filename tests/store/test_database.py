"""Database URLs, start-up errors, and schema migrations, on a real PostgreSQL and SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine, text

from metastream.stack import Stack, free_port
from store import Store, StoreError, migrate
from store.dburl import engine_url, redact
from store.schema import metadata
from tests.helpers import poll_for
from tests.pgserver import PASSWORD, PgServer

ROOT = Path(__file__).resolve().parents[2]


def test_postgresql_urls_use_psycopg_and_are_shown_without_their_password() -> None:
    url = "postgresql://bob:s3cret@db.example:5433/ms"
    assert engine_url(url).drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg://h/d").drivername == "postgresql+psycopg"
    assert redact(url) == "postgresql://bob:***@db.example:5433/ms"
    assert "s3cret" not in redact("postgresql://bob:s3cret@db.example:notaport/ms")
    with pytest.raises(StoreError, match="sqlite:// or postgresql://"):
        engine_url("mysql://bob:s3cret@h/d")


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "METASTREAM_HOME": str(tmp_path / "home"),
        "METASTREAM_DB_URL": url,
        "METASTREAM_WARM": "0",
        "PORT": str(free_port()),
    }


def _bad_urls(pg: PgServer) -> dict[str, str]:
    return {
        "refused": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres",
        "wrong password": pg.url(password="not-the-" + PASSWORD),
        "not a url": f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x",
        "no such database": pg.url("missing_db"),
        "unknown scheme": f"mysql://postgres:{PASSWORD}@127.0.0.1/x",
    }


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command",
    [["-m", "runner"], ["-m", "gateway"], ["-m", "metastream.cli", "db", "upgrade"]],
    ids=["supervisor", "gateway", "db-upgrade"],
)
def test_a_bad_database_is_one_line_at_start_up_without_the_password(
    pg_server: PgServer, tmp_path: Path, command: list[str]
) -> None:
    urls = _bad_urls(pg_server)
    if command != ["-m", "runner"]:  # the same code path: the two that need a server
        urls = {k: v for k, v in urls.items() if k in ("refused", "wrong password")}
    for what, url in urls.items():
        done = subprocess.run(
            [sys.executable, *command],
            env=_env(tmp_path, url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = done.stdout + done.stderr
        assert done.returncode != 0, (what, out)
        assert PASSWORD not in out, (what, out)
        assert "Traceback" not in out, (what, out)
        errors = [line for line in out.splitlines() if "database" in line or "DB_URL" in line]
        assert len(errors) == 1, (what, out)
        assert "postgres:***@127.0.0.1" in errors[0] or "mysql" in errors[0], (what, out)
        home_logs = tmp_path / "home" / "logs"
        for log in home_logs.glob("*") if home_logs.exists() else []:
            assert PASSWORD not in log.read_text(errors="replace")


def test_an_empty_database_is_migrated_and_then_current(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url, tmp_path / "events")
    assert store.schema_version() is None
    store.create_schema()
    assert store.schema_version() == migrate.head()
    store.create_schema()  # nothing to do the second time
    assert store.upgrade_schema() is None
    store.close()


def test_a_home_from_before_migrations_is_stamped_and_keeps_its_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    # What the previous version did at every start (its tables: the first revision's, so
    # without the columns later revisions added).
    first = MetaData()
    later = {"epoch", "cancel_request"}  # 0003
    old_tasks = Table(
        "tasks", first, *(c._copy() for c in metadata.tables["tasks"].c if c.name not in later)
    )
    old_events = metadata.tables["events"]
    Table("events", first, *(c._copy() for c in old_events.c if c.name != "body"))  # 0006
    first.create_all(engine)
    with engine.begin() as c:
        c.execute(
            old_tasks.insert().values(
                id="t-old", requirement="kept", test_mode=False, options="{}",
                status="PENDING", progress=0.0, created_at="2026-01-01T00:00:00Z",
                created_ns=1, last_event_id=0, state_version=0, run_count=0,
            )
        )  # fmt: skip
    with engine.connect() as c:
        assert not engine.dialect.has_table(c, "alembic_version")
    store = Store(url, tmp_path / "events")
    store.create_schema()
    assert store.schema_version() == migrate.head()
    row = store.get_task("t-old")
    assert row is not None and row.requirement == "kept"
    store.close()


def test_without_auto_migration_an_unmigrated_database_names_the_command(db_url: str) -> None:
    store = Store(db_url, migrate=False)
    with pytest.raises(StoreError, match=r"run `metastream db upgrade`"):
        store.create_schema()
    store.close()


def test_a_database_newer_than_the_code_is_refused(db_url: str) -> None:
    store = Store(db_url)
    store.create_schema()
    with store._write.begin() as c:  # a later release migrated it
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999 is newer than this metastream"):
        Store(db_url).create_schema()
    store.close()


@pytest.mark.postgres
def test_two_supervisors_and_two_gateways_starting_together_migrate_once(
    pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.create_database()
    # Two nodes: each its own name (one name is one live supervisor, runner/nodes.py).
    stacks = [
        Stack(tmp_path / f"node{i}", env={"METASTREAM_DB_URL": url, "METASTREAM_NODE": f"n{i}"})
        for i in (1, 2)
    ]
    for s in stacks:
        (s.home / "logs").mkdir(parents=True)
    try:
        # All four at once (and each stack's bus, which does not touch the database).
        for s in stacks:
            s.start_component("bus")
        for name in ("supervisor", "gateway"):
            for s in stacks:
                s.start_component(name)
        for s in stacks:
            s.wait_healthy(60)
        logs = [s.log(name) for s in stacks for name in ("supervisor", "gateway")]
        migrated = [log for log in logs if "migrated the database schema from nothing" in log]
        assert len(migrated) == 1, logs
        for log in logs:
            assert "Traceback" not in log
        store = Store(url)
        assert store.schema_version() == migrate.head()
        store.close()
    finally:
        for s in stacks:
            s.stop()


def test_the_migration_lock_serialises_concurrent_migrations(db_url: str) -> None:
    """Eight threads ensure the schema of one empty database at once: one migrates."""
    import concurrent.futures

    stores = [Store(db_url) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: migrate.ensure_schema(s._write, s.url), stores))
    assert results.count("nothing") == 1, results
    assert poll_for(lambda: stores[0].schema_version() == migrate.head(), 5)
    for s in stores:
        s.close()


def test_only_a_lost_connection_is_retried_and_not_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from store import pg

    url = "postgresql://u:secret@127.0.0.1/x"
    pauses: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise psycopg.OperationalError("connection refused")  # no SQLSTATE: never reached
        return "ok"

    assert pg.retrying(url, flaky, sleep=pauses.append) == "ok"
    assert pauses == [0.05, 0.1, 0.2]  # backoff

    def timed_out() -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    with pytest.raises(psycopg.errors.QueryCanceled):  # the statement's own error: at once
        pg.retrying(url, timed_out, sleep=pauses.append)
    assert len(pauses) == 3

    monkeypatch.setattr(pg, "RETRY_SECONDS", 0.0)

    def down() -> None:
        raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")

    with pytest.raises(psycopg.errors.AdminShutdown):  # retried until the deadline, then raised
        pg.retrying(url, down, sleep=pauses.append)
