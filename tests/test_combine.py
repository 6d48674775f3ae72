"""Step 3: join with the manifest and a leak-free, stratified patient-level split."""

import importlib.util
import os

import numpy as np
import pandas as pd
import pytest
from skmultilearn.model_selection import IterativeStratification

import combinelabels
from data.classes import CLASSES
from data.labels.combine import OUT_COLUMNS, FastBookkeeping, RarestFirstStratification, combine, patient_split
from data.labels.openi import openi_labels
from data.errors import LabelFileError
from data.labels.padchest import CSV_NAME, padchest_labels

TXRV = os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin), "data")


def label_frame(source, rows):
    """rows: (ImageID, PatientID, {class: value})"""
    frame = pd.DataFrame([{"ImageID": i, "PatientID": p, "StudyID": p + "s", "Projection": "PA", "Source": source,
                           **{c: values.get(c, 0) for c in CLASSES}} for i, p, values in rows])
    return frame


def manifest_frame(ids, status=None):
    return pd.DataFrame({"ImageID": ids, "path": [f"images/{i.removesuffix('.png')}.png" for i in ids],
                         "archive": "0.zip", "member": ids, "width": [100 + k for k in range(len(ids))],
                         "height": 200, "bits": 16, "photometric": "MONOCHROME2",
                         "status": status or ["ok"] * len(ids)})


@pytest.fixture
def small(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    rows = [(f"p{k}_{j}.png", f"p{k}", {"cardiomegaly": 1} if k % 3 == 0 else {"normal": 1})
            for k in range(40) for j in range(k % 3 + 1)]
    rows.append(("u.png", "pu", {"pleural effusion": -1, "atelectasis": 1}))
    rows.append(("gone.png", "px", {"normal": 1}))
    label_frame("padchest", rows).to_csv(labels / "padchest_labels.csv", index=False)
    label_frame("openi", [("CXR5_IM-1", "CXR5", {"nodule": 1}), ("CXR5_IM-2", "CXR5", {"nodule": 1})]).to_csv(
        labels / "openi_labels.csv", index=False)
    ids = [r[0] for r in rows if r[0] != "gone.png"] + ["CXR5_IM-1", "CXR5_IM-2", "unlabeled.png", "bad.png"]
    work = tmp_path / "work"
    work.mkdir()
    manifest_frame(ids, ["ok"] * (len(ids) - 1) + ["error"]).to_csv(work / "manifest.csv", index=False)
    return labels, work / "manifest.csv"


def test_join_layout_paths_and_missing(small):
    labels, manifest = small
    frame, stats = combine(str(labels), str(manifest))
    assert list(frame.columns) == OUT_COLUMNS
    assert stats["missing_images"] == {"padchest": 1} and len(frame) == stats["images"] == 82
    assert set(frame["ImageID"]) >= {"CXR5_IM-1", "u.png"} and "unlabeled.png" not in set(frame["ImageID"])
    row = frame.set_index("ImageID").loc["p1_1.png"]
    assert row["path"] == os.path.join(os.path.dirname(os.path.abspath(manifest)), "images", "p1_1.png")
    assert os.path.isabs(row["path"]) and row["height"] == 200
    assert frame.set_index("ImageID").loc["p0_0.png", "width"] == 100
    assert frame.groupby(["Source", "PatientID"])["split"].nunique().max() == 1
    assert set(frame["split"]) == {"train", "val", "test"}
    assert combine(str(labels), str(manifest))[0]["split"].equals(frame["split"])  # same seed, same split
    other_seed, _ = combine(str(labels), str(manifest), seed=2)
    assert not other_seed["split"].equals(frame["split"])
    assert other_seed.groupby(["Source", "PatientID"])["split"].nunique().max() == 1
    no_test, _ = combine(str(labels), str(manifest), val_frac=0.2, test_frac=0)
    assert set(no_test["split"]) == {"train", "val"}
    all_train, _ = combine(str(labels), str(manifest), val_frac=0, test_frac=0)
    assert set(all_train["split"]) == {"train"}


def test_uncertain_policies(small):
    labels, manifest = small
    values = {policy: combine(str(labels), str(manifest), uncertain=policy)[0].set_index("ImageID").loc["u.png"]
              for policy in ("zeros", "ones", "ignore")}
    assert [values[p]["pleural effusion"] for p in ("zeros", "ones", "ignore")] == [0, 1, -1]
    assert all(values[p]["atelectasis"] == 1 for p in values)


def folds(cls, y):
    np.random.seed(3)
    splitter = cls(n_splits=3, order=1, sample_distribution_per_fold=[0.8, 0.1, 0.1])
    return [test.tolist() for _, test in splitter.split(np.zeros((len(y), 1)), y)]


def test_fast_bookkeeping_gives_scikit_multilearns_folds():
    y = (np.random.RandomState(0).rand(2000, 12) < 0.08).astype(int)
    assert folds(FastBookkeeping, y) == folds(IterativeStratification, y)


def test_rarest_first_balances_every_label():
    rng = np.random.RandomState(0)
    y = (rng.rand(5000, 6) < [0.5, 0.3, 0.1, 0.04, 0.02, 0.01]).astype(int)
    for cls, tolerance in ((RarestFirstStratification, 2), (IterativeStratification, None)):
        parts = folds(cls, y)
        assert sorted(sum(parts, [])) == list(range(len(y)))  # every row in exactly one fold
        if tolerance is not None:
            for k, share in enumerate([0.8, 0.1, 0.1]):
                assert np.all(np.abs(y[parts[k]].sum(0) - share * y.sum(0)) <= tolerance + 0.01 * y.sum(0))


def test_full_size_split_is_patient_disjoint_and_stratified():
    padchest, _ = padchest_labels(os.path.join(TXRV, CSV_NAME + ".gz"))
    openi, _, _ = openi_labels(os.path.join(TXRV, "NLMCXR_reports.tgz"))
    frame = pd.concat([padchest, openi], ignore_index=True)
    frame["split"] = patient_split(frame)
    per_patient = frame.groupby(["Source", "PatientID"])["split"]
    assert per_patient.nunique().max() == 1  # no patient in two splits
    share = per_patient.first().value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.01 and abs(share["val"] - 0.1) < 0.01 and abs(share["test"] - 0.1) < 0.01
    for source, part in frame.groupby("Source"):
        prevalence = (part[CLASSES] == 1).groupby(part["split"]).mean()
        for c in CLASSES:
            if (part[c] == 1).sum() >= 200:
                train = prevalence.at["train", c]
                assert abs(prevalence.at["val", c] - train) <= 0.15 * train + 0.002, (source, c)
                assert abs(prevalence.at["test", c] - train) <= 0.15 * train + 0.002, (source, c)


def test_cli_and_bad_input(small, tmp_path, capsys):
    labels, manifest = small
    out = tmp_path / "combined.csv"
    assert combinelabels.main(["--labels", str(labels), "--manifest", str(manifest), "--out", str(out),
                               "--seed", "2"]) == 0
    written = pd.read_csv(out)
    assert list(written.columns) == OUT_COLUMNS and len(written) == 82
    printed = capsys.readouterr().out
    assert "padchest train" in printed and "done: 82 images of 42 patients" in printed

    pd.DataFrame({"ImageID": ["a"], "width": [1]}).to_csv(tmp_path / "m.csv", index=False)
    assert combinelabels.main(["--labels", str(labels), "--manifest", str(tmp_path / "m.csv"), "--out", str(out)]) == 2
    assert "m.csv: missing columns ['path', 'height']" in capsys.readouterr().err

    bad = pd.read_csv(labels / "openi_labels.csv")
    bad.loc[1, "nodule"] = 7
    bad.to_csv(labels / "openi_labels.csv", index=False)
    with pytest.raises(LabelFileError, match=r"openi_labels\.csv, row 3: nodule is '7'"):
        combine(str(labels), str(manifest))
