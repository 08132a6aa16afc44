"""``python -m store upgrade|current``: the schema of ``METASTREAM_DB_URL`` (``metastream db``).

Exit codes: 0 done, 6 the database cannot be used (one line on stderr, no password).
"""

from __future__ import annotations

import sys

from core import settings
from store import Store, StoreError, migrate

EXIT_OK, EXIT_DB, EXIT_USAGE = 0, 6, 64


def main(argv: list[str]) -> int:
    if argv not in (["upgrade"], ["current"]):
        print("usage: python -m store upgrade|current", file=sys.stderr)
        return EXIT_USAGE
    cfg = settings.load()
    if cfg.db_url.startswith("sqlite"):
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = Store(cfg.db_url, cfg.events_dir)
        try:
            if argv[0] == "upgrade":
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
