"""The CPU time of this process and of every process it starts while the clock runs, thread by thread, read from
/proc (Linux): a fork server's workers are not this process's children, so getrusage(RUSAGE_CHILDREN) misses them.
On a machine shared with others, CPU time is the figure their load does not inflate.

    with TreeClock() as clock:
        work()
    clock.total(), clock.busiest()     # CPU seconds of everything, of the busiest thread (the critical path)
"""
import os
import threading

TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found + [g for c in found for g in _descendants(c)]


def _threads(pid):
    """{(pid, thread id): CPU seconds so far}."""
    found = {}
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[pid, int(task)] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    except (OSError, IndexError):
        pass  # ended meanwhile: its last sample stands
    return found


class TreeClock:
    """Samples every `interval` seconds; a process's last interval before it ends may be missed (workers idle then)."""

    def __init__(self, interval=0.02):
        self.interval, self.seen, self.start = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            pids = [os.getpid()] + _descendants(os.getpid())
        except OSError:
            return
        for pid in pids:
            for key, seconds in _threads(pid).items():
                self.seen[key] = max(self.seen.get(key, 0.0), seconds)

    def _run(self):
        self._own = os.getpid(), threading.get_native_id()  # the clock's own reading is not the work's
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def spent(self):
        """{(pid, thread id): CPU seconds since the start}, the clock's own thread left out."""
        return {k: v - self.start.get(k, 0.0) for k, v in self.seen.items() if k != getattr(self, "_own", None)}

    def total(self):
        return sum(self.spent().values())

    def busiest(self):
        return max(self.spent().values(), default=0.0)


# What a benchmark's body runs after, in a fresh interpreter on another checkout: that tree first on sys.path (its
# data/ is the code measured), this module loaded by its path (the tree may predate it), the body's arguments in
# `args`.
_HEAD = """
import importlib.util, json, sys, time
root, clock_path, *args = sys.argv[1:]
sys.path.insert(0, root)
spec = importlib.util.spec_from_file_location("cpu_clock", clock_path)
cpu_clock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_clock)
"""


def run_in_tree(tree, body, *args):
    """Run the code `body` in a fresh interpreter on the checkout `tree` (cpu_clock, json, sys and time imported;
    `args`: the strings given); returns what it printed last, as JSON. A failure ends the benchmark with its stderr."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _HEAD + body, tree, os.path.abspath(__file__), *map(str, args)],
                          cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the benchmark's run on {tree} failed:\n{done.stderr}")
    import json
    return json.loads(done.stdout.strip().splitlines()[-1])
