"""Step 1 of the pipeline: archives -> OUT/images/*.png (8-bit), OUT/manifest.csv, OUT/errors.csv.

Flow: check the flags and OUT, list the source (a local folder or gs://bucket/prefix, listed once) -> units (one per
archive, one per folder of loose images or per batch of a large one) -> take OUT's lock -> for each unit not done yet,
in name order: fetch it (GCS: download with checksum while the previous unit is processed; a batch's loose objects
FETCH_THREADS at a time), stream its members into a process pool (decode ->
8-bit mapping -> resize -> atomic write), then record the unit's manifest and error rows in its part marker
OUT/.parts/<unit, %-quoted>.json, written atomically (data/ingest/ledger.py says what makes a unit done and which copy
of an image keeps its file). Only after the marker exists is a downloaded archive deleted. manifest.csv and
errors.csv are rebuilt from all done markers at the end, sorted, so a run that was killed and resumed writes the
same bytes as one that was not.

Bad input (a corrupt member, a bad DICOM, a truncated archive) is an error row, final. An EnvironmentFault (a
permission refused, a full disk, a failed download) stops the run: the unit it hit is not marked done.
"""
import csv
import glob
import heapq
import io
import os
import shutil
import sys
import time
from collections import Counter
from concurrent import futures

from tqdm import tqdm

from data import gcs
from data.errors import EnvironmentFault, InputError
from data.files import remove_temporary_files, write_text_atomic
from data.formats import MANIFEST_COLUMNS
from data.ingest.archives import loose_folder_of, plan_units, safe_file_name, shard_units
from data.ingest.ledger import ERROR_COLUMNS, Ledger, settings_for, unit_identity
from data.ingest.lock import OutLock
from data.pools import default_workers
from data.ingest.workers import WorkerPool, keep_image_memory, process_unit

def csv_text(rows, columns):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _stat_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def list_source(source, skip_dirs, billing_project=None):
    """(sorted source-relative file names, {name: identity}, {name: blob} for a gs:// source or None)."""
    if gcs.is_gcs_url(source):
        blobs = gcs.list_blobs(gcs.make_client(), source, billing_project)
        identities = {n: {"generation": b.generation, "crc32c": b.crc32c, "size": b.size} for n, b in blobs.items()}
        return sorted(blobs), identities, blobs
    if os.path.isfile(source):
        name = os.path.basename(source)
        return [name], {name: _stat_identity(source)}, None
    if not os.path.isdir(source):
        raise InputError(f"source not found: {source}")
    skip = {os.path.realpath(d) for d in skip_dirs}
    names, identities = [], {}
    for folder, subdirs, files in os.walk(source):
        subdirs[:] = sorted(d for d in subdirs if os.path.realpath(os.path.join(folder, d)) not in skip)
        for f in files:
            name = os.path.relpath(os.path.join(folder, f), source).replace(os.sep, "/")
            names.append(name)
            identities[name] = _stat_identity(os.path.join(folder, f))
    return sorted(names), identities, None


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_flags(source, out, size):
    """Refuse, before anything is read or written, what cannot work."""
    if size < 0:
        raise InputError(f"--size must be >= 0 (0 keeps the original size), got {size}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out}: exists and is not a folder")
    if not gcs.is_gcs_url(source) and os.path.exists(source):
        src, real_out = os.path.realpath(source), os.path.realpath(out)
        if src == real_out or any(_inside(src, os.path.join(real_out, d)) for d in ("images", ".parts")):
            raise InputError(f"--source {source} is --out {out} or inside its output folders: a rerun would ingest "
                             f"its own images; give an --out outside --source (a subfolder of it is fine)")


def _prepare_out(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create it ({e.strerror or e})") from None


def _remove_leftovers(out, folders):
    """Delete what killed runs left half-written in OUT: the temporary files of atomic writes in `folders`, and the
    temporary folders older versions wrote images in (images/.tmp-*, .tmp). Under OUT's lock they are no other
    run's."""
    for folder in folders:
        remove_temporary_files(folder)
    for old in glob.glob(os.path.join(glob.escape(out), "images", ".tmp-*")) + [os.path.join(out, ".tmp")]:
        shutil.rmtree(old, ignore_errors=True)


def _warn(message):
    tqdm.write(message, file=sys.stderr)


def ingest(source, out, size=512, workers=None, shard=(0, 1), keep_archives=False,
           download_dir=None, progress=True, billing_project=None, fetch_threads=gcs.FETCH_THREADS,
           publish=None):
    """Run step 1; returns a summary dict (see the module doc for what is written).

    publish (data.ingest.shards.GcsOut for a gs:// OUT) is told, under OUT's lock: start(out) before the part
    markers are read, unit_done(ledger, unit name, manifest rows) once each unit's marker is written, finish(out) once
    manifest.csv and errors.csv are."""
    start = time.perf_counter()
    out = os.path.abspath(out)
    check_flags(source, out, size)
    keep_image_memory()  # this process decodes too: with --workers 0, and while the workers start
    download_dir = os.path.abspath(download_dir or os.path.join(out, ".download"))
    names, file_identities, blobs = list_source(source, [out, download_dir], billing_project)  # before any write
    all_units = plan_units(names)
    if not all_units:
        raise InputError(f"--source {source}: no archive (.zip, .tar, .tgz, .tar.gz) or image file (.png, .jpg, "
                         f".jpeg, .dcm) to ingest")
    units = shard_units(all_units, *shard)
    identities = {u.name: unit_identity(u, file_identities) for u in all_units}
    workers = default_workers() if workers is None else workers
    local_root = source if os.path.isdir(source) else os.path.dirname(source)

    def fetch(unit):
        """{source-relative name: local path} of the unit's files."""
        if blobs is None:
            return {name: os.path.join(local_root, name) for name in unit.files}
        # A blob name must not steer the download outside download_dir, nor be too long for a file name.
        dests = [os.path.join(download_dir, safe_file_name(name)) for name in unit.files]
        return dict(zip(unit.files, gcs.download_blobs(
            [(blobs[name], dest) for name, dest in zip(unit.files, dests)], fetch_threads)))

    _prepare_out(out)
    with OutLock(out):
        images_dir, parts_dir = os.path.join(out, "images"), os.path.join(out, ".parts")
        try:
            for d in (images_dir, parts_dir):
                os.makedirs(d, exist_ok=True)
            # a --download-dir outside OUT may be another run's too: its downloads in flight are not leftovers
            own = [out, images_dir, parts_dir] + ([download_dir] if _inside(download_dir, out) else [])
            _remove_leftovers(out, own)
        except OSError as e:
            raise InputError(f"--out {out}: cannot write there ({e.strerror or e}: {e.filename})") from None
        try:
            if publish is not None:
                publish.start(out)
            ledger = Ledger(parts_dir, images_dir, settings_for(size), identities, _warn,
                            loose_folders={loose_folder_of(u.name) for u in all_units if u.kind == "loose"})
            done_before = {u.name for u in units if ledger.is_done(u.name)}
            pool = WorkerPool(workers) if workers > 0 and len(done_before) < len(units) else None
            if pool is not None:
                pool.start()  # coming up while the first unit is fetched (and decoded here meanwhile)
            processed, written, unit_errors = _run_units(
                units, ledger, fetch, remove_fetched=blobs is not None and not keep_archives, pool=pool,
                images_dir=images_dir, size=size, progress=progress,
                on_unit_done=publish and publish.unit_done)
            ledger.drop_retired()
            manifest, all_errors = ledger.merged()
            write_text_atomic(os.path.join(out, "manifest.csv"), csv_text(manifest, MANIFEST_COLUMNS))
            write_text_atomic(os.path.join(out, "errors.csv"), csv_text(all_errors, ERROR_COLUMNS))
            if publish is not None:
                publish.finish(out)
        except BaseException:
            if publish is not None:
                publish.abandon()
            raise
    elsewhere = sorted(ledger.redo)
    if elsewhere:
        _warn(f"warning: {len(elsewhere)} finished units outside this run are no longer done (an earlier archive now "
              f"holds one of their file names), first {elsewhere[0]!r}; the run that covers them ingests them again")
    seconds = time.perf_counter() - start
    reasons = Counter(e["reason"].split(" (")[0] for e in all_errors)
    return {"images_written": written, "errors": unit_errors,
            "units_total": len(units), "units_skipped": len(done_before - processed),
            "manifest_rows": len(manifest), "error_rows": len(all_errors),
            "error_reasons": dict(reasons), "seconds": seconds,
            "images_per_s": written / seconds if seconds > 0 else 0.0}


def _run_units(units, ledger, fetch, remove_fetched, pool, images_dir, size, progress, on_unit_done):
    """Ingest every unit that is not done, in name order, including those an earlier one makes not done on the
    way, with `pool` (a WorkerPool, closed here; None: in this process); returns (names processed, images written,
    error rows)."""
    by_name = {u.name: u for u in units}
    heap = sorted(u.name for u in units if not ledger.is_done(u.name))
    queued, processed, written, unit_errors = set(heap), set(), 0, 0
    fetcher = futures.ThreadPoolExecutor(1)
    prefetched = {}
    archive_bar = tqdm(total=len(heap), desc="archives", unit="archive", disable=not progress, position=0)
    image_bar = tqdm(desc="images", unit="img", disable=not progress, position=1)
    aborted = False
    try:
        while heap:
            name = heapq.heappop(heap)
            queued.discard(name)
            unit = by_name[name]
            current = prefetched.pop(name, None) or fetcher.submit(fetch, unit)
            if heap and heap[0] not in prefetched:
                # The next unit downloads while this one is processed: at most two archives on disk.
                prefetched[heap[0]] = fetcher.submit(fetch, by_name[heap[0]])
            archive_bar.set_postfix_str(name)
            try:
                local_files = current.result()
            except (EnvironmentFault, InputError):
                raise
            except Exception as e:  # a download that failed after its retries: the machine's or network's
                raise EnvironmentFault(f"{name}: download failed ({type(e).__name__}: {e})") from None
            rows, errors, lost = process_unit(unit, local_files, pool, images_dir, size, image_bar, ledger)
            ledger.finish(name, rows, errors, lost)
            processed.add(name)
            written += len(rows)
            unit_errors += len(errors)
            if on_unit_done is not None:
                on_unit_done(ledger, name, rows)
            if remove_fetched:
                for path in local_files.values():
                    os.remove(path)
            for other in sorted(ledger.redo - queued):
                if other in by_name:  # an earlier archive took one of its file names: ingest it again, after
                    heapq.heappush(heap, other)
                    queued.add(other)
                    archive_bar.total += 1
            ledger.redo -= set(by_name)
            archive_bar.update(1)
    except BaseException:
        aborted = True
        raise
    finally:
        fetcher.shutdown(wait=not aborted, cancel_futures=True)  # an interrupt does not wait for a download
        if pool is not None:
            pool.close(abort=aborted)
            if aborted:  # what a killed worker was writing: the atomic writes of those that ended cleaned up
                remove_temporary_files(images_dir)
        archive_bar.close()
        image_bar.close()
    return processed, written, unit_errors


def summary_line(s):
    reasons = "; ".join(f"{n} {r}" for r, n in sorted(s["error_reasons"].items()))
    return (f"ingest: {s['images_written']} images written, {s['errors']} errors in {s['seconds']:.1f} s "
            f"({s['images_per_s']:.1f} images/s); {s['units_skipped']} of {s['units_total']} archives "
            f"already done; manifest.csv {s['manifest_rows']} images, errors.csv {s['error_rows']} rows"
            + (f" ({reasons})" if reasons else ""))
