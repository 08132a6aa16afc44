"""Alembic migrations of the store (shipped inside the package; run by :mod:`store.migrate`)."""
