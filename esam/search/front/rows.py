"""Which of a search's recorded runs the front, the picks and the export choose from."""
from __future__ import annotations

from esam.search.config import OBJECTIVE_METRICS
from esam.search.constraints import is_feasible, parse_all, reference_values


def finished(rows: list[dict], kind: str | None = None) -> list[dict]:
    """The rows of runs that ran to their last epoch (FINISHED), optionally only one kind: trial | reference.

    Left out: a trial the scheduler stopped early (its metrics are from an earlier epoch, so it
    is no point of the front), and a trial that reused a finished trial's result (same settings,
    see optuna_searcher.py: it is the same point, and the front, plots and picks show it once).
    """
    return [r for r in rows if r.get("status") == "FINISHED" and (kind is None or r.get("kind") == kind)
            and not r.get("reused_from") and not r.get("stopped_early")]


def candidates(rows: list[dict], constraints: list | tuple = ()) -> list[dict]:
    """The trials the front, the picks and the export choose from: finished, and feasible.

    `constraints` (esam.search.constraints.Constraint) are judged against the reference rows.
    """
    trials = finished(rows, "trial")
    if not constraints:
        return trials
    references = reference_values(rows)
    return [r for r in trials if is_feasible(list(constraints), r, references)]


def constraints_of(search_config: dict) -> list:
    """The parsed constraints of a stored search config (none for a search made before they existed)."""
    return parse_all(search_config.get("constraints") or [], OBJECTIVE_METRICS,
                     search_config.get("references") or [])
