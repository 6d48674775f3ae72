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
import os
import shutil
import time
from collections import Counter
from concurrent import futures
from urllib.parse import quote

from tqdm import tqdm

from data.errors import InputError
from data.files import write_text_atomic
from data.ingest import gcs
from data.ingest.archives import plan_units, shard_units
from data.ingest.workers import WorkerPool, process_unit

MANIFEST_COLUMNS = ["ImageID", "path", "archive", "member", "width", "height", "bits", "photometric",
                    "status"]
ERROR_COLUMNS = ["archive", "member", "reason"]


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
    write_text_atomic(os.path.join(out, "manifest.csv"), csv_text(kept, MANIFEST_COLUMNS))
    write_text_atomic(os.path.join(out, "errors.csv"), csv_text(errors, ERROR_COLUMNS))
    return kept, errors


def list_source(source, skip_dirs):
    """(sorted source-relative file names, {name: blob} for a gs:// source or None)."""
    if source.startswith("gs://"):
        client = gcs.make_client()
        blobs = gcs.list_blobs(client, source)
        return sorted(blobs), blobs
    if os.path.isfile(source):
        return [os.path.basename(source)], None
    if not os.path.isdir(source):
        raise InputError(f"source not found: {source}")
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
    names, blobs = list_source(source, skip_dirs=[out, download_dir])  # before anything is written
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run
    for d in (images_dir, parts_dir, tmp_dir):
        os.makedirs(d, exist_ok=True)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    units = shard_units(plan_units(names), *shard)
    part_of = {u.name: os.path.join(parts_dir, quote(u.name, safe="") + ".json") for u in units}
    todo = [u for u in units if not os.path.exists(part_of[u.name])]
    local_root = source if os.path.isdir(source) else os.path.dirname(source)

    def fetch(unit):
        if blobs is None:
            return {name: os.path.join(local_root, name) for name in unit.files}
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
                write_text_atomic(part_of[unit.name], json.dumps(part, sort_keys=True))
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
