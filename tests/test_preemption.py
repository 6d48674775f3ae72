"""A spot VM's preemption (SIGTERM) and Ctrl-C: the step ends, a mid-epoch checkpoint is written, the process exits 0
within 20 s, and --resume continues from the middle of the epoch to the same end as a run never stopped."""
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, STOPPABLE
from data.files import is_temporary

N_BATCHES = 16  # 64 training images, batch 4


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_exits_0_and_resumes_to_the_same_end(tmp_path, uninterrupted, stopped_run,
                                                                          traintest, metrics):
    run = tmp_path / "run"
    code, err, last_step = stopped_run(["--csv", uninterrupted["csv"], "--output-dir", run, "--workers", 0,
                                        *STOPPABLE], run / "train.log", [signal.SIGTERM])
    assert code == 0, err[-3000:]
    assert last_step < N_BATCHES, "the signal should land mid-epoch"
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=True)  # whole, though SIGTERM kept coming
    progress = ckpt["progress"]
    assert ckpt["epoch"] == 0 and last_step <= progress["step"] < N_BATCHES
    assert progress["seen"] == 4 * progress["step"] and progress["batch_size"] == 4 and progress["world_size"] == 1
    assert err.rstrip().splitlines()[-1] == (
        f"traintest.py: stopped by SIGTERM in epoch 1 after batch {progress['step']} of {N_BATCHES}; "
        f"checkpoint_last.pt holds the run: continue with python traintest.py --resume {run}")
    assert "Traceback" not in err and not (run / "metrics.csv").exists()

    assert traintest("--resume", run) == 0
    pd.testing.assert_frame_equal(metrics(run), metrics(uninterrupted["run"]))
    whole = torch.load(uninterrupted["run"] / "checkpoint_last.pt", weights_only=True)
    resumed = torch.load(run / "checkpoint_last.pt", weights_only=True)
    for key in ("train_loss", "val_loss", "val_auroc"):  # epoch 1's training loss counts both processes' batches
        assert [h[key] for h in resumed["history"]] == [h[key] for h in whole["history"]], key
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert "progress" not in resumed
    assert f"resuming {run} after epoch 0, batch {progress['step']} of epoch 1" in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_signal_during_the_cache_build_is_one_line_and_the_cache_is_rebuilt(tmp_path, make_dataset):
    csv = make_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=2, size=32)
    # 400 training rows of one 512-px PNG (hard links): a build of a second or more, with both builder processes
    frame = pd.read_csv(csv)
    picture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (512, 448), dtype=np.uint8), (0, 0), 4)
    cv2.imwrite(str(tmp_path / "data" / "big.png"), picture)
    rows = []
    for i in range(400):
        os.link(tmp_path / "data" / "big.png", tmp_path / "data" / "images" / f"big{i:03d}.png")
        rows.append(dict(frame.iloc[0], ImageID=f"big{i:03d}.png", path=f"images/big{i:03d}.png"))
    pd.concat([frame, pd.DataFrame(rows)]).to_csv(csv, index=False)
    cache = tmp_path / "data" / "cache"
    command = [sys.executable, os.path.join(ROOT, "traintest.py"), "--csv", str(csv), "--output-dir",
               str(tmp_path / "run"), "--model", "unified-alexnet", "--image-size", "32", "--epochs", "1",
               "--workers", "0", "--bootstrap", "5", "--max-heatmaps", "0", "--amp", "off"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            not (cache.is_dir() and any(is_temporary(f) and ".u8." in f for f in os.listdir(cache))):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.rstrip().splitlines()[-1] == ("traintest.py: interrupted by SIGTERM; the first epoch had not ended: "
                                             "nothing to resume")
    assert "Traceback" not in err
    assert not any(f.endswith((".u8", ".json")) for f in os.listdir(cache))  # nothing that could pass for a cache

    # the next run's cache: built anew under the same name, every image in it
    from data.classes import CLASSES
    from data.dataset import ChestImages, decode_square, read_combined, split
    from data.transforms import SquareResize
    train = split(read_combined(str(csv), CLASSES), "train")
    built = ChestImages(train, 32, CLASSES, cache_dir=cache, progress=False).disk
    assert built.images.shape == (404, 32, 32) and os.path.basename(built.path) in os.listdir(cache)
    assert not [f for f in os.listdir(cache) if is_temporary(f)]
    assert np.array_equal(built.images[-1], decode_square(str(tmp_path / "data" / "big.png"), SquareResize(32))[0][0])


def test_a_stop_never_saves_a_run_whose_loss_went_non_finite(tmp_path, make_dataset):
    """The step does not look at the loss; a stop looks before it writes anything: NonFiniteLoss, no checkpoint."""
    from data.classes import CLASSES
    from data.dataset import read_combined
    from models import build_model
    from utils.engine import NonFiniteLoss, make_loader, train_one_epoch
    from data.commands import StopSignals

    frame = read_combined(make_dataset(tmp_path / "data", n_train=16, n_val=2, n_test=2, size=32), CLASSES)
    loader = make_loader(frame[frame["split"] == "train"], 32, CLASSES, batch_size=4, workers=0, train=True)
    model = build_model("unified-alexnet", len(CLASSES), input_size=32)
    optimizer = torch.optim.Adam(model.parameters())
    losses = []

    def goes_nan(logits, targets):
        losses.append(len(losses))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) * (np.nan if len(losses) == 2
                                                                                         else 1.0)

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop, stop.deferred():
        stop_after = stop.release  # a stop leaves its handlers in place (the process is ending): not this one
        os.kill(os.getpid(), signal.SIGTERM)  # before the first step: it stops after that step, or the NaN does
        assert stop.requested == signal.SIGTERM
        progress = train_one_epoch(model, loader, optimizer, goes_nan, torch.device("cpu"), 1, stop=stop,
                                   look_every=100)
        assert progress.stopped == signal.SIGTERM and progress.step == 1 and len(losses) == 1
        with pytest.raises(NonFiniteLoss, match=r"loss is nan at epoch 1, batch 2"):
            train_one_epoch(model, loader, optimizer, goes_nan, torch.device("cpu"), 1, stop=stop, look_every=100,
                            progress=progress)
    assert signal.getsignal(signal.SIGTERM) != before  # later signals stay ignored after a stop
    stop_after()
    assert signal.getsignal(signal.SIGTERM) == before
