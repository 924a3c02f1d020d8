"""An exclusive lock around the first use of a SQLite MLflow store.

MLflow creates a new SQLite store's tables with alembic migrations on first use; two searches
that start together in a fresh directory both run them and one fails ("table already
exists"). Holding `<db>.lock` while the first client call runs makes the second wait and find
the tables made.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator
from urllib.parse import unquote, urlparse


def sqlite_path(uri: str) -> str | None:
    """The database file of a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(urlparse(uri).path)[1:]  # sqlite:////abs -> /abs, sqlite:///rel -> rel
    return path if path and path != ":memory:" else None


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    path = sqlite_path(uri)
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644) if path else None
    except OSError:  # e.g. a read-only directory: the store's own error will say so
        fd = None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
