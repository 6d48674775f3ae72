"""A run folder mirrored to Google Cloud Storage, so that a preempted spot VM's successor can resume the run.

After each checkpoint the run folder's files are uploaded to gs://BUCKET/PREFIX, a data.gcs.BucketFolder (only those
whose size or CRC32C differ from the bucket's copy, never a temporary file of a write in progress); `--resume
gs://BUCKET/PREFIX` on a fresh VM downloads them first (pull_run), each verified by its checksum. Write permission is
tried before training starts (BucketFolder.check_writable), so a missing role is one line at the start, not a
traceback after the first epoch. What is about runs lives here: where a gs:// run is trained, and what resuming one
needs.
"""
import fcntl
import os

from data.errors import InputError
from data.gcs import BucketFolder, parse_gcs_url


def work_folder(url):
    """The local folder a gs:// run is trained in: under the user's cache, named by the bucket and prefix, so that a
    restarted VM that kept its disk finds it again ($XDG_CACHE_HOME/traintest/runs/BUCKET/PREFIX)."""
    bucket, prefix = parse_gcs_url(str(url))
    parts = [p for p in prefix.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InputError(f"{url}: name a run folder inside the bucket, gs://BUCKET/runs/NAME")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "traintest", "runs", bucket, *parts)


def pull_run(url, run_dir, client=None):
    """Download the run at `url` into run_dir (BucketFolder.pull); returns how many files. The processes of one
    machine (DDP ranks) take turns (a lock beside run_dir): the first downloads, the others find the files there.
    InputError when the prefix holds no run."""
    folder = BucketFolder(url, client=client)
    os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
    with open(os.path.abspath(run_dir) + ".pull.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remote = folder.listing()
        if not remote:
            raise InputError(f"{folder.url}: no run there to resume (the prefix holds no objects)")
        return folder.pull(run_dir, remote)
