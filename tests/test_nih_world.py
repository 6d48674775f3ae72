"""The sample world's NIH part: files shaped like NIH's (checked against the real files in the torchxrayvision wheel),
then steps 1-4 on it as a user runs them, and box mapping from NIH's 1024 x 1024 pixels through step 1's resize."""
import csv
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import sample_world as sw
from conftest import REAL_DATA, ROOT
from data.classes import CLASSES
from data.labels.boxes import read_box_csv
from data.labels.nih import nih_labels

REAL = Path(REAL_DATA)
# NIH's names of the eight box findings in Data_Entry (the box list spells Infiltration 'Infiltrate')
BOX_TO_ENTRY = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Effusion",
                "Infiltrate": "Infiltration", "Mass": "Mass", "Nodule": "Nodule", "Pneumonia": "Pneumonia",
                "Pneumothorax": "Pneumothorax"}
N_IMAGES = 48


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("nih_world")
    summary = sw.generate(str(out), padchest_images=16, openi_reports=3, openi_without_image=0, nih_images=N_IMAGES,
                          progress=False)
    return out / "nih", summary["nih"]


def first_line(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return f.readline().rstrip("\r\n")


def entries(nih):
    """Data_Entry's rows read with the csv module: lists of 11 fields (the header names 9)."""
    with open(nih / "Data_Entry_2017_v2020.csv", newline="") as f:
        return list(csv.reader(f))[1:]


def test_files_and_headers_are_nihs(world):
    nih, summary = world
    assert sorted(os.listdir(nih)) == ["BBox_List_2017.csv", "Data_Entry_2017_v2020.csv", "png", "test_list.txt",
                                       "train_val_list.txt"]
    assert first_line(nih / "Data_Entry_2017_v2020.csv") == first_line(REAL / "Data_Entry_2017_v2020.csv.gz")
    assert first_line(nih / "BBox_List_2017.csv") == first_line(REAL / "BBox_List_2017.csv.gz") == \
        "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    rows = entries(nih)
    with gzip.open(REAL / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as f:
        real_fields = len(list(zip(range(2), csv.reader(f)))[1][1])
    assert len(rows) == summary["images"] == N_IMAGES and all(len(r) == real_fields == 11 for r in rows)
    with open(nih / "BBox_List_2017.csv") as f:
        box_lines = f.read().splitlines()[1:]
    assert len(box_lines) == summary["boxes"] > 0 and all(line.endswith(",,,") for line in box_lines)


def test_images_are_loose_8bit_1024_pngs_named_by_patient_and_follow_up(world):
    nih, summary = world
    names = sorted(os.listdir(nih / "png"))
    rows = entries(nih)
    assert names == sorted(r[0] for r in rows)
    for r in rows:
        assert re.fullmatch(r"\d{8}_\d{3}\.png", r[0])
        assert r[0] == f"{int(r[3]):08d}_{int(r[2]):03d}.png"  # Patient ID, Follow-up #
        assert r[6] in ("PA", "AP") and r[5] in ("M", "F") and 0 < int(r[4]) < 100
        assert int(r[7]) > 1024 and float(r[9]) == float(r[10]) > 0  # the original's size is not the PNG's
    follow_ups = pd.Series([int(r[2]) for r in rows]).groupby([r[3] for r in rows]).agg(list)
    assert all(f == list(range(len(f))) for f in follow_ups) and (follow_ups.map(len) > 1).any()
    for name in names[:6]:
        img = cv2.imread(str(nih / "png" / name), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (1024, 1024)
        assert img.max() > 200 and img.min() < 60


def test_labels_are_nih_findings_and_the_boxes_sit_on_them(world):
    nih, summary = world
    labels = {r[0]: set(r[1].split("|")) for r in entries(nih)}
    drawn = set(BOX_TO_ENTRY.values())
    assert set().union(*labels.values()) <= drawn | {"No Finding"}
    assert all(s == {"No Finding"} or "No Finding" not in s for s in labels.values())
    assert len(set().union(*labels.values()) - {"No Finding"}) >= 6
    boxes = read_box_csv(nih / "BBox_List_2017.csv")
    assert len(boxes) == summary["boxes"] and boxes.ImageID.nunique() == summary["box_images"]
    assert ((boxes.x >= 0) & (boxes.y >= 0) & (boxes.x + boxes.w <= 1024) & (boxes.y + boxes.h <= 1024)).all()
    raw = pd.read_csv(nih / "BBox_List_2017.csv", header=None, skiprows=1).iloc[:, :2]
    by_image = raw.groupby(0)[1].agg(lambda s: {BOX_TO_ENTRY[v] for v in s})
    for image, findings in by_image.items():
        assert findings == labels[image]  # every drawn finding of a box image is boxed, and nothing else
    # the boxes cover the same patients' images with a finding, and those patients are all in NIH's test list
    patient = lambda name: name.split("_")[0]  # noqa: E731
    box_patients = {patient(i) for i in by_image.index}
    sick = {i for i, s in labels.items() if s != {"No Finding"} and patient(i) in box_patients}
    assert set(by_image.index) == sick
    test = set(open(nih / "test_list.txt").read().split())
    train_val = set(open(nih / "train_val_list.txt").read().split())
    assert test | train_val == set(labels) and not test & train_val and set(by_image.index) <= test
    assert not {patient(i) for i in test} & {patient(i) for i in train_val}


def test_the_label_parser_reads_it(world):
    nih, _ = world
    frame, stats = nih_labels(str(nih / "Data_Entry_2017_v2020.csv"))
    rows = entries(nih)
    assert stats["rows"] == len(rows) and stats["views"] == pd.Series([r[6] for r in rows]).value_counts().to_dict()
    assert (frame["normal"] == [r[1] == "No Finding" for r in rows]).all()
    assert (frame["infiltrates"] == ["Infiltration" in r[1] for r in rows]).all()
    assert frame["catheter"].isna().all()  # a class NIH does not label is unknown, not negative


@pytest.mark.slow
def test_steps_1_to_4_score_localization_on_the_nih_boxes(world, tmp_path):
    # as the demo runs them: step 1 on the archives and on the loose NIH PNGs, step 2 with --nih-csv, step 3 with both
    # manifests and --test-boxes, step 4 with --boxes-csv (the world's few PadChest and OpenI images label the classes
    # NIH leaves unknown)
    nih, summary = world
    world_dir = nih.parent
    run("download_images.py", "--source", world_dir / "images", "--out", tmp_path / "ingest", "--size", 96,
        "--workers", 1)
    run("download_images.py", "--source", nih / "png", "--out", tmp_path / "ingest-nih", "--size", 96, "--workers", 1)
    manifest = pd.read_csv(tmp_path / "ingest-nih" / "manifest.csv")
    assert sorted(manifest.ImageID) == sorted(os.listdir(nih / "png"))
    assert (manifest.width == 1024).all() and (manifest.height == 1024).all()  # the size the boxes are in
    run("parselabelfile.py", "--padchest-csv", world_dir / "labels" / sw.PADCHEST_CSV, "--openi-reports",
        world_dir / "labels" / "NLMCXR_reports.tgz", "--nih-csv", nih / "Data_Entry_2017_v2020.csv", "--out",
        tmp_path / "labels")
    out = run("combinelabels.py", "--labels", tmp_path / "labels", "--manifest", tmp_path / "ingest" / "manifest.csv",
              "--manifest", tmp_path / "ingest-nih" / "manifest.csv", "--out", tmp_path / "combined.csv",
              "--test-boxes", nih / "BBox_List_2017.csv", "--val-frac", 0.15, "--test-frac", 0.25)
    combined = pd.read_csv(tmp_path / "combined.csv")
    boxed = set(read_box_csv(nih / "BBox_List_2017.csv").ImageID)
    assert set(combined.ImageID[combined.split == "test"]) >= boxed, out
    assert (combined.width[combined.Source == "nih"] == 1024).all()
    run("traintest.py", "--csv", tmp_path / "combined.csv", "--output-dir", tmp_path / "run", "--model",
        "unified-alexnet", "--image-size", 64, "--epochs", 1, "--batch-size", 8, "--workers", 0, "--bootstrap", 10,
        "--amp", "off", "--boxes-csv", nih / "BBox_List_2017.csv", "--max-heatmaps", 2)
    table = pd.read_csv(tmp_path / "run" / "localization.csv").set_index(["criterion", "T", "measure"])
    classes = [c for c in table.columns if c != "mean"]
    assert classes == [c for c in CLASSES if c in classes] and set(classes) <= set(sw.NIH_FINDINGS)
    assert table.loc[("count", 0, "n_boxes"), "mean"] == summary["boxes"]
    assert table.loc[("count", 0, "n_not_scored"), "mean"] == 0  # every box image is in test and was localized
    paper = {"atelectasis": 0.2833, "cardiomegaly": 0.8767, "pleural effusion": 0.3333, "infiltrates": 0.4227,
             "mass": 0.1411, "nodule": 0.0126, "pneumonia": 0.3833, "pneumothorax": 0.1836}
    assert table.loc[("IoBB", 0.5, "paper_acc"), classes].tolist() == [paper[c] for c in classes]
    assert table.loc[("IoBB", 0.5, "paper_acc"), "mean"] == pytest.approx(np.mean([paper[c] for c in classes]),
                                                                           abs=1e-4)


@pytest.mark.slow
def test_boxes_in_nihs_1024_pixels_map_through_step_1s_resize(tmp_path, bright_spot, localize_images):
    # Two NIH-named 1024 x 1024 PNGs, each with one bright rectangle, stored by step 1 at 256 px; the model's map is
    # the brightness, so its boxes land on the rectangles. The box list, in NIH's layout and 1024-pixel frame, also
    # holds a box reaching past the image (clipped, a miss), one wholly outside it (not scored) and one on an image
    # that was never ingested (not scored): each counted in localization.csv.
    png = tmp_path / "png"
    png.mkdir()
    rectangles = {"00000001_000.png": (600, 200, 300, 200), "00000002_000.png": (100, 640, 240, 160)}
    for name, (x, y, w, h) in rectangles.items():
        img = np.full((1024, 1024), 40, np.uint8)
        img[y:y + h, x:x + w] = 230
        cv2.imwrite(str(png / name), img)
    run("download_images.py", "--source", png, "--out", tmp_path / "ingest", "--size", 256, "--workers", 1)
    manifest = pd.read_csv(tmp_path / "ingest" / "manifest.csv")
    frame = manifest.assign(path=[str(tmp_path / "ingest" / p) for p in manifest.path])[
        ["ImageID", "path", "width", "height"]]
    assert frame.width.tolist() == [1024, 1024] and cv2.imread(frame.path[0]).shape[:2] == (256, 256)
    boxes_csv = tmp_path / "BBox_List_2017.csv"
    boxes_csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                         "00000001_000.png,Cardiomegaly,600,200,300,200,,,\n"
                         "00000002_000.png,Cardiomegaly,100,640,240,160,,,\n"
                         "00000002_000.png,Cardiomegaly,900,900,200,200,,,\n"
                         "00000002_000.png,Cardiomegaly,1100,100,50,50,,,\n"
                         "00000009_000.png,Cardiomegaly,10,10,50,50,,,\n")
    run_dir = tmp_path / "run"
    summary = localize_images(bright_spot, frame, run_dir, classes=["cardiomegaly"], boxes_csv=str(boxes_csv))
    assert summary["box_counts"] == {"n_not_scored": 1, "n_clipped": 1, "n_outside": 1}
    assert summary["iobb_0.5"]["cardiomegaly"] == pytest.approx(2 / 3)  # the clipped box lies on nothing bright
    found = pd.read_csv(run_dir / "boxes.csv")
    for name, (x, y, w, h) in rectangles.items():
        best = found[found.ImageID == name].iloc[-1]  # the threshold-180 box, in 1024-pixel coordinates
        assert abs(best.x - x) < 40 and abs(best.y - y) < 40 and abs(best.w - w) < 60 and abs(best.h - h) < 60
    table = pd.read_csv(run_dir / "localization.csv").set_index(["criterion", "T", "measure"])["cardiomegaly"]
    assert table[("count", 0, "n_boxes")] == 3 and table[("count", 0, "n_clipped")] == 1
    assert table[("count", 0, "n_outside")] == 1 and table[("count", 0, "n_not_scored")] == 1
    assert table[("IoBB", 0.5, "paper_acc")] == 0.8767
