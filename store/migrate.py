"""Schema versions: check at start-up, migrate under a lock so that processes never race.

Every gateway and supervisor calls :func:`ensure_schema` when it starts. By default it migrates
the database to the newest revision itself, holding a PostgreSQL advisory lock (or, on SQLite,
an exclusive lock on a file next to the database): a stack's processes start together (honcho,
several nodes), and asking a user to run a command before the first start would only add a
step that every deployment must remember. Whoever gets the lock first migrates; the others
wait for it, then find the schema current. With ``METASTREAM_DB_MIGRATE=0`` (a DBA who wants
to upgrade by hand) a database behind this code is refused with a one-line error naming
``metastream db upgrade``; a database *newer* than this code is always refused.

Task processes do not check: their supervisor checked before starting them, from the same
code (a fork of it or the same installation), and a task should need no rights on the schema.

A SQLite home from before migrations (tables made by ``create_all``, no ``alembic_version``)
is the first revision's schema: it is stamped with it, then upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

from store.dburl import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST = "0001"  # the schema the first release made with create_all
# pg_advisory_lock's key: any constant that no other application on the database uses.
ADVISORY_KEY = 0x6D657461  # "meta"


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    found = ScriptDirectory.from_config(_config()).get_current_head()
    assert found is not None
    return found


def current(conn: Connection) -> str | None:
    """The database's revision; ``FIRST`` for a pre-migration home, None when empty."""
    rev = MigrationContext.configure(conn).get_current_revision()
    if rev is None and inspect(conn).has_table("tasks"):
        return FIRST
    return rev


def ensure_schema(engine: Engine, url: str, *, migrate: bool = True) -> str | None:
    """Make sure the schema is the newest; returns the revision migrated from, if it did."""
    with _locked(engine, url) as conn:
        return _ensure(conn, url, migrate)


def upgrade(engine: Engine, url: str) -> str | None:
    """``metastream db upgrade``: migrate to the newest revision (under the lock)."""
    return ensure_schema(engine, url, migrate=True)


def _ensure(conn: Connection, url: str, migrate: bool) -> str | None:
    want = head()
    scripts = ScriptDirectory.from_config(_config())
    have = current(conn)
    conn.commit()  # reading the version opened a transaction: migrations start their own
    if have == want:
        return None
    if have is not None and have not in {s.revision for s in scripts.walk_revisions()}:
        raise StoreError(
            f"database schema {have} is newer than this metastream knows ({want}): "
            "upgrade metastream"
        )
    if not migrate:
        raise StoreError(
            f"database schema is at {have or 'nothing'}, this metastream needs {want}: "
            "run `metastream db upgrade`"
        )
    cfg = _config(conn)
    if have == FIRST and MigrationContext.configure(conn).get_current_revision() is None:
        command.stamp(cfg, FIRST)  # a home from before migrations: its tables are FIRST's
        conn.commit()
    command.upgrade(cfg, "head")
    conn.commit()
    return have or "nothing"


@contextlib.contextmanager
def _locked(engine: Engine, url: str) -> Iterator[Connection]:
    """A connection held under the migration lock (advisory on PostgreSQL, a file on SQLite)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            # Session-level: held across the migration's own transactions, and released by the
            # server if this process dies holding it.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        with engine.connect() as conn:
            yield conn
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        with engine.connect() as conn:
            yield conn
