"""The store on PostgreSQL: source events/s of the event log, and scenario 1 through the stack.

A throwaway server (bench/pgserver.py) runs for the scenario. Its default is ``fsync = off``:
a commit still reaches the kernel before it returns, so it survives the server's crash, as the
SQLite log (WAL, ``synchronous=NORMAL``) survives the task's; neither survives the machine's.
A second server with ``fsync = on`` shows what a flush per commit costs on this disk.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench import procs
from bench.clients import percentile
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, row
from bench.measure import flat_out
from bench.persistence import NullStore, _run
from bench.pgserver import PgServer, pg_bin
from bench.scenarios import LATENCY_RATE, _steady
from bench.table import Row
from bus.messages import new_task_id, utcnow
from bus.proxy import Proxy
from store import Store


@contextlib.contextmanager
def _server(fsync: bool = False) -> Iterator[PgServer]:
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs it)")
    server = PgServer(bindir).init(fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.close()


def s_pg_persistence(cx: Ctx, rows: list[Row]) -> None:
    """Outbox -> bus -> subscriber events/s: the log on PostgreSQL vs on SQLite vs off."""
    pg = row(
        rows,
        "4b",
        "source events/s, event log on PostgreSQL",
        "events/s",
        baseline_name="event log on SQLite",
        target=("min", 0.5),
    )
    pg_off = row(
        rows, "4b", "source events/s, event log on PostgreSQL", "events/s",
        baseline_name="event log off",
    )  # fmt: skip
    pg_sync = row(
        rows, "4b", "source events/s, PostgreSQL fsync=on", "events/s",
        baseline_name="event log on SQLite",
    )  # fmt: skip
    n = cx.size(100_000, 5_000)
    with (
        tempfile.TemporaryDirectory(prefix="mspg-") as tmp,
        _server() as server,
        _server(fsync=True) as synced,
    ):
        root = Path(tmp)
        proxy = Proxy(f"ipc://{root}/in.sock", f"ipc://{root}/out.sock")
        proxy.start()
        stores = {
            "pg": Store(server.create_database(), pool_size=2, max_overflow=0),
            "pg-fsync": Store(synced.create_database(), pool_size=2, max_overflow=0),
            "sqlite": Store(f"sqlite:///{root}/db.sqlite", root / "events"),
        }
        try:
            for s in stores.values():
                s.create_schema()

            def one(store: Store | None) -> float:
                tid = new_task_id()
                if store is not None:
                    store.create_task(tid, "bench", False, {}, utcnow())
                target = store if store is not None else NullStore()
                return _run(target, tid, n, proxy.frontend_endpoint, proxy.backend_endpoint)

            for rep in range(cx.reps):
                v_pg, v_sync = one(stores["pg"]), one(stores["pg-fsync"])
                v_lite, v_off = one(stores["sqlite"]), one(None)
                pg.add(v_pg, v_lite)
                pg_off.add(v_pg, v_off)
                pg_sync.add(v_sync, v_lite)
                cx.log(
                    f"  [pg persistence] rep {rep + 1}: PostgreSQL {v_pg:,.0f}, fsync=on "
                    f"{v_sync:,.0f}, SQLite {v_lite:,.0f}, off {v_off:,.0f} events/s"
                )
        finally:
            for s in stores.values():
                s.close()
            proxy.stop()


def s_pg_stack(cx: Ctx, rows: list[Row]) -> None:
    """Scenario 1 through the whole stack with the store on PostgreSQL."""
    tput = row(
        rows, "1pg", "throughput 1 task->1 client, PostgreSQL", "events/s",
        target=("abs_min", 25_000),
    )  # fmt: skip
    vs_lite = row(
        rows, "1pg", "throughput on PostgreSQL vs SQLite", "events/s",
        baseline_name="same stack on SQLite",
    )  # fmt: skip
    p99 = row(
        rows, "1pg", f"latency p99 @{LATENCY_RATE}/s, PostgreSQL", "ms",
        baseline_name="same stack on SQLite", target=("max", 2.0),
    )  # fmt: skip
    n = cx.size(100_000, 2_000)
    k = int(LATENCY_RATE * cx.size(3.0, 0.5))
    with _server() as server:
        env = {"METASTREAM_DB_URL": server.create_database()}
        with (
            procs.stack(cx.home("s1pg"), env) as pg_st,
            procs.stack(cx.home("s1lite")) as lite_st,
            httpx.Client(base_url=pg_st.url, timeout=30) as pg_api,
            httpx.Client(base_url=lite_st.url, timeout=30) as lite_api,
        ):
            stacks = {"pg": (pg_st, pg_api), "sqlite": (lite_st, lite_api)}

            def rate(name: str, events: int) -> float:
                st, api = stacks[name]
                return flat_out(cx, st, api, 1, events, start_after_ready=False).per_s

            def late(name: str, events: int) -> float:
                st, api = stacks[name]
                body = {"events": events, "rate": LATENCY_RATE, "payload_bytes": B}
                tid = create(api, synthetic=body)
                res = cx.clients([f"{st.ws_url}/ws/tasks/{tid}"], events, latency=True)
                return percentile(_steady(res)[0], 99)

            for name in stacks:
                rate(name, 200)  # warm-up
            for rep in range(cx.reps):
                v_pg, v_lite = rate("pg", n), rate("sqlite", n)
                l_pg, l_lite = late("pg", k), late("sqlite", k)
                tput.add(v_pg)
                vs_lite.add(v_pg, v_lite)
                p99.add(l_pg, l_lite)
                cx.log(
                    f"  [1 on PostgreSQL] rep {rep + 1}: {v_pg:,.0f} vs SQLite {v_lite:,.0f} "
                    f"events/s; p99 {l_pg:.2f} vs {l_lite:.2f} ms"
                )
