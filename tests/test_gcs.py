import base64
import csv
import io
import os
import threading
import zipfile

import cv2
import google_crc32c
import numpy as np
import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import transfer_manager

import download_images
from conftest import dicom_crop, png8
from data.decode import decode_image_bytes
from data import gcs
from data.errors import EnvironmentFault, InputError
from data.ingest import archives


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
    assert gcs.is_copy_of(blob, str(dest))

    dest.write_bytes(data[:-1] + b"\0")  # a damaged local copy is not reused
    assert not gcs.is_copy_of(blob, str(dest))
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
    with pytest.raises(EnvironmentFault, match=r"gs://bulk/x.zip: cannot download to .*x.zip \(DataCorruption: "):
        gcs.download_blob(blob, str(tmp_path / "x.zip"), chunk_bytes=64 * 1024, attempts=1)
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary one
    corrupt_first_chunk(monkeypatch)
    gcs.download_blob(blob, str(tmp_path / "x.zip"), chunk_bytes=64 * 1024, attempts=2)  # retried
    assert (tmp_path / "x.zip").read_bytes() == data


def test_parse_gcs_url():
    assert gcs.parse_gcs_url("gs://bucket") == ("bucket", "")
    assert gcs.parse_gcs_url("gs://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ValueError):
        gcs.parse_gcs_url("/local/path")


def test_what_gcs_refuses_is_an_environment_fault_naming_the_url_action_and_role(gcs_server, tmp_path):
    """No client exception leaves data.gcs: a bucket that does not exist (GCS's 404) is the machine's configuration,
    said with the role the account needs for what was tried."""
    folder = gcs.BucketFolder("gs://nobucket/out", client=gcs_server)
    (tmp_path / "a.txt").write_text("a")
    for action, role, attempt in (("list", "objectViewer", folder.listing),
                                  ("upload", "objectAdmin", lambda: folder.upload(str(tmp_path), ["a.txt"])),
                                  ("write", "objectAdmin", folder.check_writable)):
        with pytest.raises(EnvironmentFault, match=rf"^gs://nobucket/out(/a.txt)?: cannot {action} .*\(NotFound: "
                                                   rf".*; gs://nobucket must exist .* needs roles/storage.{role} on it$"):
            attempt()
    gcs_server.create_bucket("runs")
    with pytest.raises(InputError, match="an object name that is no file's path"):
        gcs.BucketFolder("gs://runs", client=gcs_server).pull(str(tmp_path), {"../x": None})


NIH_NAMES = [f"{p:08d}_{f:03d}.png" for p in range(1, 8) for f in range(3)]  # 21 images named as NIH names them


def test_requester_pays_needs_billing_project_and_every_request_carries_it(requester_pays, tmp_path, capsys):
    direct, proxy = requester_pays
    bucket = direct.create_bucket("nih-paid")
    for i, name in enumerate(NIH_NAMES[:4]):
        bucket.blob(f"png/{name}").upload_from_string(png8(i))
    argv = ["--source", "gs://nih-paid/png", "--out", str(tmp_path / "out"), "--workers", "0", "--quiet"]

    assert download_images.main(argv) == 2  # no billing project: GCS's 400, said as what to do
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gs://nih-paid is a Requester Pays bucket" in err[0] and \
        "pass --billing-project PROJECT" in err[0], err
    assert not (tmp_path / "out").exists()  # refused at the listing, before anything is written

    assert download_images.main(argv + ["--billing-project", "other-project"]) == 2  # GCS's 403
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--billing-project other-project: GCS refused to bill it" in err[0] and \
        "serviceusage.services.use" in err[0], err

    proxy.seen.clear()
    assert download_images.main(argv + ["--billing-project", "my-project"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv", newline="")))
    assert [r["ImageID"] for r in rows] == NIH_NAMES[:4]
    paid = [s for s in proxy.seen if s[0] == "nih-paid"]
    assert {m for _, m, _, _ in paid} == {"GET"} and len([s for s in paid if "/download/" in s[2]]) == 4
    assert {p for _, _, _, p in paid} == {"my-project"}, paid  # the listing and every download


def test_the_real_client_raises_bad_request_for_requester_pays_and_it_is_mapped(requester_pays):
    """The mapping keys on the class and text the real client raises for GCS's real 400 body, not on a hand-made
    exception."""
    direct, _ = requester_pays
    direct.create_bucket("nih-paid").blob("png/a.png").upload_from_string(png8(0))
    with pytest.raises(InputError, match="--billing-project") as raised:
        gcs.list_blobs(gcs.make_client(), "gs://nih-paid/png")
    assert isinstance(raised.value.__context__, api_exceptions.BadRequest)
    assert gcs.access_error(api_exceptions.NotFound("no such object"), "gs://nih-paid/png") is None


@pytest.mark.slow
def test_loose_objects_in_a_bucket_prefix_ingest_like_archives(gcs_server, tmp_path, capsys, monkeypatch):
    """NIH's layout (png/<Image Index>, Google's dicom/<name>.dcm): batches (here of 4, NIH's are of 500) fetched
    in parallel, ImageIDs as NIH's CSVs spell them, error rows, resume, shards."""
    monkeypatch.setattr(archives, "LOOSE_BATCH", 4)
    bucket = gcs_server.create_bucket("nih")
    for i, name in enumerate(NIH_NAMES):
        bucket.blob(f"png/{name}").upload_from_string(png8(i) if i != 5 else png8(i)[:30])  # one cut short
    bucket.blob("dicom/00000099_000.dcm").upload_from_string(dicom_crop())  # Google's DICOM copy, view PA
    out = tmp_path / "out"
    argv = ["--source", "gs://nih", "--out", str(out), "--workers", "1", "--fetch-threads", "8", "--quiet"]
    assert download_images.main(argv) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert sorted(r["ImageID"] for r in rows) == sorted(set(NIH_NAMES) - {NIH_NAMES[5]}) + ["00000099_000.png"]
    assert {r["archive"] for r in rows if r["member"].endswith(".png")} == {f"png#{i:05d}" for i in range(8)}
    assert [(r["archive"], r["view"]) for r in rows if r["member"].endswith(".dcm")] == [("dicom", "PA")]
    assert {r["view"] for r in rows if r["member"].endswith(".png")} == {""}
    errors = list(csv.DictReader(open(out / "errors.csv", newline="")))
    assert [(e["member"], e["reason"]) for e in errors] == [(NIH_NAMES[5], "truncated or corrupt PNG image")]
    assert sorted(os.listdir(out / "images")) == sorted(r["ImageID"] for r in rows)
    assert os.listdir(out / ".download") == []
    assert "0 of 9 archives already done" in capsys.readouterr().out

    assert download_images.main(argv) == 0  # resume: every batch is done
    assert "9 of 9 archives already done" in capsys.readouterr().out
    bucket.blob(f"png/{NIH_NAMES[5]}").upload_from_string(png8(5))  # fixed: only its batch is ingested again
    assert download_images.main(argv) == 0
    assert "8 of 9 archives already done" in capsys.readouterr().out
    assert list(csv.DictReader(open(out / "errors.csv", newline=""))) == []

    shards = [tmp_path / f"s{k}" for k in range(3)]
    for k, shard in enumerate(shards):
        assert download_images.main(["--source", "gs://nih", "--out", str(shard), "--workers", "0", "--quiet",
                                     "--shard", f"{k}/3"]) == 0
    sharded = [r for shard in shards for r in csv.DictReader(open(shard / "manifest.csv", newline=""))]
    rows = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert sorted(map(sorted, (r.items() for r in sharded))) == sorted(map(sorted, (r.items() for r in rows)))
