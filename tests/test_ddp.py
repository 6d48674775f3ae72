import os
import subprocess
import sys

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    np.testing.assert_allclose(one.iloc[:, 1:].to_numpy(), predictions.iloc[:, 1:].to_numpy(), atol=1e-5)
    pd.testing.assert_frame_equal(metrics(single), metrics(run), atol=1e-4)
    # step 5 ran on rank 0 from the maps every rank computed in its share of the pass, gathered with the probabilities
    index = pd.read_csv(run / "heatmaps" / "index.csv")
    probs = predictions.set_index("ImageID")
    assert len(index) > 0
    for row in index.to_dict("records"):
        assert row["probability"] == probs.at[row["ImageID"], f"prob_{row['class']}"], row


def test_a_file_that_does_not_decode_stops_every_rank_with_its_name(tmp_path, make_dataset, traintest):
    # Only one rank reads the broken file; the other must stop too instead of waiting in a collective.
    csv = make_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=4, size=32)
    assert traintest("--csv", csv, "--output-dir", tmp_path / "run", "--model", "unified-alexnet", "--image-size", 32,
                     "--epochs", 1, "--workers", 0, "--bootstrap", 5, "--max-heatmaps", 0) == 0
    (tmp_path / "data" / "images" / "broken.png").write_bytes(b"not a png")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "traintest.py"), "--predict", tmp_path / "data" / "images", "--load-model",
         tmp_path / "run" / "checkpoint_best.pt", "--output-dir", tmp_path / "pred", "--workers", "0", "--device", "cpu",
         "--amp", "off"], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert proc.stderr.count("traintest.py: error: cannot decode") == 2 and "broken.png" in proc.stderr
    assert not (tmp_path / "pred" / "predictions.csv").exists()
