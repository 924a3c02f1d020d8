"""SIGINT and SIGTERM stop a search the same way: Ray ends its loop gracefully, saving its state,
and the search ends as stopped (exit 130 or 143), never as finished.

Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) because it makes
`Tuner.fit` return as if the experiment had ended. Ours records the signal and forwards it to
the stop handler Tune installs for SIGUSR1 during each run; a second signal stops at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time


class SearchStopped(KeyboardInterrupt):
    """The search was stopped by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _not_in_loop(signum, frame) -> None:
    """SIGUSR1's handler outside Tune's loop: marks that Tune's own is not installed yet."""


class StopSignals:
    """Context manager for a search: catches SIGINT and SIGTERM while it runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}
        self._in_fit = False
        self._deferring = False

    def _unraisable(self, unraisable) -> None:
        """A stop raised where Python cannot propagate it (e.g. in an at-fork hook while Ray starts its
        processes) is not news: the signal is recorded and the search stops at its next check."""
        if isinstance(unraisable.exc_value, SearchStopped):
            return
        self._old_hook(unraisable)

    def __enter__(self) -> "StopSignals":
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, _not_in_loop if sig == signal.SIGUSR1 else self._handle)
        return self

    def stop_requested(self) -> bool:
        """Whether SIGINT or SIGTERM came while this search ran."""
        return self.signum is not None

    def reinstall(self) -> None:
        """Take SIGINT and SIGTERM back: ray.init installs its own (SIGTERM exits with stack lines)."""
        if self._old:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def __exit__(self, *exc) -> None:
        self._in_fit = False
        sys.unraisablehook = self._old_hook
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def deferred(self):
        """A stretch a stop must not cut in two (a run created but not yet written down where the
        stop's cleanup looks for it): a signal inside is recorded, and raised when the stretch ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.raise_if_stopped()

    def _handle(self, signum, frame) -> None:
        if self._deferring:
            self.signum = self.signum or signum
            return
        if self.signum is not None or not self._in_fit:
            self.signum = self.signum or signum
            raise SearchStopped(self.signum)  # outside Ray's loop, or asked twice: stop now
        self.signum = signum
        threading.Thread(target=self._forward, daemon=True).start()

    def _forward(self) -> None:
        """Wait until Tune's loop has installed its stop handler, then trigger it."""
        while self._in_fit:
            if signal.getsignal(signal.SIGUSR1) is not _not_in_loop:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    def fit(self, tuner):
        """`tuner.fit()`, stoppable; raises SearchStopped when a signal came during it."""
        self.raise_if_stopped()
        self._in_fit = True
        try:
            return tuner.fit()
        finally:
            self._in_fit = False
            if signal.SIGUSR1 in self._old:
                signal.signal(signal.SIGUSR1, _not_in_loop)  # the next fit must not reach this run's handler
            self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.signum is not None:
            raise SearchStopped(self.signum)
