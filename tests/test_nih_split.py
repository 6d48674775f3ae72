"""Step 3 with NIH ChestX-ray14 on the real label files of the torchxrayvision wheel: unknown classes stay blank and
never count as positive, the box images' patients are all in test, NIH's official test list decides NIH's test split,
and manifests come from several shards."""
import contextlib
import io
import os

import pandas as pd
import pytest

import combinelabels
import parselabelfile
from conftest import REAL_DATA as DATA
from data.classes import CLASSES
from data.errors import InputError
from data.labels.combine import OUT_COLUMNS, combine, patient_labels
from data.labels.nih import UNKNOWN
from data.labels.rules import LABEL_COLUMNS

pytestmark = pytest.mark.slow  # every test here runs step 2 or 3 on NIH's full label files
ENTRY = os.path.join(DATA, "Data_Entry_2017_v2020.csv.gz")
BOXES = os.path.join(DATA, "BBox_List_2017.csv.gz")
GOOGLE = os.path.join(DATA, "google2019_nih-chest-xray-labels.csv.gz")
GOOGLE_COLUMNS = ["google_fracture", "google_pneumothorax", "google_airspace_opacity", "google_nodule_or_mass"]


def padchest_part(n=40):
    """A small PadChest label CSV beside NIH's, with uncertain values, so that -1 and blank meet in one run."""
    rows = []
    for k in range(n):
        values = {c: 0 for c in CLASSES}
        values["cardiomegaly" if k % 2 else "normal"] = 1
        if k % 4 == 1:
            values["pleural effusion"] = -1
        rows.append({"ImageID": f"pad{k}.png", "PatientID": f"p{k}", "StudyID": f"s{k}", "Projection": "PA",
                     "Source": "padchest", "MethodLabel": "Physician", **values})
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


def write_manifest(folder, ids):
    folder.mkdir(parents=True)
    pd.DataFrame({"ImageID": ids, "path": [f"images/{i}" for i in ids], "width": 1024, "height": 1024,
                  "status": "ok"}).to_csv(folder / "manifest.csv", index=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real NIH labels (and Google's) from parselabelfile.py, a PadChest part, and the images in two shard
    manifests, without three of the box images."""
    tmp = tmp_path_factory.mktemp("nih")
    labels = tmp / "labels"
    assert parselabelfile.main(["--nih-csv", ENTRY, "--nih-google-labels", GOOGLE, "--out", str(labels)]) == 0
    padchest_part().to_csv(labels / "padchest_labels.csv", index=False)
    nih_ids = pd.read_csv(ENTRY, usecols=["Image Index"], dtype=str)["Image Index"]
    boxes = pd.read_csv(BOXES, usecols=[0], dtype=str).iloc[:, 0]
    left_out = sorted(boxes.unique())[:3]
    ids = [i for i in nih_ids if i not in set(left_out)] + [f"pad{k}.png" for k in range(40)]
    write_manifest(tmp / "ingest" / "shard-0", ids[0::2])
    write_manifest(tmp / "ingest" / "shard-1", ids[1::2])
    return dict(tmp=tmp, labels=labels, ingest=tmp / "ingest", boxes=boxes, left_out=left_out, nih_ids=nih_ids)


@pytest.fixture(scope="module")
def boxed(world):
    out = world["tmp"] / "combined.csv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = combinelabels.main(["--labels", str(world["labels"]), "--manifest", str(world["ingest"]),
                                   "--out", str(out), "--test-boxes", BOXES, "--uncertain", "ones"])
    assert code == 0
    return dict(out=out, printed=printed.getvalue(), text=pd.read_csv(out, dtype=str, keep_default_na=False))


def test_every_box_images_patient_is_in_test(world, boxed):
    text = boxed["text"]
    entry = pd.read_csv(ENTRY, usecols=["Image Index", "Patient ID"], dtype=str)
    box_patients = set("nih-" + entry.loc[entry["Image Index"].isin(set(world["boxes"])), "Patient ID"])
    assert len(set(world["boxes"])) == 880 and len(world["boxes"]) == 984
    nih = text[text["Source"] == "nih"]
    of_box_patients = nih[nih["PatientID"].isin(box_patients)]
    with_images = box_patients & set(nih["PatientID"])  # a left-out image may have been its patient's only one
    assert len(box_patients) == 726 and of_box_patients["PatientID"].nunique() == len(with_images) >= 723
    assert (of_box_patients["split"] == "test").all()
    # the patient of a box image missing from the manifest is found in the label files and goes to test all the same
    left_out_patients = set("nih-" + entry.loc[entry["Image Index"].isin(world["left_out"]), "Patient ID"])
    only_by_left_out = left_out_patients - set("nih-" + entry.loc[entry["Image Index"].isin(
        set(world["boxes"]) - set(world["left_out"])), "Patient ID"])
    assert only_by_left_out & with_images
    # no box image in the manifest is trained on or validated on
    assert (nih.loc[nih["ImageID"].isin(set(world["boxes"])), "split"] == "test").all()
    assert nih["ImageID"].isin(set(world["boxes"])).sum() == 880 - 3
    rows_left_out = world["boxes"][world["boxes"].isin(set(world["left_out"]))]
    assert f"--test-boxes: 984 box rows on 880 images of 726 patients; all {len(of_box_patients)} images of these " \
           f"patients in test; {len(rows_left_out)} box rows (3 images) not in the manifest, 0 images not in the " \
           f"label files (first not in the manifest: {', '.join(rows_left_out.drop_duplicates())})" in boxed["printed"]
    # patient level, and the free patients still fill test to about its share
    assert text.groupby(["Source", "PatientID"])["split"].nunique().max() == 1
    share = nih.groupby("PatientID")["split"].first().value_counts(normalize=True)
    assert abs(share["test"] - 0.1) < 0.015 and abs(share["val"] - 0.1) < 0.015


def test_unknown_is_blank_never_touched_by_uncertain_and_never_positive(boxed):
    text = boxed["text"]
    assert list(text.columns) == OUT_COLUMNS + GOOGLE_COLUMNS
    nih, pad = text[text["Source"] == "nih"], text[text["Source"] == "padchest"]
    assert len(nih) == 112_120 - 3 and len(pad) == 40
    assert (nih[UNKNOWN] == "").all().all()  # --uncertain ones made every PadChest -1 a 1, but no blank a 1
    known = [c for c in CLASSES if c not in UNKNOWN]
    assert nih[known].isin(["0", "1"]).all().all() and pad[CLASSES].isin(["0", "1"]).all().all()
    assert (pad.loc[pad["ImageID"].isin([f"pad{k}.png" for k in range(1, 40, 4)]), "pleural effusion"] == "1").all()
    assert "nih: 9 classes never annotated, blank (unknown) in" in boxed["printed"]
    # the split's labels: an unknown class is never a positive of a patient
    frame = pd.read_csv(boxed["out"], dtype={"MethodLabel": str})
    _, y = patient_labels(frame)
    sources = sorted(frame["Source"].unique())
    per_class = y.reshape(len(y), len(sources), len(CLASSES) + 1)[:, sources.index("nih"), :len(CLASSES)]
    assert per_class.sum(0)[[CLASSES.index(c) for c in UNKNOWN]].tolist() == [0] * len(UNKNOWN)
    assert per_class.sum(0)[CLASSES.index("pneumothorax")] > 0
    assert frame.loc[frame["Source"] == "nih", UNKNOWN].isna().all().all()


def test_paths_resolve_against_each_shard_and_google_columns(world, boxed):
    text = boxed["text"].set_index("ImageID")
    ids = [i for i in world["nih_ids"] if i not in set(world["left_out"])]
    assert text.at[ids[0], "path"] == str(world["ingest"] / "shard-0" / "images" / ids[0])
    assert text.at[ids[1], "path"] == str(world["ingest"] / "shard-1" / "images" / ids[1])
    google = pd.read_csv(GOOGLE, dtype=str).set_index("Image Index")
    has = text["google_pneumothorax"] != ""
    assert has.sum() == 4_376 and set(text.index[has]) == set(google.index)
    assert (text.loc[google.index, "google_pneumothorax"] == (google["Pneumothorax"] == "YES").astype(int)
            .astype(str)).all()
    assert (text.loc[text["Source"] == "padchest", GOOGLE_COLUMNS] == "").all().all()
    assert "Google's NIH labels: 4376 images given google_* columns" in boxed["printed"]


def test_nih_test_list_decides_nihs_test_split(world, tmp_path):
    """The official list's NIH patients, and only they, are in test; the other sources split as before."""
    entry = pd.read_csv(ENTRY, usecols=["Image Index", "Patient ID"], dtype=str)
    listed_patients = set(entry["Patient ID"].astype(int).loc[lambda p: p % 7 == 0].astype(str))
    names = entry.loc[entry["Patient ID"].isin(listed_patients), "Image Index"]
    names = names[names.index % 2 == 0]  # a listed image's patient goes to test with all of its images
    listed_patients = set(entry.loc[names.index, "Patient ID"])
    (tmp_path / "test_list.txt").write_text("\n".join([*names, "00099999_000.png", ""]) + "\n")
    out = tmp_path / "combined.csv"
    assert combinelabels.main(["--labels", str(world["labels"]), "--manifest", str(world["ingest"] / "shard-0"),
                               "--manifest", str(world["ingest"] / "shard-1" / "manifest.csv"), "--out", str(out),
                               "--nih-test-list", str(tmp_path / "test_list.txt")]) == 0
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    nih = frame[frame["Source"] == "nih"]
    in_test = set(nih.loc[nih["split"] == "test", "PatientID"])
    assert in_test == {f"nih-{p}" for p in listed_patients}
    assert set(nih.loc[nih["split"] != "test", "split"]) == {"train", "val"}
    free = nih[nih["split"] != "test"].groupby("PatientID")["split"].first().value_counts(normalize=True)
    assert abs(free["val"] - 0.1 / 0.9) < 0.01  # train:val among the rest as among the fractions
    assert set(frame.loc[frame["Source"] == "padchest", "split"]) == {"train", "val", "test"}


def test_test_frac_zero_keeps_only_the_forced_patients_in_test(world):
    frame, stats = combine(str(world["labels"]), str(world["ingest"]), test_frac=0,
                           test_images=["00000013_000.png", "00030805_000.png", "not-an-image.png"])
    assert set(frame.loc[frame["split"] == "test", "PatientID"]) == {"nih-13", "nih-30805"}
    assert stats["test_boxes"]["not_in_manifest"] == stats["test_boxes"]["not_labelled"] == 1


def test_test_list_that_names_no_nih_image(world, tmp_path, capsys):
    (tmp_path / "list.txt").write_text("pad1.png\nCXR1_IM-0001-4001\n")
    base = ["--labels", str(world["labels"]), "--manifest", str(world["ingest"]), "--out", str(tmp_path / "c.csv")]
    assert combinelabels.main(base + ["--nih-test-list", str(tmp_path / "list.txt")]) == 2
    err = capsys.readouterr().err
    assert "--nih-test-list: none of its 2 image names (pad1.png, CXR1_IM-0001-4001, ...) is an NIH image" in err
    (tmp_path / "list.txt").write_text("Image Index,Finding Labels\n00000001_000.png,Cardiomegaly\n")
    assert combinelabels.main(base + ["--nih-test-list", str(tmp_path / "list.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"combinelabels.py: error: {tmp_path / 'list.txt'}, row 1: 'Image Index,Finding Labels' is not " \
                  f"one image name (the file lists one image name a line, as NIH's test_list.txt does)"
    assert combinelabels.main(base + ["--test-boxes", str(tmp_path / "list.txt")]) == 2
    assert f"{tmp_path / 'list.txt'}: missing columns ['Finding Label']" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
    with pytest.raises(InputError, match="no such file"):
        combine(str(world["labels"]), str(tmp_path / "nowhere"))
