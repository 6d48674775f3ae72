"""A run folder mirrored to GCS (fake-gcs-server) and pulled back on a 'fresh VM'; what the bucket refuses."""
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import download_images
from conftest import ROOT, WITHOUT_PYDICOM_AND_GCS, png8
import traintest as script
from data.cache import image_cache
from data.dataset import decode_square
from data.errors import EnvironmentFault, InputError
from data.files import is_temporary, output_folder, write_csv, write_text_atomic
from data.gcs import BucketFolder, download_blob
from data.ingest.workers import write_image
from utils.run_folder import check_locations, locate, pull_run


def test_push_only_what_changed_and_pull_it_back(gcs_server, tmp_path):
    gcs_server.create_bucket("runs")
    run = tmp_path / "run"
    (run / "heatmaps").mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(os.urandom(300_000))
    (run / "args.json").write_text("{}")
    (run / "heatmaps" / "a.png").write_bytes(b"png")
    (run / "metrics.csv.tmp").write_text("half")  # an atomic write in progress is never mirrored
    mirror = BucketFolder("gs://runs/exp/one", client=gcs_server)
    mirror.check_writable()
    assert mirror.push(run) == 3
    assert sorted(mirror.listing()) == ["args.json", "checkpoint_last.pt", "heatmaps/a.png"]
    assert [b.name for b in gcs_server.list_blobs("runs")] == ["exp/one/" + n for n in sorted(mirror.listing())]
    assert mirror.push(run) == 0  # nothing changed
    (run / "checkpoint_last.pt").write_bytes(os.urandom(300_000))
    assert mirror.push(run) == 1
    fresh = tmp_path / "fresh"
    assert pull_run("gs://runs/exp/one/", fresh, client=gcs_server) == 3
    for name in ("checkpoint_last.pt", "args.json", "heatmaps/a.png"):
        assert (fresh / name).read_bytes() == (run / name).read_bytes()


def test_missing_bucket_or_run_is_one_line(gcs_server, tmp_path):
    with pytest.raises(EnvironmentFault, match=r"^gs://nobucket/x: cannot write \(NotFound: .*roles/storage.objectAdmin"):
        BucketFolder("gs://nobucket/x", client=gcs_server).check_writable()
    with pytest.raises(EnvironmentFault, match=r"^gs://nobucket/x: cannot list \(NotFound: .*roles/storage.objectViewer"):
        pull_run("gs://nobucket/x", tmp_path / "fresh", client=gcs_server)
    gcs_server.create_bucket("runs")
    with pytest.raises(InputError, match="no run there to resume"):
        pull_run("gs://runs/none", tmp_path / "fresh", client=gcs_server)


@pytest.mark.slow
def test_a_gs_run_stopped_on_one_vm_resumes_on_a_fresh_one(gcs_server, tmp_path, monkeypatch, uninterrupted,
                                                           stopped_run, traintest, metrics):
    """--output-dir gs://: trained in a local work folder, synced after each checkpoint; Ctrl-C (SIGINT to the whole
    process group, its loader worker included) mid-epoch writes and syncs a mid-epoch checkpoint, and --resume gs://
    on another machine (another work folder) ends as the run never stopped, its outputs in the bucket."""
    from conftest import STOPPABLE
    gcs_server.create_bucket("runs")
    url = "gs://runs/exp/spot"
    first_vm = tmp_path / "vm1"
    work = first_vm / "traintest" / "runs" / "runs" / "exp" / "spot"
    code, err, _ = stopped_run(["--csv", uninterrupted["csv"], "--output-dir", url, "--workers", 1, *STOPPABLE],
                               work / "train.log", [signal.SIGINT], env={"XDG_CACHE_HOME": str(first_vm)},
                               group=True)
    assert code == 0, err[-3000:]
    assert err.rstrip().splitlines()[-1].endswith(f"continue with python traintest.py --resume {url}"), err[-2000:]
    mirror = BucketFolder(url, client=gcs_server)
    assert {"args.json", "train.log", "checkpoint_last.pt"} <= set(mirror.listing())
    fresh = tmp_path / "fresh"
    mirror.pull(fresh)
    assert torch.load(fresh / "checkpoint_last.pt", weights_only=True)["progress"]["step"] > 0  # the synced one

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "vm2"))  # a fresh VM: nothing of the run on its disk
    assert traintest("--resume", url) == 0
    resumed = tmp_path / "vm2" / "traintest" / "runs" / "runs" / "exp" / "spot"
    pd.testing.assert_frame_equal(metrics(resumed), metrics(uninterrupted["run"]))
    assert mirror.pull(tmp_path / "after") >= 8
    pd.testing.assert_frame_equal(metrics(tmp_path / "after"), metrics(uninterrupted["run"]))  # outputs synced too


def test_no_permission_on_the_bucket_is_one_line_before_any_work(gcs_server, tmp_path, capsys, make_dataset,
                                                                 traintest):
    csv = make_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=2, size=32)
    capsys.readouterr()
    assert traintest("--csv", csv, "--output-dir", tmp_path / "run", "--sync-to", "gs://nobucket/runs/a",
                     "--model", "unified-alexnet", "--image-size", 32, "--epochs", 1, "--workers", 0) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("traintest.py: error: gs://nobucket/runs/a: cannot write")
    assert not (tmp_path / "run" / "train.log").exists() and not (tmp_path / "data" / "cache").exists()
    assert traintest("--resume", "gs://nobucket/runs/a") == 2
    assert "gs://nobucket/runs/a: cannot list" in capsys.readouterr().err
    gcs_server.create_bucket("runs")
    assert traintest("--resume", "gs://runs/none") == 2
    assert "gs://runs/none: no run there to resume" in capsys.readouterr().err


def test_a_bucket_that_refuses_writes_is_one_error_from_step_1_and_step_4(locked_bucket, tmp_path, make_dataset):
    """GCS's own 403 for a write without the role (the bucket can be read): the same error, naming the URL, the
    action and the role, from download_images.py's gs:// --out check and traintest.py's --sync-to check."""
    direct, _ = locked_bucket
    direct.create_bucket("locked")
    direct.create_bucket("nih").blob("png/a.png").upload_from_string(png8(0))
    step1 = download_images.get_args(["--source", "gs://nih/png", "--out", "gs://locked/out", "--work-dir",
                                      str(tmp_path / "work")])
    csv = make_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=2, size=32)
    step4 = script.parse_args([str(a) for a in ("--csv", csv, "--output-dir", tmp_path / "run", "--sync-to",
                                                "gs://locked/runs/a", "--model", "unified-alexnet", "--image-size",
                                                32, "--epochs", 1, "--workers", 0)])
    for url, check in (("gs://locked/out", lambda: download_images.resolve_out(step1)),
                       ("gs://locked/runs/a", lambda: check_locations(locate(step4), training=True))):
        with pytest.raises(EnvironmentFault) as refused:
            check()
        message = str(refused.value)
        assert message.startswith(f"{url}: cannot write (Forbidden: 403 ") and "storage.objects.create" in message
        assert message.endswith("needs roles/storage.objectAdmin on it") and "\n" not in message
    assert [b.name for b in direct.list_blobs("locked")] == []
    assert not (tmp_path / "work").exists()


def test_no_temporary_file_of_any_writer_is_ever_uploaded(gcs_server, tmp_path, monkeypatch):
    """Every writer caught with its temporary file on disk (just before its rename, or the write check's removal) and
    the run folder synced right then: the bucket gets only finished files, and each temporary name is one that
    data.files.is_temporary knows."""
    gcs_server.create_bucket("runs")
    gcs_server.create_bucket("src").blob("big.bin").upload_from_string(os.urandom(200_000))
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (tmp_path / "x.png").write_bytes(png8(1))
    mirror = BucketFolder("gs://runs/exp/one", client=gcs_server)
    caught = []

    def synced_first(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(run)) and os.path.isfile(path):
                caught.append(os.path.basename(path))
                mirror.push(run)
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", synced_first(os.replace))
    monkeypatch.setattr(os, "remove", synced_first(os.remove))
    writers = {
        "text": lambda: write_text_atomic(str(run / "args.json"), "{}"),
        "csv": lambda: write_csv(pd.DataFrame({"a": [1, 2]}), str(run / "metrics.csv"), index=False),
        "step 1's image": lambda: write_image(png8(2), "a.png", str(run / "images")),
        "cache": lambda: image_cache(str(run / "cache"), [str(tmp_path / "x.png")], 32, decode_square, workers=1,
                                     progress=False),
        "download": lambda: download_blob(gcs_server.bucket("src").get_blob("big.bin"), str(run / "big.bin"),
                                              chunk_bytes=64 * 1024),
        "write check": lambda: output_folder(str(run / "sub"), "--output-dir"),
    }
    for writer, write in writers.items():
        before = len(caught)
        write()
        assert len(caught) > before, f"{writer}: no temporary file seen"
    assert caught and all(is_temporary(name) for name in caught), caught
    mirror.push(run)
    uploaded = sorted(b.name[len("exp/one/"):] for b in gcs_server.list_blobs("runs"))
    on_disk = sorted(os.path.relpath(os.path.join(root, f), run) for root, _, files in os.walk(run) for f in files)
    assert uploaded == on_disk and not any(is_temporary(name) for name in uploaded)
    assert {"args.json", "metrics.csv", "metrics.csv.rows", "images/a.png", "big.bin"} <= set(uploaded)


def test_training_needs_neither_the_gcs_client_nor_scikit_multilearn(tmp_path):
    """A GPU VM that trains from its own disk may have neither: traintest.py and the loader import without them (the
    split names come without what computes the split), and only a gs:// location asks for the client."""
    code = WITHOUT_PYDICOM_AND_GCS + textwrap.dedent("""
        import traintest
        from data.dataset import read_combined
        from data.errors import EnvironmentFault
        from data.gcs import BucketFolder, is_gcs_url
        assert is_gcs_url("gs://b/runs/a") and not is_gcs_url("runs/a")
        assert not [m for m in sys.modules if m.startswith(("google.cloud", "skmultilearn"))]
        try:
            BucketFolder("gs://b/runs/a").check_writable()
        except EnvironmentFault as e:
            assert "needs the Google Cloud Storage client" in str(e) and "pip install google-cloud-storage" in str(e)
        else:
            raise AssertionError("a bucket written without the client")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
