"""``metastream db upgrade|current``: the store's schema, straight on the database (no gateway).

The work is ``python -m store`` (the CLI sits beside the store in the layers, not above it),
run with this interpreter and environment.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def cmd_db(args: argparse.Namespace) -> int:
    """Migrate (``upgrade``) or show (``current``) the schema of ``METASTREAM_DB_URL``."""
    return subprocess.call([sys.executable, "-m", "store", args.db_command])


def add_parser(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the store's schema (METASTREAM_DB_URL)")
    which = db.add_subparsers(dest="db_command", required=True, metavar="{upgrade,current}")
    which.add_parser("upgrade", help="migrate the database to this version's schema")
    which.add_parser("current", help="print the database's schema revision")
    db.set_defaults(command="db")
