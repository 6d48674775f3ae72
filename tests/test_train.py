import os

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import googlenet

import data.dataset
from data.classes import CLASSES
from utils.checkpoint import load_checkpoint

PROBS = [f"prob_{c}" for c in CLASSES]
LABELS = [f"label_{c}" for c in CLASSES]


def labels_from_files(run):
    """predictions.csv's labels recomputed from its written probabilities and thresholds.csv, files only."""
    predictions = pd.read_csv(run / "predictions.csv")
    thresholds = pd.read_csv(run / "thresholds.csv")
    assert thresholds["class"].tolist() == CLASSES
    recomputed = predictions[PROBS].to_numpy() >= thresholds["threshold"].to_numpy()
    return recomputed, predictions[LABELS].to_numpy() == 1


# --amp on is bfloat16 autocast on a CPU, native or emulated: the suite must pass either way, and with it off.
@pytest.mark.slow
@pytest.mark.parametrize("amp", ["off", "on"])
def test_unified_dcnn_trains_with_wcel_and_evaluates_with_a_class_absent_from_test(tmp_path, capsys, amp,
                                                                                    make_dataset, traintest, metrics):
    csv = make_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert traintest("--csv", csv, "--output-dir", run, "--model", "unified-alexnet", "--pooling", "lse",
                     "--loss", "wcel", "--image-size", 64, "--epochs", 4, "--batch-size", 8, "--workers", 1,
                     "--cache", "--bootstrap", 100, "--max-heatmaps", 6, "--amp", amp) == 0
    err = capsys.readouterr().err
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "args.json", "train.log", "metrics.csv",
                 "predictions.csv", "roc.png", "thresholds.csv", "boxes.csv", "heatmaps/index.csv", "report.html"):
        assert (run / name).is_file(), name
    table = metrics(run)
    assert list(table.index) == CLASSES + ["macro", "micro"]
    absent = table.loc["tuberculosis"]
    assert absent.positives == 0 and absent.negatives == 24 and np.isnan(absent.auroc)
    # The marks are learnable: the classifier does far better than chance on them.
    assert table.loc[["atelectasis", "cardiomegaly", "pleural effusion", "nodule"], "auroc"].mean() > 0.8
    assert "test macro AUROC" in err and "tuberculosis" not in err.split("test macro AUROC")[1]
    assert f"amp {'bf16' if amp == 'on' else 'off'}" in err
    predictions = pd.read_csv(run / "predictions.csv")
    ids = [c for c in predictions.columns if not c.startswith(("prob_", "label_", "true_"))]
    assert ids == ["ImageID", "PatientID", "Source", "set", "model"] and len(predictions) == 24
    assert predictions.shape[1] == len(ids) + 3 * len(CLASSES)
    truth = pd.read_csv(csv).set_index("ImageID").loc[predictions["ImageID"], CLASSES].to_numpy()
    assert (predictions[[f"true_{c}" for c in CLASSES]].to_numpy() == truth).all()
    assert predictions["ImageID"].tolist() == [f"test{i:03d}.png" for i in range(24)]
    recomputed, written = labels_from_files(run)
    assert (recomputed == written).all()
    # Step 5 used the evaluation's forward pass: every heatmap's probability is the one in predictions.csv.
    index = pd.read_csv(run / "heatmaps" / "index.csv")
    assert len(index) > 0
    probs = predictions.set_index("ImageID")
    for row in index.to_dict("records"):
        assert row["probability"] == probs.at[row["ImageID"], f"prob_{row['class']}"], row
        assert row["predicted"] == probs.at[row["ImageID"], f"label_{row['class']}"], row
    log = (run / "train.log").read_text()
    assert log.count("epoch 4/4") == 1 and "val mean AUROC" in log
    best = torch.load(run / "checkpoint_best.pt", weights_only=True)
    assert best["thresholds"] == pytest.approx(pd.read_csv(run / "thresholds.csv")["threshold"].tolist())
    assert best["model_args"]["name"] == "unified-alexnet" and best["classes"] == CLASSES


@pytest.mark.slow
def test_chexnet_trains_then_evaluates_and_predicts_from_its_checkpoint(tmp_path, monkeypatch, make_dataset,
                                                                         traintest, metrics):
    csv = make_dataset(tmp_path / "data", n_train=16, n_val=8, n_test=8, size=32)
    run = tmp_path / "run"
    # The seed's flag spellings and model alias keep working.
    assert traintest("--csv", csv, "--run-dir", run, "--model", "densenet", "--image-size", 32, "--epochs", 1,
                     "--batch_size", 8, "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 0,
                     "--save_model", tmp_path / "saved.pt") == 0
    assert (tmp_path / "saved.pt").is_file()

    # Evaluation decodes each test image once: the heatmaps come from the same pass; each of the 8 heatmap pictures
    # reads its radiograph once more, for display (a second forward pass would read every image a third time).
    decoded = []
    read_gray = data.dataset.read_gray
    monkeypatch.setattr(data.dataset, "read_gray", lambda path: decoded.append(os.path.basename(path)) or
                        read_gray(path))
    again = tmp_path / "again"
    assert traintest("--csv", csv, "--run-dir", again, "--is_training", 0, "--load_model", tmp_path / "saved.pt",
                     "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 8, "--heatmap-classes", "cardiomegaly") == 0
    assert sorted(decoded) == sorted(2 * [f"test{i:03d}.png" for i in range(8)])
    pd.testing.assert_frame_equal(metrics(again), metrics(run))
    assert len(pd.read_csv(again / "heatmaps" / "index.csv")) == 8

    out = tmp_path / "pred"
    assert traintest("--predict", tmp_path / "data" / "images", "--load-model", run / "checkpoint_best.pt",
                     "--output-dir", out, "--workers", 0, "--max-heatmaps", 2, "--heatmap-classes",
                     "cardiomegaly") == 0
    predicted = pd.read_csv(out / "predictions.csv").set_index("ImageID")
    assert len(predicted) == 32 and "test000" in predicted.index
    # Step 5 ran on the predictions: heatmaps for 2 images, boxes, and the report.
    assert len(list((out / "heatmaps").glob("*__cardiomegaly.png"))) == 2
    assert set(pd.read_csv(out / "boxes.csv")["class"]) <= {"cardiomegaly"}
    assert (out / "report.html").is_file()
    test = pd.read_csv(run / "predictions.csv")
    test["ImageID"] = test["ImageID"].str.replace(".png", "")
    same = [c for c in predicted.columns if c.startswith(("prob_", "label_"))]
    np.testing.assert_allclose(predicted.loc[test["ImageID"], same].to_numpy(),
                               test.set_index("ImageID")[same].to_numpy(), atol=2e-6)


@pytest.mark.slow
def test_pretrained_googlenet_gets_its_weights_input_everywhere(tmp_path, make_dataset, traintest, metrics):
    # torchvision's GoogLeNet weights expect input in [-1, 1]: training, a reloaded checkpoint, a resumed run and
    # --predict must all feed it that, whatever was known when the model was built.
    csv = make_dataset(tmp_path / "data", n_train=16, n_val=8, n_test=8, size=64)
    torch.manual_seed(1)
    weights = tmp_path / "googlenet.pth"
    torch.save(googlenet(weights=None, aux_logits=True, init_weights=True).state_dict(), weights)
    common = ["--csv", csv, "--model", "unified-googlenet", "--pretrained", "--weights", weights, "--image-size", 64,
              "--batch-size", 8, "--workers", 0, "--bootstrap", 10, "--max-heatmaps", 0, "--deterministic",
              "--seed", 3, "--lr-patience", 0]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert traintest(*common, "--output-dir", whole, "--epochs", 2) == 0
    assert traintest(*common, "--output-dir", resumed, "--epochs", 1) == 0
    assert traintest("--resume", resumed, "--epochs", 2) == 0
    pd.testing.assert_frame_equal(metrics(resumed), metrics(whole))
    last_whole, last_resumed = (torch.load(run / "checkpoint_last.pt", weights_only=True) for run in (whole, resumed))
    assert last_resumed["model_args"] == last_whole["model_args"]
    for name, value in last_whole["model"].items():  # the resumed epoch trained on the same input
        assert torch.equal(value, last_resumed["model"][name]), name

    model, ckpt = load_checkpoint(whole / "checkpoint_best.pt")
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)
    assert ckpt["model_args"]["mean"] == [0.5, 0.5, 0.5] and model.input_size == 64

    assert traintest("--predict", tmp_path / "data" / "images", "--load-model", whole / "checkpoint_best.pt",
                     "--output-dir", tmp_path / "pred", "--workers", 0, "--max-heatmaps", 0) == 0
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("ImageID")
    test = pd.read_csv(whole / "predictions.csv")
    test["ImageID"] = test["ImageID"].str.replace(".png", "")
    same = [c for c in predicted.columns if c.startswith(("prob_", "label_"))]
    np.testing.assert_allclose(predicted.loc[test["ImageID"], same].to_numpy(),
                               test.set_index("ImageID")[same].to_numpy(), atol=2e-6)


def user_error(capsys, traintest, *args):
    """The stderr of a traintest run that must fail as a user error: status 2, no traceback."""
    capsys.readouterr()
    assert traintest(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_bad_inputs_get_clear_messages(tmp_path, capsys, make_dataset, traintest, traintest_process):
    csv = make_dataset(tmp_path / "data", n_train=10, n_val=4, n_test=4, size=32)
    os.remove(tmp_path / "data" / "images" / "train003.png")
    os.remove(tmp_path / "data" / "images" / "val001.png")
    common = ["--image-size", 32, "--epochs", 1, "--workers", 0, "--model", "unified-alexnet", "--bootstrap", 10,
              "--max-heatmaps", 0]
    # The one check run as a real command line: exit status 2 and a message, not a traceback.
    proc = traintest_process("--csv", csv, "--output-dir", tmp_path / "r", *common, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "2 of 18 images" in proc.stderr and "train003.png" in proc.stderr and "--skip-missing" in proc.stderr
    assert traintest("--csv", csv, "--output-dir", tmp_path / "r", "--skip-missing", *common) == 0
    assert len(pd.read_csv(tmp_path / "r" / "predictions.csv")) == 4
    # Training again into a finished run's folder would replace its checkpoints: refused unless asked for.
    before = (tmp_path / "r" / "checkpoint_best.pt").read_bytes()
    err = user_error(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "r", "--skip-missing", *common)
    assert "already holds a run" in err and "--resume" in err
    assert (tmp_path / "r" / "checkpoint_best.pt").read_bytes() == before

    frame = pd.read_csv(csv).drop(columns=["nodule", "mass"])
    frame.to_csv(tmp_path / "nocols.csv", index=False)
    err = user_error(capsys, traintest, "--csv", tmp_path / "nocols.csv", "--output-dir", tmp_path / "r2", *common)
    assert "nocols.csv" in err and "'mass', 'nodule'" in err
    frame = pd.read_csv(csv)
    frame.loc[3, "mass"] = 2
    frame.to_csv(tmp_path / "badvalue.csv", index=False)
    err = user_error(capsys, traintest, "--csv", tmp_path / "badvalue.csv", "--output-dir", tmp_path / "r2", *common)
    assert "badvalue.csv, row 5: mass is '2'" in err

    err = user_error(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "r3", "--skip-missing",
                     "--load-model", tmp_path / "r" / "checkpoint_best.pt", *common, "--model", "chexnet")
    assert "holds a unified-alexnet model" in err
    ckpt = torch.load(tmp_path / "r" / "checkpoint_best.pt", weights_only=True)
    ckpt["classes"] = CLASSES[:5]
    torch.save(ckpt, tmp_path / "five.pt")
    err = user_error(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "r4", "--skip-missing",
                     "--test-only", "--load-model", tmp_path / "five.pt")
    assert "five.pt" in err and "other classes" in err
    err = user_error(capsys, traintest, "--csv", csv, "--output-dir", tmp_path / "r5", "--test-only",
                     "--load-model", tmp_path / "nope.pt")
    assert "nope.pt not found" in err


def test_a_programming_error_keeps_its_traceback(monkeypatch, traintest):
    import traintest as script

    def bug(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(script, "run", bug)
    with pytest.raises(ValueError, match="a bug"):
        traintest("--csv", "x.csv")


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, make_dataset, traintest):
    from models import losses

    csv = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4, size=32)
    calls = {"n": 0}

    def breaks_in_epoch_two(logits, targets):
        calls["n"] += 1
        loss = losses.bce_loss(logits, targets)
        return loss * float("nan") if calls["n"] > 3 else loss  # 2 train batches + validation, then NaN

    monkeypatch.setitem(losses.LOSSES, "bce", breaks_in_epoch_two)
    run = tmp_path / "run"
    assert traintest("--csv", csv, "--output-dir", run, "--model", "unified-alexnet", "--image-size", 32,
                     "--epochs", 3, "--batch-size", 8, "--workers", 0) == 2
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2" in err and "last good checkpoint is kept" in err
    assert torch.load(run / "checkpoint_last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("text, setting", [("auto", "auto"), ("on", "on"), ("1", "on"), ("off", "off"), ("0", "off"),
                                           ("False", "off")])
def test_amp_switch_spellings(text, setting):
    from utils.cli import amp_setting
    from utils.runtime import use_amp
    assert amp_setting(text) == setting
    if setting != "auto":  # only auto asks the machine
        assert use_amp(setting, torch.device("cpu")) == (torch.bfloat16 if setting == "on" else None)


@pytest.mark.parametrize("setting, device, native, dtype", [
    ("auto", "cuda", True, torch.bfloat16),   # Ampere and later: bf16, no GradScaler
    ("auto", "cuda", False, torch.float16),   # Volta, Turing: fp16 with a GradScaler
    ("on", "cuda", True, torch.bfloat16),
    ("on", "cuda", False, torch.float16),
    ("off", "cuda", True, None),
    ("auto", "cpu", True, torch.bfloat16),    # native bf16 (AMX, AVX-512 BF16)
    ("auto", "cpu", False, None),             # emulated bf16 is many times slower than float32
    ("on", "cpu", False, torch.bfloat16),
    ("off", "cpu", True, None)])
def test_amp_auto_picks_bf16_where_native_fp16_on_other_gpus(setting, device, native, dtype):
    from utils.runtime import amp_dtype
    assert amp_dtype(setting, device, native) == dtype


@pytest.mark.slow
def test_the_gpu_benchmark_runs_without_pydicom_or_the_gcs_client(tmp_path):
    """benchmarks/bench_gpu.py on a GPU VM that has neither (its --quick sizes, smaller still): every measurement
    prints, and the training path never imports them."""
    import subprocess
    import sys
    from conftest import ROOT, WITHOUT_PYDICOM_AND_GCS
    code = WITHOUT_PYDICOM_AND_GCS + (
        "import runpy\nrunpy.run_module('benchmarks.bench_gpu', run_name='__main__')\n"
        "assert not [m for m in sys.modules if m.startswith(('pydicom', 'google.cloud'))]\n")
    result = subprocess.run([sys.executable, "-c", code, "--quick", "--models", "unified-alexnet", "--batches", "2",
                             "--precisions", "fp32", "--image-size", "32", "--stored-size", "48", "--steps", "1",
                             "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in ("unified-alexnet batch    2 fp32:", "uncached:", "--cache-dir build:", "--cache-dir:", "--cache:",
                 "loop/model alone", "step 5 (predict with maps + localize, 2 images", "20 CheXNet epochs over"):
        assert line in out, (line, out)
    assert "skipped" not in out
