"""Database URLs: the driver each backend uses, and how a URL may be shown (never its password)."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class StoreError(Exception):
    """The store cannot be used; the message is one line, safe to print (no password)."""


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL to connect with: ``postgresql://`` means psycopg 3."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(f"METASTREAM_DB_URL is not a database URL: {redact(url)}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"METASTREAM_DB_URL must be sqlite:// or postgresql://, got {redact(url)}")
    return parsed


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: still hide anything between ``://user:`` and ``@``.
        scheme, sep, rest = url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if not at:
            return url
        user = userinfo.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}" if ":" in userinfo else url


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) on one line, without the URL's password in it."""
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    line = " ".join(str(text).split())
    if password:
        line = line.replace(str(password), "***")
    return line
