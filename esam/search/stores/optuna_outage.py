"""Optuna's storage through a database outage: every call retried with back-off, for a bounded time.

A PostgreSQL server restarted under a search ends every open session. The pool's pre-ping
(ENGINE_KWARGS) replaces dead connections once the server is back, but a call made while
it is away raises (StorageInternalError, wrapping SQLAlchemy's OperationalError). Ray calls the
searcher on its own loop, so one such call ended the whole search with a traceback.

`RetryingStorage` wraps the storage a search opens: a call that fails because the database is
unreachable is tried again (0.5 s doubling to 8 s, as the MLflow record writer does), the search
waiting meanwhile. One warning line when an outage starts, one when the database is back; no
traceback. The outage is bounded: past `max_outage_s` ($ESAM_OPTUNA_MAX_OUTAGE_S, 5 minutes by
default) the call raises `StorageOutage`, a KeyboardInterrupt, and the search stops the way
Ctrl-C stops it: state saved, exit 75 (not a signal's 130), the same command continues it (its start-up
reconciliation tells Optuna what it missed). Ctrl-C or SIGTERM while it waits stops it the same
way at the next try, not at the bound. Once an outage has passed the bound, further calls during
it are tried once and fail as Optuna fails, so the stop's own clean-up does not wait again.

The outage is one per database (keyed by its URL), shared by every RetryingStorage on it: the
runner's and the restored searcher's say one warning, and count one bound, between them.

A retry can repeat a write whose commit landed just before the connection broke. The two that
matter are handled: a repeated tell finds the trial already ended with the same state (that is
the success it missed); a repeated trial creation leaves a RUNNING trial no Ray trial holds,
which the searcher hands to the next Ray trial as it does a killed driver's orphan.
"""
from __future__ import annotations

import abc
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.storages import BaseStorage

from esam.errors import ConfigError, first_line
from esam.search.stores.creation_lock import store_creation_lock
from esam.search.stores.mlflow_store import without_password
from esam.search.stores.paused import SearchPaused
from esam.search.stores.record_buffer import backoff
from esam.search.stores.write_refusals import cause as write_refusal

MAX_OUTAGE_S = 300.0  # seconds without the database at most; $ESAM_OPTUNA_MAX_OUTAGE_S overrides
# A PostgreSQL host that does not answer at all (a network partition, not a refused connection) fails
# a try after this long, not after the system's TCP timeout of minutes: the outage bound holds.
CONNECT_TIMEOUT_S = 10

# BaseStorage's whole interface: each call goes through the retry (other attributes pass through).
_CALLS = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
          "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
          "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
          "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
          "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
          "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
          "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "remove_session",
          "check_trial_is_updatable")


def outage_limit_s() -> float:
    return float(os.environ.get("ESAM_OPTUNA_MAX_OUTAGE_S", MAX_OUTAGE_S))


class StorageOutage(SearchPaused):
    """The Optuna database stayed away past the limit: the search stops the way an interrupt stops it."""


def is_outage(err: BaseException) -> bool:
    """Whether `err` (or what caused it) says the database could not be reached, rather than refused a call."""
    from sqlalchemy import exc
    if write_refusal(err):  # SQLite's "disk is full" is an OperationalError too; waiting does not mend it
        return False
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.InvalidatePoolError)):
            return True
        if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


@contextlib.contextmanager
def outage_is_a_stop():
    """Outside Ray's loop: the database's absence, even one already past its limit (its calls then fail
    at once, as Optuna's do), stops the search as StorageOutage; any other error stays what it is."""
    try:
        yield
    except Exception as err:
        if not is_outage(err):
            raise
        raise StorageOutage("Optuna's database unreachable") from None


def _reason(err: BaseException) -> str:
    """The first line of the deepest cause: Optuna's own message ("... during the commit") misleads."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {first_line(err, 160) if str(err).strip() else ''}"


@dataclass
class _Outage:
    since: float  # clock() at the first failed call
    gave_up: bool = False


@dataclass
class OutageWatch:
    """What every Optuna storage of one search shares: each database's outage now (one warning and one
    limit between them, so the stop's clean-up does not wait again), and whether a stop was asked for."""
    outages: dict[str, _Outage] = field(default_factory=dict)  # database (as shown) -> its outage now, if any
    stop_requested: Callable[[], bool] = lambda: False  # Ctrl-C or SIGTERM came during the search


class RetryingStorage(BaseStorage):
    """An Optuna storage whose calls wait out a database outage of up to `max_outage_s` seconds."""

    def __init__(self, storage: BaseStorage, where: str, *, max_outage_s: float | None = None,
                 echo: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, watch: OutageWatch | None = None):
        self.storage, self.where = storage, where
        self.watch = watch or OutageWatch()
        self.max_outage_s = max_outage_s
        self.echo = echo or (lambda line: print(line, flush=True))
        self.clock, self.sleep = clock, sleep

    def __getstate__(self) -> dict:  # Ray pickles the searcher's study; the hooks and the watch are this process's
        return {"storage": self.storage, "where": self.where, "max_outage_s": self.max_outage_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["storage"], state["where"], max_outage_s=state["max_outage_s"])

    def __getattr__(self, name: str) -> Any:  # the wrapped storage's own attributes (engine, url, ...)
        if name.startswith("__") or name == "storage":
            raise AttributeError(name)
        return getattr(self.storage, name)

    @property
    def limit_s(self) -> float:
        return self.max_outage_s if self.max_outage_s is not None else outage_limit_s()

    def call(self, name: str, *args, **kwargs):
        from optuna.exceptions import UpdateFinishedTrialError
        method, failures = getattr(self.storage, name), 0
        while True:
            try:
                result = method(*args, **kwargs)
            except UpdateFinishedTrialError:
                if failures and name == "set_trial_state_values" and self._ended_as(args):
                    return True  # the earlier try's commit landed; only its answer was lost
                raise
            except Exception as err:
                if not is_outage(err):
                    raise
                failures += 1
                self._failed(err, failures)
                continue
            self._back()
            return result

    def _ended_as(self, args: tuple) -> bool:
        trial_id, state = args[0], args[1]
        return self.storage.get_trial(trial_id).state == state

    def _failed(self, err: Exception, failures: int) -> None:
        """Wait before the next try; raise when this outage has lasted past the limit."""
        now, limit = self.clock(), self.limit_s
        outages = self.watch.outages
        outage = outages.get(self.where)
        if outage is None:
            outage = outages[self.where] = _Outage(now)
            self.echo(f"warning: Optuna's database at {self.where} unreachable ({_reason(err)}); "
                      f"retrying for up to {limit:.0f} s")
        if outage.gave_up:
            raise err  # the stop is under way: fail fast, as Optuna does
        left = outage.since + limit - now
        if left <= 0 or self.watch.stop_requested():
            outage.gave_up = True
            if left <= 0:
                self.echo(f"Optuna's database at {self.where} still unreachable after {limit:.0f} s "
                          f"(ESAM_OPTUNA_MAX_OUTAGE_S): stopping the search")
            raise StorageOutage(f"Optuna's database unreachable for {now - outage.since:.0f} s") from None
        self.sleep(min(backoff(failures), left))

    def _back(self) -> None:
        outage = self.watch.outages.pop(self.where, None)
        if outage is not None:
            self.echo(f"Optuna's database at {self.where} back after {self.clock() - outage.since:.0f} s")


def _retried(name: str):
    def call(self, *args, **kwargs):
        return self.call(name, *args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


for _name in _CALLS:
    setattr(RetryingStorage, _name, _retried(_name))
abc.update_abstractmethods(RetryingStorage)


def open_rdb(url: str, engine_kwargs: dict, watch: OutageWatch | None = None) -> RetryingStorage:
    """Optuna's RDBStorage on `url`, retrying through outages (PostgreSQL: connections time out)."""
    import optuna
    kwargs = dict(engine_kwargs)
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S, **kwargs.get("connect_args", {})}
    return retrying(optuna.storages.RDBStorage(url, engine_kwargs=kwargs), url, watch)


def retrying(storage: BaseStorage, url: str, watch: OutageWatch | None = None) -> RetryingStorage:
    """`storage` (an RDBStorage: wrapped in Optuna's cache first, as Optuna does itself) for the search."""
    import optuna

    if isinstance(storage, RetryingStorage):
        return storage
    return RetryingStorage(optuna.storages.get_storage(storage), without_password(url), watch=watch)


ENGINE_KWARGS = {"pool_pre_ping": True}  # SQLAlchemy replaces a dead pooled connection before using it


def open_optuna_storage(url: str, watch: OutageWatch | None = None):
    """The search's Optuna storage; its calls wait out a database outage (esam/search/stores/optuna_outage.py)."""
    try:
        with store_creation_lock(url):  # its first use creates the tables; a reader may be opening it too
            return open_rdb(url, ENGINE_KWARGS, watch)
    except Exception as err:  # noqa: BLE001 - a bad URL or unreachable database
        raise ConfigError(f"optuna_storage {without_password(url)!r} cannot be opened: "
                          f"{first_line(err)}") from None
