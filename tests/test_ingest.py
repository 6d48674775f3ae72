import csv
import io
import os
import signal
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import download_images
from conftest import add_tar_bytes, dicom_crop, files_under, make_zips, png16, read_csv, run_cli
from data.ingest.archives import image_id_for, plan_units, shard_units
from data.decode import read_image, resize_longest


def test_image_ids_follow_padchest_openi_and_nih():
    assert image_id_for("216840111366964013076187734852011291090445391_00-196-188.png") == \
        "216840111366964013076187734852011291090445391_00-196-188.png"
    assert image_id_for("NLMCXR_dcm/1000_IM-0003-2001.dcm") == "CXR1000_IM-0003-2001"
    assert image_id_for("1_1_IM-0001-3001.dcm") == "CXR1_1_IM-0001-3001"
    assert image_id_for("png/00000001_000.png") == "00000001_000.png"  # NIH's Image Index, as its CSVs spell it
    assert image_id_for("dicom/00030805_000.dcm") == "00030805_000.png"  # Google's DICOM copy of that PNG
    assert image_id_for("00000001_000.jpg") == "00000001_000"
    assert image_id_for("other.dcm") == "other"


def test_shards_are_disjoint_and_cover_everything():
    names = [f"{i}.zip" for i in range(55)] + ["NLMCXR_dcm.tgz", "loose/a.png", "loose/b.dcm", "x.csv"]
    units = plan_units(names)
    assert len(units) == 57  # 56 archives + one folder of loose images; x.csv is ignored
    shards = [[u.name for u in shard_units(units, k, 4)] for k in range(4)]
    flat = [n for s in shards for n in s]
    assert sorted(flat) == sorted(u.name for u in units) and len(set(flat)) == len(flat)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_bad_input_is_recorded_never_fatal_and_never_escapes(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    good = png16(1)
    with zipfile.ZipFile(src / "0.zip", "w") as zf:
        zf.writestr("a.png", good)
        zf.writestr("b.png", png16(2))
        zf.writestr("notes.txt", b"not an image")
        zf.writestr("../escape.png", good)
        zf.writestr(zipfile.ZipInfo("/abs/absolute.png"), good)
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../outside.png")
        zf.writestr("truncated.png", good[: len(good) // 2])
        ihdr = struct.pack(">IIBBBBB", 40000, 40000, 16, 0, 0, 0, 0)
        zf.writestr("bomb.png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                    + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    (src / "1.zip").write_bytes(b"PK\x03\x04 this is not really a zip file")
    with tarfile.open(src / "NLMCXR_dcm.tgz", "w:gz") as tf:
        add_tar_bytes(tf, "NLMCXR_dcm/1000_IM-0003-2001.dcm", dicom_crop())
        nopix = pydicom.dcmread(io.BytesIO(dicom_crop()))
        del nopix.PixelData
        buf = io.BytesIO()
        nopix.save_as(buf)
        add_tar_bytes(tf, "NLMCXR_dcm/1001_IM-0004-1001.dcm", buf.getvalue())
        add_tar_bytes(tf, "NLMCXR_dcm/1002_IM-0005-1001.dcm", dicom_crop(  # MPEG2: no decoder
            syntax="1.2.840.10008.1.2.4.100", PixelData=pydicom.encaps.encapsulate([b"\0" * 64])))
        add_tar_bytes(tf, "NLMCXR_dcm/1003_IM-0006-1001.dcm", b"", tarfile.SYMTYPE, "/etc/passwd")
        add_tar_bytes(tf, "/etc/cron.d/evil.dcm", dicom_crop())
    # A truncated gzip stream: the first member is intact, the rest is cut off.
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w:gz") as tf:
        add_tar_bytes(tf, "first.png", png16(3))
        add_tar_bytes(tf, "second.png", np.random.default_rng(4).bytes(200_000))
    (src / "cut.tgz").write_bytes(full.getvalue()[: len(full.getvalue()) * 2 // 3])

    before = set(files_under(tmp_path))
    rc = download_images.main(["--source", str(src), "--out", str(out), "--size", "64", "--workers", "0",
                               "--quiet"])
    assert rc == 0
    summary = capsys.readouterr().out
    manifest = read_csv(out / "manifest.csv")
    errors = {(e["archive"], e["member"]): e["reason"] for e in read_csv(out / "errors.csv")}

    assert [r["ImageID"] for r in manifest] == ["a.png", "b.png", "CXR1000_IM-0003-2001", "first.png"]
    expected = {
        ("0.zip", "notes.txt"): "not an image member",
        ("0.zip", "../escape.png"): "unsafe member path (escapes",
        ("0.zip", "/abs/absolute.png"): "unsafe member path (absolute)",
        ("0.zip", "link.png"): "link member refused",
        ("0.zip", "truncated.png"): "truncated or corrupt PNG",
        ("0.zip", "bomb.png"): "decompression bomb refused",
        ("1.zip", ""): "corrupt archive",
        ("NLMCXR_dcm.tgz", "NLMCXR_dcm/1001_IM-0004-1001.dcm"): "DICOM has no pixel data",
        ("NLMCXR_dcm.tgz", "NLMCXR_dcm/1002_IM-0005-1001.dcm"): "cannot decode pixel data, transfer syntax "
                                                                "1.2.840.10008.1.2.4.100",
        ("NLMCXR_dcm.tgz", "NLMCXR_dcm/1003_IM-0006-1001.dcm"): "link member refused",
        ("NLMCXR_dcm.tgz", "/etc/cron.d/evil.dcm"): "unsafe member path (absolute)",
        ("cut.tgz", ""): "corrupt archive (after 1 complete members",
    }
    for key, reason in expected.items():
        assert errors[key].startswith(reason), (key, errors[key])
    assert len(errors) == len(expected)
    assert f"{len(errors)} errors" in summary and "4 images written" in summary

    # Nothing written outside OUT, and OUT/images holds exactly the manifest's files.
    new = set(files_under(tmp_path)) - before
    assert all(p.startswith("out" + os.sep) for p in new)
    assert files_under(out / "images") == sorted(r["path"][len("images/"):] for r in manifest)
    assert not os.path.exists(tmp_path / "outside.png") and not os.path.exists(tmp_path / "escape.png")

    # Outputs are the decoder's pixels, resized; the original size is recorded.
    a = cv2.imread(str(out / "images" / "a.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp_path / "a16.png"), cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_UNCHANGED))
    assert np.array_equal(a, resize_longest(read_image(tmp_path / "a16.png"), 64))
    assert (manifest[0]["width"], manifest[0]["height"], manifest[0]["bits"]) == ("80", "96", "16")

    # --strict turns the same errors into a non-zero exit; the rerun (same --size) skips finished archives.
    assert download_images.main(["--source", str(src), "--out", str(out), "--size", "64", "--strict",
                                 "--quiet"]) == 1
    assert "0 images written" in capsys.readouterr().out


def test_openi_dicoms_ingest_identically_from_j2k_and_uncompressed(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    with tarfile.open(src / "NLMCXR_dcm.tgz", "w:gz", compresslevel=1) as tf:
        tf.add(get_testdata_file("RG1_UNCI.dcm"), arcname="1000_IM-0003-2001.dcm")
        tf.add(get_testdata_file("RG1_J2KI.dcm"), arcname="1001_IM-0003-2001.dcm")
    assert download_images.main(["--source", str(src), "--out", str(out), "--workers", "0", "--quiet",
                                 "--strict"]) == 0
    rows = read_csv(out / "manifest.csv")
    assert [r["ImageID"] for r in rows] == ["CXR1000_IM-0003-2001", "CXR1001_IM-0003-2001"]
    assert {(r["width"], r["height"], r["bits"], r["photometric"], r["view"]) for r in rows} == {
        ("1841", "1955", "15", "MONOCHROME1", "PA")}  # RG1's header: ViewPosition PA
    a = (out / "images" / "CXR1000_IM-0003-2001.png").read_bytes()
    assert a == (out / "images" / "CXR1001_IM-0003-2001.png").read_bytes()
    img = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (512, 482)
    assert np.array_equal(img, resize_longest(read_image(get_testdata_file("RG1_UNCI.dcm")), 512))


@pytest.mark.slow
def test_kill_and_resume_gives_byte_identical_outputs(tmp_path, capsys):
    src = tmp_path / "src"
    make_zips(src)
    reference = tmp_path / "reference"  # uninterrupted, and in one process: output must not depend on workers
    assert download_images.main(["--source", str(src), "--out", str(reference), "--size", "128",
                                 "--workers", "0", "--quiet"]) == 0

    out = tmp_path / "out"
    proc = subprocess.Popen(run_cli(src, out, 2), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and any(p.endswith(".json") for p in os.listdir(parts)):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # main process, fork server and workers
    proc.wait()
    done = [p for p in os.listdir(parts) if p.endswith(".json")]
    assert 1 <= len(done) < 6, "the kill should land mid-run"
    assert not (out / "manifest.csv").exists()

    (out / "images" / ".tmp-123-x").mkdir(exist_ok=True)
    (out / "images" / ".tmp-123-x" / "123-0a1b.tmp").write_bytes(b"partial")  # what a kill mid-write leaves
    assert download_images.main(["--source", str(src), "--out", str(out), "--size", "128", "--workers", "2",
                                 "--quiet"]) == 0
    assert f"{len(done)} of 6 archives already done" in capsys.readouterr().out
    assert files_under(out / "images") == files_under(reference / "images")
    assert len(files_under(out / "images")) == 36
    for name in ["manifest.csv", "errors.csv"] + [f"images/{f}" for f in files_under(reference / "images")]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_loose_files_and_an_output_folder_inside_the_source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "x.png").write_bytes(png16(7))
    (src / "sub" / "1000_IM-0003-2001.dcm").write_bytes(dicom_crop())
    (src / "labels.csv").write_text("not part of the images\n")
    out = src / "out"
    for _ in range(2):  # the second run must not ingest the first run's outputs
        assert download_images.main(["--source", str(src), "--out", str(out), "--workers", "0", "--quiet",
                                     "--strict"]) == 0
    rows = read_csv(out / "manifest.csv")
    assert [(r["archive"], r["member"], r["ImageID"], r["view"]) for r in rows] == [
        (".", "x.png", "x.png", ""), ("sub", "1000_IM-0003-2001.dcm", "CXR1000_IM-0003-2001", "PA")]
    with open(out / "manifest.csv", newline="") as f:  # the earlier columns where they were, then view
        assert next(csv.reader(f)) == ["ImageID", "path", "archive", "member", "width", "height", "bits",
                                       "photometric", "status", "view"]


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert download_images.main(["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "source not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as e:
        download_images.main(["--source", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "3/2"])
    assert e.value.code == 2
