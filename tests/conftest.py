"""What more than one test module uses, in one place (test modules import it from here, never from each other):
a small learnable dataset, traintest.py run as a user runs it, a model whose class activation map is known, a
fake-gcs-server, step 1's inputs (images, archives, DICOMs) and outputs, and a machine without pydicom."""
import contextlib
import csv
import importlib.util
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import warnings
import zipfile

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file
from torch import nn

from data.classes import CLASSES, NUM_CLASSES
from data.labels.report_labeler import NOT_MENTIONED, label_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real label files the torchxrayvision wheel ships (PadChest's, NIH's, OpenI's): real inputs without a download,
# located without importing torchxrayvision (which imports torch).
REAL_DATA = os.path.join(os.path.dirname(importlib.util.find_spec("torchxrayvision").origin), "data")
LEARNED = [1, 2, 5, 11]  # atelectasis, cardiomegaly, pleural effusion, nodule: drawn as visible marks


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads spinning against other processes make these
    tiny models many times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_dataset(root, n_train=48, n_val=24, n_test=24, size=64, seed=0, absent_in_test="tuberculosis"):
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


def writable(folder):
    """Whether this process can create a file in `folder`."""
    try:
        (folder / "probe").write_text("")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@contextlib.contextmanager
def read_only(folder):
    """`folder` (made if missing) unwritable for the block, even by root: chmod 555, and the immutable flag where
    chmod does not stop this user (root); the test is skipped where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    try:
        if writable(folder):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if writable(folder):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in, even by root."""
    with read_only(tmp_path / "read-only") as folder:
        yield folder


@pytest.fixture
def make_dataset():
    return write_dataset


@pytest.fixture
def gcs_server(monkeypatch):
    """A storage client on a fresh fake-gcs-server, which the scripts reach through STORAGE_EMULATOR_HOST."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from sample_world.fake_gcs import free_port, start_fake_gcs
    port = free_port()
    proc = start_fake_gcs(port)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        yield storage.Client(project="test", credentials=AnonymousCredentials())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def proxied_gcs(monkeypatch, **refusals):
    """(a client on fake-gcs-server itself, to set up buckets; a GcsProxy(**refusals) in front of it, which
    STORAGE_EMULATOR_HOST names, so that the scripts talk to it)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from sample_world.fake_gcs import GcsProxy, free_port, start_fake_gcs
    port, proxy_port = free_port(), free_port()
    proc = start_fake_gcs(port, external_url=f"http://127.0.0.1:{proxy_port}")  # object links lead to the proxy
    proxy = GcsProxy(proxy_port, port, **refusals)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy_port}")
        direct = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": f"http://127.0.0.1:{port}"})
        yield direct, proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def requester_pays(monkeypatch):
    """proxied_gcs whose paid bucket is 'nih-paid', billable to 'my-project'."""
    with proxied_gcs(monkeypatch, paid="nih-paid", project="my-project") as served:
        yield served


@pytest.fixture
def locked_bucket(monkeypatch):
    """proxied_gcs whose bucket 'locked' the account may read but not write."""
    with proxied_gcs(monkeypatch, locked="locked") as served:
        yield served


def with_amp(args):
    """The arguments with --amp off unless they choose: what --amp auto picks differs between CPUs (native
    bfloat16 or not), and no test may depend on the machine."""
    args = [str(a) for a in args]
    return args if "--amp" in args else args + ["--amp", "off"]


@pytest.fixture
def traintest():
    """traintest.main in this process (a subprocess would spend most of a test importing torch): the exit status."""
    import traintest as script
    return lambda *args: script.main(with_amp(args))


@pytest.fixture
def traintest_process():
    """traintest.py as a command (a subprocess.CompletedProcess); AssertionError with its stderr when check fails."""
    def run(*args, env=None, check=True):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "traintest.py"), *with_amp(args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"traintest.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc
    return run


# A deterministic run with enough batches per epoch (16) for a signal to land in the middle of one, and a look at
# the loss after every step (its log line is the marker a test waits for).
STOPPABLE = ["--model", "unified-alexnet", "--image-size", 64, "--epochs", 2, "--batch-size", 4, "--deterministic",
             "--seed", 5, "--lr-patience", 0, "--bootstrap", 20, "--max-heatmaps", 0, "--log-every", 1]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """A STOPPABLE run that no signal stopped ({"csv", "run"}): what a stopped and resumed one must end with."""
    import traintest as script
    root = tmp_path_factory.mktemp("uninterrupted")
    csv = write_dataset(root / "data", n_train=64, n_val=8, n_test=8, size=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test's (one_thread) and the subprocesses' (OMP_NUM_THREADS=1)
    try:
        assert script.main(with_amp(["--csv", csv, "--output-dir", root / "run", "--workers", 0, *STOPPABLE])) == 0
    finally:
        torch.set_num_threads(threads)
    return {"csv": csv, "run": root / "run"}


def stop_mid_epoch(args, log, signals, env=None, group=False, launcher=(), again=True):
    """traintest.py ARGS started as a command (after `launcher`: torchrun's), held still (SIGSTOP) as soon as `log`
    shows its third step of epoch 1, sent `signals` (to its process group with group=True, as Ctrl-C in a terminal),
    let go, and with again=True sent SIGTERM again and again until it exits, so that later signals land in whatever
    it is doing then (finishing the step, writing the checkpoint). Returns (exit status, stderr, the last step logged
    before the signals); AssertionError when it is still running 20 s after them."""
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing read while it runs, nothing blocks
        proc = subprocess.Popen([sys.executable, *launcher, os.path.join(ROOT, "traintest.py"), *with_amp(args)],
                                cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and \
                not (log.is_file() and "epoch 1 batch 3/" in log.read_text()):
            time.sleep(0.002)
        if proc.poll() is not None:
            err.seek(0)
            raise AssertionError(f"it ended ({proc.returncode}) before its third step:\n{err.read()[-3000:]}")
        os.kill(proc.pid, signal.SIGSTOP)
        steps = [line for line in log.read_text().splitlines() if " epoch 1 batch " in line]
        last_step = int(steps[-1].split(" batch ")[1].split("/")[0])
        for signum in signals:
            os.killpg(proc.pid, signum) if group else os.kill(proc.pid, signum)
        os.kill(proc.pid, signal.SIGCONT)
        start = time.monotonic()
        while again and proc.poll() is None and time.monotonic() - start < 20:  # the 20 s it has to exit
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.005)
        try:
            code = proc.wait(timeout=max(0.1, 20 - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = None
        err.seek(0)
        text = err.read()
    assert code is not None, f"still running 20 s after the signal:\n{text[-3000:]}"
    return code, text, last_step


@pytest.fixture(scope="session")
def stopped_run():
    return stop_mid_epoch


def read_metrics(run_dir, group="all"):
    """One group's rows of a run's metrics.csv (default: all test images), indexed by class."""
    table = pd.read_csv(os.path.join(run_dir, "metrics.csv"), keep_default_na=True)
    return table[table["group"] == group].drop(columns=["group", "images"]).set_index("class")


@pytest.fixture
def metrics():
    return read_metrics


class BrightSpot(nn.Module):
    """A model whose class activation map is known: the image's brightness pooled over 8x8 cells, weight +1 for
    cardiomegaly and -1 for the others (so their maps peak in the dark). It takes ImageNet-normalized input."""
    mean, std, input_size = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 128

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(1, NUM_CLASSES)
        with torch.no_grad():
            self.classifier.weight.fill_(-1)
            self.classifier.weight[CLASSES.index("cardiomegaly")] = 1
            self.classifier.bias.zero_()

    def feature_map(self, x):
        return F.avg_pool2d(x[:, :1], 8)

    def pool(self, fmap):
        return fmap.mean(dim=(2, 3))

    def forward(self, x):
        return self.classifier(self.pool(self.feature_map(x)))


@pytest.fixture(scope="session")
def bright_spot():
    return BrightSpot().eval()


def predict_and_localize(model, frame, run_dir, **options):
    """Step 5 as traintest.py runs it: one predict pass with maps (utils.engine), then utils.localization.localize."""
    from utils.engine import make_loader, predict
    from utils.localization import localize

    loader = make_loader(frame, model.input_size, CLASSES, batch_size=16, workers=0)
    out = predict(model, loader, torch.device("cpu"), amp=False, maps=True)
    return localize(frame, out, str(run_dir), input_size=model.input_size, **options)


@pytest.fixture(scope="session")
def localize_images():
    return predict_and_localize


def labels(text):
    """The report labeler's mentions in `text`: {class: 1, 0 or -1}, the classes it does not mention left out."""
    return {c: v for c, v in zip(CLASSES, label_report(text)) if v != NOT_MENTIONED}


# ---- step 1 (download_images.py): its inputs and outputs ----

def png8(seed, shape=(40, 30)):
    """8-bit noise: with --size 0 the written pixels are the input's, so a file shows whose it is."""
    return cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))[1].tobytes()


def png16(seed, shape=(96, 80)):
    rng = np.random.default_rng(seed)
    img = rng.integers(500, 4000, shape).astype(np.uint16)
    return cv2.imencode(".png", img)[1].tobytes()


def dicom_crop(size=64, syntax=None, **changes):
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    arr = ds.pixel_array[600:600 + size, 700:700 + size].copy()
    ds.PixelData, ds.Rows, ds.Columns = arr.tobytes(), size, size
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def add_tar_bytes(tf, name, data, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, data in members:
            zf.writestr(name, data)


def make_zips(folder, archives=6, per_archive=6, shape=(900, 760)):
    folder.mkdir()
    for z in range(archives):
        with zipfile.ZipFile(folder / f"{z}.zip", "w") as zf:
            for i in range(per_archive):
                zf.writestr(f"img_{z}_{i}.png", png16(100 * z + i, shape))


def run_cli(src, out, workers):
    return [sys.executable, os.path.join(ROOT, "download_images.py"), "--source", str(src), "--out", str(out),
            "--size", "128", "--workers", str(workers), "--quiet"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def outputs(out):
    """Everything a run leaves for the next steps: manifest, errors and every image, as bytes."""
    found = {name: (out / name).read_bytes() for name in ("manifest.csv", "errors.csv")}
    found.update({f"images/{f}": (out / "images" / f).read_bytes() for f in files_under(out / "images")})
    return found


# A machine without pydicom and without the GCS client (a typical GPU VM without network): importing either fails.
WITHOUT_PYDICOM_AND_GCS = textwrap.dedent("""
    import importlib.abc, sys
    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "pydicom" or name == "google.cloud" or name.startswith("google.cloud."):
                raise ModuleNotFoundError(f"No module named {name!r}")
    sys.meta_path.insert(0, NotInstalled())
""")
