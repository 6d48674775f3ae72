"""Step 3: join with the manifest and a leak-free, stratified patient-level split."""

import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from skmultilearn.model_selection import IterativeStratification

import combinelabels
import parselabelfile
from conftest import REAL_DATA as TXRV
from data.classes import CLASSES
from data.labels.combine import OUT_COLUMNS, FastBookkeeping, RarestFirstStratification, combine, patient_split
from data.labels.openi import (CHEXPERT_COLUMNS, CHEXPERT_UNKNOWN, mesh_term_classes, openi_labels, read_reports,
                               report_labels, report_text)
from data.errors import InputError, LabelFileError
from data.labels.padchest import CSV_NAME, padchest_labels, term_classes
from data.labels.report_labeler import label_reports
from data.labels.rules import CONSOLIDATION, LABEL_COLUMNS, apply_rules, finish



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


@pytest.mark.slow
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


def test_combined_keeps_view_and_method_label(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    pad = label_frame("padchest", [("a.png", "p1", {"normal": 1}), ("b.png", "p2", {"nodule": 1})])
    pad["MethodLabel"] = ["Physician", "RNN_model"]
    pad.loc[1, "Projection"] = "AP_horizontal"
    pad.to_csv(labels / "padchest_labels.csv", index=False)
    openi = label_frame("openi", [("CXR1_IM-1", "CXR1", {"normal": 1}), ("CXR1_IM-2", "CXR1", {"normal": 1})])
    openi["Projection"] = ""  # OpenI's XML has no view; this label file has no MethodLabel column (written by hand)
    openi.to_csv(labels / "openi_labels.csv", index=False)
    ids = ["a.png", "b.png", "CXR1_IM-1", "CXR1_IM-2"]
    manifest_frame(ids).to_csv(tmp_path / "manifest.csv", index=False)
    frame = combine(str(labels), str(tmp_path / "manifest.csv"), val_frac=0, test_frac=0)[0].set_index("ImageID")
    assert frame.loc[ids, "view"].tolist() == ["PA", "AP_horizontal", "", ""]
    assert frame.loc[ids, "MethodLabel"].tolist() == ["Physician", "RNN_model", "", ""]
    # where step 1 writes a view (from the DICOM header), images whose label file has none take it
    manifest = manifest_frame(ids).assign(view=["AP", "AP", "PA", ""])
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    frame = combine(str(labels), str(tmp_path / "manifest.csv"), val_frac=0, test_frac=0)[0].set_index("ImageID")
    assert frame.loc[ids, "view"].tolist() == ["PA", "AP_horizontal", "PA", ""]


# ---- one rule for every label source (data/labels/rules.py) ----

def test_rule_clears_other_and_normal_beside_findings():
    values = np.zeros((5, len(CLASSES)), dtype=np.int8)
    col = CLASSES.index
    values[0, [col("other findings"), col("cardiomegaly")]] = 1  # CheXpert: Lung Opacity + Cardiomegaly
    values[1, [col("normal"), col("electrical device")]] = 1  # PadChest: normal beside a pacemaker
    values[2, col("other findings")] = 1  # abnormal, none of the 20: stays
    values[2, col("normal")] = 1  # ... and then not normal
    values[3, col("normal")] = 1  # normal alone: stays
    values[4, col("other findings")], values[4, col("nodule")] = 1, -1  # an uncertain named finding counts too
    out, counts = apply_rules(values)
    positives = [[c for c in CLASSES if row[col(c)] != 0] for row in out]
    assert positives == [["cardiomegaly"], ["electrical device"], ["other findings"], ["normal"], ["nodule"]]
    assert counts == {"other_cleared": 2, "normal_cleared": 2}
    assert apply_rules(out)[1] == {"other_cleared": 0, "normal_cleared": 0}  # applying it again changes nothing


def test_consolidation_counts_as_infiltrates_in_the_tree_mesh_and_text():
    assert term_classes()["consolidation"] == {CONSOLIDATION}
    assert mesh_term_classes("Consolidation/lung, right/lower lobe") == {CONSOLIDATION}
    row = label_reports(["Right lower lobe consolidation."])[0]
    assert [c for c, v in zip(CLASSES, row) if v] == [CONSOLIDATION]


def test_consolidation_counts_as_infiltrates_in_chexpert():
    assert CHEXPERT_COLUMNS["Consolidation"] == CONSOLIDATION


@pytest.mark.slow
def test_real_mesh_and_text_labels_already_follow_the_rule():
    """The MeSH and text sources set 'other findings' and 'normal' as the rule does: on all 3,955 real reports it
    changes nothing."""
    reports, _ = read_reports(os.path.join(TXRV, "NLMCXR_reports.tgz"))
    for source in ("mesh", "text"):
        values, _, _ = report_labels(reports, source)
        assert apply_rules(values)[1] == {"other_cleared": 0, "normal_cleared": 0}, source


@pytest.mark.slow
def test_openi_unlabeled_reports_are_dropped_or_kept_uncertain():
    """OpenI's label function marks reports without a usable label in an Unlabeled column (here: the 'No Indexing'
    ones, as the test says); without the column nothing is dropped."""
    frame, reports, _ = openi_labels(os.path.join(TXRV, "NLMCXR_reports.tgz"))
    no_indexing = set(reports.loc[reports["major"].map(lambda m: [t.lower() for t in m] == ["no indexing"]),
                                  "ReportID"])
    assert len(no_indexing) == 95  # issue 10's count
    without, counts = finish(frame.drop(columns="Unlabeled"))
    assert len(without) == len(frame) and counts["unlabeled"] == 0
    marked = frame  # openi_labels marks them ('No Indexing' and unsatisfactory quality alone)
    assert set(marked.loc[marked["Unlabeled"], "PatientID"]) >= no_indexing & set(frame["PatientID"])  # 92 have images
    dropped, counts = finish(marked)
    assert counts["unlabeled"] == marked["Unlabeled"].sum() > 0
    assert len(dropped) == len(frame) - counts["unlabeled"] and not dropped["PatientID"].isin(no_indexing).any()
    kept, _ = finish(marked, "keep-uncertain")
    assert (kept.loc[kept["PatientID"].isin(no_indexing), CLASSES] == -1).all().all()
    assert list(kept.columns) == LABEL_COLUMNS and (kept["MethodLabel"] == "").all()


def test_the_rule_is_applied_to_chexpert_labels_by_parselabelfile(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    with tarfile.open(os.path.join(TXRV, "NLMCXR_reports.tgz")) as tar:
        for name in ("1.xml", "1000.xml"):
            (folder / name).write_bytes(tar.extractfile(f"ecgen-radiology/{name}").read())
    reports, _ = read_reports(str(folder))
    chexpert = pd.DataFrame({"Reports": report_text(reports), **{c: np.nan for c in CHEXPERT_COLUMNS}})
    chexpert.loc[0, ["No Finding", "Support Devices"]] = 1.0  # normal beside a device
    chexpert.loc[1, ["Lung Opacity", "Cardiomegaly"]] = 1.0  # 'other findings' beside a named finding
    chexpert.to_csv(tmp_path / "chexpert.csv", index=False)
    out = tmp_path / "out"
    assert parselabelfile.main(["--openi-reports", str(folder), "--out", str(out), "--openi-labels", "chexpert",
                                "--chexpert-csv", str(tmp_path / "chexpert.csv")]) == 0
    frame = pd.read_csv(out / "openi_labels.csv", dtype=str, keep_default_na=False)
    frame = frame.drop_duplicates("PatientID").set_index("PatientID")
    first, second = reports["ReportID"]
    # a device is no class of ours (which one is unknown: blank) and not normal: every cell known is 0
    assert {c for c in CLASSES if frame.at[first, c] == ""} == {*CHEXPERT_UNKNOWN, "other findings"}
    assert [c for c in CLASSES if frame.at[first, c] not in ("", "0")] == []
    assert [c for c in CLASSES if frame.at[second, c] not in ("", "0")] == ["cardiomegaly"]


# ---- several manifests (download_images.py --shard auto writes OUT/shard-K/manifest.csv) ----

def shard_world(tmp_path, n_shards=3):
    labels = tmp_path / "labels"
    labels.mkdir()
    rows = [(f"i{k}.png", f"p{k // 2}", {"cardiomegaly": 1} if k % 3 == 0 else {"normal": 1}) for k in range(60)]
    label_frame("padchest", rows).to_csv(labels / "padchest_labels.csv", index=False)
    out = tmp_path / "ingest"
    for s in range(n_shards):
        (out / f"shard-{s}").mkdir(parents=True)
        manifest_frame([r[0] for r in rows[s::n_shards]]).to_csv(out / f"shard-{s}" / "manifest.csv", index=False)
    return labels, out


def test_several_manifests_a_comma_list_or_a_shard_folder(tmp_path, capsys):
    labels, out = shard_world(tmp_path)
    shards = [str(out / f"shard-{s}" / "manifest.csv") for s in range(3)]
    by_folder, stats = combine(str(labels), str(out))
    assert stats["manifests"] == shards and len(by_folder) == 60
    paths = by_folder.set_index("ImageID")["path"]
    assert paths["i4.png"] == str(out / "shard-1" / "images" / "i4.png")  # relative to its own manifest
    assert paths["i0.png"] == str(out / "shard-0" / "images" / "i0.png")
    by_list, _ = combine(str(labels), [f"{shards[0]},{shards[1]}", shards[2], shards[0]])  # a repeat counts once
    assert by_list.equals(by_folder)
    # a shard that is missing: the rest combine, with a warning; one still running is an error
    os.rename(out / "shard-1", tmp_path / "away")
    assert combinelabels.main(["--labels", str(labels), "--manifest", str(out), "--out", str(tmp_path / "c.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {out} has no shard-1: were all shards run?" in printed and "done: 40 images" in printed
    (out / "shard-1").mkdir()
    assert combinelabels.main(["--labels", str(labels), "--manifest", str(out), "--out", str(tmp_path / "c.csv")]) == 2
    assert f"--manifest {out}: {out / 'shard-1'} has no manifest.csv" in capsys.readouterr().err
    with pytest.raises(InputError, match="a folder without manifest.csv or shard-K/manifest.csv"):
        combine(str(labels), str(tmp_path / "labels"))


def test_an_image_in_two_manifests_names_both(tmp_path, capsys):
    labels, out = shard_world(tmp_path)
    overlap = manifest_frame(["i3.png", "i7.png"])
    overlap.to_csv(tmp_path / "extra.csv", index=False)
    err_args = ["--labels", str(labels), "--manifest", str(out), "--manifest", str(tmp_path / "extra.csv"),
                "--out", str(tmp_path / "c.csv")]
    assert combinelabels.main(err_args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"combinelabels.py: error: ImageID 'i3.png' is in {out / 'shard-0' / 'manifest.csv'} and in "
                   f"{tmp_path / 'extra.csv'} (2 ImageIDs are in more than one manifest): shards must not overlap; give each image's manifest "
                   f"once")
    # an image that failed in one shard's run and was written by another is not an overlap
    overlap.assign(status="error").to_csv(tmp_path / "extra.csv", index=False)
    assert combinelabels.main(err_args) == 0


# ---- folds with constraints (forced test patients, NIH patients kept out of test) ----

def test_allowed_folds_are_kept_and_change_nothing_when_free():
    from data.labels.combine import stratified_folds
    rng = np.random.RandomState(0)
    y = (rng.rand(3000, 8) < [0.5, 0.3, 0.1, 0.05, 0.03, 0.02, 0.01, 1]).astype(np.int8)
    free = stratified_folds(y, [0.8, 0.1, 0.1], seed=3)
    assert np.array_equal(stratified_folds(y, [0.8, 0.1, 0.1], seed=3, allowed=np.ones((3000, 3), bool)), free)
    allowed = np.ones((3000, 3), bool)
    pinned = rng.rand(3000) < 0.05
    barred = ~pinned & (rng.rand(3000) < 0.3)
    allowed[pinned] = [False, False, True]
    allowed[barred, 2] = False
    fold = stratified_folds(y, [0.8, 0.1, 0.1], seed=3, allowed=allowed)
    assert (fold[pinned] == 2).all() and not (fold[barred] == 2).any()
    # the free rows fill test around the pinned ones: about its share overall, and of each common label
    assert abs((fold == 2).mean() - 0.1) < 0.01
    for label in range(3):
        share = y[fold == 2, label].sum() / y[:, label].sum()
        assert abs(share - 0.1) < 0.02, label


def test_the_rule_never_reads_or_writes_an_unknown_class():
    col = CLASSES.index
    values = np.zeros((3, len(CLASSES)))
    values[:, col("catheter")] = np.nan  # a class the source never annotates
    values[0, col("normal")] = 1  # normal beside an unknown device: stays normal
    values[1, [col("other findings"), col("nodule")]] = 1
    values[2, col("other findings")] = 1
    out, counts = apply_rules(values)
    assert np.isnan(out[:, col("catheter")]).all() and counts == {"other_cleared": 1, "normal_cleared": 0}
    assert out[0, col("normal")] == 1 and out[1, col("other findings")] == 0 and out[2, col("other findings")] == 1
    frame = label_frame("nih", [(f"i{k}", f"p{k}", {}) for k in range(3)])
    frame[CLASSES] = values
    frame["Unlabeled"] = [False, False, True]
    kept, counts = finish(frame, "keep-uncertain")
    assert counts["unlabeled"] == 1 and kept[CLASSES].dtypes.eq("Int8").all()
    assert kept.loc[2, "catheter"] is pd.NA and (kept.loc[2, [c for c in CLASSES if c != "catheter"]] == -1).all()
    assert kept[CLASSES].to_csv(index=False).splitlines()[1].split(",")[col("catheter")] == ""
