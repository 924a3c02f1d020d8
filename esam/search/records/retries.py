"""Failed trials that the same command retries: a failure from outside the setting, not its own.

A trial fails either because of its setting or because of the world around it. The training
loss turning nan or inf (train() raises FloatingPointError) is the setting's own failure:
training it again diverges again, so it stays failed and counts against `trials`. Anything else
(a Ray worker or node lost, data missing for a while, a full disk, a killed driver) says nothing
about the setting, so the next run of the search trains the same parameters again, up to
`retry_failed` times per setting.

The cause is read from the trial's MLflow run: its `error` tag holds the last line of the
trial's traceback. An Optuna trial that ended cannot be reopened, so a retry is a new Optuna
trial, enqueued with the failed one's parameters and the user attrs `retry_of` (the failed
trial's number) and `retries` (how many times the setting has been retried). A failed trial that
a later trial retries no longer counts against `trials`: its retry takes its place. Enqueueing
is idempotent: a failed trial already retried (even by a retry still WAITING after a killed
driver) is not enqueued again.
"""
from __future__ import annotations

from collections.abc import Iterable

RETRY_OF_ATTR = "retry_of"  # the number of the failed trial this one trains again
RETRIES_ATTR = "retries"  # how many times this trial's setting has been retried (1 for the first retry)
OWN_FAILURES = ("FloatingPointError",)  # the setting diverged: never retried


def own_failure(error: str | None) -> bool:
    """Whether a trial's error line (its traceback's last line) is the setting's own failure."""
    return bool(error) and error.split(":", 1)[0].strip().rsplit(".", 1)[-1] in OWN_FAILURES


def superseded(trials: Iterable) -> set[int]:
    """The numbers of failed trials that a later trial retries."""
    return {int(t.user_attrs[RETRY_OF_ATTR]) for t in trials if RETRY_OF_ATTR in t.user_attrs}


def counted(trials: list) -> list:
    """The trials that count against `trials`: every trial but the failed ones a retry replaces."""
    replaced = superseded(trials)
    return [t for t in trials if t.number not in replaced]


def to_retry(trials: list, errors: dict[int, str], limit: int) -> list:
    """The failed trials the next run trains again: failed from outside, not retried yet, under `limit`.

    `errors`: Optuna trial number -> the error line its MLflow run recorded (absent: unknown,
    e.g. the driver died before recording it, which is not the setting's fault either).
    """
    replaced = superseded(trials)
    return [t for t in trials
            if t.state.name == "FAIL" and t.number not in replaced and not own_failure(errors.get(t.number))
            and int(t.user_attrs.get(RETRIES_ATTR, 0)) < limit]


def enqueue_retries(study, failed: list) -> int:
    """Enqueue one retry of each of `failed` (FrozenTrials) in `study`; how many were enqueued."""
    for t in failed:
        study.enqueue_trial(dict(t.params), user_attrs={RETRY_OF_ATTR: t.number,
                                                        RETRIES_ATTR: int(t.user_attrs.get(RETRIES_ATTR, 0)) + 1})
    return len(failed)


def tally(trials: list) -> dict[str, int]:
    """{finished, stopped, failed}: how the trials that count (see `counted`) ended."""
    names = {"COMPLETE": "finished", "PRUNED": "stopped", "FAIL": "failed"}
    out = {"finished": 0, "stopped": 0, "failed": 0}
    for t in counted(trials):
        if t.state.name in names:
            out[names[t.state.name]] += 1
    return out
