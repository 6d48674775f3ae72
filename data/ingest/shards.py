"""Many machines, one ingest: which shard this task is (--shard auto), and an OUT on Google Cloud Storage.

--shard auto takes the task's index and count from the engine that started it:
  * Google Cloud Batch sets BATCH_TASK_INDEX (0 .. taskCount-1) and BATCH_TASK_COUNT in every task of a job;
  * a Kubernetes indexed Job (completionMode: Indexed) sets JOB_COMPLETION_INDEX but not the number of completions,
    so the count comes from --shard-count or SHARD_COUNT (set it to the Job's spec.completions in the pod's env).
Task K of N ingests every N-th unit from the K-th (data.ingest.archives.shard_units) into OUT/shard-K, so N shards
cover the source once and never write the same folder.

A gs:// OUT is built in a local work folder (an ordinary OUT: its lock, part markers and images) and published
as it goes: each finished unit's images are uploaded, then its part marker, so that a marker in the bucket means its
images are there. A run starts by making the work folder's markers the bucket's (a fresh VM, a rerun after
preemption: what the bucket has is done, what it lacks is done again), and ends by uploading manifest.csv and
errors.csv and deleting what the bucket holds that the manifest no longer names (images of replaced units, markers of
units made not done). manifest.csv is deleted from the bucket before the first new unit goes up, so a shard that is
being changed never shows a manifest that does not describe it.
"""
import csv
import os
from concurrent import futures

from data import gcs
from data.errors import InputError
from data.ingest.archives import safe_file_name
from data.ingest.ledger import part_file_name

SHARD_COUNT_ENV = "SHARD_COUNT"
RESULTS = ("manifest.csv", "errors.csv")


def _index(environ, name, what):
    try:
        return int(environ[name])
    except ValueError:
        raise InputError(f"--shard auto: {name}={environ[name]!r} is not a whole number ({what})") from None


def shard_from_environment(environ, shard_count=None):
    """(K, N, where they came from) of this task; InputError naming the variables when none is set or they
    disagree."""
    if "BATCH_TASK_INDEX" in environ:
        k = _index(environ, "BATCH_TASK_INDEX", "Cloud Batch's task index")
        if "BATCH_TASK_COUNT" not in environ:
            raise InputError("--shard auto: BATCH_TASK_INDEX is set but BATCH_TASK_COUNT is not (Cloud Batch sets "
                             "both)")
        n = _index(environ, "BATCH_TASK_COUNT", "Cloud Batch's task count")
        if shard_count is not None and shard_count != n:
            raise InputError(f"--shard-count {shard_count} differs from BATCH_TASK_COUNT={n}: leave --shard-count "
                             f"out under Cloud Batch")
        source = "Cloud Batch (BATCH_TASK_INDEX, BATCH_TASK_COUNT)"
    elif "JOB_COMPLETION_INDEX" in environ:
        k = _index(environ, "JOB_COMPLETION_INDEX", "a Kubernetes indexed Job's completion index")
        if shard_count is None:
            if SHARD_COUNT_ENV not in environ:
                raise InputError(f"--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes indexed Job) but not how "
                                 f"many shards there are: pass --shard-count N or set {SHARD_COUNT_ENV} to the "
                                 f"Job's completions")
            shard_count = _index(environ, SHARD_COUNT_ENV, "the number of shards")
        n = shard_count
        source = "a Kubernetes indexed Job (JOB_COMPLETION_INDEX)"
    else:
        raise InputError("--shard auto: no task index in the environment (Cloud Batch's BATCH_TASK_INDEX and "
                         "BATCH_TASK_COUNT, or a Kubernetes indexed Job's JOB_COMPLETION_INDEX); outside those, "
                         "give --shard K/N")
    if not (n >= 1 and 0 <= k < n):
        raise InputError(f"--shard auto: task index {k} of {n} tasks from {source} is not 0 <= K < N")
    return k, n, source


def shard_out(out, k):
    """Where shard K of an --shard auto run writes: OUT/shard-K (a gs:// OUT too)."""
    return f"{out.rstrip('/')}/shard-{k}" if gcs.is_gcs_url(out) else os.path.join(out, f"shard-{k}")


def check_gcs_out(source, out):
    """Refuse a gs:// OUT inside a gs:// SOURCE (its images would be listed as source images on the next run)."""
    if gcs.is_gcs_url(source) and gcs.is_gcs_url(out):
        (sb, sp), (ob, op) = gcs.parse_gcs_url(source), gcs.parse_gcs_url(out)
        if sb == ob and op.startswith(sp):
            raise InputError(f"--out {out} is --source {source} or inside it: a rerun would ingest its own images; "
                             f"give an --out outside --source")


def default_work_dir(url):
    """The local folder a gs:// OUT is built in: under the user's cache, named by the URL, so that a rerun on the
    same machine finds its downloads and images."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "download_images", safe_file_name(url.rstrip("/")))


class GcsOut:
    """A BucketFolder as the home of an OUT built in a local work folder (see the module doc); the `publish` of
    data.ingest.pipeline.ingest. What it adds is the order: uploads run in one background thread, one unit at a time
    (its images, then its marker) while the next unit is ingested; a failed upload stops the run at the next unit
    with one line."""

    def __init__(self, folder):
        self.folder = folder
        self.url = folder.url
        self.out = None
        self.remote_markers = set()  # relative names of the part markers in the bucket
        self.results_removed = False
        self.uploader = futures.ThreadPoolExecutor(1, thread_name_prefix="gcs-publish")
        self.pending = None

    def start(self, out):
        """Make OUT/.parts hold exactly the bucket's markers."""
        self.out = out
        remote = {name: blob for name, blob in self.folder.listing(".parts/").items() if name.endswith(".json")}
        keep = {os.path.basename(name) for name in remote}
        parts = os.path.join(out, ".parts")
        for fname in os.listdir(parts):
            if fname.endswith(".json") and fname not in keep:
                os.remove(os.path.join(parts, fname))
        self.folder.pull(out, remote)
        self.remote_markers = set(remote)

    def unit_done(self, ledger, name, rows):
        """Queue the upload of a finished unit: its images, then its marker (after the previous unit's upload)."""
        self._wait()
        marker = ".parts/" + part_file_name(name)
        local_markers = {".parts/" + f for f in os.listdir(ledger.parts_dir) if f.endswith(".json")}
        gone = sorted(self.remote_markers - local_markers)  # units this run made not done
        images = [row["path"] for row in rows]
        self.remote_markers = (self.remote_markers - set(gone)) | {marker}
        self.pending = self.uploader.submit(self._publish_unit, gone, images, marker)

    def _publish_unit(self, gone, images, marker):
        if not self.results_removed:
            self.folder.delete(RESULTS)
            self.results_removed = True
        self.folder.delete(gone)
        self.folder.upload(self.out, images)
        self.folder.upload(self.out, [marker])

    def _wait(self):
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def finish(self, out):
        """Upload manifest.csv and errors.csv; delete the images and markers the bucket holds that OUT does not
        name."""
        self._wait()
        self.uploader.shutdown()
        with open(os.path.join(out, "manifest.csv"), newline="", encoding="utf-8") as f:
            wanted = {row["path"] for row in csv.DictReader(f)}
        wanted |= {".parts/" + f for f in os.listdir(os.path.join(out, ".parts")) if f.endswith(".json")}
        stale = [name for name in self.folder.listing() if name not in wanted
                 and name.startswith(("images/", ".parts/"))]
        self.folder.delete(sorted(stale))
        self.folder.upload(out, RESULTS)

    def abandon(self):
        """Stop without waiting for an upload in flight (an interrupt): what is not in the bucket is done again."""
        self.uploader.shutdown(wait=False, cancel_futures=True)
