"""What metrics cost: scenario 1 on a stack with metrics on against one with them off.

"On" is the full set: the gateway's ``/metrics``, the supervisor's and the bus's metrics
servers, and a scraper reading all three every second (Prometheus usually scrapes every 15 s:
this is the harsher case). "Off" is ``METASTREAM_METRICS=0``: nothing counted, nothing served.
Repetitions alternate the two stacks, so drift of a shared machine hits both alike.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx

from bench import procs
from bench.clients import percentile, throughput
from bench.common import PAYLOAD_BYTES as B
from bench.common import Ctx, create, row
from bench.scenarios import LATENCY_RATE, _steady
from bench.table import Row
from metastream.stack import Stack, free_port

SCRAPE_EVERY = 1.0


@contextlib.contextmanager
def _scraper(urls: list[str]) -> Iterator[list[int]]:
    """Scrape ``urls`` every SCRAPE_EVERY seconds in a thread; yields [scrapes done]."""
    done = [0]
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(SCRAPE_EVERY):
                for url in urls:
                    client.get(url).raise_for_status()
                done[0] += 1

    thread = threading.Thread(target=run, name="scraper", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(15)


def s1_metrics(cx: Ctx, rows: list[Row]) -> None:
    """Scenario 1's throughput and steady p99, metrics on vs off."""
    tput = row(
        rows,
        "1m",
        "throughput 1 task->1 client, metrics on",
        "events/s",
        baseline_name="metrics off",
        target=("min", 0.9),
    )
    p99 = row(
        rows,
        "1m",
        f"latency p99 @{LATENCY_RATE}/s, metrics on",
        "ms",
        baseline_name="metrics off",
        target=("max", 1.5),
    )
    n = cx.size(100_000, 2_000)
    n_lat = int(LATENCY_RATE * cx.size(3.0, 0.5))
    sup_port, bus_port = free_port(), free_port()
    on_env = {
        "METASTREAM_SUPERVISOR_METRICS_PORT": str(sup_port),
        "METASTREAM_BUS_METRICS_PORT": str(bus_port),
    }
    with (
        procs.stack(cx.home("mon"), env=on_env) as on,
        procs.stack(cx.home("moff"), env={"METASTREAM_METRICS": "0"}) as off,
        httpx.Client(base_url=on.url, timeout=30) as api_on,
        httpx.Client(base_url=off.url, timeout=30) as api_off,
        _scraper(
            [
                f"{on.url}/metrics",
                f"http://127.0.0.1:{sup_port}/metrics",
                f"http://127.0.0.1:{bus_port}/metrics",
            ]
        ) as scrapes,
    ):

        def run_tput(st: Stack, api: httpx.Client, k: int) -> float:
            tid = create(api, synthetic={"events": k, "rate": 0, "payload_bytes": B})
            return throughput(cx.clients([f"{st.ws_url}/ws/tasks/{tid}"], k))

        def run_p99(st: Stack, api: httpx.Client, k: int) -> float:
            body = {"events": k, "rate": LATENCY_RATE, "payload_bytes": B}
            tid = create(api, synthetic=body)
            steady, _all = _steady(cx.clients([f"{st.ws_url}/ws/tasks/{tid}"], k, latency=True))
            return percentile(steady, 99)

        systems = (("on", on, api_on), ("off", off, api_off))
        for _name, st, api in systems:
            run_tput(st, api, 200)  # warm-up
        assert tput.baseline is not None and p99.baseline is not None
        for rep in range(cx.reps):
            for name, st, api in systems if rep % 2 == 0 else systems[::-1]:
                v = run_tput(st, api, n)
                (tput.value if name == "on" else tput.baseline).samples.append(v)
                ms = run_p99(st, api, n_lat)
                (p99.value if name == "on" else p99.baseline).samples.append(ms)
                cx.log(
                    f"  [1m] rep {rep + 1}/{cx.reps} metrics {name}: "
                    f"{v:,.0f} events/s, p99 {ms:.1f} ms"
                )
        if scrapes[0] == 0:
            raise RuntimeError("the scraper never completed a scrape")
        cx.log(f"  [1m] {scrapes[0]} scrapes of the three metrics endpoints")
