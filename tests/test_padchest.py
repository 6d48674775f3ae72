"""PadChest labels: taxonomy mapping and the full real label CSV (shipped with torchxrayvision)."""

import collections
import importlib.util
import os
import re

import pandas as pd
import pytest

import parselabelfile
from data.classes import CLASSES
from data.errors import LabelFileError
from data.labels.padchest import CSV_NAME, TAXONOMY, padchest_labels, read_taxonomy, term_classes

# located without importing torchxrayvision (which imports torch)
REAL_CSV = os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin), "data", CSV_NAME + ".gz")
VIEWS = {"PA", "AP", "AP_horizontal", "L"}


def descendants_by_class():
    """Independent of data.labels.padchest: children per term from the drawing, then explicit recursive
    descendant sets for each class."""
    children = collections.defaultdict(set)
    path = []
    with open(TAXONOMY, encoding="utf-8") as f:
        for line in f:
            if "──" not in line:
                continue
            depth = (len(line) - len(line.lstrip("│ "))) // 4
            name = line.split("── ", 1)[1].split(" [")[0].strip().rstrip("\\").strip().lower()
            path = path[:depth] + [name]
            if depth:
                children[path[-2]].add(name)

    def below(term):
        out = {term}
        for child in children.get(term, ()):
            out |= below(child)
        return out

    return {c: below(c) for c in CLASSES if c not in ("normal", "other findings")}


@pytest.fixture(scope="module")
def real():
    return padchest_labels(REAL_CSV)


def test_taxonomy_maps_terms_to_every_ancestor_class():
    classes = term_classes()
    assert classes["central venous catheter via jugular vein"] == {"catheter"}
    assert classes["sternotomy"] == {"surgery"}  # surgery > metal > sternotomy
    assert classes["hydropneumothorax"] == {"pneumothorax", "pleural effusion"}  # two parents
    assert classes["air bronchogram"] == {"infiltrates"}  # infiltrates > alveolar pattern > consolidation > ...
    assert classes["scoliosis"] == {"thoracic cage deformation"}
    assert classes["copd signs"] == {"copd signs"} and classes["nsg tube"] == {"nsg tube"}
    assert classes["chronic changes"] == set()
    # drawn under 'calcified densities' only, but its parent also sits under 'adenopathy' > 'hilar enlargement'
    parents = read_taxonomy()
    assert parents["calcified adenopathy"] == {"calcified densities", "adenopathy"}


def test_full_csv_class_counts_equal_an_independent_count(real):
    frame, stats = real
    assert stats["rows"] == 160861
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped_"))
    assert stats["kept"] + dropped == 160861 == len(frame) + dropped
    assert stats["dropped_exclude"] > 1000 and stats["unknown_terms"]["hypoexpansion basal"] == 119
    assert frame["Source"].eq("padchest").all() and set(frame["Projection"]) == VIEWS

    raw = pd.read_csv(REAL_CSV, usecols=["Labels", "Projection"])
    below = descendants_by_class()
    raw = raw[raw["Projection"].isin(VIEWS)]
    expected = collections.Counter()
    kept = 0
    for cell, n in raw["Labels"].value_counts().items():  # each distinct cell once
        terms = {t.strip().lower() for t in re.findall(r"'([^']*)'", cell)} - {""}
        if not terms or "exclude" in terms:
            continue
        kept += n
        hit = {c for c, d in below.items() if terms & d}
        if "normal" in terms:
            hit.add("normal")
        if not hit and terms - {"normal", "suboptimal study", "unchanged"}:
            hit.add("other findings")
        for c in hit:
            expected[c] += n
    assert kept == len(frame)
    got = (frame[CLASSES] == 1).sum().to_dict()
    assert got == {c: expected[c] for c in CLASSES}
    assert frame[CLASSES].isin([0, 1]).all().all()


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["ImageID", "StudyID", "PatientID", "Projection", "Labels"]).to_csv(path)


def test_messy_cells_and_special_labels(tmp_path):
    csv = tmp_path / "labels.csv"
    write_csv(csv, [
        ["a.png", "s1", "p1", "PA", "['normal']"],
        ["b.png", "s2", "p1", "L", "[' pleural effusion', 'COPD signs', '']"],
        ["c.png", "s3", "p2", "PA", None],
        ["d.png", "s4", "p2", "PA", "['']"],
        ["e.png", "s5", "p3", "AP", "['exclude', 'cardiomegaly']"],
        ["f.png", "s6", "p3", "AP", "['central venous catheter via jugular vein']"],
        ["g.png", "s7", "p4", "PA", "['chronic changes', 'unchanged']"],
        ["h.png", "s8", "p4", "PA", "['hypoexpansion basal']"],
        ["i.png", "s9", "p5", "COSTAL", "['cardiomegaly']"],
        ["j.png", "s10", "p5", "PA", "['suboptimal study']"],
    ])
    frame, stats = padchest_labels(csv)
    rows = frame.set_index("ImageID")
    positives = {i: [c for c in CLASSES if rows.at[i, c] == 1] for i in rows.index}
    assert positives == {
        "a.png": ["normal"],
        "b.png": ["copd signs", "pleural effusion"],
        "f.png": ["catheter"],
        "g.png": ["other findings"],
        "h.png": ["other findings"],
        "j.png": [],
    }
    assert stats["dropped_no_labels"] == 2 and stats["dropped_exclude"] == 1 and stats["dropped_view_COSTAL"] == 1
    assert stats["unknown_terms"] == {"hypoexpansion basal": 1}
    assert rows.at["b.png", "PatientID"] == "p1" and rows.at["b.png", "Projection"] == "L"
    frame_all, _ = padchest_labels(csv, views=None)
    assert "i.png" in set(frame_all["ImageID"])


def test_bad_input_names_file_and_row(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    write_csv(bad, [["a.png", "s1", "p1", "PA", "['normal']"], ["b.png", "s2", "p1", "PA", "['normal', oops"]])
    with pytest.raises(LabelFileError, match=r"bad\.csv, row 3: Labels is not a list"):
        padchest_labels(bad)
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"ImageID": ["a.png"], "Labels": ["['normal']"]}).to_csv(missing)
    with pytest.raises(LabelFileError, match=r"missing\.csv: missing columns \['StudyID', 'PatientID', 'Projection'\]"):
        padchest_labels(missing)
    assert parselabelfile.main(["--padchest-csv", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "bad.csv, row 3" in capsys.readouterr().err


def test_cli_writes_padchest_labels(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    write_csv(csv, [["a.png", "s1", "p1", "PA", "['normal']"], ["b.png", "s2", "p2", "AP", "['pacemaker']"]])
    assert parselabelfile.main(["--padchest-csv", str(csv), "--out", str(tmp_path / "out"), "--views", "PA"]) == 0
    out = pd.read_csv(tmp_path / "out" / "padchest_labels.csv", dtype=str)
    assert list(out.columns) == ["ImageID", "PatientID", "StudyID", "Projection", "Source", *CLASSES]
    assert out["ImageID"].tolist() == ["a.png"] and out.at[0, "normal"] == "1"
    assert "done: 1 PadChest images" in capsys.readouterr().out
