"""An ordered, bounded queue of records that a background thread writes, retrying with back-off.

Made for a tracking server that may go away for a while: callers `put` and never block or
raise; the thread writes records strictly in order and keeps the ones it could not write.
The user sees one line when an outage starts and one when it ends, never a traceback.

Bounds: at most `max_records` waiting records (memory) and at most `max_outage_s` seconds
without a successful write. Past either, `gave_up` becomes true; the owner stops its work and
`close()` spills what is left to a JSON-lines file, which the next `RecordBuffer` on the same
file loads first, so nothing is lost. Replayed records must be idempotent for the writer.

The same file is a write-ahead journal while the buffer runs: `put` appends each record before
the thread writes it, and the file is emptied whenever the queue is. A process killed outright
(SIGKILL, a lost machine) thus leaves what MLflow had not taken yet on disk, for the next run.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

from esam.errors import first_line

MAX_RECORDS = 20000  # records waiting at most (a few KB each); $ESAM_MLFLOW_MAX_BUFFERED overrides
MAX_OUTAGE_S = 1800.0  # seconds without a successful write at most; $ESAM_MLFLOW_MAX_OUTAGE_S overrides
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 8.0


def records_limit() -> int:
    return int(os.environ.get("ESAM_MLFLOW_MAX_BUFFERED", MAX_RECORDS))


def outage_limit_s() -> float:
    return float(os.environ.get("ESAM_MLFLOW_MAX_OUTAGE_S", MAX_OUTAGE_S))


class Rejected(Exception):
    """Raised by a writer for a record the store refuses for good: retrying cannot help."""


def backoff(failures: int, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait after `failures` consecutive failures: first, 2*first, 4*first, ... up to cap."""
    return min(cap, first * 2 ** max(0, failures - 1))



class RecordBuffer:
    def __init__(self, write: Callable[[dict], None], *, where: str, spill: Path | None = None,
                 max_records: int | None = None, max_outage_s: float | None = None,
                 echo: Callable[[str], None] = print, first_backoff_s: float = BACKOFF_FIRST_S,
                 max_backoff_s: float = BACKOFF_MAX_S, clock: Callable[[], float] = time.monotonic):
        self.write, self.where, self.spill, self.echo, self.clock = write, where, spill, echo, clock
        self.max_records = max_records if max_records is not None else records_limit()
        self.max_outage_s = max_outage_s if max_outage_s is not None else outage_limit_s()
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self._queue: collections.deque[dict] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.written = 0
        self.outage_since: float | None = None  # clock() of the first failure of the current outage
        self._written_before_outage = 0
        self.gave_up: str | None = None  # why the buffer stopped trusting the store to come back
        if spill is not None and spill.is_file():  # left by a run that stopped during an outage
            with open(spill) as f:
                self._queue.extend(json.loads(line) for line in f if line.strip())
        self._thread = threading.Thread(target=self._run, name="esam-record-writer", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether close() was called: its writer is stopped and what was left is spilled."""
        return self._closing

    def _journal(self, record: dict | None) -> None:
        """Append `record` to the spill file (None: empty it). Best effort: a full or read-only disk
        costs the journal, never the search. Called with the lock held, so the file keeps queue order."""
        if self.spill is None:
            return
        try:
            if record is None:
                if self.spill.exists():
                    self.spill.write_text("")
                return
            with open(self.spill, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError:
            pass

    def put(self, record: dict) -> None:
        """Queue a record (JSON-serialisable); never blocks, never raises."""
        with self._cond:
            self._journal(record)
            self._queue.append(record)
            if len(self._queue) > self.max_records and not self.gave_up:
                self.gave_up = f"more than {self.max_records} records waiting"
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every record is written (True), the buffer gives up or `timeout` passes (False)."""
        deadline = self.clock() + timeout
        with self._cond:
            while self._queue and not self.gave_up:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return not self._queue

    def close(self) -> int:
        """Stop the writer thread (after its current attempt) and spill what is left; returns that count."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        left = list(self._queue)
        if self.spill is not None:
            if left:
                self.spill.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.spill.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in left))
                os.replace(tmp, self.spill)  # never a half-written spill file
            elif self.spill.exists():
                self.spill.unlink()
        return len(left)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                record = self._queue[0]
            try:
                self.write(record)
            except Rejected as err:  # the store answered "never": keep going, say so once per record
                self.echo(f"warning: {self.where} refused a record ({record.get('op')}): {first_line(err)}")
                ok = True
            except Exception as err:  # noqa: BLE001 - any other failure is taken as "try again later"
                ok = False
                failures += 1
                self._failed(err)
            else:
                ok = True
            with self._cond:
                if ok:
                    self._queue.popleft()
                    self.written += 1
                    failures = 0
                    if not self._queue:
                        self._journal(None)  # all written: nothing for a next run to replay
                    if self.outage_since is not None and not self._queue:
                        self.echo(f"MLflow back after {self.clock() - self.outage_since:.0f} s: "
                                  f"wrote {self.written - self._written_before_outage} records")
                        self.outage_since = None
                    self._cond.notify_all()
                    continue
                # Back-off; a close() wakes us at once.
                self._cond.wait(backoff(failures, self.first_backoff_s, self.max_backoff_s))
                if self._closing:
                    return

    def _failed(self, err: Exception) -> None:
        now = self.clock()
        if self.outage_since is None:
            self.outage_since = now
            self._written_before_outage = self.written
            self.echo(f"warning: MLflow at {self.where} unreachable; keeping {len(self._queue)} records "
                      f"and retrying ({type(err).__name__})")
        if now - self.outage_since > self.max_outage_s and not self.gave_up:
            with self._cond:
                self.gave_up = f"unreachable for more than {self.max_outage_s:.0f} s"
                self._cond.notify_all()
