"""Step 1 under a hostile trial (issue 12): colliding names, replaced inputs, a second run, a cut tar, signals, FIFOs,
long names, broken markers and a machine that refuses. Every case runs the real script on real files."""
import gzip
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from urllib.parse import quote

import cv2
import numpy as np
import pytest

import download_images
from conftest import (ROOT, add_tar_bytes, dicom_crop, files_under, make_zips, outputs, png8, png16, read_csv,
                      run_cli, write_zip)
from data.decode import decode_image_bytes
from data.files import is_temporary
from data.ingest.archives import safe_file_name


def jpeg(seed, shape=(40, 30)):
    return cv2.imencode(".jpg", np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))[1].tobytes()


def ingest(src, out, *extra, workers=0, size=0):
    return download_images.main(["--source", str(src), "--out", str(out), "--size", str(size),
                                 "--workers", str(workers), "--quiet", *map(str, extra)])


def assert_same_as_fresh(src, out, tmp_path, **kwargs):
    fresh = tmp_path / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    assert ingest(src, fresh, **kwargs) == 0
    assert outputs(out) == outputs(fresh)


def pixels(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


SAME_A, SAME_B = png8(1), png8(2)
COLLISIONS = {
    # name: ({archive: [(member, bytes)]}, [(archive, member, bytes) of the copies kept], [(archive, member, reason)])
    "same member in two archives": (
        {"a.zip": [("same.png", SAME_A)], "b.zip": [("same.png", SAME_B), ("other.png", png8(3))]},
        [("a.zip", "same.png", SAME_A), ("b.zip", "other.png", None)],
        [("b.zip", "same.png", "duplicate ImageID (same.png -> images/same.png; kept same.png from a.zip:same.png")]),
    "twice in one zip": (
        {"a.zip": [("same.png", SAME_A), ("same.png", SAME_B)]},
        [("a.zip", "same.png", SAME_A)],
        [("a.zip", "same.png", "duplicate ImageID (same.png -> images/same.png; kept same.png from a.zip:same.png")]),
    "png, jpg and dcm stems": (
        {"a.zip": [("x.png", SAME_A), ("x.jpg", jpeg(5)), ("x.dcm", dicom_crop())]},
        [("a.zip", "x.png", SAME_A)],
        [("a.zip", "x.dcm", "output file name taken (x -> images/x.png; kept x.png from a.zip:x.png"),
         ("a.zip", "x.jpg", "output file name taken (x -> images/x.png; kept x.png from a.zip:x.png")]),
    "names that differ in case": (
        {"a.zip": [("Same.PNG", SAME_A)], "b": [("same.png", SAME_B)]},
        [("a.zip", "Same.PNG", SAME_A)],
        [("b", "same.png", "output file name taken (same.png -> images/same.png; kept Same.PNG from a.zip")]),
    "the first copy does not decode": (
        {"a.zip": [("same.png", SAME_A[:60]), ("same.png", SAME_B), ("same.png", png8(4))]},
        [("a.zip", "same.png", SAME_B)],
        [("a.zip", "same.png", "duplicate ImageID (same.png -> images/same.png; kept same.png from a.zip:same.png"),
         ("a.zip", "same.png", "truncated or corrupt PNG")]),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("case", list(COLLISIONS))
def test_one_image_one_file_one_row(tmp_path, case, workers):
    archives, kept, refused = COLLISIONS[case]
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name, members in archives.items():
        if name.endswith(".zip"):
            write_zip(src / name, members)
        else:  # a folder of loose files
            (src / name).mkdir()
            for member, data in members:
                (src / name / member).write_bytes(data)
    assert ingest(src, out, workers=workers) == 0
    rows = read_csv(out / "manifest.csv")
    assert [(r["archive"], r["member"]) for r in rows] == [(a, m) for a, m, _ in kept]
    assert files_under(out / "images") == sorted(r["path"][len("images/"):] for r in rows)
    for row, (_, _, data) in zip(rows, kept):
        if data is not None:  # the file holds the kept copy's pixels, not a later one's
            assert np.array_equal(pixels(out / row["path"]), decode_image_bytes(data, row["member"])[0])
    errors = [(e["archive"], e["member"], e["reason"]) for e in read_csv(out / "errors.csv")]
    assert len(errors) == len(refused)
    for (archive, member, reason), expected in zip(errors, refused):
        assert (archive, member) == expected[:2] and reason.startswith(expected[2]), reason


def test_an_archive_added_or_replaced_later_gives_what_a_fresh_run_gives(tmp_path):
    """The earlier archive keeps a name even when it arrives after a later one was finished, and gives it back when
    it no longer has it: every rerun equals a fresh run on the same source."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "b.zip", [("same.png", SAME_B), ("other.png", png8(3))])
    assert ingest(src, out) == 0
    write_zip(src / "a.zip", [("same.png", SAME_A)])
    assert ingest(src, out) == 0
    assert_same_as_fresh(src, out, tmp_path)
    assert np.array_equal(pixels(out / "images" / "same.png"), decode_image_bytes(SAME_A, "same.png")[0])
    write_zip(src / "a.zip", [("new.png", png8(6))])  # replaced: b.zip's copy of same.png is the first now
    os.utime(src / "a.zip", ns=(1, 1))
    assert ingest(src, out) == 0
    assert_same_as_fresh(src, out, tmp_path)
    assert np.array_equal(pixels(out / "images" / "same.png"), decode_image_bytes(SAME_B, "same.png")[0])


def test_shards_copied_together_give_what_one_run_gives(tmp_path, capsys):
    """README's merge of shards: .parts/ and images/ of each copied into one OUT, then a rerun there. The two shards
    both wrote images/same.png; whose pixels the copy left is unknown, so both archives are ingested again."""
    src = tmp_path / "src"
    src.mkdir()
    write_zip(src / "a.zip", [("same.png", SAME_A), ("a_only.png", png8(3))])
    write_zip(src / "b.zip", [("same.png", SAME_B), ("b_only.png", png8(4))])
    write_zip(src / "c.zip", [("c_only.png", png8(5))])
    merged = tmp_path / "merged"
    for k in range(2):
        assert ingest(src, tmp_path / f"s{k}", "--shard", f"{k}/2") == 0
    for k in range(2):
        for folder in (".parts", "images"):
            shutil.copytree(tmp_path / f"s{k}" / folder, merged / folder, dirs_exist_ok=True)
    assert np.array_equal(pixels(merged / "images" / "same.png"), decode_image_bytes(SAME_B, "same.png")[0])
    capsys.readouterr()
    assert ingest(src, merged) == 0
    out, err = capsys.readouterr()
    assert "a.zip, b.zip all hold images/same.png" in err and "1 of 3 archives already done" in out
    assert_same_as_fresh(src, merged, tmp_path)


def change_archive(src):
    write_zip(src / "0.zip", [("img_0_0.png", png8(10)), ("replaced.png", png8(11))])
    os.utime(src / "0.zip", ns=(10**9, 10**9))  # the size may match; the time differs


def add_loose_file(src):
    (src / "loose" / "added.png").write_bytes(png8(12))


@pytest.mark.parametrize("change, size", [(change_archive, 0), (add_loose_file, 0), (None, 16)],
                         ids=["archive replaced under its name", "file added to a folder", "another --size"])
def test_a_rerun_ingests_what_changed_and_replaces_its_rows(tmp_path, capsys, change, size):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "loose").mkdir()
    write_zip(src / "0.zip", [("img_0_0.png", png8(7, (60, 50))), ("img_0_1.png", png8(8, (60, 50)))])
    write_zip(src / "1.zip", [("img_1_0.png", png8(9, (60, 50)))])
    (src / "loose" / "x.png").write_bytes(png8(13, (60, 50)))
    assert ingest(src, out) == 0
    if change:
        change(src)
    capsys.readouterr()
    assert ingest(src, out, size=size) == 0
    assert ("0 of 3" if size else "2 of 3") + " archives already done" in capsys.readouterr().out
    assert_same_as_fresh(src, out, tmp_path, size=size)  # rows replaced, none twice, old files gone
    if size:
        assert {pixels(out / r["path"]).shape[0] for r in read_csv(out / "manifest.csv")} == {16}


SETPRIV = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def run_as_user(args, fsize=None):
    """The script as a subprocess that file permissions apply to (root runs it without its override of them), with
    an optional file size limit that makes writes fail as on a full disk."""
    cmd = [sys.executable, os.path.join(ROOT, "download_images.py"), *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be tested")
        cmd = SETPRIV + cmd

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=limit)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["unreadable archive", "full disk"])
def test_a_machine_fault_stops_the_run_and_a_rerun_after_the_fix_completes_it(tmp_path, fault):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for z in range(3):
        write_zip(src / f"{z}.zip", [(f"img_{z}_{i}.png", png8(10 * z + i)) for i in range(3)])
    args = ["--source", src, "--out", out, "--size", 0, "--workers", 1, "--quiet"]
    if fault == "unreadable archive":
        os.chmod(src / "1.zip", 0)
        assert_one_line_error(run_as_user(args), "1.zip", "Permission denied")
        assert sorted(os.listdir(out / ".parts")) == ["0.zip.json"]  # 1.zip not done, 2.zip not reached
        os.chmod(src / "1.zip", 0o644)
    else:
        assert_one_line_error(run_as_user(args, fsize=200), "cannot write", "File too large")
        assert os.listdir(out / ".parts") == []
    assert not (out / "errors.csv").exists()  # nothing recorded as the input's fault
    assert download_images.main([*map(str, args)]) == 0
    assert len(read_csv(out / "manifest.csv")) == 9 and read_csv(out / "errors.csv") == []
    assert_same_as_fresh(src, out, tmp_path)


def test_images_on_another_file_system(tmp_path):
    """OUT/images linked to another disk: each image is written beside its final place, so the rename never crosses
    file systems (it failed with 'Invalid cross-device link' for every image)."""
    elsewhere = tempfile.mkdtemp(dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    if elsewhere is None or os.stat(elsewhere).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    try:
        src, out = tmp_path / "src", tmp_path / "out"
        src.mkdir()
        write_zip(src / "0.zip", [("a.png", png8(1)), ("b.png", png8(2))])
        out.mkdir()
        os.symlink(elsewhere, out / "images")
        assert ingest(src, out, workers=1) == 0
        assert read_csv(out / "errors.csv") == [] and sorted(os.listdir(elsewhere)) == ["a.png", "b.png"]
    finally:
        shutil.rmtree(elsewhere)


def test_a_second_run_on_the_same_out_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1))])
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from data.ingest.lock import OutLock; "
                               "OutLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", out],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert ingest(src, out) == 2
        err = capsys.readouterr().err
        assert f"another download_images.py run (pid {holder.pid})" in err and ".lock" in err
        assert err.count("\n") == 1
        assert not (out / "manifest.csv").exists() and not (out / "images").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # left by a process that is gone
    assert ingest(src, out) == 0
    assert [r["ImageID"] for r in read_csv(out / "manifest.csv")] == ["a.png"]


def tar_bytes(members, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members:
            add_tar_bytes(tf, name, data)
    return buf.getvalue()


@pytest.mark.parametrize("name, blocks", [("cut.tar", 0), ("cut.tgz", 0), ("cut.tar", 1)],
                         ids=["tar", "tgz", "tar with one of its two end blocks"])
def test_a_tar_cut_at_a_member_boundary_is_truncated(tmp_path, name, blocks):
    members = [("a.png", png8(1)), ("b.png", png8(2)), ("c.png", png8(3))]
    whole = tar_bytes(members[:2] if blocks else members)  # with blocks, the end-of-archive follows b.png
    boundary = sum(512 + -(-len(data) // 512) * 512 for _, data in members[:2])  # header + data in whole blocks
    cut = whole[:boundary + 512 * blocks]
    assert cut[boundary:] == b"\0" * 512 * blocks
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / name).write_bytes(gzip.compress(cut, mtime=0) if name.endswith(".tgz") else cut)  # a whole gzip stream
    (src / "whole.tar").write_bytes(tar_bytes([("d.png", png8(4))]))  # complete: no error row
    assert ingest(src, out) == 0
    assert [(r["archive"], r["ImageID"]) for r in read_csv(out / "manifest.csv")] == [
        (name, "a.png"), (name, "b.png"), ("whole.tar", "d.png")]
    errors = read_csv(out / "errors.csv")
    assert [(e["archive"], e["member"]) for e in errors] == [(name, "")]
    assert errors[0]["reason"].startswith("truncated archive (after 2 complete members;"), errors[0]["reason"]


def session_processes(sid):
    """Processes still alive in session `sid` (the script and everything it started)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in "ZX":  # zombies, dead: gone, waiting for a parent
            alive.append(int(pid))
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the script", "Ctrl-C to its process group"])
def test_a_signal_ends_every_process_with_one_line_and_resume_is_byte_identical(tmp_path, signum, to_group):
    src = tmp_path / "src"
    make_zips(src, archives=4, per_archive=6)
    out = tmp_path / "out"
    # stdout is a pipe, as in `download_images.py ... | cat`: it ends only when no process holds it any more.
    proc = subprocess.Popen(run_cli(src, out, 2), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / ".parts").is_dir() and os.listdir(out / ".parts"):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)  # held still, so that the signal lands mid-run however fast the machine
    assert proc.poll() is None and len(os.listdir(out / ".parts")) < 4, "the signal should land mid-run"
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    os.kill(proc.pid, signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=60)  # EOF on both pipes: every process that held them has ended
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 128 + signum
    assert err.strip().splitlines() == [
        f"download_images.py: interrupted by {signum.name}; finished archives are kept in {out / '.parts'}; rerun the "
        f"same command to resume"], err
    deadline = time.monotonic() + 10  # a process whose pipes closed may still be exiting
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_processes(proc.pid) == []  # fork server, workers and resource tracker included
    assert subprocess.run(run_cli(src, out, 2)).returncode == 0
    reference = tmp_path / "reference"
    assert download_images.main(["--source", str(src), "--out", str(reference), "--size", "128",
                                 "--workers", "0", "--quiet"]) == 0
    assert outputs(out) == outputs(reference)


def test_fifos_and_devices_among_loose_files_are_error_rows(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "good.png").write_bytes(png8(1))
    os.mkfifo(src / "fifo.png")
    os.mkfifo(src / "fifo.zip")
    os.symlink("/dev/null", src / "device.dcm")
    os.symlink(src / "gone.png", src / "broken.png")
    assert ingest(src, out) == 0  # would hang on opening a FIFO for reading
    assert [r["member"] for r in read_csv(out / "manifest.csv")] == ["good.png"]
    assert [(e["archive"], e["member"], e["reason"]) for e in read_csv(out / "errors.csv")] == [
        (".", "broken.png", "broken symbolic link"), (".", "device.dcm", "not a regular file (device)"),
        (".", "fifo.png", "not a regular file (FIFO)"), ("fifo.zip", "", "not a regular file (FIFO)")]


def test_any_legal_archive_name_fits(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    name = ("胸部光片影像資料集第一批次壓縮檔案" * 3)[:40] + ".zip"  # 124 bytes; %-quoted, 364: too long
    assert len(name.encode()) <= 255 < len(quote(name, safe="")) + len(".json")
    write_zip(src / name, [("a.png", png8(1))])
    write_zip(src / "z.zip", [("b.png", png8(2))])  # reached after it
    assert ingest(src, out) == 0
    assert [r["archive"] for r in read_csv(out / "manifest.csv")] == sorted([name, "z.zip"])
    parts = sorted(os.listdir(out / ".parts"))
    assert safe_file_name(name, ".json") in parts and all(len(p.encode()) <= 255 for p in parts)
    capsys.readouterr()
    assert ingest(src, out) == 0
    assert "2 of 2 archives already done" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "{", "[]", '{"archive": "0.zip"}',
                                  '{"archive": "0.zip", "manifest": [{"ImageID": "a.png"}], "errors": []}',
                                  '{"archive": "0.zip", "manifest": [], "errors": [], "lost": {}}'],
                         ids=["empty", "cut", "a list", "keys missing", "a row missing keys", "lost not a list"])
def test_a_broken_part_marker_is_named_and_its_archive_ingested_again(tmp_path, capsys, text):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1)), ("b.png", png8(2))])
    assert ingest(src, out) == 0
    marker = out / ".parts" / "0.zip.json"
    marker.write_text(text)
    capsys.readouterr()
    assert ingest(src, out) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {marker}: not a readable part marker"), err
    assert err[0].endswith("its archive counts as not done and is ingested again")
    assert_same_as_fresh(src, out, tmp_path)


def one_line_error(capsys, argv):
    assert download_images.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("download_images.py: error: "), err
    return err[0]


def test_bad_sources_and_outs_are_one_line_errors_before_any_work(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1))])
    (tmp_path / "labels.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    assert "no archive (.zip, .tar, .tgz, .tar.gz) or image file" in one_line_error(
        capsys, ["--source", tmp_path / "labels.csv", "--out", tmp_path / "o1"])
    assert "no archive" in one_line_error(capsys, ["--source", tmp_path / "empty", "--out", tmp_path / "o2"])
    assert "is --out" in one_line_error(capsys, ["--source", src, "--out", src])
    assert "exists and is not a folder" in one_line_error(capsys, ["--source", src, "--out", tmp_path / "a_file"])
    assert not any((tmp_path / d).exists() for d in ("o1", "o2")) and sorted(os.listdir(src)) == ["0.zip"]
    with pytest.raises(SystemExit) as e:
        download_images.main(["--source", str(src), "--out", str(tmp_path / "o3"), "--size", "-5"])
    assert e.value.code == 2 and "--size must be >= 0" in capsys.readouterr().err
    # --out inside --source is left out of the scan: a rerun does not ingest OUT/images.
    for _ in range(2):
        assert ingest(src, src / "out") == 0
    assert [r["archive"] for r in read_csv(src / "out" / "manifest.csv")] == ["0.zip"]


def test_a_read_only_out_is_refused_before_any_work(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1))])
    out.mkdir()
    os.chmod(out, 0o555)
    try:
        assert_one_line_error(run_as_user(["--source", src, "--out", out, "--quiet"]), f"--out {out}",
                              "cannot write there", "Permission denied")
        assert os.listdir(out) == []
    finally:
        os.chmod(out, 0o755)


def test_strips_and_png_bytes_named_jpg_are_kept_as_they_are(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "0.zip", [("strip.png", png8(1, (5000, 1))), ("wide.png", png8(2, (1, 5000))),
                              ("disguised.jpg", png16(3, (40, 30)))])
    assert ingest(src, out, size=64) == 0
    assert read_csv(out / "errors.csv") == []
    rows = {r["member"]: r for r in read_csv(out / "manifest.csv")}
    assert pixels(out / rows["strip.png"]["path"]).shape == (64, 1)
    assert pixels(out / rows["wide.png"]["path"]).shape == (1, 64)
    assert (rows["disguised.jpg"]["bits"], rows["disguised.jpg"]["photometric"]) == ("16", "MONOCHROME2")


def test_markers_from_before_the_view_column_stay_done_unless_they_hold_dicoms(tmp_path, capsys):
    """Format-2 markers (no view column): a unit of PNGs and JPEGs has no view to read and stays done; a unit with
    DICOMs is ingested again so that its views are read. The outcome is a fresh run's."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_zip(src / "0.zip", [("a.png", png8(1)), ("b.jpg", jpeg(2))])
    with tarfile.open(src / "1.tar", "w") as tf:
        add_tar_bytes(tf, "1000_IM-0003-2001.dcm", dicom_crop())
    assert ingest(src, out) == 0
    for marker in (out / ".parts").iterdir():
        data = json.loads(marker.read_text())
        data["format"] = 2
        for row in data["manifest"]:
            del row["view"]
        marker.write_text(json.dumps(data))
    capsys.readouterr()
    assert ingest(src, out) == 0
    assert "1 of 2 archives already done" in capsys.readouterr().out
    assert [r["view"] for r in read_csv(out / "manifest.csv")] == ["", "", "PA"]
    assert_same_as_fresh(src, out, tmp_path)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def no_core_dumps():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV], ids=["killed (OOM)", "crashed"])
def test_a_worker_killed_mid_unit_stops_the_run_with_one_line_naming_it_and_a_rerun_completes(tmp_path, signum):
    """The out-of-memory killer's SIGKILL to a decoding worker: not the member's fault (no error row), not a hang: the
    run stops with one line naming the unit, leaves it not done and no partial file, and a rerun finishes it. A
    worker that crashes (SIGSEGV, as a decoder on bad bytes) is not the machine's: its members are retried alone and
    the run goes on."""
    src, out = tmp_path / "src", tmp_path / "out"
    # enough units that the first marker comes long before the last: the main process decodes the first members
    # itself while the worker starts, and on an idle machine 3 units of 8 were all done by then
    make_zips(src, archives=6, per_archive=16)
    proc = subprocess.Popen(run_cli(src, out, 1), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=no_core_dumps)
    workers, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # main -> fork server -> the worker
        workers = [w for server in children(proc.pid) for w in children(server)]
        if workers and (out / ".parts").is_dir() and os.listdir(out / ".parts"):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)  # held still: the kill lands while a unit is under way however fast the machine
    done = os.listdir(out / ".parts")
    assert proc.poll() is None and workers and len(done) < 6, "the kill should land mid-run"
    os.kill(workers[0], signum)
    os.kill(proc.pid, signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    reference = tmp_path / "reference"
    assert download_images.main(["--source", str(src), "--out", str(reference), "--size", "128",
                                 "--workers", "0", "--quiet"]) == 0
    if signum == signal.SIGSEGV:
        assert proc.returncode == 0 and not err.strip(), err
        assert outputs(out) == outputs(reference)  # every member written, no error row
        return
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("download_images.py: error: "), err
    named = lines[0].split("error: ", 1)[1].split(":", 1)[0]
    assert named in {f"{z}.zip" for z in range(6)} and "killed (SIGKILL" in lines[0], lines[0]
    assert not (out / ".parts" / f"{named}.json").exists()  # not done: the rerun does it again
    assert not (out / "manifest.csv").exists() and not any(is_temporary(f) for f in files_under(out)), \
        files_under(out)
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_processes(proc.pid) == []
    assert subprocess.run(run_cli(src, out, 1)).returncode == 0
    assert outputs(out) == outputs(reference)
