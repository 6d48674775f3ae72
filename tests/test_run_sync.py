"""A run folder mirrored to GCS (fake-gcs-server) and pulled back on a 'fresh VM'."""
import os

import pytest

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
