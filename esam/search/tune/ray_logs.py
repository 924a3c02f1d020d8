"""Ray's log lines on the search's terminal: one line each, and no advice that does not apply.

Ray Tune logs some failures with their traceback (a full disk while it saves the experiment's
state prints forty lines of pyarrow frames), and ends a stopped experiment with "Resume
experiment with: Tuner.restore(...)". A search is continued by running the same command (it
never restores Ray's saved experiment), and the cause belongs on one line. The filter sits on
the handlers of Ray's `ray` logger, through which Ray Tune's and Ray Train's records pass.
"""
from __future__ import annotations

import contextlib
import logging

from esam.errors import first_line

_TRACEBACK = "Traceback (most recent call last):"
# Ray's advice for its own resume, which esam never uses (the same command continues a search).
_DROPPED = ("Tuner.restore", "Stop signal received")


class OneLineRayLogs(logging.Filter):
    """A record with a traceback becomes its message and the exception's first line; Ray's
    Tuner.restore advice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(advice in message for advice in _DROPPED):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            message = f"{message.strip().rstrip(':')}: {type(err).__name__}: {first_line(err) if str(err).strip() else ''}"
        elif _TRACEBACK in message:  # a traceback formatted into the message (Ray's syncer does this)
            head, _, tail = message.partition(_TRACEBACK)
            last = [line.strip() for line in tail.splitlines() if line.strip()]
            message = f"{head.strip().rstrip(':')}: {last[-1] if last else ''}"
        else:
            return True
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        return True


@contextlib.contextmanager
def one_line_ray_logs():
    """While a search runs: Ray's records one line each (see the module's docstring)."""
    handlers = list(logging.getLogger("ray").handlers)
    log_filter = OneLineRayLogs()
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)
