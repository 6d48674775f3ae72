"""A run folder mirrored to GCS (fake-gcs-server) and pulled back on a 'fresh VM'."""
import os
import signal

import pandas as pd
import pytest
import torch

from data.errors import InputError
from utils.run_sync import RunMirror


def test_push_only_what_changed_and_pull_it_back(gcs_server, tmp_path):
    gcs_server.create_bucket("runs")
    run = tmp_path / "run"
    (run / "heatmaps").mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(os.urandom(300_000))
    (run / "args.json").write_text("{}")
    (run / "heatmaps" / "a.png").write_bytes(b"png")
    (run / "metrics.csv.tmp").write_text("half")  # an atomic write in progress is never mirrored
    mirror = RunMirror("gs://runs/exp/one", client=gcs_server)
    mirror.check_writable()
    assert mirror.push(run) == 3
    assert sorted(mirror.remote()) == ["args.json", "checkpoint_last.pt", "heatmaps/a.png"]
    assert mirror.push(run) == 0  # nothing changed
    (run / "checkpoint_last.pt").write_bytes(os.urandom(300_000))
    assert mirror.push(run) == 1
    fresh = tmp_path / "fresh"
    assert RunMirror("gs://runs/exp/one/", client=gcs_server).pull(fresh) == 3
    for name in ("checkpoint_last.pt", "args.json", "heatmaps/a.png"):
        assert (fresh / name).read_bytes() == (run / name).read_bytes()


def test_missing_bucket_or_run_is_one_line(gcs_server, tmp_path):
    with pytest.raises(InputError, match=r"gs://nobucket/x: cannot write .*roles/storage.objectAdmin"):
        RunMirror("gs://nobucket/x", client=gcs_server).check_writable()
    gcs_server.create_bucket("runs")
    with pytest.raises(InputError, match="no run there to resume"):
        RunMirror("gs://runs/none", client=gcs_server).pull(tmp_path / "fresh")


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
    mirror = RunMirror(url, client=gcs_server)
    assert {"args.json", "train.log", "checkpoint_last.pt"} <= set(mirror.remote())
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
