"""Step 1 on many machines: --shard auto from Cloud Batch's or a Kubernetes indexed Job's variables, OUT/shard-K,
a gs:// OUT built locally and uploaded unit by unit, resumed from the bucket on a fresh VM (fake-gcs-server)."""
import json
import os
import re
import shlex
import signal
import string
import subprocess
import sys
import time

import pytest

import download_images
from conftest import ROOT, files_under, outputs, png8, read_csv, write_zip
from data.errors import InputError
from data.ingest import archives
from data.ingest.shards import shard_from_environment

TASK_VARIABLES = ("BATCH_TASK_INDEX", "BATCH_TASK_COUNT", "JOB_COMPLETION_INDEX", "SHARD_COUNT")


@pytest.fixture
def no_task(monkeypatch):
    for name in TASK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env, count, expected", [
    ({"BATCH_TASK_INDEX": "2", "BATCH_TASK_COUNT": "4"}, None, (2, 4, "Cloud Batch")),
    ({"BATCH_TASK_INDEX": "2", "BATCH_TASK_COUNT": "4"}, 4, (2, 4, "Cloud Batch")),
    ({"JOB_COMPLETION_INDEX": "1", "SHARD_COUNT": "3"}, None, (1, 3, "Kubernetes")),
    ({"JOB_COMPLETION_INDEX": "1", "SHARD_COUNT": "3"}, 5, (1, 5, "Kubernetes")),  # the flag wins
    ({}, None, "no task index in the environment (Cloud Batch's BATCH_TASK_INDEX"),
    ({"JOB_COMPLETION_INDEX": "1"}, None, "pass --shard-count N or set SHARD_COUNT"),
    ({"BATCH_TASK_INDEX": "0"}, None, "BATCH_TASK_COUNT is not"),
    ({"BATCH_TASK_INDEX": "4", "BATCH_TASK_COUNT": "4"}, None, "task index 4 of 4 tasks"),
    ({"BATCH_TASK_INDEX": "x", "BATCH_TASK_COUNT": "4"}, None, "BATCH_TASK_INDEX='x' is not a whole number"),
    ({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "4"}, 3, "--shard-count 3 differs from BATCH_TASK_COUNT=4"),
])
def test_the_shard_comes_from_the_task_variables(env, count, expected):
    if isinstance(expected, tuple):
        k, n, where = shard_from_environment(env, count)
        assert (k, n) == expected[:2] and expected[2] in where
    else:
        with pytest.raises(InputError, match=re.escape(expected)):
            shard_from_environment(env, count)


def test_shard_auto_outside_a_task_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in TASK_VARIABLES}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "download_images.py"), "--source", str(tmp_path),
                             "--out", str(tmp_path / "out"), "--shard", "auto"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "download_images.py: error: --shard auto: no task index in the environment (Cloud Batch's BATCH_TASK_INDEX "
        "and BATCH_TASK_COUNT, "
        "or a Kubernetes indexed Job's JOB_COMPLETION_INDEX); outside those, give --shard K/N"], result.stderr
    assert not (tmp_path / "out").exists()


def make_source(src):
    """Two zips and a folder of 14 loose PNGs (with LOOSE_BATCH 4: four batches)."""
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1)), ("b.png", png8(2))])
    write_zip(src / "1.zip", [("c.png", png8(3))])
    (src / "png").mkdir()
    for i in range(14):
        (src / "png" / f"{i:08d}_000.png").write_bytes(png8(10 + i))


def rows_of(*manifests):
    return sorted(tuple(sorted(r.items())) for m in manifests for r in read_csv(m))


def test_cloud_batch_tasks_write_disjoint_shards_that_add_up_to_one_run(tmp_path, no_task, capsys):
    no_task.setattr(archives, "LOOSE_BATCH", 4)
    src, out, whole = tmp_path / "src", tmp_path / "out", tmp_path / "whole"
    make_source(src)
    assert download_images.main(["--source", str(src), "--out", str(whole), "--workers", "0", "--quiet"]) == 0
    no_task.setenv("BATCH_TASK_COUNT", "3")
    for k in range(3):
        no_task.setenv("BATCH_TASK_INDEX", str(k))
        assert download_images.main(["--source", str(src), "--out", str(out), "--workers", "0", "--quiet",
                                     "--shard", "auto"]) == 0
        assert f"shard {k}/3 from Cloud Batch (BATCH_TASK_INDEX, BATCH_TASK_COUNT): writing " \
               f"{out / f'shard-{k}'}" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["shard-0", "shard-1", "shard-2"]
    shards = [out / f"shard-{k}" for k in range(3)]
    units = [{r["archive"] for r in read_csv(s / "manifest.csv")} for s in shards]
    assert all(units) and sum(map(len, units)) == len(set().union(*units)) == 6  # 2 zips + 4 batches, once each
    assert rows_of(*(s / "manifest.csv" for s in shards)) == rows_of(whole / "manifest.csv")
    for s in shards:
        for name in files_under(s / "images"):
            assert (s / "images" / name).read_bytes() == (whole / "images" / name).read_bytes()


def remote(client, bucket, prefix):
    """{name under prefix: bytes} of every object there."""
    return {b.name[len(prefix):]: b.download_as_bytes() for b in client.list_blobs(bucket, prefix=prefix)}


def upload_source(bucket, count=12):
    for i in range(count):
        bucket.blob(f"png/{i:08d}_000.png").upload_from_string(png8(10 + i))


def test_a_gs_out_is_uploaded_per_unit_and_a_fresh_vm_resumes_from_the_bucket(gcs_server, tmp_path, no_task,  # noqa
                                                                             capsys):
    no_task.setattr(archives, "LOOSE_BATCH", 4)
    upload_source(gcs_server.create_bucket("nih"))
    gcs_server.create_bucket("runs")
    no_task.setenv("BATCH_TASK_COUNT", "2")

    def task(k, vm):
        no_task.setenv("BATCH_TASK_INDEX", str(k))
        return download_images.main(["--source", "gs://nih/png", "--out", "gs://runs/nih", "--workers", "0",
                                     "--quiet", "--shard", "auto", "--work-dir", str(tmp_path / vm)])

    for k in range(2):
        assert task(k, f"vm{k}") == 0
    local = tmp_path / "reference"
    assert download_images.main(["--source", "gs://nih/png", "--out", str(local), "--workers", "0", "--quiet"]) == 0
    shards = [remote(gcs_server, "runs", f"nih/shard-{k}/") for k in range(2)]
    for k, shard in enumerate(shards):
        rows = read_csv(tmp_path / f"vm{k}" / "manifest.csv")
        assert {n for n in shard if not n.startswith(".parts/")} == {"manifest.csv", "errors.csv"} | {
            r["path"] for r in rows}
        assert shard["manifest.csv"] == (tmp_path / f"vm{k}" / "manifest.csv").read_bytes()
        assert len([n for n in shard if n.startswith(".parts/")]) == 2  # four batches, two per shard
        for r in rows:
            assert shard[r["path"]] == (local / r["path"]).read_bytes()
    assert rows_of(*(tmp_path / f"vm{k}" / "manifest.csv" for k in range(2))) == rows_of(local / "manifest.csv")

    # Stopped after one unit's images went up but before its marker: the same VM (which has the marker) and a fresh
    # one both do that unit again, only it: what the bucket lacks is not done.
    marker = sorted(n for n in shards[0] if n.startswith(".parts/"))[1]
    for vm in ("vm0", "vm0-fresh"):
        gcs_server.bucket("runs").blob(f"nih/shard-0/{marker}").delete()
        capsys.readouterr()
        assert task(0, vm) == 0
        assert "1 of 2 archives already done" in capsys.readouterr().out
        assert remote(gcs_server, "runs", "nih/shard-0/") == shards[0]

    # An object replaced in the source: its batch again, and the bucket loses the old version's files.
    src = gcs_server.bucket("nih")
    src.blob("png/00000003_000.png").delete()
    src.blob("png/00000099_000.png").upload_from_string(png8(99))
    for k in range(2):
        assert task(k, f"vm{k}-again") == 0
    names = set().union(*(remote(gcs_server, "runs", f"nih/shard-{k}/") for k in range(2)))
    images = {n for n in names if n.startswith("images/")}
    assert "images/00000099_000.png" in images and "images/00000003_000.png" not in images and len(images) == 12


@pytest.mark.slow
def test_a_gs_out_killed_mid_run_resumes_to_the_same_bucket_contents(gcs_server, tmp_path, no_task):  # noqa: F811
    source = gcs_server.create_bucket("zips")
    for z in range(6):
        local = tmp_path / f"{z}.zip"
        write_zip(local, [(f"img_{z}_{i}.png", png8(10 * z + i, (300, 250))) for i in range(4)])
        source.blob(f"px/{z}.zip").upload_from_filename(str(local))
    gcs_server.create_bucket("runs")
    cmd = [sys.executable, os.path.join(ROOT, "download_images.py"), "--source", "gs://zips/px", "--out",
           "gs://runs/px", "--workers", "1", "--quiet", "--work-dir", str(tmp_path / "vm1")]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(b.name.startswith("px/.parts/") for b in gcs_server.list_blobs("runs", prefix="px/")):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # a spot VM gone: no clean-up of any kind
    proc.wait()
    markers = [b.name for b in gcs_server.list_blobs("runs", prefix="px/.parts/")]
    assert 1 <= len(markers) < 6, "the kill should land mid-run"
    assert download_images.main(cmd[2:-1] + [str(tmp_path / "vm2")]) == 0  # a fresh VM
    reference = tmp_path / "reference"
    assert download_images.main(["--source", "gs://zips/px", "--out", str(reference), "--workers", "0",
                                 "--quiet"]) == 0
    got = remote(gcs_server, "runs", "px/")
    assert {n: v for n, v in got.items() if not n.startswith(".parts/")} == outputs(reference)
    assert len([n for n in got if n.startswith(".parts/")]) == 6


def test_gs_out_problems_are_one_line_before_any_work(gcs_server, tmp_path, capsys):  # noqa: F811
    upload_source(gcs_server.create_bucket("nih"), 2)
    for out, words in [("gs://nih/png/out", "is --source gs://nih/png or inside it"),
                       ("gs://no-such-bucket/x", "gs://no-such-bucket/x: cannot write")]:
        assert download_images.main(["--source", "gs://nih/png", "--out", out, "--quiet",
                                     "--work-dir", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "w").exists()


def test_a_folder_cut_into_other_batches_gives_what_a_fresh_run_gives(tmp_path, monkeypatch):
    """A folder that grows past a batch boundary is batched anew: the former units are retired, their files that no
    new batch writes deleted, and nothing is a duplicate of a former unit's copy."""
    monkeypatch.setattr(archives, "LOOSE_BATCH", 4)
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "png").mkdir(parents=True)
    for i in range(4):
        (src / "png" / f"{i:08d}_000.png").write_bytes(png8(i))
    argv = ["--source", str(src), "--out", str(out), "--workers", "0", "--size", "0", "--quiet"]
    assert download_images.main(argv) == 0
    assert {r["archive"] for r in read_csv(out / "manifest.csv")} == {"png"}
    os.remove(src / "png" / "00000000_000.png")
    for i in range(4, 9):
        (src / "png" / f"{i:08d}_000.png").write_bytes(png8(i))
    assert download_images.main(argv) == 0
    assert {r["archive"] for r in read_csv(out / "manifest.csv")} == {f"png#{i:05d}" for i in range(2)}
    fresh = tmp_path / "fresh"
    assert download_images.main(["--source", str(src), "--out", str(fresh), "--workers", "0", "--size", "0",
                                 "--quiet"]) == 0
    assert outputs(out) == outputs(fresh) and read_csv(out / "errors.csv") == []
    assert sorted(os.listdir(out / ".parts")) == sorted(os.listdir(fresh / ".parts"))


def test_the_deploy_files_run_shard_auto_with_flags_the_script_takes():
    with open(os.path.join(ROOT, "deploy", "cloud-batch-ingest.json")) as f:
        job = json.load(f)
    group = job["taskGroups"][0]
    assert group["taskCount"] == group["parallelism"] > 1 and group["taskCountPerNode"] == 1
    spec = group["taskSpec"]
    command = spec["runnables"][0]["container"]["commands"][-1]
    words = shlex.split(command.split("exec python download_images.py", 1)[1])
    args = download_images.get_args([string.Template(w).substitute(spec["environment"]["variables"]) for w in words])
    assert args.shard == "auto" and args.source == "gs://gcs-public-data--healthcare-nih-chest-xray/png"
    assert args.billing_project and args.out.startswith("gs://")
    assert spec["maxRetryCount"] >= 1  # a preempted spot VM's task runs again and resumes from the bucket
    with open(os.path.join(ROOT, "deploy", "k8s-ingest-job.yaml")) as f:
        k8s = f.read()
    completions = re.search(r"^  completions: (\d+)$", k8s, re.M).group(1)
    assert "completionMode: Indexed" in k8s and f'{{name: SHARD_COUNT, value: "{completions}"}}' in k8s
    assert '"--shard", "auto"' in k8s
