import numpy as np
import pandas as pd
import pytest

from data.classes import CLASSES, FINDINGS
from utils import compare
from utils.stats import delong_test


def write_run(folder, image_ids, patients, labels, probs):
    folder.mkdir()
    frame = pd.DataFrame({"ImageID": image_ids, "PatientID": patients})
    for c, name in enumerate(CLASSES):
        frame[f"true_{name}"] = labels[:, c]
    for c, name in enumerate(CLASSES):
        frame[f"prob_{name}"] = probs[:, c]
    frame.to_csv(folder / "predictions.csv", index=False)
    return folder


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 2, (n, len(CLASSES)))
    labels[:20, 3] = -1
    good = labels + rng.normal(0, 0.6, labels.shape)
    worse = labels + rng.normal(0, 1.5, labels.shape)
    ids = [f"img{i}" for i in range(n)]
    patients = [f"p{i // 3}" for i in range(n)]
    a = write_run(tmp_path / "a", ids, patients, labels, worse)
    order = rng.permutation(n)  # B lists the images in another order
    b = write_run(tmp_path / "b", [ids[i] for i in order], [patients[i] for i in order], labels[order], good[order])
    return a, b, labels, worse, good


def test_compare_two_runs(two_runs, capsys):
    a, b, labels, worse, good = two_runs
    assert compare.main([str(a), str(b), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "macro AUROC over 20 findings" in out
    table = pd.read_csv(b / "compare" / "a" / "compare.csv")
    assert list(table["class"]) == [*CLASSES, "macro"]
    c = CLASSES.index("catheter")
    keep = labels[:, c] >= 0
    auc_a, auc_b, p = delong_test(labels[keep, c], worse[keep, c], good[keep, c])
    row = table.set_index("class").loc["catheter"]
    assert row["auroc_a"] == pytest.approx(auc_a) and row["auroc_b"] == pytest.approx(auc_b)
    assert row["delong_p"] == pytest.approx(p, rel=1e-5) and row["negatives"] + row["positives"] == keep.sum()
    macro = table.set_index("class").loc["macro"]
    assert macro["auroc_b"] == pytest.approx(table.set_index("class").loc[FINDINGS, "auroc_b"].mean())
    assert 0 < macro["difference_low"] < macro["difference"] < macro["difference_high"]
    assert (table["resampled"] == "patients").all()


def test_runs_on_different_images_are_refused(two_runs, tmp_path, capsys):
    a, b, labels, worse, good = two_runs
    frame = pd.read_csv(b / "predictions.csv").iloc[1:]
    (tmp_path / "c").mkdir()
    frame.to_csv(tmp_path / "c" / "predictions.csv", index=False)
    assert compare.main([str(a), str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "test images differ: 1 only in" in err and err.count("\n") == 1


def test_without_patient_ids_intervals_resample_images_with_a_warning(two_runs, capsys):
    a, b, *_ = two_runs
    for run in (a, b):
        pd.read_csv(run / "predictions.csv").drop(columns="PatientID").to_csv(run / "predictions.csv", index=False)
    assert compare.main([str(a), str(b), "--bootstrap", "50", "--out", str(a / "cmp")]) == 0
    assert "warning: resampling images" in capsys.readouterr().err
    assert (a / "cmp" / "compare.csv").is_file()


def test_missing_run_is_one_line(tmp_path, capsys):
    assert compare.main([str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "no predictions.csv" in capsys.readouterr().err
