"""A search that pauses because a store stayed away (MLflow, Optuna's database): not an error, not a signal."""
from __future__ import annotations

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the same command, run later, continues


class SearchPaused(KeyboardInterrupt):
    """The search stopped without a signal: a store (MLflow, Optuna's database) stayed away past its
    limit. It ends as a stop (records kept, the same command continues it), with exit status 75:
    130 and 143 say that a signal stopped it, and nobody sent one."""
    exit_code = EX_TEMPFAIL
