"""What a training run leaves for a person to read: history.csv (continued by --resume) and TensorBoard's scalars."""
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from utils.training import TrainingRun, summary_writer

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (requirements-dev.txt)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

# 16 training images in batches of 4: 4 steps an epoch, a look at the loss every 2
ARGS = ["--model", "unified-alexnet", "--image-size", 32, "--batch-size", 4, "--workers", 0, "--seed", 3,
        "--lr-patience", 0, "--bootstrap", 20, "--max-heatmaps", 0, "--log-every", 2]
EPOCH_TAGS = ("train/epoch_loss", "val/loss", "val/macro_auroc", "lr")


def scalars(run):
    """{tag: [(step, value)]} of RUN/tb/'s event files, as TensorBoard reads them (a resumed run's purge applied)."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 2 epochs, then resumed to 3: {"csv", "run", "first": history.csv after 2 epochs}."""
    import traintest as script
    from conftest import with_amp, write_dataset
    root = tmp_path_factory.mktemp("record")
    csv = write_dataset(root / "data", n_train=16, n_val=8, n_test=8, size=32)
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert script.main(with_amp(["--csv", csv, "--output-dir", run, "--epochs", 2, *ARGS])) == 0
        first = pd.read_csv(run / "history.csv")
        assert script.main(with_amp(["--resume", run, "--epochs", 3])) == 0
    finally:
        torch.set_num_threads(threads)
    return {"csv": csv, "run": run, "first": first}


@pytest.mark.slow
def test_history_csv_holds_every_epoch_and_a_resumed_run_continues_it(trained):
    run, first = trained["run"], trained["first"]
    history = pd.read_csv(run / "history.csv")
    stored = torch.load(run / "checkpoint_last.pt", weights_only=True)["history"]
    assert len(first) == 2 and history["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(history.iloc[:2], first)  # the resumed run kept the first two rows
    for key in ("train_loss", "val_loss", "val_auroc", "lr"):
        assert history[key].tolist() == pytest.approx([h[key] for h in stored], rel=1e-5), key
    assert (history["lr"] > 0).all() and history["train_loss"].gt(0).all()


@pytest.mark.slow
def test_tensorboard_has_the_epoch_scalars_at_each_epochs_last_step(trained):
    run = trained["run"]
    history = pd.read_csv(run / "history.csv")
    found = scalars(run)
    assert set(EPOCH_TAGS) <= set(found), sorted(found)
    for tag, key in zip(EPOCH_TAGS, ("train_loss", "val_loss", "val_auroc", "lr")):
        # one event per epoch, at steps 4, 8, 12: the resumed run's epoch 3 follows the first run's two
        assert [step for step, _ in found[tag]] == [4, 8, 12], tag
        assert [value for _, value in found[tag]] == pytest.approx(history[key].tolist(), rel=1e-5), tag


@pytest.mark.slow
def test_tensorboard_has_the_loss_of_every_look(trained):
    found = scalars(trained["run"])
    history = pd.read_csv(trained["run"] / "history.csv")
    assert [step for step, _ in found["train/loss"]] == [2, 4, 6, 8, 10, 12]
    # each value is the mean over the 8 images since the previous look: two of them make the epoch's mean
    looks = [value for _, value in found["train/loss"]]
    epochs = [(a + b) / 2 for a, b in zip(looks[::2], looks[1::2])]
    assert epochs == pytest.approx(history["train_loss"].tolist(), rel=1e-4)


@pytest.mark.slow
def test_tensorboard_off_writes_no_event_files(tmp_path, make_dataset, traintest):
    csv = make_dataset(tmp_path / "data", n_train=16, n_val=8, n_test=8, size=32)
    assert traintest("--csv", csv, "--output-dir", tmp_path / "run", "--epochs", 1, *ARGS, "--tensorboard", "off") == 0
    assert not (tmp_path / "run" / "tb").exists()
    assert pd.read_csv(tmp_path / "run" / "history.csv")["epoch"].tolist() == [1]


def test_without_the_tensorboard_package_a_run_has_no_event_files(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an import of a missing package does
    caplog.set_level("INFO")
    assert summary_writer(str(tmp_path), None) is None
    assert "tensorboard package is not installed" in caplog.text and not (tmp_path / "tb").exists()


class Loader(list):
    sampler = SimpleNamespace(set_epoch=lambda epoch: None)


def test_each_looks_loss_is_the_mean_since_the_previous_look(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path), skip_bad_images=False, sync_to=None, seed=0, tensorboard=True,
                           max_train_batches=None, epochs=2)
    run = TrainingRun(args, None, None, None, None)
    run.start_epoch(1, Loader(range(10)))  # the second epoch: its steps count from 10
    run.on_look(4, 8.0, 16)  # 16 images, loss 0.5 each
    run.on_look(8, 8.0 + 4.0, 32)  # the next 16 images, loss 0.25 each
    run.close()
    assert scalars(tmp_path)["train/loss"] == [(14, 0.5), (18, 0.25)]
