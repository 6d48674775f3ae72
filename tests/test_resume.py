import os
import signal
import subprocess
import sys

import pandas as pd
import torch

from test_train import ROOT, make_dataset, one_thread, read_metrics, train_cli  # noqa: F401 (fixture)

ARGS = ["--model", "unified-alexnet", "--image-size", 32, "--epochs", 3, "--batch_size", 4, "--workers", 0,
        "--deterministic", "--seed", 7, "--lr-patience", 0, "--bootstrap", 50, "--max-heatmaps", 0]


def test_a_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    csv = make_dataset(tmp_path / "data", n_train=24, n_val=12, n_test=12, size=32)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_cli("--csv", csv, "--run-dir", whole, *ARGS) == 0

    # SIGKILL right after epoch 1's checkpoint: nothing gets a chance to clean up, as with a preempted VM.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "traintest.py"), "--csv", str(csv), "--run-dir",
                           str(killed), *map(str, ARGS)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRAINTEST_KILL_AFTER_EPOCH": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert torch.load(killed / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    assert not (killed / "metrics.csv").exists()

    assert train_cli("--resume", killed) == 0
    pd.testing.assert_frame_equal(read_metrics(killed), read_metrics(whole))
    last_whole = torch.load(whole / "checkpoint_last.pt", weights_only=True)
    last_killed = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    assert [h["val_loss"] for h in last_killed["history"]] == [h["val_loss"] for h in last_whole["history"]]
    for name, value in last_whole["model"].items():
        assert torch.equal(value, last_killed["model"][name]), name
    assert "resuming" in (killed / "train.log").read_text()


def test_resume_of_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "args.json").write_text("{}")
    assert train_cli("--resume", tmp_path) == 2
    assert "has no checkpoint_last.pt" in capsys.readouterr().err
