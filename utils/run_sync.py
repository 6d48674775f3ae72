"""A run folder mirrored to Google Cloud Storage, so that a preempted spot VM's successor can resume the run.

After each checkpoint the run folder's files are uploaded to gs://BUCKET/PREFIX (only those whose size or CRC32C
differ from the bucket's copy, in parallel threads); `--resume gs://BUCKET/PREFIX` on a fresh VM downloads them first,
each verified by its checksum. Write permission is tried before training starts (one small object written and
deleted), so a missing role is one line at the start, not a traceback after the first epoch. The GCS client is
imported here, on use: a training run without a gs:// folder never needs it.
"""
import base64
import fcntl
import os

from data.errors import InputError

# Temporary files of atomic writes: never mirrored (a half-written file must not reach the bucket).
SKIP_SUFFIXES = (".tmp", ".partial")
WRITE_TEST = ".write-test"


def is_remote(location):
    """Whether a run folder given on the command line is a gs:// URL."""
    return str(location).startswith("gs://")


def work_folder(url):
    """The local folder a gs:// run is trained in: under the user's cache, named by the bucket and prefix, so that a
    restarted VM that kept its disk finds it again ($XDG_CACHE_HOME/traintest/runs/BUCKET/PREFIX)."""
    from data.ingest.gcs import parse_gcs_url
    bucket, prefix = parse_gcs_url(str(url))
    parts = [p for p in prefix.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InputError(f"{url}: name a run folder inside the bucket, gs://BUCKET/runs/NAME")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "traintest", "runs", bucket, *parts)


def file_crc32c(path):
    import google_crc32c
    crc = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            crc.update(chunk)
    return base64.b64encode(crc.digest()).decode()


class RunMirror:
    """gs://bucket/prefix as the remote copy of a run folder."""

    def __init__(self, url, client=None):
        from data.ingest.gcs import parse_gcs_url
        self.url = url.rstrip("/")
        self.bucket_name, self.prefix = parse_gcs_url(self.url)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            try:
                from data.ingest.gcs import make_client
            except ImportError as e:
                raise InputError(f"{self.url}: a gs:// run folder needs the GCS client ({e}; pip install "
                                 f"google-cloud-storage)") from None
            self._client = make_client()
        return self._client

    def _error(self, action, e):
        return InputError(f"{self.url}: cannot {action} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
                          "VM's service account needs roles/storage.objectAdmin on the bucket")

    def check_writable(self):
        """Write and delete one small object; InputError naming the URL when that is not allowed."""
        from google.api_core import exceptions
        blob = self.client.bucket(self.bucket_name).blob(self.prefix + WRITE_TEST)
        try:
            blob.upload_from_string(b"ok")
            blob.delete()
        except (exceptions.GoogleAPIError, OSError) as e:
            raise self._error("write", e) from None

    def remote(self):
        """{relative name: blob} of the objects under the prefix."""
        from google.api_core import exceptions
        try:
            blobs = self.client.list_blobs(self.bucket_name, prefix=self.prefix)
            return {b.name[len(self.prefix):]: b for b in blobs if not b.name.endswith("/")}
        except (exceptions.GoogleAPIError, OSError) as e:
            raise self._error("list", e) from None

    def push(self, run_dir, workers=8):
        """Upload the run folder's files that differ from the bucket's; returns how many were uploaded."""
        from google.cloud.storage import transfer_manager
        remote = self.remote()
        changed = []
        for root, _, names in os.walk(run_dir):
            for name in names:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, run_dir).replace(os.sep, "/")
                if name.endswith(SKIP_SUFFIXES) or not os.path.isfile(path):
                    continue
                blob = remote.get(rel)
                if blob is None or blob.size != os.path.getsize(path) or blob.crc32c != file_crc32c(path):
                    changed.append(rel)
        if not changed:
            return 0
        results = transfer_manager.upload_many_from_filenames(
            self.client.bucket(self.bucket_name), changed, source_directory=run_dir, blob_name_prefix=self.prefix,
            max_workers=workers, worker_type=transfer_manager.THREAD, upload_kwargs={"checksum": "crc32c"})
        failed = [(name, r) for name, r in zip(changed, results) if isinstance(r, Exception)]
        if failed:
            raise self._error(f"upload {failed[0][0]} ({len(failed)} of {len(changed)} files failed)", failed[0][1])
        return len(changed)

    def pull(self, run_dir):
        """Download every object under the prefix into run_dir (verified, atomically renamed; a file already there
        with the object's checksum is kept); returns how many. The processes of one machine (DDP ranks) take turns
        (a lock beside run_dir): the first downloads, the others find the files there."""
        from data.ingest.gcs import download_blob
        os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
        with open(os.path.abspath(run_dir) + ".pull.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remote = {rel: blob for rel, blob in self.remote().items() if rel != WRITE_TEST}
            if not remote:
                raise InputError(f"{self.url}: no run there to resume (the prefix holds no objects)")
            for rel, blob in remote.items():
                download_blob(blob, os.path.join(run_dir, *rel.split("/")))
        return len(remote)
