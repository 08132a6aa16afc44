"""``metastream db upgrade|current``: the store's schema, straight on the database (no gateway)."""

from __future__ import annotations

import argparse
import sys

from metastream import settings
from store import Store, StoreError, migrate

EXIT_OK, EXIT_DB = 0, 6


def cmd_db(args: argparse.Namespace) -> int:
    """Migrate (``upgrade``) or show (``current``) the schema of ``METASTREAM_DB_URL``."""
    cfg = settings.load()
    if cfg.db_url.startswith("sqlite"):
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = Store(cfg.db_url, cfg.events_dir)
        try:
            if args.db_command == "upgrade":
                was = store.upgrade_schema()
                state = f"migrated from {was}" if was else "already current"
                print(f"database schema is at {migrate.head()} ({state})")
            else:
                print(store.schema_version() or "nothing (empty database)")
        finally:
            store.close()
    except StoreError as exc:
        print(f"metastream: error: {exc}", file=sys.stderr)
        return EXIT_DB
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the store's schema (METASTREAM_DB_URL)")
    which = db.add_subparsers(dest="db_command", required=True, metavar="{upgrade,current}")
    which.add_parser("upgrade", help="migrate the database to this version's schema")
    which.add_parser("current", help="print the database's schema revision")
    db.set_defaults(command="db")
