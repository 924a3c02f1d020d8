"""One search per name at a time: an exclusive lock on `<state_dir>/<name>/search.lock`.

The lock is `flock` on an open file, so the kernel drops it when the holder dies (even by
SIGKILL): a stale lock never needs removing by hand. The file holds the holder's host, pid and
start time so that the refused command can name it. Across machines this needs a filesystem
that forwards locks: NFSv4 (or NFSv3 with lockd), Lustre mounted with `-o flock`, CephFS, GPFS.
"""
from __future__ import annotations

import fcntl
import os
import platform
import time
from pathlib import Path

from esam.errors import ConfigError

LOCK_FILE = "search.lock"


def holder_line() -> str:
    return f"host {platform.node()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


class SearchLock:
    """Context manager: held for the whole search; a second holder is refused with one line."""

    def __init__(self, directory: Path, name: str):
        self.path, self.name = Path(directory) / LOCK_FILE, name
        self._fd: int | None = None

    def __enter__(self) -> "SearchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "holder unknown"
            os.close(fd)
            raise ConfigError(f"search {self.name!r} is already running ({holder}; lock {self.path}); "
                              f"wait for it to end, or give this one a new name (--set name=...)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_line() + "\n").encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        # The file stays: removing it would let a waiter lock an unlinked inode beside a new one.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
