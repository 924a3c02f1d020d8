"""Optuna's storage through a database outage (esam/search/stores/optuna_outage.py), without a database.

A storage whose calls fail as an unreachable PostgreSQL makes them fail (StorageInternalError
from SQLAlchemy's OperationalError) a given number of times; a fake clock that the retry's
sleeps advance keeps every test instant. tests/test_cluster_stores.py restarts a real server.
"""
from __future__ import annotations

import pickle
import signal

import optuna
import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy import exc

from esam.search.stores.optuna_outage import OutageWatch, RetryingStorage, StorageOutage, is_outage, outage_is_a_stop
from esam.search.tune.optuna_searcher import RAY_TRIAL_ATTR, EsamSearcher
from esam.search.tune.samplers import SamplerSpec

WHERE = "postgresql://esam:***@127.0.0.1:5432/optuna"


def unreachable() -> StorageInternalError:
    """What RDBStorage raises while its server is down."""
    cause = exc.OperationalError("SELECT 1", {}, Exception('connection to server at "127.0.0.1" failed: '
                                                          "FATAL:  the database system is shutting down"))
    err = StorageInternalError("An exception is raised during the commit.")
    err.__cause__ = cause
    return err


class Flaky:
    """`storage`, but its next `failures` calls raise `unreachable()`."""

    def __init__(self, storage, failures: int = 0):
        self.storage, self.failures, self.calls = storage, failures, 0

    def __getattr__(self, name):
        method = getattr(self.storage, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.failures:
                self.failures -= 1
                raise unreachable()
            return method(*args, **kwargs)
        return call


class Clock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def patient(inner, limit: float = 60.0, watch: OutageWatch | None = None):
    clock, lines = Clock(), []
    return RetryingStorage(inner, WHERE, max_outage_s=limit, echo=lines.append, clock=clock,
                           sleep=clock.sleep, watch=watch), clock, lines


def test_calls_that_fail_for_a_while_succeed_with_one_line_at_each_end():
    flaky = Flaky(optuna.storages.InMemoryStorage())
    storage, clock, lines = patient(flaky)
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "maximize"])
    trial = study.ask()
    flaky.failures = 4  # the tell and three of its retries
    study.tell(trial, [1.0, 2.0])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] and study.trials[0].values == [1.0, 2.0]
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]  # record_buffer's back-off: 0.5 s doubling
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"warning: Optuna's database at {WHERE} unreachable (OperationalError: ")
    assert "retrying for up to 60 s" in lines[0] and "Traceback" not in "".join(lines)
    assert lines[1] == f"Optuna's database at {WHERE} back after 8 s"


def test_an_outage_past_the_limit_stops_as_an_interrupt_and_later_calls_fail_at_once():
    flaky = Flaky(optuna.storages.InMemoryStorage())
    storage, clock, lines = patient(flaky, limit=20.0)
    study = optuna.create_study(storage=storage, study_name="s")
    flaky.failures = 10 ** 6
    with pytest.raises(StorageOutage) as stop:
        study.get_trials()
    assert isinstance(stop.value, KeyboardInterrupt)  # a stop, which `except Exception` never swallows
    assert clock.now == 20.0 and max(clock.sleeps) == 8.0  # the last wait cut to the limit
    assert len(lines) == 2 and "still unreachable after 20 s (ESAM_OPTUNA_MAX_OUTAGE_S): stopping" in lines[1]
    # The stop's own clean-up finds the database still away: one try, Optuna's error, no second wait.
    calls, waited = flaky.calls, clock.now
    with pytest.raises(StorageInternalError):
        study.get_trials()
    assert flaky.calls == calls + 1 and clock.now == waited and len(lines) == 2
    flaky.failures = 0  # back
    assert study.get_trials() == [] and lines[-1] == f"Optuna's database at {WHERE} back after 20 s"


def test_ctrl_c_while_waiting_stops_at_the_next_try_not_at_the_limit(monkeypatch):
    from types import SimpleNamespace

    flaky = Flaky(optuna.storages.InMemoryStorage(), failures=10 ** 6)
    signals = SimpleNamespace(signum=None)  # a running search's StopSignals
    storage, clock, lines = patient(flaky, limit=300.0, watch=OutageWatch(stop_requested=lambda: signals.signum is not None))

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            signals.signum = signal.SIGINT
    storage.sleep = sleep
    with pytest.raises(StorageOutage):
        storage.get_all_studies()
    assert clock.now == 3.5 and len(lines) == 1  # the warning; the stop says itself


def test_a_refusal_is_not_an_outage_and_is_raised_at_once():
    flaky = Flaky(optuna.storages.InMemoryStorage())
    storage, clock, lines = patient(flaky)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("absent")
    refused = StorageInternalError("commit")
    refused.__cause__ = exc.DataError("INSERT", {}, Exception("value too long"))
    assert not is_outage(refused) and is_outage(unreachable())
    assert is_outage(exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")))
    assert clock.sleeps == [] and lines == []
    with pytest.raises(StorageOutage), outage_is_a_stop():  # after Ray's loop: a database still away is a stop
        raise unreachable()
    with pytest.raises(StorageInternalError), outage_is_a_stop():
        raise refused


def test_one_outage_per_database_one_warning_and_one_limit_for_every_storage_on_it():
    """The search's storage and the one its stop's clean-up opens share the outage: the clean-up waits no more."""
    clock, lines, watch = Clock(), [], OutageWatch()
    a, b = (RetryingStorage(Flaky(optuna.storages.InMemoryStorage(), failures=10 ** 6), WHERE, max_outage_s=3,
                            echo=lines.append, clock=clock, sleep=clock.sleep, watch=watch) for _ in range(2))
    with pytest.raises(StorageOutage):
        a.get_all_studies()
    with pytest.raises(StorageInternalError):
        b.get_all_studies()
    assert clock.now == 3 and sum(line.startswith("warning") for line in lines) == 1
    b.storage.failures = 0
    assert b.get_all_studies() == [] and lines[-1] == f"Optuna's database at {WHERE} back after 3 s"


def test_a_repeated_tell_whose_first_commit_landed_counts_as_done():
    class LostAnswer(Flaky):
        """The tell commits, then the connection breaks before its answer."""

        def __getattr__(self, name):
            method = getattr(self.storage, name)
            if name != "set_trial_state_values" or not self.failures:
                return method

            def call(*args, **kwargs):
                self.failures -= 1
                method(*args, **kwargs)
                raise unreachable()
            return call
    flaky = LostAnswer(optuna.storages.InMemoryStorage())
    storage, _, lines = patient(flaky)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    flaky.failures = 1
    study.tell(trial, 1.0)
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 1.0)] and len(lines) == 2


def test_the_storage_pickles_without_its_hooks_and_reopens_on_an_rdb(tmp_path):
    from esam.search.stores.optuna_outage import open_optuna_storage
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_optuna_storage(url)
    assert isinstance(storage, RetryingStorage) and isinstance(storage.storage, optuna.storages._CachedStorage)
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), 2)
    again = pickle.loads(pickle.dumps(storage))
    assert again.where == url and again.echo is not storage.echo
    assert len(optuna.load_study(study_name="s", storage=again).trials) == 2


def test_the_searcher_asks_ray_to_stop_instead_of_raising_into_its_loop(monkeypatch):
    """Past the limit, Ray's loop gets no exception: Ray's stop request, as Ctrl-C's."""
    stops = []
    old = signal.signal(signal.SIGUSR1, lambda *_: stops.append(1))
    try:
        flaky = Flaky(optuna.storages.InMemoryStorage())
        storage, _, lines = patient(flaky, limit=5.0)
        searcher = EsamSearcher(
            {"rho": optuna.distributions.FloatDistribution(0.01, 1.0)}, [("test_acc", "max"), ("speed_vs_sgd", "max")],
            "s", SamplerSpec("random"), max_trials=3).attach(storage)
        params = searcher.suggest("a")
        assert params["_number"] == 0 and stops == []
        flaky.failures = 10 ** 6
        searcher.on_trial_complete("a", {"test_acc": 90.0, "speed_vs_sgd": 0.6, "epoch": 3})
        assert stops == [1]  # the limit passed here; later calls fail at once and ask again
        assert searcher.suggest("b") is None
        searcher.on_trial_result("a", {"test_acc": 50.0, "speed_vs_sgd": 0.5, "epoch": 1})
        assert len(stops) == 2 and sum(line.startswith("warning") for line in lines) == 1
        flaky.failures = 0
        # The tell that could not be made leaves the trial RUNNING: the next run's reconciliation tells it.
        [trial] = searcher.study.get_trials()
        assert trial.state.name == "RUNNING" and trial.user_attrs[RAY_TRIAL_ATTR] == "a"
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_postgresql_connections_time_out_so_a_silent_host_cannot_outlast_the_limit(monkeypatch):
    from esam.search.stores.optuna_outage import CONNECT_TIMEOUT_S, ENGINE_KWARGS, open_rdb
    opened = {}

    class Recorded(optuna.storages.InMemoryStorage):
        def __init__(self, url, engine_kwargs):
            super().__init__()
            opened[url] = engine_kwargs
    monkeypatch.setattr(optuna.storages, "RDBStorage", Recorded)
    pg, lite = "postgresql://esam:secret@10.0.0.9:5432/optuna", "sqlite:///optuna.db"
    assert open_rdb(pg, ENGINE_KWARGS).where == "postgresql://esam:***@10.0.0.9:5432/optuna"
    open_rdb(lite, ENGINE_KWARGS)
    assert opened[pg] == {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    assert opened[lite] == {"pool_pre_ping": True} and ENGINE_KWARGS == {"pool_pre_ping": True}


def test_a_database_privilege_is_told_apart_from_a_file_permission():
    """PostgreSQL's "permission denied for table" is a refused write whose way out is a GRANT, not chmod."""
    from esam.search.stores.write_refusals import cause, refusal_line
    denied = StorageInternalError("commit")
    denied.__cause__ = exc.ProgrammingError("INSERT", {}, Exception("permission denied for table trials"))
    assert not is_outage(denied) and cause(denied) == "the database user lacks a privilege"
    assert "GRANT" in refusal_line(cause(denied), "Optuna's database") and "results_dir" not in refusal_line(
        cause(denied), "Optuna's database")
    assert cause(PermissionError(13, "Permission denied", "/r/x")) == "permission denied"  # a file's, by errno
