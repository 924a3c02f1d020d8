"""A trial's scratch directory (checkpoint copies), removed even when its process was killed.

The name carries the owner's pid: each new trial removes the directories of owners that no
longer run on its machine, which a killed driver or worker leaves behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

PREFIX = "esam-trial-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: str | None = None) -> int:
    """Remove scratch directories whose owner process is gone; return how many."""
    removed = 0
    for path in Path(root or tempfile.gettempdir()).glob(PREFIX + "*"):
        pid = path.name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def trial_scratch() -> Iterator[Path]:
    sweep()
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-") as tmp:
        yield Path(tmp)
