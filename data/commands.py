"""How every command of the toolkit starts and ends: its argparse errors, its exit statuses, the stop signals.

Every entry point (the four scripts and each `python -m` command) is `run_main(...)`, so that they all answer alike:
  0  done                   1  done, but what the command was asked to check failed (download_images.py --strict)
  2  bad input: a flag, a file, a row (data.errors.InputError), or the machine's fault (EnvironmentFault: permission,
     a full disk), one line "PROG: error: MESSAGE" on stderr; a bad flag says "(see --help)" after it
  128 + the signal's number: stopped by a signal, with one line: 130 for Ctrl-C (SIGINT), 143 for SIGTERM
Anything else is a bug and keeps its traceback. It lives in data/ because the `python -m` commands in data/ use it and
data/ may not import utils/.
"""
import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
import threading

from data.errors import EnvironmentFault, InputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SIGNALLED = 128  # an exit status above it: stopped by signal number (status - SIGNALLED), as a shell reports it
# What asks a run to stop: Ctrl-C, and the SIGTERM of a spot VM's preemption or of systemd.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_status(signum):
    """The exit status of a command a signal stopped."""
    return SIGNALLED + signum


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, "PROG: error: MESSAGE (see --help)", with exit status 2, like every other
    bad input (its usage block would bury the one line that matters)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where the run cannot stop at a step's end (setting up, building the cache, testing). A
    KeyboardInterrupt, so that no handler of bad input takes it for a bad file and every `finally` (an atomic write's
    clean-up) runs."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM (a spot VM's preemption notice, systemd's stop) and SIGINT (Ctrl-C) as a request to stop cleanly.

    Inside deferred(), a signal is only recorded (`requested`, its number): the training loop looks at it after each
    step and stops there, so that a mid-epoch checkpoint is written from a consistent state. Elsewhere it raises
    Interrupted at once, as Ctrl-C raises KeyboardInterrupt. The first signal decides: later ones (a second Ctrl-C,
    the SIGTERM a VM sends every process again) are ignored, so that nothing interrupts the checkpoint being written
    or a clean-up under way, and after a stop they stay ignored until the process ends. Handlers are installed only
    in the main thread (Python delivers signals there alone)."""

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.requested, self._deferring, self._previous = 0, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        if not self.requested:
            # a StopSignals inside this one that stopped has left them ignored for the rest of the process
            if all(signal.getsignal(s) == self._handle for s in self._previous):
                self.release()
            return
        # after a stop the process is ending: later signals are ignored to its last line. SIG_IGN, since Python puts
        # back the default action (death) of every signal it handles when the interpreter shuts down
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)

    def release(self):
        """The handlers there were before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            return
        self.requested = signum
        if not self._deferring:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    def agreed(self, total=None):
        """Whether a stop signal has come: to this process, or with `total` (the sum of a number over every rank, as
        `lambda n: dist.all_reduce_sum(n, device)`; one collective, which every rank must call) to any rank."""
        return bool(total(self.requested) if total is not None else self.requested)

    @property
    def name(self):
        return signal.Signals(self.requested).name if self.requested else ""


def helper_process_signals():
    """The stop signals in a helper process (a loader worker, a cache builder, a decoding worker): they are the main
    process's to act on, which ends its helpers itself. So SIGINT (Ctrl-C, sent to the whole process group) is
    ignored, and so is a SIGTERM from anyone but the process that started this one (a VM's shutdown signals every
    process); that one's SIGTERM (a loader's or a pool's shutdown) still ends it, as torch's worker handler does.
    The starter is the parent, or under a fork server the process that asked for this one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    starter = multiprocessing.parent_process()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below, whoever sends it
    threading.Thread(target=_end_on_starters_sigterm, args=(starter and starter.pid,), name="sigterm",
                     daemon=True).start()


def _end_on_starters_sigterm(starter):
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid in (os.getppid(), starter):
            os._exit(0)


def one_line(error):
    """An error's message on one line (a message may quote a file's text, newlines and all)."""
    return " ".join(str(error).split())


def _quiet_half_built(unraisable, default=sys.unraisablehook):
    """After a stop signal, an object that the signal cut off in its __init__ (a tqdm bar) fails again in its
    __del__; that is not the user's business, and no traceback follows the one line. Anything else is reported."""
    if getattr(unraisable.object, "__name__", "") != "__del__":
        default(unraisable)


def run_main(prog, parse, flow, argv=None, *, errors=None, interrupted=None, cleanup=()):
    """A command's whole run as its exit status: `flow(parse(argv))` under StopSignals; None from flow means 0.

    prog: the command's name, at the start of each line it ends with. parse: argv -> arguments (a Parser's
    parse_args, or a function around it). errors: {exception class: text after its message} for errors besides
    InputError and EnvironmentFault that are one line and exit status 2 (checked first, in order; a class named here
    gets its text, InputError and EnvironmentFault too). interrupted: arguments -> what a stopped run leaves behind
    and how to go on, said after "PROG: interrupted by SIGNAL; " (not called when a signal came while parsing).
    cleanup: callables run at the end, whatever happened, in order (after the signals are ignored, when a signal
    stopped the run)."""
    suffixes = dict(errors or {})
    for kind in (InputError, EnvironmentFault):
        suffixes.setdefault(kind, "")
    args = None
    try:
        with StopSignals():
            args = parse(argv)
            status = flow(args)
        return EXIT_OK if status is None else status
    except KeyboardInterrupt as e:  # Interrupted, or a Ctrl-C that came where the handlers were not installed
        signum = getattr(e, "signum", signal.SIGINT)
        sys.unraisablehook = _quiet_half_built
        hint = interrupted(args) if interrupted is not None and args is not None else ""
        # on a terminal, ^C or a progress bar holds the cursor's line
        start = "\n" if sys.stderr.isatty() else ""
        print(f"{start}{prog}: interrupted by {signal.Signals(signum).name}" + (f"; {hint}" if hint else ""),
              file=sys.stderr)
        return signal_status(signum)
    except tuple(suffixes) as e:
        suffix = next(text for kind, text in suffixes.items() if isinstance(e, kind))
        print(f"{prog}: error: {one_line(e)}{suffix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for step in cleanup:
            step()
