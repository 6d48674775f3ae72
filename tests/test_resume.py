import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import ROOT

ARGS = ["--model", "unified-alexnet", "--image-size", 32, "--epochs", 3, "--batch-size", 4, "--workers", 0,
        "--deterministic", "--seed", 7, "--lr-patience", 0, "--bootstrap", 50, "--max-heatmaps", 0, "--amp", "off"]


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, capsys, make_dataset, traintest, metrics):
    csv = make_dataset(tmp_path / "data", n_train=24, n_val=12, n_test=12, size=32)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert traintest("--csv", csv, "--output-dir", whole, *ARGS) == 0

    # SIGKILL from outside as soon as the first checkpoint is on disk: nothing gets a chance to clean up, as with a
    # preempted VM. The checkpoint is written to a temporary file and renamed, so once it exists it is whole.
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "traintest.py"), "--csv", str(csv), "--output-dir",
                             str(killed), *map(str, ARGS)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint_last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    stopped_after = torch.load(killed / "checkpoint_last.pt", weights_only=True)["epoch"]
    assert 1 <= stopped_after < 3
    assert not (killed / "metrics.csv").exists()

    assert traintest("--resume", killed) == 0
    pd.testing.assert_frame_equal(metrics(killed), metrics(whole))
    last_whole = torch.load(whole / "checkpoint_last.pt", weights_only=True)
    last_killed = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    assert [h["val_loss"] for h in last_killed["history"]] == [h["val_loss"] for h in last_whole["history"]]
    for name, value in last_whole["model"].items():
        assert torch.equal(value, last_killed["model"][name]), name
    assert f"resuming {killed} after epoch {stopped_after}" in (killed / "train.log").read_text()

    # Flags given with --resume replace the stored ones, in any spelling argparse accepts (an abbreviation here).
    assert traintest("--resume", killed, "--epoch", 4) == 0
    assert torch.load(killed / "checkpoint_last.pt", weights_only=True)["epoch"] == 4
    assert json.loads((killed / "args.json").read_text())["epochs"] == 3  # the run's record of how it started
    # The optimizer's settings given with --resume replace the restored ones; what shapes the model is refused.
    assert traintest("--resume", killed, "--epochs", 5, "--lr", 5e-4, "--lr-patience", 100) == 0
    last = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == 5 and last["optimizer"]["param_groups"][0]["lr"] == 5e-4
    capsys.readouterr()
    assert traintest("--resume", killed, "--epochs", 6, "--image", 64, "--model", "chexnet") == 2
    err = capsys.readouterr().err
    assert "cannot change --image-size, --model" in err and "Traceback" not in err


def test_resume_rejects_unknown_flags_and_a_folder_without_a_checkpoint(tmp_path, capsys, traintest):
    (tmp_path / "args.json").write_text("{}")
    assert traintest("--resume", tmp_path) == 2
    assert "has no checkpoint_last.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        traintest("--resume", tmp_path, "--epcohs", 30)
    assert exit_.value.code == 2
    assert "unrecognized arguments: --epcohs" in capsys.readouterr().err
