"""The sentence that says what a front means, and export's note on points inside the noise."""
import yaml

from esam.search.front.summary import front_summary, neighbours_within_noise

OBJ = [("test_acc", "max"), ("speed_vs_sgd", "max")]


def row(i, acc, speed, kind="trial", optimizer=None, se=None, ci=None, status="FINISHED"):
    r = {"run_id": f"run{i:02d}" + "x" * 20, "name": f"t{i}", "kind": kind, "status": status,
         "test_acc": acc, "speed_vs_sgd": speed, "rho": 0.05 * i, "beta": 0.5, "gamma": 0.6, "score": "loss_rise"}
    if optimizer:
        r["optimizer"] = optimizer
    if se is not None:
        r["test_acc_se"] = se
    if ci is not None:
        r["speed_vs_sgd_low"], r["speed_vs_sgd_high"] = speed - ci, speed + ci
    return r


SGD = row(90, 98.33, 1.0, "reference", "sgd")
SAM = row(91, 98.33, 0.51, "reference", "sam")


def test_sgd_dominates_all_and_no_esam_beats_sam():
    trials = [row(1, 98.0, 0.569), row(2, 97.22, 0.599), row(3, 96.0, 0.55)]
    text = front_summary(trials + [SAM, SGD], OBJ)
    sgd, sam = text.split(". ", 1)
    assert sgd == ("SGD (98.33%, 1.000x) dominates every ESAM trial (3 of 3): "
                   "no ESAM setting is more accurate or faster than SGD")
    assert sam == ("No ESAM setting beats SAM (98.33%, 0.510x) on both axes, and SAM dominates none: "
                   "they trade one axis for the other.")


def test_mixed_references():
    trials = [row(1, 98.61, 0.569), row(2, 97.22, 0.599), row(3, 98.0, 0.40), row(4, 90.0, 0.50)]
    text = front_summary([SGD, SAM] + trials, OBJ)
    # SGD dominates the front's 97.22 point and the two off it; two trials dominate SAM, SAM dominates one
    assert text == ("SGD (98.33%, 1.000x) dominates 3 of 4 ESAM trials (1 of the 2 on the front); "
                    "no ESAM setting beats SGD on both axes. "
                    "1 of 4 ESAM trials beat SAM (98.33%, 0.510x) on both axes; SAM dominates 2 others.")


def test_wins_inside_the_noise_are_said_to_be():
    trials = [row(1, 98.61, 0.52, se=0.6, ci=0.02), row(2, 98.5, 0.70, se=0.6, ci=0.02)]
    sam = row(91, 98.33, 0.51, "reference", "sam", se=0.65, ci=0.02)
    text = front_summary(trials + [sam], OBJ)
    assert text == "Both ESAM trials beat SAM (98.33%, 0.510x) on both axes (1 of them only within the noise)."
    assert front_summary(trials[:1] + [sam], OBJ) == ("The only ESAM trial beats SAM (98.33%, 0.510x) on both axes, "
                                                      "but only within the noise.")


def test_nothing_to_compare():
    assert front_summary([SGD, row(1, 90.0, 0.5, status="FAILED")], OBJ).startswith("No ESAM trial finished")
    assert front_summary([row(1, 90.0, 0.5)], OBJ).startswith("No reference (SGD, SAM) finished")
    assert front_summary([row(1, 90.0, 0.5), SGD], OBJ).startswith("SGD (98.33%, 1.000x) dominates the only ESAM trial")


def test_the_sentences_name_the_trials_method():
    rst = [row(1, 98.61, 0.569, optimizer="rst"), row(2, 98.5, 0.599, optimizer="rst")]
    assert front_summary(rst + [SAM], OBJ) == "Both RST trials beat SAM (98.33%, 0.510x) on both axes."
    slow = [row(1, 98.0, 0.569, optimizer="rst"), row(2, 97.0, 0.5, optimizer="rst")]
    assert front_summary([SGD] + slow, OBJ).startswith("SGD (98.33%, 1.000x) dominates every RST trial (2 of 2)")
    mixed = [rst[0], row(3, 98.7, 0.6, optimizer="looksam")]
    assert front_summary(mixed + [SAM], OBJ) == "Both trials beat SAM (98.33%, 0.510x) on both axes."
    failed = row(4, 90.0, 0.5, optimizer="looksam", status="FAILED")
    assert front_summary([SGD, failed], OBJ).startswith("No LookSAM trial finished")


def test_neighbours_within_noise():
    points = [row(1, 98.6, 0.57, se=0.6, ci=0.02), row(2, 97.2, 0.60, se=0.7, ci=0.02),
              row(3, 95.0, 0.80, se=0.5, ci=0.02), row(4, 98.5, 0.56, se=0.6, ci=0.02)]  # 4: dominated by 1
    assert neighbours_within_noise(points, 0, OBJ) == [1]  # the dominated point 4 is no front neighbour
    assert neighbours_within_noise(points, 2, OBJ) == []


def test_export_says_when_the_pick_is_inside_the_noise(tmp_path, monkeypatch):
    from esam.search.front import export
    from esam.search.records import mlflow_runs
    trials = [row(1, 98.6, 0.57, se=0.6, ci=0.02), row(2, 97.2, 0.60, se=0.7, ci=0.02),
              row(3, 95.0, 0.80, se=0.5, ci=0.02)]
    config = {"name": "qs", "train": {}, "objectives": [{"metric": m, "mode": d} for m, d in OBJ]}
    monkeypatch.setattr(mlflow_runs, "search_config_of", lambda client, parent: config)
    monkeypatch.setattr(mlflow_runs, "search_rows", lambda client, parent: trials + [SGD])
    client = type("Client", (), {"tracking_uri": "sqlite:///x.db"})()
    doc = export.export_config(client, "parent", "max-accuracy", tmp_path / "a.yaml")
    assert [t["mlflow_run_id"] for t in doc["exported"]["within_noise_of"]] == [trials[1]["run_id"]]
    note = export.noise_note(doc)
    assert note.startswith("note: the measurements cannot tell this point from 1 other front point (run run02xxxxxxx:")
    assert "97.20%, 0.600x" in note and "\n" not in note
    assert yaml.safe_load((tmp_path / "a.yaml").read_text())["exported"]["metrics"]["test_acc_se"] == 0.6
    assert export.noise_note(export.export_config(client, "parent", "max-throughput", tmp_path / "b.yaml")) is None
