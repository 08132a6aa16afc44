"""PostgreSQL specifics: bounded engines, retries across a server restart, the events table.

A server database can restart under a running stack. Every store call on PostgreSQL is retried
with backoff while the *connection* is what failed (refused, reset, the server shutting
down), for up to ``RETRY_SECONDS``; an error of the statement itself (a timeout, a constraint)
is raised at once. Each task appends its events with ``COPY`` (or, under its own role, where
row-level security forbids COPY, one ``INSERT ... SELECT unnest``), one transaction per batch;
a batch whose commit was lost with the connection is found by its ids before it is sent
again, so a retry never duplicates nor loses an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from store.dburl import engine_url, redact

T = TypeVar("T")
log = logging.getLogger("metastream.store")

# Nothing waits forever on the server: a statement, a lock, an idle transaction, a connect.
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
IDLE_TX_TIMEOUT_MS = 60_000
TASK_IDLE_TX_TIMEOUT_MS = 5_000  # a task's writes are one COPY and a commit
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 30  # waiting for a pooled connection
RETRY_SECONDS = 30.0  # how long a lost server is waited for before the call fails
_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)  # then 1 s between tries
_CONNECTION_STATES = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now


def make_engine(url: str, pool_size: int, max_overflow: int, epoch: int | None = None) -> Engine:
    """A bounded engine whose connections time out statements, locks and idle transactions.

    ``epoch``: the run epoch a task process writes under (checked by the fencing triggers).
    """
    options = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={IDLE_TX_TIMEOUT_MS}"
    )
    if epoch is not None:
        # A task process's connection: its writes lock its task's row until they commit, so
        # one paused mid-commit (its node SIGSTOPped) must not hold a takeover for long.
        options += (
            f" -c metastream.epoch={int(epoch)}"
            f" -c idle_in_transaction_session_timeout={TASK_IDLE_TX_TIMEOUT_MS}"
        )
    return create_engine(
        engine_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=True,  # a connection from before a server restart is replaced, not used
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": options,
            "application_name": "metastream",
        },
    )


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or the connection went away (worth a retry)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _CONNECTION_STATES
    return isinstance(exc, psycopg.InterfaceError)


def retrying(url: str, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, called again with backoff while the connection is what fails."""
    deadline = time.monotonic() + RETRY_SECONDS
    tries = 0
    while True:
        try:
            return fn()
        except (sa_exc.DBAPIError, psycopg.Error) as exc:
            if not connection_lost(exc) or time.monotonic() >= deadline:
                raise
            pause = _BACKOFF[tries] if tries < len(_BACKOFF) else 1.0
            if tries == 0:
                log.warning("database %s unreachable, retrying: %s", redact(url), _first(exc))
            tries += 1
            sleep(pause)


def _first(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:200]


# One statement per batch when COPY is not allowed: PostgreSQL refuses COPY FROM to a role
# under row-level security (a task's own role, store.taskroles). The arrays go in binary
# (``%b``): as text, every payload was hex-encoded and the outbox ran at 0.55x of COPY's rate
# instead of 0.76x (bench/README.md "PostgreSQL").
_INSERT_ARRAYS = (
    "INSERT INTO events (task_id, event_id, data) "
    "SELECT %s, unnest(%b::integer[]), unnest(%b::bytea[])"
)
_INSERT_ARRAYS_BODIES = (
    "INSERT INTO events (task_id, event_id, data, body) "
    "SELECT %s, unnest(%b::integer[]), unnest(%b::bytea[]), unnest(%b::bytea[])"
)


class EventTable:
    """The ``events`` table of a server database: COPY (or one INSERT) in, ordered reads out."""

    def __init__(self, engine: Engine, url: str, *, copy: bool = True) -> None:
        self._engine = engine
        self._url = url
        self._copy = copy

    def append(
        self,
        task_id: str,
        batch: Sequence[tuple[int, bytes]],
        bodies: Sequence[bytes] | None = None,
    ) -> None:
        """Commit a batch of ``(event_id, data)`` (and bodies) once, through server restarts."""
        if bodies is not None and len(bodies) != len(batch):
            raise ValueError(f"{len(batch)} events but {len(bodies)} bodies")
        first = batch[0][0]
        resent = False

        def attempt() -> None:
            nonlocal resent
            conn = self._engine.raw_connection()
            try:
                pg = conn.driver_connection
                assert isinstance(pg, psycopg.Connection)
                with pg.cursor() as cur:
                    if resent:  # the last try's commit may have reached the server
                        cur.execute(
                            "SELECT max(event_id) FROM events WHERE task_id = %s", (task_id,)
                        )
                        row = cur.fetchone()
                        if row is not None and row[0] is not None and row[0] >= first:
                            pg.commit()
                            return
                    resent = True
                    if self._copy and bodies is None:
                        with cur.copy("COPY events (task_id, event_id, data) FROM STDIN") as cp:
                            for event_id, data in batch:
                                cp.write_row((task_id, event_id, data))
                    elif self._copy and bodies is not None:
                        cols = "COPY events (task_id, event_id, data, body) FROM STDIN"
                        with cur.copy(cols) as cp:
                            for (event_id, data), body in zip(batch, bodies, strict=True):
                                cp.write_row((task_id, event_id, data, body))
                    else:
                        ids = [event_id for event_id, _ in batch]
                        datas = [d for _, d in batch]
                        if bodies is None:
                            cur.execute(_INSERT_ARRAYS, (task_id, ids, datas))
                        else:
                            args = (task_id, ids, datas, list(bodies))
                            cur.execute(_INSERT_ARRAYS_BODIES, args)
                pg.commit()
            except psycopg.Error as exc:
                if connection_lost(exc):
                    conn.invalidate(exc)
                else:
                    conn.rollback()
                raise
            finally:
                conn.close()

        retrying(self._url, attempt)
