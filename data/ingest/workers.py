"""Decoding the members of one unit in a pool of worker processes: decode -> 8-bit mapping -> resize -> atomic write.

The pool is rebuilt when a worker dies (a decoder crash or the OOM killer), and only a member that kills a worker a
second time, alone, is blamed for it.
"""
import multiprocessing
import os
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

import cv2

from data.decode import ImageError, decode_image_bytes, resize_longest
from data.ingest.archives import iter_members, output_name, read_job_bytes

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
            ctx.set_forkserver_preload(["data.ingest.workers"])
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
