"""Decoding the members of one unit in a pool of worker processes: decode -> 8-bit mapping -> resize -> atomic write.

The pool is rebuilt when a worker dies (a decoder crash or the OOM killer), and only a member that kills a worker a
second time, alone, is blamed for it. Bad input comes back as an error row; an EnvironmentFault (a file that cannot
be read or written now) comes back as itself and stops the unit, which then is not marked done.
"""
import ctypes
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
from data.pools import PoolStart, die_with_parent, forkserver_pool

# Fixed settings and no timestamps: the same input always gives the same PNG bytes.
# The "up" filter alone at deflate level 1: as small as level 3 with adaptive filters on radiographs,
# and under half the time.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_image_memory():
    """Let glibc's malloc keep the memory of freed images for the next one instead of returning it to the system:
    a radiograph's buffers (10 MB of 16-bit pixels, 5 MB of 8-bit) come back zeroed page by page otherwise, about
    5,000 page faults and 8 ms of CPU an image (a sixth of its decoding). Up to 32 MB (glibc's largest threshold) an
    allocation then comes from the heap, which is trimmed past 256 MB. Elsewhere than glibc: nothing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)
    except (OSError, AttributeError):
        pass


def _init_worker():
    cv2.setNumThreads(1)  # one core per worker process; the pool provides the parallelism
    keep_image_memory()
    # the stop signals are the main process's: it ends the workers, which print no traceback of their own
    helper_process_signals()
    die_with_parent()


def write_image(png, name, images_dir):
    """Write images/<name> atomically: OUT/images never holds a partial file. Any failure is the machine's."""
    final = os.path.join(images_dir, name)
    try:
        write_bytes_atomic(final, png)
    except OSError as e:
        raise EnvironmentFault(f"cannot write {final} ({e.strerror or e})") from None


def _guarded(job, step, *args):
    """(step(*args), None), or (None, the reason) when the member's bytes are bad; EnvironmentFault raised."""
    try:
        return step(*args), None
    except EnvironmentFault:
        raise
    except InputError as e:
        return None, str(e)
    except MemoryError:
        raise EnvironmentFault(f"out of memory decoding {job.member} (try fewer --workers)") from None
    except Exception as e:  # whatever else a decoder raises on bad bytes
        return None, f"cannot decode member ({type(e).__name__}: {e})"


def _decode(job):
    return decode_image_bytes(read_job_bytes(job), job.member)


def _encode(img, size):
    ok, png = cv2.imencode(".png", resize_longest(img, size), PNG_PARAMS)
    if not ok:
        raise ImageError("PNG encoding failed")
    return png


def _finish(job, decoded, images_dir, size):
    """A decoded member (_guarded's pair) resized, encoded and written: (manifest row, None) or (None, reason)."""
    value, reason = decoded
    if reason is None:
        img, info = value
        png, reason = _guarded(job, _encode, img, size)
    if reason is not None:
        return None, reason
    write_image(png.tobytes(), job.out_name, images_dir)
    row = {"ImageID": job.image_id, "path": f"images/{job.out_name}", "member": job.member, "status": "ok"}
    row.update(info)
    return row, None


def process_job(job, images_dir, size):
    """Decode, map to 8 bits, resize and write one member to images/<job.out_name>.

    Returns (manifest row, None) or (None, reason); raises EnvironmentFault.
    """
    return _finish(job, _guarded(job, _decode, job), images_dir, size)


# Members a worker is given at a time: its decoding of one overlaps the writing of the one before, and a chunk's last
# write is the only part not overlapped (with 4: about 1.5 ms an image of a radiograph's 50 ms).
CHUNK = 4
CHUNK_BYTES = 64 * 2**20  # a tar's members travel as bytes: a chunk of big ones is cut short
_finisher = []


def process_chunk(jobs, images_dir, size):
    """process_job of each of `jobs`, in a worker: the member is read and decoded here while a thread resizes,
    encodes and writes the one before (OpenCV and file writes release the GIL), so that one worker keeps a second
    core's worth of work off its decoding. Every write has ended when this returns, whatever happened."""
    if not _finisher:
        _finisher.append(futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-finish"))
    results, finishing = [], None
    try:
        for job in jobs:
            decoded = _guarded(job, _decode, job)
            if finishing is not None:
                results.append(finishing.result())
            finishing = _finisher[0].submit(_finish, job, decoded, images_dir, size)
        results.append(finishing.result())
        finishing = None
    finally:
        if finishing is not None:
            futures.wait([finishing])
    return results


class WorkerKilled(EnvironmentFault):
    """A decoding worker was killed from outside (SIGKILL: the out-of-memory killer, or kill -9): the machine's
    fault, not the member's, so the run stops naming the unit instead of blaming whatever was in flight."""


class WorkerPool:
    """A process pool that is rebuilt when a worker crashes (a decoder's segfault on bad bytes), and that says when
    a worker was killed instead (WorkerKilled).

    start() starts the workers (data.pools: a fork server that imports this module once, in a thread), so that
    their start-up (an interpreter importing OpenCV, a few tenths of a second) overlaps what the caller does first;
    while they come up (`warming`) the caller decodes in its own process, so that no core waits for them."""

    def __init__(self, workers):
        self.workers = workers
        self.executor = None
        self.starter = None
        self.restarted = False

    def start(self):
        if self.executor is None:
            self.executor = forkserver_pool(self.workers, ["data.ingest.workers"], _init_worker)
            self.starter = PoolStart(self.executor, self.workers)

    @property
    def warming(self):
        """Whether the first start is under way (not a restart after a crash: a member that may crash a decoder is
        never decoded in the caller's process)."""
        return not self.restarted and self.starter is not None and self.starter.running

    def submit(self, jobs, images_dir, size):
        """(future of process_chunk, the executor that runs it); a pool broken already gives a future failed with
        BrokenProcessPool."""
        self.start()
        failure = self.starter.wait()
        if failure is not None and not isinstance(failure, BrokenProcessPool):
            raise EnvironmentFault(f"cannot start the decoding workers ({type(failure).__name__}: {failure}); try "
                                   f"fewer --workers")
        try:
            return self.executor.submit(process_chunk, jobs, images_dir, size), self.executor
        except BrokenProcessPool as e:
            failed = futures.Future()
            failed.set_exception(e)
            return failed, self.executor

    def discard(self, executor):
        """After a worker died: raise WorkerKilled when one was killed from outside (SIGKILL), else drop the broken
        executor, so that the next submit starts a fresh one."""
        if executor is not self.executor:  # already replaced by a fresh one
            return
        processes = dict(getattr(executor, "_processes", None) or {})
        executor.shutdown(wait=True, cancel_futures=True)  # the broken pool's workers are ended and joined
        self.executor, self.starter, self.restarted = None, None, True
        if any(p.exitcode == -signal.SIGKILL for p in processes.values()):
            raise WorkerKilled("SIGKILL")

    def close(self, abort=False):
        """Wait for the workers to end; abort: kill them first (an interrupt, or a unit that failed)."""
        if self.executor is None:
            return
        if self.starter is not None:
            self.starter.wait()
        if abort:
            # ProcessPoolExecutor cannot stop a running task before Python 3.14's terminate_workers().
            for process in list((getattr(self.executor, "_processes", None) or {}).values()):
                process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self.starter = None


WORKER_DIED = "worker process died while decoding (crash or out of memory)"


def process_unit(unit, local_files, pool, images_dir, size, bar, ledger):
    """Ingest every member of one unit; returns (manifest rows, error rows, lost file keys), rows sorted by member.

    An output file name goes to the first copy in archive order that decodes (see data/ingest/ledger.py): a later
    copy in the same unit waits and is tried only when the earlier one fails, so worker timing decides nothing.
    """
    rows, errors, lost, pending, suspects, chunk = [], [], [], {}, [], []
    running, waiting, kept = {}, {}, {}  # file key -> the copy being decoded / later copies / the copy written

    def error(member, reason):
        errors.append({"archive": unit.name, "member": member, "reason": reason})
        bar.update(1)

    def start(job):
        running[job.key] = job
        if pool is None or pool.warming:
            # in this process while the workers start: the same code, so the same bytes
            settle(job, *process_job(job, images_dir, size))
        else:
            chunk.append(job)
            if len(chunk) >= CHUNK or sum(len(j.data or b"") for j in chunk) >= CHUNK_BYTES:
                send()

    def send():
        if chunk:
            fut, executor = pool.submit(list(chunk), images_dir, size)
            pending[fut] = (list(chunk), executor)
            chunk.clear()

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
            jobs, executor = pending.pop(fut)
            try:
                results = fut.result()
            except (BrokenProcessPool, futures.CancelledError):
                suspects.extend(jobs)  # any in-flight member may be the one that killed the worker
                discard(executor, jobs[0])
                continue
            for job, result in zip(jobs, results):
                settle(job, *result)

    def discard(executor, job):
        try:
            pool.discard(executor)
        except WorkerKilled as e:
            held = sorted({job.member} | {j.member for j in suspects}
                          | {j.member for jobs, _ in pending.values() for j in jobs})
            raise WorkerKilled(f"{unit.name}: a decoding worker was killed ({e}: the out-of-memory killer, or kill "
                               f"-9) with {len(held)} of its members in flight, first {held[0]!r} (fewer --workers "
                               f"need less memory)") from None

    def drain(limit):
        """Wait until at most `limit` chunks are in flight; 0: until every member is settled (a failed copy may
        start a later one)."""
        while len(pending) > limit or not limit and chunk:
            if not limit:
                send()
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
            drain(pool.workers)  # bounded in-flight work: memory stays flat
    if pool is not None:
        drain(0)
    while suspects:  # one at a time, so only a member that kills a worker again is blamed
        job = suspects.pop(0)
        fut, executor = pool.submit([job], images_dir, size)
        try:
            result, = fut.result()
        except (BrokenProcessPool, futures.CancelledError):
            result = None, WORKER_DIED
            discard(executor, job)
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
