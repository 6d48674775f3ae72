"""Process pools of helper processes (step 1's decoding workers, the persistent cache's builders) that start without
making anyone wait: from a fork server, which imports the helpers' modules once (a fork of it then costs
milliseconds, where a spawned helper imports OpenCV or torch again), in a background thread, so the caller keeps
working (decoding the first images itself) while they come up.

A fork server is a clean process: no CUDA context and no threads of the caller's are copied into the helpers.
"""
import ctypes
import multiprocessing
import os
import signal
import threading
from concurrent import futures

PR_SET_PDEATHSIG = 1


def default_workers():
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def forkserver_pool(workers, preload, initializer=None, initargs=()):
    """A ProcessPoolExecutor of `workers` processes forked from the fork server, which imports the modules named in
    `preload` first (a fork server already running in this process keeps what it preloaded)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)


def die_with_parent():
    """In a helper process: Linux ends it when its parent (the fork server, which dies with the main process) dies,
    even when that one is SIGKILLed. Elsewhere: nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class PoolStart:
    """Starts every process of `executor` in a thread: the pool starts one per task submitted while none is idle.

    In a thread, so that a signal's exception (raised in the main thread alone) never cuts a process's start-up in
    half; with SIGINT blocked there, which the fork server inherits: a Ctrl-C to the process group while it imports
    must not print its traceback (it ignores SIGINT only once it is up). `running` while under way; wait() returns
    the exception that kept a process from starting (EAGAIN, ENOMEM, a pool broken meanwhile), or None."""

    def __init__(self, executor, workers):
        self.failure = None
        self.thread = threading.Thread(target=self._launch, args=(executor, workers), name="pool-start",
                                       daemon=True)
        self.thread.start()

    def _launch(self, executor, workers):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(workers):
                executor.submit(int)
        except Exception as e:
            self.failure = e

    @property
    def running(self):
        return self.thread.is_alive()

    def wait(self):
        self.thread.join()
        return self.failure
