"""A source's unknown classes (blank in combined.csv: NIH never annotates nine of ours) count in no loss and no metric."""
import numpy as np
import pandas as pd
import pytest

from data.classes import CLASSES
from data.labels.nih import UNKNOWN


@pytest.mark.slow
def test_a_run_leaves_unknown_classes_out_of_every_metric(tmp_path, make_dataset, traintest, metrics):
    csv = make_dataset(tmp_path / "data")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    nih = np.arange(len(frame)) % 2 == 0
    frame.loc[nih, "Source"] = "nih"
    frame.loc[nih, "catheter"] = "1"  # were these read as labels, catheter would be learnable and counted
    frame.loc[nih, UNKNOWN] = ""
    frame.to_csv(csv, index=False)
    run = tmp_path / "run"
    assert traintest("--csv", csv, "--output-dir", run, "--model", "unified-alexnet", "--image-size", 64, "--epochs", 1,
                     "--batch-size", 8, "--workers", 0, "--bootstrap", 10, "--max-heatmaps", 0, "--loss", "wcel") == 0
    test = frame[frame["split"] == "test"]
    table = metrics(run)
    for cls in UNKNOWN:  # 'all': only the other source's images are counted
        known = test.loc[test["Source"] != "nih", cls].astype(int)
        assert table.loc[cls, "positives"] == (known == 1).sum() and table.loc[cls, "negatives"] == (known == 0).sum()
    by_source = metrics(run, "nih")
    assert not set(UNKNOWN) & set(by_source.index)  # no row for a class the source never annotates
    assert set(by_source.index) == {c for c in CLASSES if c not in UNKNOWN} | {"macro", "micro"}
    predictions = pd.read_csv(run / "predictions.csv")
    assert (predictions.loc[predictions["Source"] == "nih", [f"true_{c}" for c in UNKNOWN]] == -1).all().all()
