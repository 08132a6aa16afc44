"""Per-task PostgreSQL roles: a task process holds credentials that reach its own rows only.

A task runs code an LLM wrote, so it must not hold the stack's database URL (it could rewrite
any task's row or log). Before starting a task the supervisor creates a login role for it,
``metastream_task_<tag>_<task id>`` with a random password, and hands the task a URL for that
role in its spec file; when the task ends the role is dropped, and a supervisor starting up
drops any its predecessor left behind (:meth:`TaskRoles.sweep`).

What such a role may do: it is a member of the database's group role
``metastream_tasks_<tag>``, which may SELECT and INSERT on ``events`` and SELECT, INSERT and
UPDATE on ``task_meta``, and nothing else (no ``tasks``, ``runs``, nor DDL). Row-level
security on both tables (migration 0004) limits every such statement to the rows whose task
id is the one in ``current_user``, which a session cannot change (no ``SET SESSION
AUTHORIZATION`` without superuser; ``SET ROLE`` only to the group, whose name carries no task).

The tag (8 hex characters of the database name's MD5) keeps the roles of databases sharing a
cluster apart, as roles are cluster-wide: one stack's sweep never touches another's. The
stack's role needs ``CREATEROLE`` (or to be a superuser); :meth:`TaskRoles.prepare` says so
plainly when it is missing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Collection
from typing import TypeVar

import psycopg
from psycopg import sql
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from store import pg
from store.dburl import StoreError, redact, scrub

T = TypeVar("T")
log = logging.getLogger("metastream.store")

PREFIX = "metastream_task_"
GROUP_PREFIX = "metastream_tasks_"
# A task needs two connections (its event writer and its outcome writer); a few more for
# reconnects after a server restart. Bounded so that a task cannot take the server's slots.
CONNECTION_LIMIT = 4
_SCRAM_ITERATIONS = 4096  # PostgreSQL's own default
_LOCK_KEY = 0x6D657462  # serialises group set-up between supervisors (migrate uses ...61)


def database_tag(database: str) -> str:
    """The 8 hex characters that name one database's task roles."""
    return hashlib.md5(database.encode(), usedforsecurity=False).hexdigest()[:8]


def role_name(tag: str, task_id: str) -> str:
    """The login role of ``task_id`` (the RLS policy reads the task id back from it)."""
    return f"{PREFIX}{tag}_{task_id}"


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Sent instead of the password, so the password itself is never in a statement (nor in a
    server log of statements).
    """
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


class TaskRoles:
    """Creates, hands out and drops the task roles of one database (the supervisor's side)."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._url = url
        self._tag: str | None = None

    def _run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn`` on a pooled connection, in one transaction, retried across server restarts."""

        def attempt() -> T:
            conn = self._engine.raw_connection()
            try:
                driver = conn.driver_connection
                assert isinstance(driver, psycopg.Connection)
                result = fn(driver)
                driver.commit()
                return result
            except psycopg.Error as exc:
                if pg.connection_lost(exc):
                    conn.invalidate(exc)
                else:
                    conn.rollback()
                raise
            finally:
                conn.close()

        try:
            return pg.retrying(self._url, attempt)
        except (psycopg.Error, sa_exc.DBAPIError) as exc:
            exc = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"database {redact(self._url)}: task roles: {scrub(str(exc), self._url)}"
            ) from None

    @property
    def tag(self) -> str:
        if self._tag is None:
            raise RuntimeError("TaskRoles.prepare() first")
        return self._tag

    def prepare(self) -> None:
        """Check that roles can be made here and set up the group role (start-up, idempotent)."""

        def setup(c: psycopg.Connection) -> str:
            row = c.execute(
                "SELECT current_database(), r.rolcreaterole OR r.rolsuper, current_user "
                "FROM pg_roles r WHERE r.rolname = current_user"
            ).fetchone()
            assert row is not None
            database, can, user = row
            if not can:
                raise _NoCreateRole(user)
            tag = database_tag(database)
            group = sql.Identifier(GROUP_PREFIX + tag)
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            exists = c.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (GROUP_PREFIX + tag,)
            ).fetchone()
            if exists is None:
                c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(group))
            c.execute(sql.SQL("GRANT SELECT, INSERT ON events TO {}").format(group))
            c.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON task_meta TO {}").format(group))
            # PUBLIC could create tables in the schema before PostgreSQL 15: a task too.
            open_schema = c.execute(
                "SELECT current_schema() FROM pg_namespace n "
                "WHERE n.nspname = current_schema() AND has_schema_privilege(%s, n.oid, 'CREATE')",
                (GROUP_PREFIX + tag,),
            ).fetchone()
            if open_schema is not None:
                raise _OpenSchema(str(open_schema[0]))
            return tag

        try:
            self._tag = self._run(setup)
        except _NoCreateRole as exc:
            raise StoreError(
                f"database {redact(self._url)}: the role {exc.user!r} may not create roles, "
                "and each task process gets a database role of its own: grant it CREATEROLE "
                "(ALTER ROLE ... CREATEROLE), or set METASTREAM_DB_TASK_ROLES=0 to give tasks "
                "the stack's own credentials (unsafe: see the README's Security model)"
            ) from None
        except _OpenSchema as exc:
            raise StoreError(
                f"database {redact(self._url)}: task roles could create tables in the schema "
                f"{exc.schema!r} (PUBLIC may, as before PostgreSQL 15): run REVOKE CREATE ON "
                f"SCHEMA {exc.schema} FROM PUBLIC"
            ) from None

    def issue(self, task_id: str) -> str:
        """A fresh password for the task's role (created if need be); the task's URL."""
        name = role_name(self.tag, task_id)
        password = secrets.token_urlsafe(24)
        verifier = sql.Literal(scram_verifier(password))
        role, group = sql.Identifier(name), sql.Identifier(GROUP_PREFIX + self.tag)

        def create(c: psycopg.Connection) -> None:
            found = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if found is None:
                stmt = "CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {} IN ROLE {}"
                c.execute(
                    sql.SQL(stmt).format(role, verifier, sql.Literal(CONNECTION_LIMIT), group)
                )
            else:  # left by a crash, or the task runs again: a new password
                stmt = "ALTER ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}"
                c.execute(sql.SQL(stmt).format(role, verifier, sql.Literal(CONNECTION_LIMIT)))
                # A paused or taken-over run's sessions must not write into the new run.
                _terminate_sessions(c, name)

        self._run(create)
        url = make_url(self._url).set(username=name, password=password)
        return url.render_as_string(hide_password=False)

    def revoke(self, task_id: str) -> None:
        """Drop the task's role (after its process ended), ending any session it left."""
        self._drop([role_name(self.tag, task_id)])

    def _drop(self, names: Collection[str]) -> None:
        def drop(c: psycopg.Connection) -> None:
            for name in names:
                role = sql.Identifier(name)
                if (
                    c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
                    is None
                ):
                    continue
                # Shut it first: what follows may fail (a large object the task created with
                # lo_create, which needs no privilege, blocks DROP ROLE), and a role that stays
                # must not log in with a password its task may have set itself.
                c.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role))
                # Its process is gone; a backend still running its last statement is ended.
                _terminate_sessions(c, name)
                # Per role: one that cannot be dropped must not stop the others' cleanup.
                c.execute("SAVEPOINT drop_role")
                try:
                    c.execute(sql.SQL("DROP OWNED BY {}").format(role))
                    c.execute(sql.SQL("DROP ROLE {}").format(role))
                    c.execute("RELEASE SAVEPOINT drop_role")
                except psycopg.Error as exc:
                    c.execute("ROLLBACK TO SAVEPOINT drop_role")
                    log.warning("task role %s kept, without login: %s", name, exc)

        self._run(drop)

    def existing(self) -> list[str]:
        """The task ids that have a role in this database now."""
        start = f"{PREFIX}{self.tag}_"

        def read(c: psycopg.Connection) -> list[str]:
            rows = c.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (start,)
            ).fetchall()
            return [str(r[0])[len(start) :] for r in rows]

        return self._run(read)

    def sweep(self, in_use: Callable[[], Collection[str]]) -> list[str]:
        """Drop the roles of tasks not in ``in_use()`` (asked after listing); their ids."""
        found = self.existing()
        keep = set(in_use())  # after the listing: a role made meanwhile is for a RUNNING task
        stale = [t for t in found if t not in keep]
        if stale:
            self._drop([role_name(self.tag, t) for t in stale])
            log.info("dropped %d stale task role(s)", len(stale))
        return stale


class _NoCreateRole(Exception):
    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user


class _OpenSchema(Exception):
    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.schema = schema


def _terminate_sessions(c: psycopg.Connection, name: str) -> None:
    """End the role's open sessions (allowed to a superuser or pg_signal_backend; without
    that right a session ends with its client, and the fences refuse a stale run's writes)."""
    c.execute("SAVEPOINT terminate")
    try:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        c.execute("RELEASE SAVEPOINT terminate")
    except psycopg.errors.InsufficientPrivilege:
        c.execute("ROLLBACK TO SAVEPOINT terminate")
