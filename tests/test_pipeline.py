"""The four steps end to end on a small sample world, each run as a user runs it: as a script."""
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from data.classes import CLASSES, FINDINGS
from data.views import view_kind
from utils.calibration import expected_calibration_error, reported_probs

pytestmark = pytest.mark.slow  # every test here reads what the four steps, run as scripts, wrote


def run(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    world, ingest, labels = tmp / "world", tmp / "ingest", tmp / "labels"
    combined, run_dir = tmp / "combined.csv", tmp / "run"
    run("-m", "sample_world", "--out", world, "--padchest-images", 60, "--openi-reports", 10,
        "--images-per-zip", 30, "--nih-images", 0, "--quiet")  # no NIH part: steps 1-3 do not read it
    run("download_images.py", "--source", world / "images", "--out", ingest, "--size", 128, "--workers", 1)
    run("parselabelfile.py", "--padchest-csv", world / "labels" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
        "--openi-reports", world / "labels" / "NLMCXR_reports.tgz", "--out", labels, "--views", "all")  # step 4 picks
    run("combinelabels.py", "--labels", labels, "--manifest", ingest / "manifest.csv", "--out", combined,
        "--val-frac", 0.2, "--test-frac", 0.3)
    out = run("traintest.py", "--csv", combined, "--output-dir", run_dir, "--model", "unified-alexnet",
              "--image-size", 64, "--epochs", 1, "--batch-size", 8, "--workers", 0, "--bootstrap", 20, "--amp", "off",
              "--boxes-csv", world / "BBox_List_2017.csv", "--max-heatmaps", 3)
    return dict(world=world, ingest=ingest, labels=labels, combined=combined, run=run_dir, out=out)


def test_every_archived_image_reaches_the_manifest(pipeline):
    archived = sum(len(zipfile.ZipFile(z).namelist()) for z in (pipeline["world"] / "images").glob("*.zip"))
    manifest = pd.read_csv(pipeline["ingest"] / "manifest.csv")
    assert (manifest.status == "ok").all()
    padchest = manifest[manifest.ImageID.str.endswith(".png")]
    assert len(padchest) == archived == 60
    assert all((pipeline["ingest"] / p).is_file() for p in manifest.path)


def test_combined_csv_has_the_classes_and_a_patient_split(pipeline):
    frame = pd.read_csv(pipeline["combined"])
    assert list(frame.columns[-22:]) == CLASSES
    assert set(frame.split) == {"train", "val", "test"}
    assert frame.groupby("PatientID").split.nunique().max() == 1
    # 60 PadChest rows minus the two 'exclude' ones, plus every OpenI image
    manifest = pd.read_csv(pipeline["ingest"] / "manifest.csv")
    assert len(frame) == len(manifest) - 2
    # PadChest's view and labeller travel to combined.csv; OpenI's view only where step 1 read one
    raw = pd.read_csv(pipeline["world"] / "labels" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv")
    padchest = frame[frame.Source == "padchest"].merge(raw[["ImageID", "Projection", "MethodLabel"]], on="ImageID",
                                                       suffixes=("", "_raw"))
    assert len(padchest) == 58 and (padchest.view == padchest.Projection_raw).all()
    assert (padchest.MethodLabel == padchest.MethodLabel_raw).all() and set(padchest.MethodLabel) == {"Physician",
                                                                                                    "RNN_model"}
    openi = frame[frame.Source == "openi"]
    if "view" in manifest:  # step 1 reads it from the DICOM header
        views = manifest.set_index("ImageID").view
        assert openi.view.fillna("").tolist() == views.loc[openi.ImageID].fillna("").tolist()
    else:
        assert openi.view.isna().all()
    # step 2 and 3 CSVs carry their row counts
    for csv in (pipeline["labels"] / "padchest_labels.csv", pipeline["labels"] / "openi_labels.csv",
                pipeline["combined"]):
        assert int(open(f"{csv}.rows").read().split()[0]) == len(pd.read_csv(csv))


def test_run_folder_holds_model_metrics_predictions_and_heatmaps(pipeline):
    run_dir, frame = pipeline["run"], pd.read_csv(pipeline["combined"])
    assert (run_dir / "checkpoint_best.pt").is_file() and (run_dir / "checkpoint_last.pt").is_file()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert set(CLASSES) <= set(metrics["class"])
    predictions = pd.read_csv(run_dir / "predictions.csv")
    frontal = frame.view.map(view_kind) == "frontal"  # step 4's default --views; step 2 kept every view
    assert not frontal.all() and sorted(predictions.ImageID) == sorted(frame.ImageID[(frame.split == "test") & frontal])
    assert list(pd.read_csv(run_dir / "boxes.csv").columns) == ["ImageID", "class", "x", "y", "w", "h", "score"]
    assert len(list((run_dir / "heatmaps").glob("*__*.png"))) >= 1
    assert (run_dir / "localization.csv").is_file()
    assert "<table" in (run_dir / "report.html").read_text()


def test_external_validation_and_a_paired_comparison(pipeline, tmp_path):
    """Train on PadChest, hold OpenI out in full, twice with different seeds; then compare the two runs."""
    frame = pd.read_csv(pipeline["combined"])
    frame = frame[frame.view.map(view_kind) == "frontal"]  # step 4's default --views
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        text = run("traintest.py", "--csv", pipeline["combined"], "--output-dir", out, "--model", "unified-alexnet",
                   "--image-size", 64, "--epochs", 1, "--batch-size", 8, "--workers", 0, "--bootstrap", 20,
                   "--amp", "off", "--max-heatmaps", 0, "--seed", seed, "--train-sources", "padchest",
                   "--test-sources", "openi", "--calibrate")
        assert "external:openi: macro AUROC" in text
        metrics = pd.read_csv(out / "metrics.csv")
        external = metrics[metrics["group"] == "external:openi"]
        assert external["images"].iloc[0] == (frame.Source == "openi").sum()  # every split of the held-out source
        tested = metrics[metrics["group"] == "all"]
        assert tested["images"].iloc[0] == ((frame.Source == "padchest") & (frame.split == "test")).sum()
        predictions = pd.read_csv(out / "predictions.csv")
        assert set(predictions["set"]) == {"test", "external:openi"}
        assert set(predictions.loc[predictions["set"] == "test", "Source"]) == {"padchest"}
        calibration = pd.read_csv(out / "calibration.csv")
        assert {"ece", "ece_calibrated", "temperature"} <= set(calibration.columns)
        runs.append(out)
    # The same checkpoint without its temperatures gives the model's own probabilities: the calibrated run reports
    # them scaled once (not twice), and calibration.csv's 'before' columns describe them.
    ckpt = torch.load(runs[0] / "checkpoint_best.pt", weights_only=True)
    temperatures = ckpt.pop("temperatures")
    torch.save(ckpt, tmp_path / "uncalibrated.pt")
    run("traintest.py", "--csv", pipeline["combined"], "--output-dir", tmp_path / "raw", "--test-only", "--load_model",
        tmp_path / "uncalibrated.pt", "--workers", 0, "--bootstrap", 20, "--amp", "off", "--max-heatmaps", 0,
        "--train-sources", "padchest", "--test-sources", "openi")
    raw, calibrated = (pd.read_csv(d / "predictions.csv") for d in (tmp_path / "raw", runs[0]))
    columns = [f"prob_{c}" for c in CLASSES]
    assert (raw["ImageID"] == calibrated["ImageID"]).all()
    assert np.abs(reported_probs(raw[columns], temperatures).reported - calibrated[columns].to_numpy()).max() < 1e-9
    tested = (raw["set"] == "test").to_numpy()
    truth = raw.loc[tested, [f"true_{c}" for c in CLASSES]].to_numpy()
    findings = [CLASSES.index(c) for c in FINDINGS]
    ece = pd.read_csv(runs[0] / "calibration.csv").set_index("class")["ece"]
    assert ece["overall"] == pytest.approx(expected_calibration_error(
        truth[:, findings], raw.loc[tested, columns].to_numpy()[:, findings]), abs=1e-6)
    text = run("-m", "utils.compare", *runs, "--bootstrap", 50)
    assert "macro AUROC over" in text and "B - A" in text
    table = pd.read_csv(runs[1] / "compare" / "seed1" / "compare.csv")
    assert list(table["class"]) == [*CLASSES, "macro"] and "delong_p" in table.columns
    run("-m", "utils.report", runs[1])
    assert "Compared with" in (runs[1] / "report.html").read_text()


def test_unknown_sources_are_one_line(pipeline, tmp_path):
    result = subprocess.run([sys.executable, "traintest.py", "--csv", str(pipeline["combined"]), "--output-dir",
                             str(tmp_path / "r"), "--test-sources", "nih", "--amp", "off"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--test-sources: nih not in " + str(pipeline["combined"]) +
                                          "'s Source column (it has openi, padchest)")
