"""Decoding the members of one unit in a pool of worker processes: decode -> 8-bit mapping -> resize -> atomic write.

The pool is rebuilt when a worker dies (a decoder crash or the OOM killer), and only a member that kills a worker a
second time, alone, is blamed for it. Bad input comes back as an error row; an EnvironmentFault (a file that cannot
be read or written now) comes back as itself and stops the unit, which then is not marked done.
"""
import ctypes
import multiprocessing
import os
import signal
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

import cv2

from data.commands import helper_process_signals
from data.decode import ImageError, decode_image_bytes, resize_longest
from data.errors import EnvironmentFault, InputError
from data.files import write_bytes_atomic
from data.ingest.archives import MAX_NAME_BYTES, file_key, iter_members, output_name, read_job_bytes

# Fixed settings and no timestamps: the same input always gives the same PNG bytes.
# The "up" filter alone at deflate level 1: as small as level 3 with adaptive filters on radiographs,
# and under half the time.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
PR_SET_PDEATHSIG = 1


def _init_worker():
    cv2.setNumThreads(1)  # one core per worker process; the pool provides the parallelism
    # the stop signals are the main process's: it ends the workers, which print no traceback of their own
    helper_process_signals()
    try:  # Linux: die with the fork server, which dies with the main process, even when that one is SIGKILLed
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def write_image(png, name, images_dir):
    """Write images/<name> atomically: OUT/images never holds a partial file. Any failure is the machine's."""
    final = os.path.join(images_dir, name)
    try:
        write_bytes_atomic(final, png)
    except OSError as e:
        raise EnvironmentFault(f"cannot write {final} ({e.strerror or e})") from None


def process_job(job, images_dir, size):
    """Decode, map to 8 bits, resize and write one member to images/<job.out_name>.

    Returns (manifest row, None) or (None, reason); raises EnvironmentFault.
    """
    try:
        img, info = decode_image_bytes(read_job_bytes(job), job.member)
        img = resize_longest(img, size)
        ok, png = cv2.imencode(".png", img, PNG_PARAMS)
        if not ok:
            raise ImageError("PNG encoding failed")
    except EnvironmentFault:
        raise
    except InputError as e:
        return None, str(e)
    except MemoryError:
        raise EnvironmentFault(f"out of memory decoding {job.member} (try fewer --workers)") from None
    except Exception as e:  # whatever else a decoder raises on bad bytes
        return None, f"cannot decode member ({type(e).__name__}: {e})"
    write_image(png.tobytes(), job.out_name, images_dir)
    row = {"ImageID": job.image_id, "path": f"images/{job.out_name}", "member": job.member, "status": "ok"}
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
            ctx.set_forkserver_preload(["data.ingest.workers"])
            self.executor = futures.ProcessPoolExecutor(self.workers, mp_context=ctx,
                                                        initializer=_init_worker)
        return self.executor.submit(process_job, *args), self.executor

    def discard(self, executor):
        if executor is self.executor:  # not yet replaced by a fresh one
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def close(self, abort=False):
        """Wait for the workers to end; abort: kill them first (an interrupt, or a unit that failed)."""
        if self.executor is None:
            return
        if abort:
            # ProcessPoolExecutor cannot stop a running task before Python 3.14's terminate_workers().
            for process in list(getattr(self.executor, "_processes", {}).values()):
                process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None


WORKER_DIED = "worker process died while decoding (crash or out of memory)"


def process_unit(unit, local_files, pool, images_dir, size, bar, ledger):
    """Ingest every member of one unit; returns (manifest rows, error rows, lost file keys), rows sorted by member.

    An output file name goes to the first copy in archive order that decodes (see data/ingest/ledger.py): a later
    copy in the same unit waits and is tried only when the earlier one fails, so worker timing decides nothing.
    """
    rows, errors, lost, pending, suspects = [], [], [], {}, []
    running, waiting, kept = {}, {}, {}  # file key -> the copy being decoded / later copies / the copy written

    def error(member, reason):
        errors.append({"archive": unit.name, "member": member, "reason": reason})
        bar.update(1)

    def start(job):
        running[job.key] = job
        if pool is None:
            settle(job, *process_job(job, images_dir, size))
        else:
            fut, executor = pool.submit(job, images_dir, size)
            pending[fut] = (job, executor)

    def settle(job, row, reason):
        del running[job.key]
        if row is not None:
            row["archive"] = unit.name
            rows.append(row)
            bar.update(1)
            kept[job.key] = job
            for later in waiting.pop(job.key, []):
                error(later.member, duplicate_reason(later, unit.name, job))
            return
        error(job.member, reason)
        later = waiting.get(job.key)
        if later:
            start(later.pop(0))
        else:
            waiting.pop(job.key, None)
            ledger.release(unit.name, job.key)

    def collect(done):
        for fut in done:
            job, executor = pending.pop(fut)
            try:
                result = fut.result()
            except (BrokenProcessPool, futures.CancelledError):
                suspects.append(job)  # any in-flight member may be the one that killed the worker
                pool.discard(executor)
                continue
            settle(job, *result)

    def drain(limit):
        while len(pending) > limit:
            done, _ = futures.wait(list(pending), return_when=futures.FIRST_COMPLETED)
            collect(done)

    for member, job, problem in iter_members(unit, local_files):
        if problem:
            error(member, problem)
            continue
        job.out_name = output_name(job.image_id)
        if len(job.out_name.encode()) > MAX_NAME_BYTES:
            error(member, f"ImageID too long for a file name ({len(job.out_name.encode())} bytes > {MAX_NAME_BYTES})")
            continue
        job.key = file_key(job.out_name)
        if job.key in kept:
            error(member, duplicate_reason(job, unit.name, kept[job.key]))
            continue
        if job.key in running:
            waiting.setdefault(job.key, []).append(job)
            continue
        held = ledger.holder(job.key)
        if held is not None and held.unit <= unit.name:  # an earlier unit keeps it
            error(member, duplicate_reason(job, held.unit, held))
            lost.append(job.key)
            continue
        ledger.take(unit.name, job.key, member, job.image_id)
        start(job)
        if pool is not None:
            drain(2 * pool.workers - 1)  # bounded in-flight work: memory stays flat
    if pool is not None:
        drain(0)
    while suspects:  # one at a time, so only a member that kills a worker again is blamed
        job = suspects.pop(0)
        fut, executor = pool.submit(job, images_dir, size)
        try:
            result = fut.result()
        except (BrokenProcessPool, futures.CancelledError):
            result = None, WORKER_DIED
            pool.discard(executor)
        settle(job, *result)
        drain(0)  # a later copy started by a failed one
    rows.sort(key=lambda r: r["member"])
    errors.sort(key=lambda e: (e["member"], e["reason"]))
    return rows, errors, lost


def duplicate_reason(job, unit_name, kept):
    """Why `job` is not written: `kept` (a Job, or the ledger's holder of the name in another unit) has its file."""
    what = "duplicate ImageID" if kept.image_id == job.image_id else "output file name taken"
    return (f"{what} ({job.image_id} -> images/{job.out_name}; kept {kept.image_id} from "
            f"{unit_name}:{kept.member}, the first copy in archive order)")
