import os
import subprocess
import sys

import numpy as np
import pandas as pd

from test_train import ROOT, make_dataset, one_thread, read_metrics, train_cli  # noqa: F401 (fixture)


def test_two_gloo_processes_train_and_gather_every_test_image_once(tmp_path):
    # 23 test images: the DistributedSampler pads rank 1's shard with a repeat, which must not be counted twice.
    csv = make_dataset(tmp_path / "data", n_train=24, n_val=9, n_test=23, size=32)
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "traintest.py"), "--csv", csv, "--run-dir", run, "--model", "unified-alexnet",
         "--image-size", "32", "--epochs", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu",
         "--bootstrap", "20", "--max-heatmaps", "0"],
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
    assert train_cli("--csv", csv, "--run-dir", single, "--is_training", 0, "--load_model",
                     run / "checkpoint_best.pt", "--workers", 0, "--bootstrap", 20, "--max-heatmaps", 0) == 0
    one = pd.read_csv(single / "predictions.csv")
    np.testing.assert_allclose(one.iloc[:, 1:].to_numpy(), predictions.iloc[:, 1:].to_numpy(), atol=1e-5)
    pd.testing.assert_frame_equal(read_metrics(single), read_metrics(run), atol=1e-4)
