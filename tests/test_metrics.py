import math
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from utils.dist import gather_rows
from utils.metrics import choose_thresholds, f1_optimal_threshold, metrics_table, plot_roc, write_metrics


def predictions(n=200, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, classes)) < 0.3).astype(float)
    p = np.clip(0.35 * y + rng.random((n, classes)) * 0.65, 0, 1)
    return y, p


def test_table_per_class_macro_micro_and_na_for_a_class_without_positives(tmp_path):
    y, p = predictions()
    y[:, 2] = 0  # no positives in this split
    y[5, 0] = -1  # uncertain: left out
    thresholds = [0.5, 0.4, 0.5]
    table = metrics_table(y, p, ["a", "b", "c"], thresholds, n_boot=200, seed=0)
    assert list(table["class"]) == ["a", "b", "c", "macro", "micro"]
    keep = y[:, 0] >= 0
    a = table.iloc[0]
    assert a.positives == int(y[keep, 0].sum()) and a.negatives == int(keep.sum() - y[keep, 0].sum())
    assert math.isclose(a.auroc, roc_auc_score(y[keep, 0], p[keep, 0]))
    assert a.auroc_low < a.auroc < a.auroc_high
    assert math.isclose(a.f1, f1_score(y[keep, 0], p[keep, 0] >= 0.5))
    c = table.iloc[2]
    assert c.positives == 0 and math.isnan(c.auroc) and math.isnan(c.f1) and c.specificity > 0
    assert math.isclose(table.iloc[3].auroc, np.mean([a.auroc, table.iloc[1].auroc]))
    path = tmp_path / "metrics.csv"
    write_metrics(table, path)
    text = path.read_text().splitlines()
    assert text[3].startswith("c,0,200,NA,NA,NA,NA")
    back = pd.read_csv(path)
    assert back["auroc"].isna().sum() == 1
    plot_roc(y, p, ["a", "b", "c"], tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 10000


class Unwritable:
    """A value whose text cannot be made: a write of a table holding it stops part way, as a killed run does."""

    def __str__(self):
        raise RuntimeError("the run was stopped while writing")


def test_a_write_that_stops_part_way_leaves_the_previous_metrics_csv(tmp_path):
    y, p = predictions()
    table = metrics_table(y, p, ["a", "b", "c"], [0.5] * 3, n_boot=0)
    path = tmp_path / "metrics.csv"
    write_metrics(table, path)
    before = path.read_bytes()
    stopped = table.astype({"auroc": object})
    stopped.at[len(table) - 1, "auroc"] = Unwritable()  # the last row: the rows before it would be written in place
    with pytest.raises(RuntimeError):
        write_metrics(stopped, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]  # no temporary file left, and no .rows count


def test_threshold_maximizes_f1():
    y, p = predictions(seed=3)
    t = f1_optimal_threshold(y[:, 0], p[:, 0])
    best = f1_score(y[:, 0], p[:, 0] >= t)
    for other in np.linspace(0.01, 0.99, 99):
        assert f1_score(y[:, 0], p[:, 0] >= other) <= best + 1e-12
    assert choose_thresholds(np.zeros((4, 1)), np.random.rand(4, 1)) == [0.5]


def test_gather_rows_keeps_each_index_once_in_order():
    # A padded DistributedSampler shard repeats index 0 at the end.
    idx, rows = gather_rows([3, 1, 0, 2, 0], {"probs": np.arange(10).reshape(5, 2), "sizes": np.arange(5)})
    assert idx.tolist() == [0, 1, 2, 3]
    assert rows["probs"].tolist() == [[4, 5], [2, 3], [6, 7], [0, 1]] and rows["sizes"].tolist() == [2, 1, 3, 0]


def grouped_example(n=240, seed=0):
    from data.classes import CLASSES
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, len(CLASSES)))
    p = np.clip(y * 0.3 + rng.random(y.shape) * 0.7, 0, 1)
    frame = pd.DataFrame({"ImageID": [f"i{i}" for i in range(n)], "PatientID": [f"p{i // 2}" for i in range(n)],
                          "Source": np.where(np.arange(n) % 3 == 0, "openi", "padchest"),
                          "view": np.where(np.arange(n) % 4 == 0, "AP", "PA"),
                          "MethodLabel": np.where(np.arange(n) % 5 == 0, "Physician", "RNN_model")})
    y[frame["Source"] == "openi", CLASSES.index("catheter")] = -1  # a class this source never annotates
    return frame, y, p


def test_group_numbers_equal_those_of_the_subset():
    from data.classes import CLASSES, FINDINGS
    from utils.metrics import grouped_metrics
    frame, y, p = grouped_example()
    thresholds = [0.5] * len(CLASSES)
    table = grouped_metrics(frame, y, p, thresholds, n_boot=50, seed=3)
    assert set(table["group"]) == {"all", "openi", "padchest", "view:AP", "view:PA", "padchest-physician"}
    for group, mask in [("openi", frame["Source"] == "openi"), ("view:AP", frame["view"] == "AP"),
                        ("padchest-physician", (frame["Source"] == "padchest") & (frame["MethodLabel"] == "Physician"))]:
        mask = mask.to_numpy()
        direct = metrics_table(y[mask], p[mask], CLASSES, thresholds, n_boot=50, seed=3,
                               patients=frame["PatientID"].to_numpy()[mask])
        got = table[table["group"] == group].drop(columns=["group", "images"]).reset_index(drop=True)
        if group == "openi":
            assert "catheter" not in set(got["class"])  # never annotated there: no row
            direct = direct[direct["class"] != "catheter"].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, direct)
        assert (table[table["group"] == group]["images"] == mask.sum()).all()
    all_rows = table[table["group"] == "all"].set_index("class")
    assert all_rows.loc["macro", "auroc"] == pytest.approx(all_rows.loc[FINDINGS, "auroc"].mean())
    assert all_rows.loc["macro", "auroc_low"] < all_rows.loc["macro", "auroc"] < all_rows.loc["macro", "auroc_high"]
    assert not math.isnan(all_rows.loc["normal", "auroc"])  # reported, outside the mean


def test_summary_line_gives_the_headline_and_sources():
    from data.classes import CLASSES
    from utils.metrics import grouped_metrics, summary_line
    frame, y, p = grouped_example()
    line = summary_line(grouped_metrics(frame, y, p, [0.5] * len(CLASSES), n_boot=20))
    assert line.startswith("test macro AUROC 0.") and "(95% CI 0." in line and "over 20 findings" in line
    assert "by source: openi 0." in line and ", padchest 0." in line and "padchest-physician 0." in line
    assert "outside the mean: normal 0." in line
