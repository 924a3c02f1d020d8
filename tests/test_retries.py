"""Which failed trials the next run trains again (esam/search/records/retries.py), on a real Optuna study."""
import optuna
import pytest

from esam.search.records import retries
from esam.search.tune.optuna_searcher import EsamSearcher
from esam.search.tune.samplers import SamplerSpec

NAN = "FloatingPointError: training loss is nan at epoch 2"
LOST = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."


@pytest.mark.parametrize("line,own", [(NAN, True), ("FloatingPointError", True), (LOST, False),
                                      ("OSError: [Errno 28] No space left on device", False),
                                      ("FileNotFoundError: data/digits missing", False), ("", False), (None, False)])
def test_only_a_diverged_loss_is_the_settings_own_failure(line, own):
    assert retries.own_failure(line) is own


def _study() -> optuna.Study:
    """#0 finished, #1 diverged (nan loss), #2 lost its worker."""
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for state in ("COMPLETE", "FAIL", "FAIL"):
        trial = study.ask({"rho": optuna.distributions.FloatDistribution(0.01, 0.5)})
        study.tell(trial, [90.0, 0.6] if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    return study


ERRORS = {1: NAN, 2: LOST}


def test_a_failure_from_outside_is_retried_once_with_its_own_parameters():
    study = _study()
    failed = retries.to_retry(study.get_trials(), ERRORS, limit=1)
    assert [t.number for t in failed] == [2]
    assert retries.enqueue_retries(study, failed) == 1
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": 2, "retries": 1}
    # Enqueued once: a second start (say after a killed driver) finds #2 retried already.
    assert retries.to_retry(study.get_trials(), ERRORS, limit=1) == []
    # The retry takes #2's place against `trials`; the diverged #1 still counts.
    assert [t.number for t in retries.counted(study.get_trials())] == [0, 1, 3]
    trial = study.ask()  # Optuna gives out the enqueued retry first, with #2's value
    assert trial.number == 3 and trial.suggest_float("rho", 0.01, 0.5) == study.trials[2].params["rho"]


def test_a_retry_that_fails_again_is_retried_only_under_a_higher_limit():
    study = _study()
    retries.enqueue_retries(study, retries.to_retry(study.get_trials(), ERRORS, limit=1))
    trial = study.ask()
    trial.suggest_float("rho", 0.01, 0.5)
    study.tell(trial, None, state=optuna.trial.TrialState.FAIL)
    errors = {**ERRORS, 3: LOST}
    assert retries.to_retry(study.get_trials(), errors, limit=1) == []
    again = retries.to_retry(study.get_trials(), errors, limit=2)
    assert [t.number for t in again] == [3]
    retries.enqueue_retries(study, again)
    assert study.trials[-1].user_attrs == {"retry_of": 3, "retries": 2}
    assert retries.tally(study.get_trials()) == {"finished": 1, "stopped": 0, "failed": 1}


def test_limit_zero_retries_nothing_and_an_unknown_cause_is_from_outside():
    study = _study()
    assert retries.to_retry(study.get_trials(), ERRORS, limit=0) == []
    assert [t.number for t in retries.to_retry(study.get_trials(), {}, limit=1)] == [1, 2]


def test_the_searcher_gives_out_the_retry_within_the_budget():
    """`trials: 3` with #2 to retry: the searcher proposes exactly one more trial, the retry."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    for state in ("COMPLETE", "FAIL", "FAIL"):
        trial = study.ask({"rho": optuna.distributions.FloatDistribution(0.01, 0.5)})
        study.tell(trial, [90.0, 0.6] if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    searcher = EsamSearcher({"rho": optuna.distributions.FloatDistribution(0.01, 0.5)},
                            [("test_acc", "max"), ("speed_vs_sgd", "max")], "s", SamplerSpec("random", 0), max_trials=3)
    searcher.attach(storage)
    assert searcher.suggest("a") == searcher.FINISHED  # nothing to retry: the budget is spent
    retries.enqueue_retries(searcher.study, retries.to_retry(searcher.study.get_trials(), ERRORS, limit=1))
    config = searcher.suggest("b")
    assert config["_number"] == 3 and config["rho"] == study.trials[2].params["rho"]
    assert searcher.suggest("c") == searcher.FINISHED
