"""Google Cloud Storage: list a bucket prefix and download blobs with checksums and retries, many at a time.

Uses the real google-cloud-storage client. When STORAGE_EMULATOR_HOST is set
(tests, fake-gcs-server) the client talks to the emulator anonymously; on a
machine without credentials it falls back to an anonymous client, which can
read public buckets.

A Requester Pays bucket (NIH's gs://gcs-public-data--healthcare-nih-chest-xray) bills every request to the project
named by userProject: the source bucket's handle carries it (`user_project`), so that the listing, every download
and every reload sends it.
"""
import base64
import os
import time
from concurrent import futures

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage
from google.cloud.storage import transfer_manager
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY
from requests.adapters import HTTPAdapter

from data.errors import InputError

CHUNK_BYTES = 32 * 2**20
# Loose objects (NIH: 112,120 PNGs of ~400 KB) are fetched this many at a time: one object is one round trip, and in
# sequence the round trips, not the bytes, set the pace.
FETCH_THREADS = 32
# What a listing needs of each object: its name, and its identity for the part markers and the download's checks.
LIST_FIELDS = "items(name,size,crc32c,generation),nextPageToken"
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


def make_client(connections=FETCH_THREADS):
    """A storage client whose HTTP session keeps `connections` connections open (requests keeps 10), so that that
    many threads can share it without opening a new connection per request."""
    # google-cloud-storage 3.x fetches each bucket's metadata in a background thread for its telemetry, without the
    # userProject: on a Requester Pays bucket a stray 400. Nothing here uses it.
    os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        client = storage.Client(project="emulator", credentials=AnonymousCredentials())
    else:
        try:
            client = storage.Client()
        except (DefaultCredentialsError, OSError):
            client = storage.Client.create_anonymous_client()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=connections)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, adapter)
    return client


def list_blobs(client, url, billing_project=None):
    """{name relative to the prefix: blob} for every object under gs://bucket/prefix, in one listing of the fields
    a download needs; billing_project is the userProject of a Requester Pays bucket."""
    name, prefix = parse_gcs_url(url)
    bucket = client.bucket(name, user_project=billing_project)
    blobs = client.list_blobs(bucket, prefix=prefix, fields=LIST_FIELDS, retry=DEFAULT_RETRY)
    return {b.name[len(prefix):]: b for b in blobs if not b.name.endswith("/")}


def access_error(error, url, billing_project=None):
    """An InputError with the fix for GCS refusing the source at `url` for lack of a billing project (or for refusing
    the one given), else None. GCS answers a Requester Pays bucket read without userProject with 400 'Bucket is a
    requester pays bucket but no user project provided.' (reason 'required', or UserProjectMissing), one with a
    project it cannot bill with 400 'User project specified in the request is invalid.' or 403 '... does not have
    serviceusage.services.use access to the Google Cloud project'."""
    text = str(error)
    bucket = parse_gcs_url(url)[0]
    reasons = {str(e.get("reason", "")) for e in getattr(error, "errors", None) or [] if isinstance(e, dict)}
    if isinstance(error, api_exceptions.BadRequest) and ("requester pays" in text.lower()
                                                         or "UserProjectMissing" in text + str(reasons)):
        return InputError(f"gs://{bucket} is a Requester Pays bucket: reads are billed to the reader; pass "
                          f"--billing-project PROJECT, a Google Cloud project of yours with billing (the account "
                          f"needs serviceusage.services.use on it, e.g. roles/serviceusage.serviceUsageConsumer)")
    if billing_project and isinstance(error, (api_exceptions.BadRequest, api_exceptions.Forbidden,
                                              api_exceptions.Unauthorized)) \
            and any(w in text.lower() for w in ("serviceusage", "billing", "user project", "userproject")):
        return InputError(f"--billing-project {billing_project}: GCS refused to bill it for gs://{bucket} "
                          f"({' '.join(text.split())[:300]}); the account needs serviceusage.services.use on "
                          f"{billing_project} (roles/serviceusage.serviceUsageConsumer) and billing enabled there")
    return None


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


def download_blobs(pairs, threads=FETCH_THREADS):
    """Download many (blob, dest) pairs, each as download_blob, `threads` at a time; returns the dests. The first
    failure cancels the downloads not started and is raised once the running ones end."""
    pairs = list(pairs)
    if threads <= 1 or len(pairs) <= 1:
        return [download_blob(blob, dest) for blob, dest in pairs]
    with futures.ThreadPoolExecutor(min(threads, len(pairs)), thread_name_prefix="gcs-fetch") as pool:
        jobs = [pool.submit(download_blob, blob, dest) for blob, dest in pairs]
        try:
            return [job.result() for job in jobs]
        except BaseException:
            for job in jobs:
                job.cancel()
            raise


def upload_files(bucket, pairs, threads=FETCH_THREADS):
    """Upload (local path, object name) pairs into `bucket` with transfer_manager's threads, each checked by CRC32C;
    raises the first failure."""
    pairs = list(pairs)
    if not pairs:
        return
    results = transfer_manager.upload_many(
        [(path, bucket.blob(name)) for path, name in pairs], max_workers=threads,
        worker_type=transfer_manager.THREAD, upload_kwargs={"checksum": "crc32c", "retry": DEFAULT_RETRY})
    for (path, name), result in zip(pairs, results):
        if isinstance(result, BaseException):
            raise result
