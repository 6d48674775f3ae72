import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from data.classes import CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNED = [1, 2, 5, 11]  # atelectasis, cardiomegaly, pleural effusion, nodule: drawn as visible marks


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads spinning against other processes make these
    tiny models many times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_dataset(root, n_train=48, n_val=24, n_test=24, size=64, seed=0, absent_in_test="tuberculosis"):
    """PNG images where each class in LEARNED is a bright square at its own place, and a combined.csv in the
    contract's layout (relative paths). `absent_in_test` has positives in train and val only."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            labels = np.zeros(len(CLASSES), dtype=int)
            labels[LEARNED] = rng.random(len(LEARNED)) < 0.4
            labels[CLASSES.index("normal")] = int(labels.sum() == 0)
            labels[CLASSES.index(absent_in_test)] = int(split != "test" and i % 4 == 0)
            img = rng.integers(0, 60, (size, size + 8), dtype=np.uint8)
            for k, c in enumerate(LEARNED):
                if labels[c]:
                    y, x = (k // 2) * size // 2 + 6, (k % 2) * size // 2 + 6
                    img[y:y + size // 4, x:x + size // 4] = 230
            image_id = f"{split}{i:03d}.png"
            cv2.imwrite(os.path.join(root, "images", image_id), img)
            rows.append([image_id, f"images/{image_id}", "padchest", f"p{split}{i}", f"s{split}{i}", "PA",
                         size + 8, size, split] + labels.tolist())
    frame = pd.DataFrame(rows, columns=["ImageID", "path", "Source", "PatientID", "StudyID", "Projection", "width",
                                        "height", "split"] + CLASSES)
    csv = os.path.join(root, "combined.csv")
    frame.to_csv(csv, index=False)
    return csv


def train_cli(*args):
    """traintest.main in this process (a subprocess would spend most of a test importing torch); the exit status."""
    import traintest
    return traintest.main([str(a) for a in args])


def run_traintest(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "traintest.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"traintest.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def read_metrics(run_dir):
    return pd.read_csv(os.path.join(run_dir, "metrics.csv"), keep_default_na=True).set_index("class")


def test_unified_dcnn_trains_with_wcel_and_evaluates_with_a_class_absent_from_test(tmp_path, capsys):
    csv = make_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert train_cli("--csv", csv, "--run-dir", run, "--model", "unified-alexnet", "--pooling", "lse",
                     "--loss", "wcel", "--image-size", 64, "--epochs", 4, "--batch_size", 8, "--workers", 1,
                     "--cache", "--bootstrap", 100, "--max-heatmaps", 0) == 0
    err = capsys.readouterr().err
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "args.json", "train.log", "metrics.csv",
                 "predictions.csv", "roc.png", "thresholds.csv"):
        assert (run / name).is_file(), name
    metrics = read_metrics(run)
    assert list(metrics.index) == CLASSES + ["macro", "micro"]
    absent = metrics.loc["tuberculosis"]
    assert absent.positives == 0 and absent.negatives == 24 and np.isnan(absent.auroc)
    # The marks are learnable: the classifier does far better than chance on them.
    assert metrics.loc[["atelectasis", "cardiomegaly", "pleural effusion", "nodule"], "auroc"].mean() > 0.8
    assert "test mean AUROC" in err and "tuberculosis" not in err.split("test mean AUROC")[1]
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions.shape == (24, 1 + 2 * len(CLASSES))
    assert predictions["ImageID"].tolist() == [f"test{i:03d}.png" for i in range(24)]
    thresholds = pd.read_csv(run / "thresholds.csv")
    assert thresholds["class"].tolist() == CLASSES
    labels = predictions[[f"prob_{c}" for c in CLASSES]].to_numpy() >= thresholds["threshold"].to_numpy()
    assert (labels == predictions[[f"label_{c}" for c in CLASSES]].to_numpy()).all()
    log = (run / "train.log").read_text()
    assert log.count("epoch 4/4") == 1 and "val mean AUROC" in log
    best = torch.load(run / "checkpoint_best.pt", weights_only=True)
    assert best["thresholds"] == pytest.approx(thresholds["threshold"].tolist())
    assert best["args"]["model"] == "unified-alexnet" and best["classes"] == CLASSES


def test_chexnet_trains_then_evaluates_and_predicts_from_its_checkpoint(tmp_path):
    csv = make_dataset(tmp_path / "data", n_train=16, n_val=8, n_test=8, size=32)
    run = tmp_path / "run"
    assert train_cli("--csv", csv, "--run-dir", run, "--model", "densenet", "--image-size", 32, "--epochs", 1,
                     "--batch_size", 8, "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 0,
                     "--save_model", tmp_path / "saved.pt") == 0
    assert (tmp_path / "saved.pt").is_file()
    again = tmp_path / "again"
    assert train_cli("--csv", csv, "--run-dir", again, "--is_training", 0, "--load_model", tmp_path / "saved.pt",
                     "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 0) == 0
    pd.testing.assert_frame_equal(read_metrics(again), read_metrics(run))
    out = tmp_path / "pred"
    assert train_cli("--predict", tmp_path / "data" / "images", "--load_model", run / "checkpoint_best.pt",
                     "--out", out, "--workers", 0, "--max-heatmaps", 2, "--heatmap-classes", "cardiomegaly") == 0
    predicted = pd.read_csv(out / "predictions.csv").set_index("ImageID")
    assert len(predicted) == 32 and "test000" in predicted.index
    # Step 5 ran on the predictions: heatmaps for 2 images, boxes, and the report.
    assert len(list((out / "heatmaps").glob("*__cardiomegaly.png"))) == 2
    assert set(pd.read_csv(out / "boxes.csv")["class"]) <= {"cardiomegaly"}
    assert (out / "report.html").is_file()
    test = pd.read_csv(run / "predictions.csv")
    test["ImageID"] = test["ImageID"].str.replace(".png", "")
    np.testing.assert_allclose(predicted.loc[test["ImageID"]].to_numpy(), test.set_index("ImageID").to_numpy(),
                               atol=2e-6)


def user_error(capsys, *args):
    """The stderr of a traintest run that must fail as a user error: status 2, no traceback."""
    capsys.readouterr()
    assert train_cli(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs_get_clear_messages(tmp_path, capsys):
    csv = make_dataset(tmp_path / "data", n_train=10, n_val=4, n_test=4, size=32)
    os.remove(tmp_path / "data" / "images" / "train003.png")
    os.remove(tmp_path / "data" / "images" / "val001.png")
    common = ["--image-size", 32, "--epochs", 1, "--workers", 0, "--model", "unified-alexnet", "--bootstrap", 10,
              "--max-heatmaps", 0]
    # The one check run as a real command line: exit status 2 and a message, not a traceback.
    proc = run_traintest("--csv", csv, "--run-dir", tmp_path / "r", *common, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "2 of 18 images" in proc.stderr and "train003.png" in proc.stderr and "--skip-missing" in proc.stderr
    assert train_cli("--csv", csv, "--run-dir", tmp_path / "r", "--skip-missing", *common) == 0
    assert len(pd.read_csv(tmp_path / "r" / "predictions.csv")) == 4
    # Training again into a finished run's folder would replace its checkpoints: refused unless asked for.
    before = (tmp_path / "r" / "checkpoint_best.pt").read_bytes()
    err = user_error(capsys, "--csv", csv, "--run-dir", tmp_path / "r", "--skip-missing", *common)
    assert "already holds a run" in err and "--resume" in err
    assert (tmp_path / "r" / "checkpoint_best.pt").read_bytes() == before

    frame = pd.read_csv(csv).drop(columns=["nodule", "mass"])
    frame.to_csv(tmp_path / "nocols.csv", index=False)
    err = user_error(capsys, "--csv", tmp_path / "nocols.csv", "--run-dir", tmp_path / "r2", *common)
    assert "nocols.csv" in err and "'mass', 'nodule'" in err

    err = user_error(capsys, "--csv", csv, "--run-dir", tmp_path / "r3", "--skip-missing", "--load_model",
                     tmp_path / "r" / "checkpoint_best.pt", *common, "--model", "chexnet")
    assert "holds a unified-alexnet model" in err
    ckpt = torch.load(tmp_path / "r" / "checkpoint_best.pt", weights_only=True)
    ckpt["classes"] = CLASSES[:5]
    torch.save(ckpt, tmp_path / "five.pt")
    err = user_error(capsys, "--csv", csv, "--run-dir", tmp_path / "r4", "--skip-missing", "--is_training", 0,
                     "--load_model", tmp_path / "five.pt")
    assert "five.pt" in err and "other classes" in err
    err = user_error(capsys, "--csv", csv, "--run-dir", tmp_path / "r5", "--is_training", 0, "--load_model",
                     tmp_path / "nope.pt")
    assert "nope.pt not found" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import traintest
    from models import losses

    csv = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4, size=32)
    calls = {"n": 0}

    def breaks_in_epoch_two(logits, targets):
        calls["n"] += 1
        loss = losses.bce_loss(logits, targets)
        return loss * float("nan") if calls["n"] > 3 else loss  # 2 train batches + validation, then NaN

    monkeypatch.setitem(losses.LOSSES, "bce", breaks_in_epoch_two)
    run = tmp_path / "run"
    status = traintest.main(["--csv", str(csv), "--run-dir", str(run), "--model", "unified-alexnet",
                             "--image-size", "32", "--epochs", "3", "--batch_size", "8", "--workers", "0"])
    assert status == 2
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2" in err and "last good checkpoint is kept" in err
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
