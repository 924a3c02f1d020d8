"""A search goes on from its records (search.json, the Optuna study, MLflow, weights-only checkpoints).

Ray's saved experiments are pickles, and unpickling runs code: a stopped search whose Ray files
were replaced must not run what they hold. And a search's identity is where it is: a copy of a
stopped search continues apart from the original, whose stores stay byte-identical.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
import signal
from pathlib import Path

import pytest
from faults_helpers import Stores, assert_agree, run, start, wait_for, write_config

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 3, 3


def _finished_trials(root: Path, name: str) -> list:
    s = Stores.read(root, name)
    return [r for r in s.runs if r.data.tags.get("esam.kind") == "trial" and r.info.status == "FINISHED"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A search stopped by Ctrl-C after its first trial finished (copied by each test)."""
    root = tmp_path_factory.mktemp("stopped")
    config = write_config(root, "st", trials=TRIALS, epochs=EPOCHS, references=("sgd",), concurrency=1)
    proc = start(config, root)
    wait_for(lambda: _finished_trials(root, "st"), proc, what="a finished trial")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    return root


class _Payload:
    """What an attacker with write access to results_dir would leave: unpickling it creates a file."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_of_the_old_paths() -> bytes:
    """A searcher pickled before esam/search was split into wings: its class at the path it had then
    (esam.search.optuna_searcher.EsamSearcher), which no longer imports."""
    import sys
    import types
    old = types.ModuleType("esam.search.optuna_searcher")
    old.EsamSearcher = type("EsamSearcher", (), {"__module__": old.__name__})
    sys.modules[old.__name__] = old
    try:
        return pickle.dumps(old.EsamSearcher())
    finally:
        del sys.modules[old.__name__]


@pytest.mark.parametrize("content", ["a pickle that runs code", "empty", "a pickle of the old module paths"])
def test_code_in_rays_saved_files_never_runs(stopped, tmp_path, content):
    """Ray's files replaced (by code, emptied, or as an esam from before the search package's move
    pickled them): nothing runs, one parent run goes on, no series point is written twice, and the
    search ends with its trials. A search started before a class moved continues: Ray's pickles are
    never read."""
    root = tmp_path / "poisoned"
    shutil.copytree(stopped, root)
    marker = tmp_path / "PWNED"
    poisoned = []
    for pattern in ("tuner.pkl", "searcher-state-*.pkl", "search_gen_state-*.json", "experiment_state-*.json"):
        for path in (root / "esam_results" / "st").rglob(pattern):
            path.write_bytes({"empty": b"", "a pickle of the old module paths": _pickle_of_the_old_paths()}.get(
                content, pickle.dumps(_Payload(marker))))
            poisoned.append(path.name)
    assert {"tuner.pkl"} < set(poisoned) and any(n.startswith("searcher-state") for n in poisoned)
    assert any(n.startswith("search_gen_state") for n in poisoned)
    rc, out = run(root / "st.yaml", root)
    assert rc == 0 and "Traceback" not in out, out
    assert not marker.exists(), "a pickle in results_dir ran"
    import optuna
    study = optuna.load_study(study_name="st", storage=f"sqlite:///{root / 'esam_results/st/optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * TRIALS
    from mlflow.tracking import MlflowClient  # (Stores.read would read Ray's damaged files)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parents = client.search_runs([client.get_experiment_by_name("esam").experiment_id], "tags.`esam.kind` = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "front_hypervolume")]
    assert sorted(steps) == list(range(1, TRIALS + 1)), steps


def _digests(root: Path) -> dict[str, str]:
    files = [root / "mlflow.db", *sorted((root / "esam_results").rglob("*.db")), *sorted((root / "esam_results").rglob("*.json"))]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def test_a_copied_search_continues_apart_from_the_original(stopped, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    shutil.copytree(stopped, original)
    shutil.copytree(stopped, copy)
    before = _digests(original)
    rc, out = run(copy / "st.yaml", copy)
    assert rc == 0, out
    assert _digests(original) == before, "continuing the copy wrote into the original's stores"
    s = Stores.read(copy, "st")
    assert_agree(s, EPOCHS, parent_status="FINISHED")
    assert sorted(t.state.name for t in s.optuna) == ["COMPLETE"] * TRIALS
    assert len({tuple(sorted(t.params.items())) for t in s.optuna}) == TRIALS
