"""Google Cloud Storage, the one home of it: gs:// URLs, the client, listings, checksummed downloads and uploads, and a
folder kept in a bucket prefix (BucketFolder: step 1's gs:// OUT, step 4's --sync-to run folder).

Uses the real google-cloud-storage client. When STORAGE_EMULATOR_HOST is set (tests, fake-gcs-server) the client
talks to the emulator anonymously; on a machine without credentials it falls back to an anonymous client, which can
read public buckets.

A Requester Pays bucket (NIH's gs://gcs-public-data--healthcare-nih-chest-xray) bills every request to the project
named by userProject: the source bucket's handle carries it (`user_project`), so that the listing, every download
and every reload sends it.

What GCS refuses comes out as one of the project's errors, naming the URL: InputError for what the user gave (a
--billing-project GCS will not bill), EnvironmentFault for the machine's side (a role the account lacks, a bucket it
cannot see, a network that failed after the retries), so that no command needs to know the client's exceptions.
"""
import base64
import os
import time
from concurrent import futures

from data.errors import EnvironmentFault, InputError
from data.files import atomic_path, is_gcs_url, is_temporary, temporary_path

try:  # only a gs:// location needs the client, and a GPU VM that trains from its own disk may not have it
    import google_crc32c
    from google.api_core import exceptions as api_exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    from google.cloud import storage
    from google.cloud.storage import transfer_manager
    from google.cloud.storage.exceptions import DataCorruption
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests.adapters import HTTPAdapter
except ImportError as missing:
    _CLIENT_MISSING = missing
else:
    _CLIENT_MISSING = None
    # Errors worth another try of a whole download; each request inside is also retried with exponential backoff by
    # DEFAULT_RETRY.
    TRANSIENT = (DataCorruption, ConnectionError, TimeoutError, api_exceptions.ServerError,
                 api_exceptions.TooManyRequests, api_exceptions.RetryError)
    # What a request can end in besides its answer: GCS's refusals, the credentials', the network's (an OSError).
    REMOTE_ERRORS = (api_exceptions.GoogleAPIError, GoogleAuthError, OSError)
    # GCS answers a bucket the account may not use with 401 or 403, and one that does not exist (or that it may not
    # even see) with 404.
    REFUSED = (api_exceptions.Unauthorized, api_exceptions.Forbidden, api_exceptions.NotFound)

CHUNK_BYTES = 32 * 2**20
# Loose objects (NIH: 112,120 PNGs of ~400 KB) are fetched this many at a time: one object is one round trip, and in
# sequence the round trips, not the bytes, set the pace.
FETCH_THREADS = 32
# What a listing needs of each object: its name, and its identity for the part markers and the download's checks.
LIST_FIELDS = "items(name,size,crc32c,generation),nextPageToken"
READ_ROLE = "roles/storage.objectViewer"
WRITE_ROLE = "roles/storage.objectAdmin"  # objectCreator cannot replace or delete an object


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
    many threads can share it without opening a new connection per request. EnvironmentFault on a machine without
    google-cloud-storage."""
    if _CLIENT_MISSING is not None:
        raise EnvironmentFault(f"a gs:// location needs the Google Cloud Storage client, which this machine lacks "
                               f"({_CLIENT_MISSING}): pip install google-cloud-storage")
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


def remote_error(error, url, action, role, billing_project=None):
    """The InputError or EnvironmentFault that says, naming `url`, that `action` on it failed with `error` (one of
    REMOTE_ERRORS or TRANSIENT) and, when GCS refused it, the `role` the account needs."""
    billing = access_error(error, url, billing_project)
    if billing is not None:
        return billing
    first = (str(error).splitlines() or [""])[0][:300]
    message = f"{url}: cannot {action} ({type(error).__name__}: {first})"
    if isinstance(error, REFUSED):
        bucket = parse_gcs_url(url)[0]
        message += (f"; gs://{bucket} must exist and the account in use (the VM's service account, or your gcloud "
                    f"application-default login) needs {role} on it")
    return EnvironmentFault(message)


def blob_url(blob):
    return f"gs://{blob.bucket.name}/{blob.name}"


def list_blobs(client, url, billing_project=None):
    """{name relative to the prefix: blob} for every object under gs://bucket/prefix, in one listing of the fields
    a download needs; billing_project is the userProject of a Requester Pays bucket."""
    name, prefix = parse_gcs_url(url)
    bucket = client.bucket(name, user_project=billing_project)
    try:
        blobs = client.list_blobs(bucket, prefix=prefix, fields=LIST_FIELDS, retry=DEFAULT_RETRY)
        return {b.name[len(prefix):]: b for b in blobs if not b.name.endswith("/")}
    except REMOTE_ERRORS as e:
        raise remote_error(e, url, "list", READ_ROLE, billing_project) from None


def file_crc32c(path):
    """The CRC32C of the file at `path`, base64 as GCS gives an object's."""
    crc = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            crc.update(chunk)
    return base64.b64encode(crc.digest()).decode()


def is_copy_of(blob, path):
    """True when `path` is a file with the blob's size and CRC32C (a download finished before a crash, a file that
    did not change since its upload)."""
    return os.path.isfile(path) and os.path.getsize(path) == blob.size and bool(blob.crc32c) \
        and file_crc32c(path) == blob.crc32c


def download_blob(blob, dest, workers=8, chunk_bytes=CHUNK_BYTES, attempts=4):
    """Download a blob to `dest`, verified by CRC32C (or MD5), retried with backoff; returns dest. Large blobs are
    fetched in parallel ranges (transfer_manager). Written through atomic_path, so `dest` is never a partial file.
    EnvironmentFault (or InputError, see remote_error) naming the object when it cannot be had."""
    url = blob_url(blob)

    def failed(e):
        return remote_error(e, url, f"download to {dest}", READ_ROLE, blob.bucket.user_project)

    try:
        if blob.size is None or blob.crc32c is None:
            blob.reload(retry=DEFAULT_RETRY)
        if is_copy_of(blob, dest):
            return dest
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    except REMOTE_ERRORS as e:
        raise failed(e) from None
    for attempt in range(attempts):
        try:
            with atomic_path(dest) as tmp:
                if blob.size > chunk_bytes and blob.crc32c:
                    transfer_manager.download_chunks_concurrently(
                        blob, tmp, chunk_size=chunk_bytes, max_workers=workers,
                        worker_type=transfer_manager.THREAD, crc32c_checksum=True,
                        download_kwargs={"retry": DEFAULT_RETRY})
                else:
                    blob.download_to_filename(tmp, checksum="auto", retry=DEFAULT_RETRY)
            return dest
        except TRANSIENT as e:
            if attempt == attempts - 1:
                raise failed(e) from None
            time.sleep(2 ** attempt)
        except REMOTE_ERRORS as e:
            raise failed(e) from None


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


def local_path(folder, name, url):
    """Where the object `name` (relative to a BucketFolder's prefix) lives under `folder`; InputError when the name
    would lead outside it."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{url}/{name}: an object name that is no file's path under {folder}")
    return os.path.join(folder, *parts)


def changed_files(folder, remote):
    """The relative names of the files under `folder` (temporary ones left out) that the bucket's copy in `remote`
    ({relative name: blob}) lacks, or holds with another size or CRC32C; sorted."""
    changed = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if not is_temporary(name) and os.path.isfile(path) and \
                    not (rel in remote and is_copy_of(remote[rel], path)):
                changed.append(rel)
    return sorted(changed)


class BucketFolder:
    """gs://bucket/prefix as the copy of a local folder: objects named by their path relative to the folder, compared
    by size and CRC32C, moved by transfer_manager's threads. Temporary names (data.files.is_temporary) are never
    uploaded and never listed. Every failure is remote_error's, naming the URL."""

    def __init__(self, url, client=None, threads=FETCH_THREADS):
        self.url = url.rstrip("/")
        self.bucket_name, self.prefix = parse_gcs_url(self.url)
        self.threads = threads
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.threads)
        return self._client

    @property
    def bucket(self):
        return self.client.bucket(self.bucket_name)

    def listing(self, under=""):
        """{relative name: blob} of the objects under `under` (a relative folder ending with '/', or "": all)."""
        found = list_blobs(self.client, f"{self.url}/{under}" if under else self.url)
        return {under + name: blob for name, blob in found.items() if not is_temporary(name)}

    def upload(self, folder, names):
        """Upload the files `names` (relative to `folder`) to their objects, each checked by CRC32C."""
        names = list(names)
        if not names:
            return
        results = transfer_manager.upload_many_from_filenames(
            self.bucket, names, source_directory=folder, blob_name_prefix=self.prefix,
            max_workers=min(self.threads, len(names)), worker_type=transfer_manager.THREAD,
            upload_kwargs={"checksum": "crc32c", "retry": DEFAULT_RETRY})
        failed = [(name, error) for name, error in zip(names, results) if isinstance(error, BaseException)]
        if not failed:
            return
        name, error = failed[0]
        if not isinstance(error, REMOTE_ERRORS + TRANSIENT):
            raise error
        more = f"; {len(failed) - 1} more of {len(names)} files failed" if len(failed) > 1 else ""
        raise remote_error(error, f"{self.url}/{name}", f"upload {os.path.join(folder, name)}{more}",
                           WRITE_ROLE) from None

    def push(self, folder):
        """Upload the files under `folder` that differ from the bucket's copies (changed_files); returns how many."""
        changed = changed_files(folder, self.listing())
        self.upload(folder, changed)
        return len(changed)

    def pull(self, folder, remote=None):
        """Download the objects of `remote` ({relative name: blob}, default: every object) into `folder`, each
        verified (a file already there with the object's checksum is kept); returns how many."""
        remote = self.listing() if remote is None else remote
        download_blobs([(blob, local_path(folder, name, self.url)) for name, blob in remote.items()], self.threads)
        return len(remote)

    def delete(self, names):
        """Delete the objects `names` (relative); one already gone is fine."""
        for name in names:
            try:
                self.bucket.blob(self.prefix + name).delete(retry=DEFAULT_RETRY)
            except api_exceptions.NotFound:
                pass
            except REMOTE_ERRORS as e:
                raise remote_error(e, f"{self.url}/{name}", "delete", WRITE_ROLE) from None

    def check_writable(self):
        """Write and delete one small object, so that a missing role is one line before any work (EnvironmentFault
        naming the URL and the role)."""
        blob = self.bucket.blob(self.prefix + temporary_path(".write-check"))
        try:
            blob.upload_from_string(b"ok")
            blob.delete()
        except REMOTE_ERRORS as e:
            raise remote_error(e, self.url, "write", WRITE_ROLE) from None
