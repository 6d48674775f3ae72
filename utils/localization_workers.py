"""Step 5's worker processes: boxes found on chunks of heatmaps and heatmap pictures drawn and PNG-encoded, on every
core, for utils.localization.localize.

The split: the main process upsamples the maps (torch) and reads the radiographs for display; the workers label the
thresholded heatmaps (SciPy) and draw and encode the pictures (OpenCV); the main process gathers the results in
the images' order and writes every file itself, atomically, so a worker never leaves anything on disk. The workers
come from a fork server, as step 1's do (data/ingest/workers.py; no fork of a process running torch's and OpenCV's
thread pools), and import neither torch nor pandas, so that they start in a fraction of a second. Their tasks travel
pickled: a chunk of 64 images' heatmaps, or one image's pictures, is about 2 MB, and pickling and unpickling
it costs 0.2-2% of running it (benchmarks/bench_localize.py --transfer on 2 busy cores: 0.15-2.7 ms against
60-190 ms), so shared memory would buy little.

A worker that dies (killed, out of memory) breaks the pool: the chunk it was given is named and the run stops with one
line (EnvironmentFault), after every other worker is ended. A stop signal in the main process (Interrupted) ends every
worker too; the workers ignore the stop signals themselves (data.commands.helper_process_signals).
"""
import contextlib
import multiprocessing
import os
import signal
import sys
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np
from scipy import ndimage

from data.commands import helper_process_signals
from data.errors import EnvironmentFault
from data.pools import die_with_parent, forkserver_pool
from utils.heatmaps import draw_pictures

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def boxes_from_heatmaps(heat, thresholds=(60, 180)):
    """Boxes around the connected regions of heat >= t for every t, for each map of heat [N, h, w] (uint8, 0..255).

    Returns a list of N float arrays [k, 5]: x, y, w, h in heatmap pixels and the region's mean heat / 255.
    All N * len(thresholds) binary maps are labelled in one SciPy call: they are stacked into one tall image with an empty
    row between neighbours, so regions connect within a map (8-neighbourhood) but never across maps. (SciPy's label is
    what scikit-image's label(connectivity=2) calls for a boolean image; called directly, it spares each worker
    process the quarter second of scikit-image's first call.)
    """
    heat = np.asarray(heat)
    if heat.ndim == 2:
        heat = heat[None]
    n, h, w = heat.shape
    if n == 0:
        return []
    levels = np.asarray(list(thresholds)).reshape(1, -1, 1, 1)
    t = levels.shape[1]
    # tile order: map i, threshold j -> i * t + j
    tiles = np.zeros((n, t, h + 1, w), dtype=bool)
    np.greater_equal(heat[:, None], levels, out=tiles[:, :, :h])
    labels, _ = ndimage.label(tiles.reshape(n * t * (h + 1), w), structure=EIGHT_NEIGHBOURS)
    # Labels run in raster order, so the regions come tile by tile (map by map, then threshold by threshold) and each
    # map's boxes stay together. The heat is whole numbers, so every region's sum is exact in any float type.
    regions = ndimage.find_objects(labels)
    if not regions:
        return [np.zeros((0, 5), dtype=np.float32) for _ in range(n)]
    spans = np.array([(rows.start, rows.stop, cols.start, cols.stop) for rows, cols in regions])
    in_tiles = labels.reshape(n, t, h + 1, w)[:, :, :h].ravel()
    sums = np.bincount(in_tiles, weights=np.broadcast_to(heat[:, None], (n, t, h, w)).ravel())[1:]
    mean = sums / np.bincount(in_tiles)[1:] / 255.0
    top, left = spans[:, 0], spans[:, 2]
    tile = top // (h + 1)
    boxes = np.stack([left, top - tile * (h + 1), spans[:, 3] - left, spans[:, 1] - top, mean], 1).astype(np.float32)
    return np.split(boxes, np.searchsorted(tile // t, np.arange(1, n)))


_started = None  # in a worker: the pool's shared record of which process runs which task (Step5Pool)


def _init_worker(started):
    global _started
    _started = started
    cv2.setNumThreads(1)  # one core per worker process; the pool provides the parallelism
    helper_process_signals()  # the stop signals are the main process's: it ends the workers
    die_with_parent()


TASKS = {"boxes": boxes_from_heatmaps, "pictures": draw_pictures}


def _run(number, kind, *args):
    """Task `number` in a worker: its process id recorded while it runs, so that a worker's death names its task."""
    _started[number] = os.getpid()
    result = TASKS[kind](*args)
    _started[number] = 0
    return result


class Step5Pool:
    """Step 5's tasks ("boxes": boxes_from_heatmaps' arguments; "pictures": draw_pictures') on `workers` worker
    processes, or in this process with workers=0 (the same functions, so the same results); `tasks`: how many will be
    submitted. submit() returns a future; result() raises EnvironmentFault naming the task that a dead worker was
    running (its `what`). A with-block; leaving it with an exception (a fault, a stop signal) ends every worker."""

    def __init__(self, workers, tasks):
        self.workers, self.tasks = workers, tasks
        self.executor, self.started, self.processes, self.what = None, None, {}, []

    def __enter__(self):
        if self.workers > 0:
            # from the fork server (data.pools): no fork of a process running threads
            self.started = multiprocessing.get_context("forkserver").Array("q", max(1, self.tasks), lock=False)
            self.executor = forkserver_pool(self.workers, ["utils.localization_workers"], _init_worker,
                                            (self.started,))
            with _main_module_left_out():
                for _ in range(self.workers):  # each submit to a pool with no idle worker starts one
                    self.executor.submit(os.getpid)
            self.processes.update(self.executor._processes)  # kept: a broken pool forgets them
        return self

    def submit(self, kind, what, *args):
        if self.executor is None:
            done = futures.Future()
            done.set_result(TASKS[kind](*args))
            return done
        self.what.append(what)
        try:
            return _Named(self.executor.submit(_run, len(self.what) - 1, kind, *args), self)
        except BrokenProcessPool:  # a worker died on an earlier task
            raise self.fault() from None

    def fault(self):
        """The one line for a broken pool: the task of the worker that died, and how it died."""
        dead = {}
        for pid, process in self.processes.items():
            process.join(5)
            if process.exitcode not in (0, None):  # the pool ends the other workers with SIGTERM, to which they exit 0
                dead[pid] = process.exitcode
        running = {self.started[n]: self.what[n] for n in range(len(self.what)) if self.started[n]}
        # the one that died in a task, and by a signal of its own rather than the pool's SIGTERM, first
        for pid, code in sorted(dead.items(), key=lambda item: (item[0] not in running, item[1] == -signal.SIGTERM)):
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            return EnvironmentFault(f"step 5: the worker process running {running.get(pid, 'a task of step 5')} died "
                                    f"({how}; out of memory, or killed)")
        return EnvironmentFault("step 5: a worker process died (out of memory, or killed)")

    def __exit__(self, kind, error, trace):
        if self.executor is None:
            return
        if error is not None:
            # ProcessPoolExecutor cannot stop a running task before Python 3.14's terminate_workers().
            for process in list((getattr(self.executor, "_processes", None) or {}).values()):
                process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None


@contextlib.contextmanager
def _main_module_left_out():
    """Worker processes started inside import neither the main module (traintest.py, which imports torch) nor anything
    it imports: multiprocessing re-imports a spawned child's main module by its file or module name unless it has
    neither, and the workers need nothing from it (their tasks are functions of this module and utils.heatmaps)."""
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    main.__spec__ = None
    if "__file__" in saved:
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


class _Named:
    """A worker's future whose result() names the task a dead worker was running."""

    def __init__(self, future, pool):
        self.future, self.pool = future, pool

    def done(self):
        return self.future.done()

    def result(self):
        try:
            return self.future.result()
        except BrokenProcessPool:
            raise self.pool.fault() from None
