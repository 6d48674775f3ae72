"""Google Cloud Storage: list a bucket prefix and download blobs with checksums and retries.

Uses the real google-cloud-storage client. When STORAGE_EMULATOR_HOST is set
(tests, fake-gcs-server) the client talks to the emulator anonymously; on a
machine without credentials it falls back to an anonymous client, which can
read public buckets.
"""
import base64
import os
import time

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage
from google.cloud.storage import transfer_manager
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from data.errors import InputError

CHUNK_BYTES = 32 * 2**20
# Errors worth another try of a whole download; each request inside is also
# retried with exponential backoff by DEFAULT_RETRY.
TRANSIENT = (DataCorruption, ConnectionError, TimeoutError, api_exceptions.ServerError,
             api_exceptions.TooManyRequests, api_exceptions.RetryError)


def is_gcs_url(source):
    return str(source).startswith("gs://")


def parse_gcs_url(url):
    """gs://bucket/some/prefix -> ("bucket", "some/prefix/"); the prefix is "" or ends with '/'."""
    if not is_gcs_url(url):
        raise InputError(f"not a gs:// URL: {url}")
    bucket, _, prefix = url[len("gs://"):].partition("/")
    if not bucket:
        raise InputError(f"no bucket in {url}")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


def make_client():
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except (DefaultCredentialsError, OSError):
        return storage.Client.create_anonymous_client()


def list_blobs(client, url):
    """{name relative to the prefix: blob} for every object under gs://bucket/prefix."""
    bucket, prefix = parse_gcs_url(url)
    blobs = client.list_blobs(bucket, prefix=prefix, retry=DEFAULT_RETRY)
    return {b.name[len(prefix):]: b for b in blobs if not b.name.endswith("/")}


def local_copy_is_valid(blob, path):
    """True when `path` exists with the blob's size and CRC32C (a download finished before a crash)."""
    if not os.path.exists(path) or os.path.getsize(path) != blob.size or not blob.crc32c:
        return False
    crc = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            crc.update(chunk)
    return base64.b64encode(crc.digest()).decode() == blob.crc32c


def download_blob(blob, dest, workers=8, chunk_bytes=CHUNK_BYTES, attempts=4):
    """Download a blob to `dest`, verified by CRC32C (or MD5), retried with backoff; returns dest.

    Large blobs are fetched in parallel ranges (transfer_manager), then renamed
    into place, so `dest` is never a partial file.
    """
    if blob.size is None or blob.crc32c is None:
        blob.reload(retry=DEFAULT_RETRY)
    if local_copy_is_valid(blob, dest):
        return dest
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    partial = dest + ".partial"
    for attempt in range(attempts):
        try:
            if blob.size > chunk_bytes and blob.crc32c:
                transfer_manager.download_chunks_concurrently(
                    blob, partial, chunk_size=chunk_bytes, max_workers=workers,
                    worker_type=transfer_manager.THREAD, crc32c_checksum=True,
                    download_kwargs={"retry": DEFAULT_RETRY})
            else:
                blob.download_to_filename(partial, checksum="auto", retry=DEFAULT_RETRY)
            os.replace(partial, dest)
            return dest
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            time.sleep(2 ** attempt)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
