"""Box thresholds that misbehave in step 5's worker processes (utils.localization_workers), for the fault tests: the
workers iterate over them, the main process never does. Imported by the workers, so it imports nothing heavy."""
import multiprocessing
import os
import signal
import time


class Levels:
    """The heatmap levels `levels`; in a worker process, "die" kills the worker (as the OOM killer would), "stall"
    leaves a file named by its process id in `folder` and waits a minute (a step 5 in progress)."""

    def __init__(self, levels, action, folder=None):
        self.levels, self.action, self.folder = tuple(levels), action, folder

    def __iter__(self):
        if multiprocessing.parent_process() is not None:
            if self.action == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.action == "stall":
                open(os.path.join(self.folder, str(os.getpid())), "w").close()
                time.sleep(60)
        return iter(self.levels)
