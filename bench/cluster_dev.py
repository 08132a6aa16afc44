"""``make cluster``: two nodes on this machine (Procfile.cluster, docs/deploy.md).

``prepare DIR`` makes (once) a PostgreSQL data directory, the bus's CURVE keys, a shared bus
master and the homes ``bus``, ``a`` and ``b``, and writes ``DIR/cluster.env`` (what every
process of the Procfile shares); ``postgres DIR`` runs that server in the foreground;
``wait-db`` waits for it (the Procfile's processes start together).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from bench.pgserver import PASSWORD, USER, PgServer, pg_bin
from bus import curve
from metastream.cluster import share_master

# ``make cluster`` (Procfile.cluster): fixed local ports, a development-only password.
DEV_PG_PORT = 5433
DEV_BUS = ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")


def prepare(root: Path) -> Path:
    """Make (once) the local cluster's database, CURVE keys and homes; its env file."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # the server runs as the postgres user when we are root
    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/setup.sh installs it)")
    if not (root / "pg" / "data").exists():
        PgServer(bindir, root=root / "pg", port=DEV_PG_PORT).init(fsync=True)
    if not (root / "curve" / "server.key").exists():
        curve.keygen(root / "curve")
    master_file = root / "bus.master"
    if not master_file.exists():
        master_file.write_bytes(secrets.token_hex(32).encode())
        os.chmod(master_file, 0o600)
    for name in ("bus", "a", "b"):
        home = root / name
        home.mkdir(exist_ok=True, mode=0o700)
        share_master(home, master_file.read_bytes())
    env = root / "cluster.env"
    env.write_text(
        f"METASTREAM_DB_URL=postgresql://{USER}:{PASSWORD}@127.0.0.1:{DEV_PG_PORT}/postgres\n"
        f"METASTREAM_BUS_PUB={DEV_BUS[0]}\nMETASTREAM_BUS_SUB={DEV_BUS[1]}\n"
        f"{curve.CURVE_ENV}={(root / 'curve').resolve()}\n"
    )
    return env


def run_postgres(server: PgServer) -> None:
    """The server in the foreground; honcho's SIGTERM or SIGINT is a fast shutdown.

    Not exec: through ``runuser`` (as root) the server would get no signal, and its own
    SIGTERM is a "smart" shutdown that waits for every client.
    """
    proc = subprocess.Popen(server.foreground())
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # taken by sigtimedwait below, not handled
    while proc.poll() is None:
        if signal.sigtimedwait(stop, 0.5) is not None:
            server.stop("fast")
            proc.wait(60)


def wait_db(url: str, timeout: float) -> None:
    """Wait until the database answers (the cluster's processes start together)."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)  # a libpq URI
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(conninfo, connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"the database did not come up in {timeout:g} s: {exc}") from None
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_dev")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "postgres"):
        sub.add_parser(name).add_argument("dir", type=Path)
    sub.add_parser("wait-db").add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(f"local cluster env: {prepare(args.dir)}", file=sys.stderr)
    elif args.command == "postgres":
        bindir = pg_bin()
        assert bindir is not None
        run_postgres(PgServer(bindir, root=args.dir / "pg", port=DEV_PG_PORT))
    else:
        wait_db(os.environ["METASTREAM_DB_URL"], args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
