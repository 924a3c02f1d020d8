"""A store that refuses a write is not a store that is away: its real cause, in one line.

A full disk, a read-only or unwritable directory and a name too long for the file system make
every write fail at once, and waiting does not mend them. Told apart from a database outage
(esam/search/stores/optuna_outage.py, which waits), they stop the search at once with a line that
names the cause and the way out, instead of minutes of retries that end in "unreachable".

The cause is found in an OSError's errno, or in the message a database gives for it (SQLite's
"database or disk is full", "attempt to write a readonly database"; PostgreSQL's "No space
left on device", and "permission denied for table ...", a privilege of the database's user), anywhere
along the exception's chain of causes.
"""
from __future__ import annotations

import errno

from esam.errors import ConfigError

_ERRNO = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "permission denied", errno.ENAMETOOLONG: "file name too long"}
# Checked in order: PostgreSQL's "permission denied for table trials" is the database user's privilege,
# not a file's permission, and has another way out.
_MESSAGES = {"permission denied for": "the database user lacks a privilege",
             "must be owner of": "the database user lacks a privilege",
             "database or disk is full": "no space left on device",
             "no space left on device": "no space left on device",
             "attempt to write a readonly database": "the database file or its directory is read-only",
             "read-only file system": "read-only file system",
             "permission denied": "permission denied"}
_WAY_OUT = {"no space left on device": "free space",
            "disk quota exceeded": "free space or raise the quota",
            "file name too long": "give the search a shorter name (--set name=...)",
            "the database user lacks a privilege": "grant the search's database user its privileges on the database "
                                                   "(e.g. GRANT ALL ON SCHEMA public TO that user)"}


class WriteRefused(ConfigError):
    """A store refused a write for a cause waiting does not mend; the search stopped."""


def cause(err: BaseException | None) -> str | None:
    """Why `err` (or an exception that caused it) is a refused write: e.g. "no space left on device"."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in _ERRNO:
            return _ERRNO[err.errno]
        text = str(err).lower()
        for message, reason in _MESSAGES.items():
            if message in text:
                return reason
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def refusal_line(reason: str, where: str) -> str:
    """The one line: what could not be written, why, and what to do."""
    way_out = _WAY_OUT.get(reason, "fix the permissions of results_dir (or state_dir)")
    return f"cannot write {where}: {reason}; {way_out}, then run the same command again"
