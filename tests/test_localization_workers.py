"""Step 5 on worker processes (utils.localization_workers): the same boxes, scores and pictures as in one process, on a
small trained model; the box finder against the algorithm it replaced; a worker that dies, and a stop signal, during
step 5."""
import filecmp
import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import utils.localization
from benchmarks.bench_localize import drawn_predictions, old_boxes_from_heatmaps
from data.classes import CLASSES, NUM_CLASSES
from data.errors import EnvironmentFault
from data.transforms import Normalize
from models import build_model
from step5_faults import Levels
from utils.engine import make_loader, predict
from utils.localization import localize
from utils.localization_workers import Step5Pool, boxes_from_heatmaps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARDIOMEGALY = CLASSES.index("cardiomegaly")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(frame, Predictions with maps, box CSV): 32 small noise images, half with a bright block labelled
    cardiomegaly, and the predictions of a small AlexNet-style Unified DCNN trained on them for a few steps."""
    folder = tmp_path_factory.mktemp("step5")
    rng = np.random.default_rng(0)
    rows, boxes = [], []
    for i in range(32):
        img = rng.integers(20, 90, (150, 120), dtype=np.uint8)
        if i % 2 == 0:
            x, y = int(rng.integers(0, 60)), int(rng.integers(0, 80))
            img[y:y + 60, x:x + 50] = 230
            boxes.append(f"im{i:02d}.png,Cardiomegaly,{2 * x},{2 * y},100,120")  # originals twice the stored size
        cv2.imwrite(str(folder / f"im{i:02d}.png"), img)
        rows.append({"ImageID": f"im{i:02d}.png", "path": str(folder / f"im{i:02d}.png"), "width": 240,
                     "height": 300, **{c: int(c == "cardiomegaly" and i % 2 == 0) for c in CLASSES}})
    (folder / "boxes.csv").write_text("Image Index,Finding Label,x,y,w,h\n" + "\n".join(boxes) + "\n")
    frame = pd.DataFrame(rows)
    torch.manual_seed(0)
    model = build_model("unified-alexnet", NUM_CLASSES, input_size=96)
    normalize = Normalize(model.mean, model.std)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = make_loader(frame, 96, CLASSES, batch_size=20, workers=0, train=True)
    model.train()
    for _ in range(2):
        for images, labels, *_ in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(normalize(images)), labels.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    out = predict(model, make_loader(frame, 96, CLASSES, batch_size=20, workers=0), torch.device("cpu"), amp=False,
                  maps=True)
    return frame[["ImageID", "path", "width", "height"]], out, str(folder / "boxes.csv")


def run_files(run):
    """{relative path: bytes} of every file under a run folder."""
    files = {}
    for folder, _, names in os.walk(run):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, run)] = f.read()
    return files


@pytest.mark.slow  # trains a model
def test_worker_processes_write_what_one_process_writes(trained, tmp_path, monkeypatch):
    frame, out, boxes_csv = trained
    monkeypatch.setattr(utils.localization, "CHUNK", 8)  # four chunks: several in flight at once
    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"workers{workers}"
        summary = localize(frame, out, str(runs[workers]), input_size=96, boxes_csv=boxes_csv, max_images=12,
                           workers=workers, thresholds=[0.5] * NUM_CLASSES)
    one, pool = run_files(runs[0]), run_files(runs[2])
    assert sorted(one) == sorted(pool)
    assert [name for name in one if one[name] != pool[name]] == []
    # and what they wrote is a whole step 5: boxes on every image, localization scores, 12 images' pictures
    assert {"boxes.csv", "localization.csv", "heatmaps/index.csv"} <= set(one)
    boxes = pd.read_csv(runs[0] / "boxes.csv")
    assert summary["boxes"] == len(boxes) > 0 and summary["images"] == 32
    index = pd.read_csv(runs[0] / "heatmaps" / "index.csv")
    assert index["ImageID"].nunique() == 12 and len(index) == summary["heatmaps"] == len(one) - 3
    assert set(index["file"]) == {name.split("/", 1)[1] for name in one if name.endswith(".png")}
    assert summary["iobb_0.5"].keys() == {"cardiomegaly"}


def test_box_finder_gives_what_the_one_it_replaced_gave():
    # noise maps smoothed as a network's are, a flat map, an empty one, one at 255 everywhere; three levels
    rng = np.random.default_rng(1)
    heat = np.stack([cv2.GaussianBlur(rng.random((40, 36)).astype(np.float32), (9, 9), 0) for _ in range(30)])
    heat = (heat - heat.min(axis=(1, 2), keepdims=True)) / np.ptp(heat, axis=(1, 2), keepdims=True) * 255
    heat = np.concatenate([np.rint(heat).astype(np.uint8), np.zeros((1, 40, 36), np.uint8),
                           np.full((1, 40, 36), 255, np.uint8)])
    new, old = boxes_from_heatmaps(heat, (60, 128, 180)), old_boxes_from_heatmaps(heat, (60, 128, 180))
    assert len(new) == len(old) == 32
    assert sum(len(b) for b in new) > 60
    for a, b in zip(new, old):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert boxes_from_heatmaps(np.zeros((0, 8, 8), np.uint8)) == []


def test_a_worker_that_dies_is_named_and_step_5_leaves_nothing(tmp_path, monkeypatch):
    frame, out = drawn_predictions(str(tmp_path), 64, 128, 7, 4)
    monkeypatch.setattr(utils.localization, "CHUNK", 16)
    run = tmp_path / "run"
    with pytest.raises(EnvironmentFault) as caught:
        localize(frame, out, str(run), input_size=224, max_images=12, workers=2,
                 box_thresholds=Levels((60, 180), "die"))
    message = str(caught.value)
    assert "\n" not in message
    assert "step 5: the worker process running chunk " in message and " of 4 (16 images, im0000" in message
    assert "killed by SIGKILL" in message
    # no boxes.csv, no pictures, no temporary folder of them
    assert os.listdir(run) == ["heatmaps"] and os.listdir(run / "heatmaps") == []


def test_the_pool_names_the_task_of_the_worker_that_died():
    heat = np.zeros((2, 8, 8), np.uint8)
    heat[:, 2:5, 2:5] = 200
    with pytest.raises(EnvironmentFault, match=r"running the second task died \(killed by SIGKILL;"):
        with Step5Pool(2, 3) as pool:
            first = pool.submit("boxes", "the first task", heat, (60,))
            assert [b[:, :4].tolist() for b in first.result()] == [[[2, 2, 3, 3]]] * 2
            pool.submit("boxes", "the second task", heat, Levels((60,), "die")).result()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    if __name__ == "__main__":
        from benchmarks.bench_localize import drawn_predictions
        from data.commands import run_main
        from step5_faults import Levels
        from utils.localization import localize
        frame, predictions = drawn_predictions({folder!r}, 256, 128, 7, 4)  # four chunks
        sys.exit(run_main("step5", lambda argv: None, lambda args: localize(
            frame, predictions, {run!r}, input_size=224, max_images=8, workers=2,
            box_thresholds=Levels((60, 180), "stall", {folder!r}))))
""")


@pytest.mark.slow
@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_stop_signal_in_step_5_ends_every_worker_and_leaves_nothing(tmp_path, signum, group):
    folder, run = tmp_path / "inputs", tmp_path / "run"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"),
                                                                   folder=str(folder), run=str(run))],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len([n for n in os.listdir(folder) if n.isdigit()]) < 2:  # both workers in a task of step 5
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        if group:  # Ctrl-C: the terminal signals the whole process group
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum
    assert err.strip().splitlines() == [f"step5: interrupted by {signal.Signals(signum).name}"]
    workers = [int(n) for n in os.listdir(folder) if n.isdigit()]
    deadline = time.monotonic() + 20  # ended, not left sleeping (a killed worker is reaped by init once its fork
    while any(alive(pid) for pid in workers):  # server has ended with the main process)
        assert time.monotonic() < deadline, [pid for pid in workers if alive(pid)]
        time.sleep(0.1)
    assert os.listdir(run) == ["heatmaps"] and os.listdir(run / "heatmaps") == []
