"""A search killed (SIGKILL) at several points of its start is continued by the same command.

Each run is killed a little later than the one before: while the stores open, while Ray starts,
while the first trials are created. The last run goes to the end; then every store holds each
trial once, with its own parameters, and nothing is left RUNNING, WAITING or cut.
"""
import time

import pytest

from faults_helpers import Stores, assert_agree, kill_hard, run, start, write_config

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 3, 1


def _kill_after(config, root, marker: str, delay: float) -> str:
    """Start the search, SIGKILL it `delay` seconds after it printed `marker`; what it printed."""
    proc = start(config, root)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
    time.sleep(delay)
    kill_hard(proc)
    return "".join(lines)


@pytest.mark.parametrize("delay", [0.5, 6.0])
def test_a_search_killed_while_it_starts_is_continued_by_the_same_command(tmp_path, delay):
    config = write_config(tmp_path, "ks", trials=TRIALS, epochs=EPOCHS, references=("sgd",))
    _kill_after(config, tmp_path, "search ks:", delay)
    _kill_after(config, tmp_path, "search ks:", delay + 1.0)  # a second kill, of the continued run
    rc, out = run(config, tmp_path)
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    s = Stores.read(tmp_path, "ks")
    assert_agree(s, EPOCHS, parent_status="FINISHED")
    assert sorted(t.state.name for t in s.optuna) == ["COMPLETE"] * TRIALS, [t.state.name for t in s.optuna]
    assert sorted(t.number for t in s.optuna) == list(range(TRIALS))
    assert all({"rho", "beta", "gamma"} <= set(t.params) for t in s.optuna)
    assert len({tuple(sorted(t.params.items())) for t in s.optuna}) == TRIALS  # no setting trained twice
    assert s.statuses("trial") == ["FINISHED"] * TRIALS and s.statuses("reference") == ["FINISHED"]
    tuner = tmp_path / "esam_results" / "ks" / "search" / "tuner.pkl"
    assert tuner.stat().st_size > 0
