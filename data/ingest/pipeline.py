"""Step 1 of the pipeline: archives -> OUT/images/*.png (8-bit), OUT/manifest.csv, OUT/errors.csv.

Flow: list the source (a local folder or gs://bucket/prefix) -> units (one per
archive, one per folder of loose images) -> for each unit not finished yet:
fetch it (GCS: download with checksum while the previous unit is processed),
stream its members into a process pool (decode -> 8-bit mapping -> resize ->
atomic write), then record the unit's manifest and error rows in one part file
OUT/.parts/<unit>.json written atomically. That part file is the "finished"
marker a rerun skips; only after it exists is a downloaded archive deleted.
manifest.csv and errors.csv are rebuilt from all part files at the end, sorted,
so a run that was killed and resumed writes the same bytes as one that was not.
"""
import csv
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from urllib.parse import quote

import cv2
from tqdm import tqdm

from data.ingest.archives import iter_members, output_name, plan_units, read_job_bytes, shard_units
from data.decode import ImageError, decode_image_bytes, resize_longest

MANIFEST_COLUMNS = ["ImageID", "path", "archive", "member", "width", "height", "bits", "photometric",
                    "status"]
ERROR_COLUMNS = ["archive", "member", "reason"]
# Fixed settings and no timestamps: the same input always gives the same PNG bytes.
# The "up" filter alone at deflate level 1: as small as level 3 with adaptive filters on radiographs,
# and under half the time.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def _init_worker():
    cv2.setNumThreads(1)  # one core per worker process; the pool provides the parallelism


def process_job(job, images_dir, tmp_dir, size):
    """Decode, map to 8 bits, resize and write one member. Returns (manifest row, None) or (None, reason)."""
    try:
        img, info = decode_image_bytes(read_job_bytes(job), job.member)
        img = resize_longest(img, size)
        ok, png = cv2.imencode(".png", img, PNG_PARAMS)
        if not ok:
            raise ImageError("PNG encoding failed")
        name = output_name(job.image_id)
        # Written next door, then renamed: OUT/images never holds a partial file.
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{name}")
        with open(tmp, "wb") as f:
            f.write(png.tobytes())
        os.replace(tmp, os.path.join(images_dir, name))
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # corrupt zip member (bad CRC, zlib error), unreadable file...
        return None, f"cannot read member ({type(e).__name__}: {e})"
    row = {"ImageID": job.image_id, "path": f"images/{name}", "member": job.member, "status": "ok"}
    row.update(info)
    return row, None


class WorkerPool:
    """A process pool that is rebuilt when a worker dies (a decoder crash or the OOM killer)."""

    def __init__(self, workers):
        self.workers = workers
        self.executor = None

    def submit(self, *args):
        """(future, the executor that runs it)."""
        if self.executor is None:
            ctx = multiprocessing.get_context("forkserver")  # no fork of a process running threads
            ctx.set_forkserver_preload(["data.ingest.pipeline"])
            self.executor = futures.ProcessPoolExecutor(self.workers, mp_context=ctx,
                                                        initializer=_init_worker)
        return self.executor.submit(process_job, *args), self.executor

    def discard(self, executor):
        if executor is self.executor:  # not yet replaced by a fresh one
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def close(self):
        if self.executor is not None:
            self.executor.shutdown()


WORKER_DIED = "worker process died while decoding (crash or out of memory)"


def process_unit(unit, local_files, pool, dirs, size, bar):
    """Ingest every member of one unit; returns (manifest rows, error rows), both sorted by member."""
    images_dir, tmp_dir = dirs
    rows, errors, seen, pending, suspects = [], [], {}, {}, []

    def record(member, row, reason):
        if row is not None:
            row["archive"] = unit.name
            rows.append(row)
        else:
            errors.append({"archive": unit.name, "member": member, "reason": reason})
        bar.update(1)

    def collect(done):
        for fut in done:
            job, executor = pending.pop(fut)
            try:
                record(job.member, *fut.result())
            except (BrokenProcessPool, futures.CancelledError):
                suspects.append(job)  # any in-flight member may be the one that killed the worker
                pool.discard(executor)

    def drain(limit):
        while len(pending) > limit:
            done, _ = futures.wait(list(pending), return_when=futures.FIRST_COMPLETED)
            collect(done)

    for member, job, problem in iter_members(unit, local_files):
        if problem:
            record(member, None, problem)
            continue
        if job.image_id in seen:
            record(member, None, f"duplicate ImageID ({job.image_id}, also member {seen[job.image_id]})")
            continue
        seen[job.image_id] = member
        if pool is None:
            record(member, *process_job(job, images_dir, tmp_dir, size))
            continue
        fut, executor = pool.submit(job, images_dir, tmp_dir, size)
        pending[fut] = (job, executor)
        drain(2 * pool.workers - 1)  # bounded in-flight work: memory stays flat
    drain(0)
    for job in suspects:  # one at a time, so only a member that kills a worker again is blamed
        fut, executor = pool.submit(job, images_dir, tmp_dir, size)
        try:
            record(job.member, *fut.result())
        except (BrokenProcessPool, futures.CancelledError):
            record(job.member, None, WORKER_DIED)
            pool.discard(executor)
    rows.sort(key=lambda r: r["member"])
    errors.sort(key=lambda e: (e["member"], e["reason"]))
    return rows, errors


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def csv_text(rows, columns):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def merge_parts(out, run_errors):
    """Rebuild manifest.csv and errors.csv from all part files; returns (manifest rows, error rows)."""
    parts_dir = os.path.join(out, ".parts")
    rows, errors = [], list(run_errors)
    for name in sorted(os.listdir(parts_dir)):
        if name.endswith(".json"):
            with open(os.path.join(parts_dir, name)) as f:
                part = json.load(f)
            rows += part["manifest"]
            errors += part["errors"]
    rows.sort(key=lambda r: (r["archive"], r["member"]))
    kept, owner = [], {}
    for row in rows:
        if row["ImageID"] in owner:  # the same image in two archives: keep the first
            errors.append({"archive": row["archive"], "member": row["member"],
                           "reason": f"duplicate ImageID ({row['ImageID']}, kept {owner[row['ImageID']]})"})
        else:
            owner[row["ImageID"]] = f"{row['archive']}:{row['member']}"
            kept.append(row)
    errors.sort(key=lambda e: (e["archive"], e["member"], e["reason"]))
    write_atomic(os.path.join(out, "manifest.csv"), csv_text(kept, MANIFEST_COLUMNS))
    write_atomic(os.path.join(out, "errors.csv"), csv_text(errors, ERROR_COLUMNS))
    return kept, errors


def list_source(source, skip_dirs):
    """(sorted source-relative file names, {name: blob} for a gs:// source or None)."""
    if source.startswith("gs://"):
        from data.ingest import gcs  # imported here: the worker processes never need the GCS client
        client = gcs.make_client()
        blobs = gcs.list_blobs(client, source)
        return sorted(blobs), blobs
    if os.path.isfile(source):
        return [os.path.basename(source)], None
    if not os.path.isdir(source):
        raise FileNotFoundError(f"source folder not found: {source}")
    skip = {os.path.realpath(d) for d in skip_dirs}
    names = []
    for folder, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if os.path.realpath(os.path.join(folder, d)) not in skip)
        for f in files:
            names.append(os.path.relpath(os.path.join(folder, f), source).replace(os.sep, "/"))
    return sorted(names), None


def ingest(source, out, size=512, workers=None, shard=(0, 1), keep_archives=False,
           download_dir=None, progress=True):
    """Run step 1; returns a summary dict (see the module doc for what is written)."""
    start = time.perf_counter()
    out = os.path.abspath(out)
    images_dir, parts_dir, tmp_dir = (os.path.join(out, d) for d in ("images", ".parts", ".tmp"))
    download_dir = os.path.abspath(download_dir or os.path.join(out, ".download"))
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run
    for d in (images_dir, parts_dir, tmp_dir):
        os.makedirs(d, exist_ok=True)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers

    names, blobs = list_source(source, skip_dirs=[out, download_dir])
    units = shard_units(plan_units(names), *shard)
    part_of = {u.name: os.path.join(parts_dir, quote(u.name, safe="") + ".json") for u in units}
    todo = [u for u in units if not os.path.exists(part_of[u.name])]
    local_root = source if os.path.isdir(source) else os.path.dirname(source)

    def fetch(unit):
        if blobs is None:
            return {name: os.path.join(local_root, name) for name in unit.files}
        from data.ingest import gcs
        # quote(): a blob name must not steer the download outside download_dir
        return {name: gcs.download_blob(blobs[name], os.path.join(download_dir, quote(name, safe="")))
                for name in unit.files}

    run_errors, written, unit_errors = [], 0, 0
    pool = WorkerPool(workers) if workers > 0 else None
    archive_bar = tqdm(total=len(todo), desc="archives", unit="archive", disable=not progress, position=0)
    image_bar = tqdm(desc="images", unit="img", disable=not progress, position=1)
    try:
        with futures.ThreadPoolExecutor(1) as fetcher:
            # The next unit downloads while this one is processed: at most two archives on disk.
            next_fetch = fetcher.submit(fetch, todo[0]) if todo else None
            for i, unit in enumerate(todo):
                current = next_fetch
                next_fetch = fetcher.submit(fetch, todo[i + 1]) if i + 1 < len(todo) else None
                archive_bar.set_postfix_str(unit.name)
                try:
                    local_files = current.result()
                except Exception as e:  # not marked finished: a rerun tries it again
                    run_errors.append({"archive": unit.name, "member": "",
                                       "reason": f"download failed ({type(e).__name__}: {e})"})
                    archive_bar.update(1)
                    continue
                rows, errors = process_unit(unit, local_files, pool, (images_dir, tmp_dir), size, image_bar)
                part = {"archive": unit.name, "manifest": rows, "errors": errors}
                write_atomic(part_of[unit.name], json.dumps(part, sort_keys=True))
                written += len(rows)
                unit_errors += len(errors)
                if blobs is not None and not keep_archives:
                    for path in local_files.values():
                        os.remove(path)
                archive_bar.update(1)
    finally:
        if pool is not None:
            pool.close()
        archive_bar.close()
        image_bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    manifest, all_errors = merge_parts(out, run_errors)
    seconds = time.perf_counter() - start
    reasons = Counter(e["reason"].split(" (")[0] for e in all_errors)
    return {"images_written": written, "errors": unit_errors + len(run_errors),
            "units_total": len(units), "units_skipped": len(units) - len(todo),
            "manifest_rows": len(manifest), "error_rows": len(all_errors),
            "error_reasons": dict(reasons), "seconds": seconds,
            "images_per_s": written / seconds if seconds > 0 else 0.0}


def summary_line(s):
    reasons = "; ".join(f"{n} {r}" for r, n in sorted(s["error_reasons"].items()))
    return (f"ingest: {s['images_written']} images written, {s['errors']} errors in {s['seconds']:.1f} s "
            f"({s['images_per_s']:.1f} images/s); {s['units_skipped']} of {s['units_total']} archives "
            f"already done; manifest.csv {s['manifest_rows']} images, errors.csv {s['error_rows']} rows"
            + (f" ({reasons})" if reasons else ""))


if __name__ == "__main__":
    print("use download_images.py", file=sys.stderr)
    sys.exit(2)
