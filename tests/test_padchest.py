"""PadChest labels: taxonomy mapping and the full real label CSV (shipped with torchxrayvision)."""

import collections
import contextlib
import io
import os
import re

import pandas as pd
import pytest

import parselabelfile
from conftest import REAL_DATA
from data.classes import CLASSES
from data.errors import LabelFileError
from data.labels.padchest import CSV_NAME, TAXONOMY, padchest_labels, read_taxonomy, term_classes
from data.labels.rules import LABEL_COLUMNS, finish

REAL_CSV = os.path.join(REAL_DATA, CSV_NAME + ".gz")


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


FRONTAL = {"PA", "AP", "AP_horizontal"}
NON_FINDINGS = {"unchanged", "suboptimal study"}


def cell_terms(cell):
    return {t.strip().lower() for t in re.findall(r"'([^']*)'", cell)} - {""} if isinstance(cell, str) else set()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real CSV through parselabelfile.py with the defaults: (written padchest_labels.csv, printed summary)."""
    out = tmp_path_factory.mktemp("real")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert parselabelfile.main(["--padchest-csv", REAL_CSV, "--out", str(out)]) == 0
    frame = pd.read_csv(out / "padchest_labels.csv", dtype={c: str for c in ["ImageID", "PatientID", "StudyID",
                                                                            "Projection", "MethodLabel"]})
    return frame, printed.getvalue()


@pytest.fixture(scope="module")
def raw():
    """The real CSV read with plain pandas, with the facts the tests count from it."""
    raw = pd.read_csv(REAL_CSV, usecols=["ImageID", "Projection", "MethodLabel", "Labels"], dtype=str)
    terms = raw["Labels"].map(cell_terms)
    raw["frontal"] = raw["Projection"].isin(FRONTAL)
    raw["exclude"] = terms.map(lambda t: "exclude" in t)
    raw["empty"] = terms.map(len) == 0
    raw["unlabeled"] = terms.map(lambda t: bool(t) and t <= NON_FINDINGS)
    raw["kept"] = raw["frontal"] & ~raw["exclude"] & ~raw["empty"] & ~raw["unlabeled"]
    raw["terms"] = terms
    return raw


@pytest.mark.slow
def test_real_csv_defaults_keep_frontal_views_and_count_what_they_drop(real, raw):
    """issue 10: frontal views only by default; physician-labelled images, dropped laterals and dropped unlabeled
    studies each equal to a count made here with plain pandas."""
    frame, printed = real
    # the facts about the CSV itself
    assert len(raw) == 160861 and (raw["MethodLabel"] == "Physician").sum() == 39053
    assert (raw["frontal"] & (raw["MethodLabel"] == "Physician")).sum() == 26432
    assert (raw["Projection"] == "L").sum() == 49579

    assert set(frame["Projection"]) == FRONTAL and frame["Source"].eq("padchest").all()
    assert sorted(frame["ImageID"]) == sorted(raw.loc[raw["kept"], "ImageID"])
    physician = int((raw["kept"] & (raw["MethodLabel"] == "Physician")).sum())
    assert (frame["MethodLabel"] == "Physician").sum() == physician
    assert set(frame["MethodLabel"]) == {"Physician", "RNN_model"}
    line = next(x for x in printed.splitlines() if x.startswith("PadChest: 160861 rows"))
    counted = re.search(r"(\d+) images kept; dropped: (\d+) of other views \{'L': (\d+),.*\}, (\d+) 'exclude', "
                        r"(\d+) without labels, (\d+) unlabeled", line)
    assert counted, line
    kept, views, laterals, exclude, empty, unlabeled = map(int, counted.groups())
    assert kept == len(frame) == raw["kept"].sum()
    assert laterals == (raw["Projection"] == "L").sum() and views == (~raw["frontal"]).sum()
    assert exclude == (raw["frontal"] & raw["exclude"]).sum()
    assert empty == (raw["frontal"] & raw["empty"]).sum()
    assert unlabeled == (raw["frontal"] & raw["unlabeled"]).sum()
    assert f"{physician} of the images kept labelled by physicians" in printed
    assert f"{kept} PadChest images -> " in printed and f"({unlabeled} unlabeled dropped)" in printed
    basal = int(raw.loc[raw["kept"], "terms"].map(lambda t: "hypoexpansion basal" in t).sum())
    assert basal > 0 and f"'hypoexpansion basal': {basal}" in printed  # not in the taxonomy: counted and shown
    print(f"real PadChest: {kept} frontal images kept, {physician} labelled by physicians, {laterals} laterals and "
          f"{unlabeled} unlabeled dropped")


@pytest.mark.slow
def test_full_csv_class_counts_equal_an_independent_count(real, raw):
    frame, _ = real
    below = descendants_by_class()
    covered = set().union(*below.values())
    expected = collections.Counter()
    kept = raw[raw["kept"]]
    for terms, n in kept["terms"].map(frozenset).value_counts().items():  # each distinct set of terms once
        hit = {c for c, d in below.items() if terms & d}
        # the rule: 'other findings' when a finding no class covers is present and no named class is;
        # 'normal' only when the CSV says normal and no other class is set
        if not hit and terms - covered - NON_FINDINGS - {"normal"}:
            hit.add("other findings")
        if "normal" in terms and not hit:
            hit.add("normal")
        for c in hit:
            expected[c] += n
    got = (frame[CLASSES] == 1).sum().to_dict()
    assert got == {c: expected[c] for c in CLASSES}
    assert frame[CLASSES].isin([0, 1]).all().all()
    assert ((frame["normal"] == 1) & (frame[CLASSES].drop(columns="normal") != 0).any(axis=1)).sum() == 0


def write_csv(path, rows, columns=("ImageID", "StudyID", "PatientID", "Projection", "Labels"), **kwargs):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, **kwargs)


def test_messy_cells_special_labels_and_the_rule(tmp_path):
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
        ["k.png", "s11", "p6", "AP_horizontal", "['unchanged', 'suboptimal study']"],
        ["l.png", "s12", "p6", "PA", "['normal', 'cardiomegaly', 'chronic changes']"],
        ["m.png", "s13", "p7", "PA", "['normal', 'chronic changes']"],
        ["n.png", "s14", "p7", "PA", "['suboptimal study', 'normal']"],
        ["o.png", "s15", "p8", "PA", "['consolidation']"],
    ])
    frame, stats = padchest_labels(csv, views=["PA", "AP", "AP_horizontal", "L"])
    assert stats["dropped_no_labels"] == 2 and stats["dropped_exclude"] == 1 and stats["dropped_view_COSTAL"] == 1
    assert stats["unknown_terms"] == {"hypoexpansion basal": 1}
    assert frame.set_index("ImageID")["Unlabeled"].loc[lambda u: u].index.tolist() == ["j.png", "k.png"]
    # what the source says, before the rule: a term under no class marks 'other findings', 'normal' marks normal
    raw = frame.set_index("ImageID")
    assert [c for c in CLASSES if raw.at["l.png", c]] == ["cardiomegaly", "normal", "other findings"]

    out, counts = finish(frame)
    assert list(out.columns) == LABEL_COLUMNS
    rows = out.set_index("ImageID")
    positives = {i: [c for c in CLASSES if rows.at[i, c] == 1] for i in rows.index}
    assert positives == {
        "a.png": ["normal"],
        "b.png": ["copd signs", "pleural effusion"],
        "f.png": ["catheter"],
        "g.png": ["other findings"],
        "h.png": ["other findings"],
        "l.png": ["cardiomegaly"],  # named finding: not 'other', not 'normal'
        "m.png": ["other findings"],  # a finding: not 'normal'
        "n.png": ["normal"],
        "o.png": ["infiltrates"],  # consolidation counts as infiltrates
    }
    assert counts == {"unlabeled": 2, "normal_cleared": 2, "other_cleared": 1}
    assert rows.at["b.png", "PatientID"] == "p1" and rows.at["b.png", "Projection"] == "L"
    kept, _ = finish(frame, "keep-uncertain")
    assert (kept.set_index("ImageID").loc[["j.png", "k.png"], CLASSES] == -1).all().all()
    assert len(kept) == len(out) + 2

    frontal, stats = padchest_labels(csv)  # the default: frontal views only
    assert set(frontal["Projection"]) == {"PA", "AP", "AP_horizontal"} and stats["dropped_view_L"] == 1
    frame_all, _ = padchest_labels(csv, views=None)
    assert "i.png" in set(frame_all["ImageID"])


def test_method_label_is_kept_and_optional(tmp_path):
    csv = tmp_path / "labels.csv"
    write_csv(csv, [["a.png", "s1", "p1", "PA", "['normal']", "Physician"],
                    ["b.png", "s2", "p2", "AP", "['pacemaker']", "RNN_model"]],
              columns=("ImageID", "StudyID", "PatientID", "Projection", "Labels", "MethodLabel"))
    assert padchest_labels(csv)[0]["MethodLabel"].tolist() == ["Physician", "RNN_model"]
    write_csv(csv, [["a.png", "s1", "p1", "PA", "['normal']"]])
    assert padchest_labels(csv)[0]["MethodLabel"].tolist() == [""]


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
    assert parselabelfile.main(["--padchest-csv", str(csv), "--out", str(tmp_path / "out"), "--views", "pa"]) == 0
    out = pd.read_csv(tmp_path / "out" / "padchest_labels.csv", dtype=str, keep_default_na=False)
    assert list(out.columns) == LABEL_COLUMNS
    assert out["ImageID"].tolist() == ["a.png"] and out.at[0, "normal"] == "1" and out.at[0, "MethodLabel"] == ""
    assert (tmp_path / "out" / "padchest_labels.csv.rows").read_text().split()[0] == "1"
    assert "done: 1 PadChest images" in capsys.readouterr().out
