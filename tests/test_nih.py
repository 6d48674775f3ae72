"""NIH ChestX-ray14 labels from the real Data_Entry_2017_v2020.csv.gz shipped with torchxrayvision."""
import gzip
import math
import os

import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA as DATA
from data.classes import CLASSES
from data.errors import LabelFileError
from data.labels.nih import UNKNOWN, finding_class, nih_labels

REAL_CSV = os.path.join(DATA, "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def real():
    return nih_labels(REAL_CSV)


def independent_sets():
    """Image Index -> set of finding names, read with the csv module alone."""
    import csv
    with gzip.open(REAL_CSV, "rt", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    i, j = header.index("Image Index"), header.index("Finding Labels")
    return {r[i]: set(r[j].split("|")) for r in rows[1:]}


@pytest.mark.slow
def test_real_counts_match_an_independent_count(real):
    frame, stats = real
    sets = independent_sets()
    assert len(frame) == stats["rows"] == len(sets) == 112_120
    assert stats["patients"] == 30_805 and stats["views"] == {"PA": 67_310, "AP": 44_810}
    count = lambda *names: sum(1 for s in sets.values() if s & set(names))
    assert count("Infiltration") == 19_894 and count("Consolidation") == 4_667
    expected = {
        "infiltrates": count("Infiltration", "Consolidation"),  # overlaps once
        "normal": 60_361, "pleural effusion": count("Effusion"), "atelectasis": count("Atelectasis"),
        "cardiomegaly": count("Cardiomegaly"), "mass": count("Mass"), "nodule": count("Nodule"),
        "pneumonia": count("Pneumonia"), "pneumothorax": count("Pneumothorax"), "pulmonary edema": count("Edema"),
        "emphysema": count("Emphysema"), "pulmonary fibrosis": count("Fibrosis"),
        "other findings": count("Pleural_Thickening", "Hernia"),
    }
    assert expected["infiltrates"] < 19_894 + 4_667
    got = {c: int((frame[c] == 1).sum()) for c in expected}
    assert got == expected
    for c in expected:  # annotated classes: every other image is a negative
        assert int((frame[c] == 0).sum()) == len(frame) - expected[c]


@pytest.mark.slow
def test_unannotated_classes_are_unknown_not_negative(real):
    frame, _ = real
    assert UNKNOWN == ["aortic elongation", "catheter", "copd signs", "electrical device", "heart insufficiency",
                       "nsg tube", "surgery", "thoracic cage deformation", "tuberculosis"]
    assert frame[UNKNOWN].isna().all().all()
    assert not frame[[c for c in CLASSES if c not in UNKNOWN]].isna().any().any()
    row = frame.set_index("ImageID").loc["00000001_001.png"]
    assert row["cardiomegaly"] == 1 and row["emphysema"] == 1 and row["normal"] == 0 and math.isnan(row["catheter"])
    assert row["PatientID"] == "nih-1" and row["view"] == "PA" and row["Source"] == "nih"


def test_box_list_spellings():
    assert finding_class("Infiltrate") == "infiltrates" and finding_class("Effusion") == "pleural effusion"
    assert finding_class("pleural_thickening") == "other findings" and finding_class("Fracture") is None


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("Finding Labels", "Findings", 1), "missing columns ['Finding Labels']"),
    (lambda t: t.replace("Cardiomegaly|Emphysema", "Cardiomegaly|Emphysem", 1), "row 3: Finding Labels has unknown "
                                                                                 "finding 'Emphysem'"),
])
def test_bad_csv_is_named(tmp_path, change, message):
    with gzip.open(REAL_CSV, "rt") as f:
        head = "".join(next(f) for _ in range(5))
    path = tmp_path / "Data_Entry.csv"
    path.write_text(change(head))
    with pytest.raises(LabelFileError, match=str(path).replace("\\", "\\\\") + ".*" + message.replace("[", r"\[")
                       .replace("]", r"\]").replace("|", r"\|")):
        nih_labels(str(path))


# ---- parselabelfile.py --nih-csv: the script, on the real file ----

@pytest.mark.slow
def test_parselabelfile_writes_nih_labels_through_the_rule(tmp_path, capsys):
    import parselabelfile
    from data.files import rows_path
    from data.labels.rules import LABEL_COLUMNS
    out = tmp_path / "labels"
    assert parselabelfile.main(["--nih-csv", REAL_CSV, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    path = out / "nih_labels.csv"
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(text.columns) == LABEL_COLUMNS and len(text) == 112_120
    assert open(rows_path(str(path))).read().startswith("112120 ")
    assert (text[UNKNOWN] == "").all().all()  # unknown is a blank cell, never 0 or -1
    known = [c for c in CLASSES if c not in UNKNOWN]
    assert text[known].isin(["0", "1"]).all().all()
    sets = independent_sets()
    named = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
             "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"}
    # the rule: 'other findings' (Pleural_Thickening, Hernia) only where no named finding is set
    other = sum(1 for s in sets.values() if s & {"Pleural_Thickening", "Hernia"} and not s & named)
    got = (text[known] == "1").sum()
    assert got["other findings"] == other < sum(1 for s in sets.values() if s & {"Pleural_Thickening", "Hernia"})
    assert got["infiltrates"] == sum(1 for s in sets.values() if s & {"Infiltration", "Consolidation"})
    assert got["normal"] == 60_361
    assert "NIH: 112120 rows, 112120 images of 30805 patients, views {'PA': 67310, 'AP': 44810}; 9 classes NIH " \
           "never annotates are blank" in printed
    assert f"  infiltrates                  {got['infiltrates']:7d}" in printed
    assert "  catheter                     unknown  (never annotated" in printed
    assert f"done: 112120 NIH images of 30805 patients -> {path}" in printed


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("Patient ID", "Patient", 1), "missing columns ['Patient ID'] (row 1, the header)"),
    (lambda t: t.replace("Cardiomegaly|Emphysema", "Cardiomegaly|Emphysem", 1), "row 3: Finding Labels has "
                                                                                 "unknown finding 'Emphysem'"),
])
def test_parselabelfile_bad_nih_csv_is_one_line(tmp_path, capsys, change, message):
    import parselabelfile
    with gzip.open(REAL_CSV, "rt") as f:
        head = "".join(next(f) for _ in range(5))
    path = tmp_path / "Data_Entry.csv"
    path.write_text(change(head))
    assert parselabelfile.main(["--nih-csv", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"parselabelfile.py: error: {path}") and message in err, err
    assert not (tmp_path / "out" / "nih_labels.csv").exists()
    assert parselabelfile.main(["--nih-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "out")]) == 2
    assert f"--nih-csv {tmp_path / 'none.csv'}: no such file" in capsys.readouterr().err


# ---- Google's 2019 relabelling ----

GOOGLE_CSV = os.path.join(DATA, "google2019_nih-chest-xray-labels.csv.gz")


def test_google_labels_match_the_real_file():
    from data.labels.nih import google_labels
    frame, stats = google_labels(GOOGLE_CSV)
    raw = pd.read_csv(GOOGLE_CSV, dtype=str)
    assert len(frame) == stats["rows"] == 4_376 and stats["sets"] == {"val": 2_414, "test": 1_962}
    assert list(frame.columns) == ["ImageID", "google_fracture", "google_pneumothorax", "google_airspace_opacity",
                                   "google_nodule_or_mass"]
    assert frame["google_pneumothorax"].sum() == (raw["Pneumothorax"] == "YES").sum() == 238
    assert frame["google_nodule_or_mass"].sum() == 605 and frame["google_fracture"].sum() == 186
    assert frame["google_airspace_opacity"].sum() == 2_166


def test_google_labels_bad_value_is_named(tmp_path):
    from data.labels.nih import google_labels
    raw = pd.read_csv(GOOGLE_CSV, dtype=str, nrows=4)
    raw.loc[2, "Fracture"] = "MAYBE"
    raw.to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(LabelFileError, match=r"g\.csv, row 4: Fracture is 'MAYBE', expected YES or NO"):
        google_labels(str(tmp_path / "g.csv"))
