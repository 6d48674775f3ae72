"""NIH ChestX-ray14 labels from the real Data_Entry_2017_v2020.csv.gz shipped with torchxrayvision."""
import gzip
import importlib.util
import math
import os

import numpy as np
import pytest

from data.classes import CLASSES
from data.errors import LabelFileError
from data.labels.nih import UNKNOWN, finding_class, nih_labels

DATA = os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin), "data")
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
