import os

import numpy as np
import pandas as pd
import pytest

from data.classes import CLASSES
from utils.calibration import fitted_thresholds, reported_probs
from utils.evaluation import evaluation_sets, judge
from utils.metrics import choose_thresholds


def frame_and_predictions(n=300, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"ImageID": [f"i{i}" for i in range(n)], "PatientID": [f"p{i // 3}" for i in range(n)],
                          "Source": np.where(np.arange(n) < 200, "padchest", "openi"),
                          "view": np.where(np.arange(n) % 2, "PA", "AP"),
                          "split": np.array(["train", "val", "test"])[np.arange(n) // 3 % 3]})
    labels = rng.integers(0, 2, (n, len(CLASSES)))
    z = (labels * 2 - 1) * 0.8 + rng.normal(0, 1, labels.shape)
    probs = 1 / (1 + np.exp(-3 * z))  # informative, and three times too confident
    return frame, labels, probs


def test_sets_of_an_external_validation():
    frame, _, _ = frame_and_predictions()
    sets = evaluation_sets(frame, ["openi"])
    assert set(sets) == {"test", "external:openi"}
    assert (sets["test"]["Source"] == "padchest").all() and (sets["test"]["split"] == "test").all()
    assert len(sets["external:openi"]) == 100  # every split of the held-out source
    assert len(evaluation_sets(frame, whole=True)["test"]) == len(frame)


def test_judge_writes_the_tables(tmp_path):
    frame, labels, probs = frame_and_predictions()
    val = (frame["split"] == "val").to_numpy()
    thresholds, temperatures = fitted_thresholds(labels[val], probs[val], True, choose_thresholds)
    assert min(temperatures) > 1  # the probabilities are overconfident by construction
    sets = evaluation_sets(frame, ["openi"])
    index = {name: frame.index[frame["ImageID"].isin(rows["ImageID"])] for name, rows in sets.items()}
    results = {name: (rows, reported_probs(probs[index[name]], temperatures), labels[index[name]])
               for name, rows in sets.items()}
    table = judge(tmp_path, results, thresholds, n_boot=20)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert set(metrics["group"]) == {"all", "padchest", "view:AP", "view:PA", "external:openi",
                                     "external:openi:view:AP", "external:openi:view:PA"}
    assert len(table) == len(metrics)
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns[:5]) == ["ImageID", "PatientID", "Source", "view", "set"]
    assert len(predictions) == len(sets["test"]) + 100 and set(predictions["set"]) == {"test", "external:openi"}
    calibration = pd.read_csv(tmp_path / "calibration.csv")
    overall = calibration.set_index("class").loc["overall"]
    assert overall["ece_calibrated"] < overall["ece"] and overall["log_loss_calibrated"] < overall["log_loss"]
    # what a run folder holds, and nothing else: no temporary file, no .rows count
    assert sorted(os.listdir(tmp_path)) == ["calibration.csv", "metrics.csv", "predictions.csv", "reliability.png",
                                            "roc.png"]
    # the reported probabilities are the calibrated ones; AUROC is unchanged by the scaling
    row = metrics[(metrics["group"] == "all") & (metrics["class"] == "atelectasis")].iloc[0]
    from sklearn.metrics import roc_auc_score
    c = CLASSES.index("atelectasis")
    test_rows = index["test"]
    assert row["auroc"] == pytest.approx(roc_auc_score(labels[test_rows, c], probs[test_rows, c]), abs=1e-6)
    # ... and every AUROC of metrics.csv is the one a reader recomputes from predictions.csv
    tested = predictions[predictions["set"] == "test"]
    for _, row in metrics[(metrics["group"] == "all") & metrics["auroc"].notna() & metrics["class"].isin(CLASSES)
                          ].iterrows():
        y, p = tested[f"true_{row['class']}"], tested[f"prob_{row['class']}"]
        assert row["auroc"] == pytest.approx(roc_auc_score(y[y >= 0], p[y >= 0]), abs=1e-6), row["class"]
