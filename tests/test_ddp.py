import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow  # every test here trains on two processes


def test_two_gloo_processes_train_and_gather_every_test_image_once(tmp_path, make_dataset, traintest, metrics):
    # 23 test images: the DistributedSampler pads rank 1's shard with a repeat, which must not be counted twice.
    csv = make_dataset(tmp_path / "data", n_train=24, n_val=9, n_test=23, size=32)
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "traintest.py"), "--csv", csv, "--output-dir", run, "--model", "unified-alexnet",
         "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
         "--bootstrap", "20", "--max-heatmaps", "3", "--amp", "off"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on cpu x2" in proc.stderr
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/1  train loss") == 1  # rank 0 alone writes
    assert not list(run.glob("*.tmp"))
    predictions = pd.read_csv(run / "predictions.csv")
    assert predictions["ImageID"].tolist() == [f"test{i:03d}.png" for i in range(23)]

    # The same checkpoint evaluated by one process gives the same predictions and metrics.
    single = tmp_path / "single"
    assert traintest("--csv", csv, "--output-dir", single, "--test-only", "--load-model",
                     run / "checkpoint_best.pt", "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 3) == 0
    one = pd.read_csv(single / "predictions.csv")
    numbers = [c for c in predictions.columns if c.startswith(("prob_", "label_", "true_"))]
    np.testing.assert_allclose(one[numbers].to_numpy(), predictions[numbers].to_numpy(), atol=1e-5)
    pd.testing.assert_frame_equal(metrics(single), metrics(run), atol=1e-4)
    # step 5 ran on rank 0 from the maps every rank computed in its share of the pass, gathered with the probabilities
    index = pd.read_csv(run / "heatmaps" / "index.csv")
    probs = predictions.set_index("ImageID")
    assert len(index) > 0
    for row in index.to_dict("records"):
        assert row["probability"] == probs.at[row["ImageID"], f"prob_{row['class']}"], row


def torchrun(*args):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "traintest.py"), *map(str, args), "--workers", "0", "--device", "cpu", "--amp", "off"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_file_that_does_not_decode_stops_every_rank_or_is_skipped_by_all(tmp_path, make_dataset):
    csv = make_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=4, size=32)
    (tmp_path / "data" / "images" / "train005.png").write_text("not a png")
    # 64 px: at 32 the map is 1x1, and batch norm cannot train on one value per channel (a batch of 1)
    common = ["--csv", csv, "--model", "unified-alexnet", "--image-size", 64, "--epochs", 1, "--batch-size", 1,
              "--bootstrap", 5, "--max-heatmaps", 0]
    # Only one rank reads the broken file; the other must stop too instead of waiting in a collective.
    proc = torchrun(*common, "--output-dir", tmp_path / "stopped")
    assert proc.returncode != 0
    # every rank that gets to say something names the file (torchrun stops the others once one has exited)
    errors = proc.stderr.split("traintest.py: error: ")[1:]
    assert errors and all(e.startswith(f"cannot decode {tmp_path / 'data' / 'images' / 'train005.png'}: ")
                          for e in errors), proc.stderr[-4000:]
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr
    assert not (tmp_path / "stopped" / "checkpoint_last.pt").exists()

    # Skipped: the rank whose batch held only the broken file steps with the others, and rank 0 lists it.
    run = tmp_path / "run"
    proc = torchrun(*common, "--output-dir", run, "--skip-bad-images")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [os.path.basename(p) for p in pd.read_csv(run / "skipped_images.csv")["path"]] == ["train005.png"]

    # --predict: the broken file is a row of predict_errors.csv and every other file is predicted once.
    proc = torchrun("--predict", tmp_path / "data" / "images", "--load-model", run / "checkpoint_best.pt",
                    "--output-dir", tmp_path / "pred", "--max-heatmaps", 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    errors = pd.read_csv(tmp_path / "pred" / "predict_errors.csv")
    assert [os.path.basename(p) for p in errors["path"]] == ["train005.png"]
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")["ImageID"]
    assert len(predicted) == 15 and predicted.is_unique and "train005" not in set(predicted)


def test_sigterm_stops_every_rank_at_the_same_step_and_the_run_resumes(tmp_path, make_dataset, stopped_run):
    """torchrun passes SIGTERM to each rank; the ranks agree on it at the next look at the loss (--log-every 1:
    after every step) and stop together, so that none waits in a collective the others have left; rank 0 writes
    the mid-epoch checkpoint, and a resumed run with the same processes continues from it."""
    from conftest import STOPPABLE
    csv = make_dataset(tmp_path / "data", n_train=128, n_val=8, n_test=8, size=64)
    run = tmp_path / "run"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--csv", csv, "--output-dir", run, "--workers", 0, "--device", "cpu", *STOPPABLE]
    _, err, last_step = stopped_run(args, run / "train.log", [signal.SIGTERM], launcher=launcher, again=False)
    assert err.count("traintest.py: stopped by SIGTERM in epoch 1 after batch ") == 1, err[-3000:]  # rank 0 says it
    assert "Traceback (most recent call last)" not in err.split("stopped by SIGTERM")[0]
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=True)
    progress = ckpt["progress"]
    assert ckpt["epoch"] == 0 and progress["world_size"] == 2 and last_step <= progress["step"] < 16
    assert progress["seen"] == 2 * 4 * progress["step"]  # both ranks' images, summed on rank 0
    resumed = subprocess.run([sys.executable, *launcher, os.path.join(ROOT, "traintest.py"), "--resume", str(run)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch 0, batch {progress['step']} of epoch 1" in (run / "train.log").read_text()
    assert len(torch.load(run / "checkpoint_last.pt", weights_only=True)["history"]) == 2
    assert (run / "metrics.csv").is_file()
