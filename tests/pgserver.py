"""The tests' PostgreSQL server: the benchmarks' throwaway server (bench/pgserver.py)."""

from bench.pgserver import PASSWORD, USER, PgServer, free_port, pg_bin

__all__ = ["PASSWORD", "USER", "PgServer", "free_port", "pg_bin"]
