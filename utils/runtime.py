"""The process a run happens in: logging, seeds and determinism, mixed precision, stop signals."""
import contextlib
import logging
import logging.handlers
import os
import random
import signal
import sys
import threading

import numpy as np
import torch

from data.dataset import STOP_SIGNALS
from utils import dist


# The toolkit's loggers: the scripts' and those of its packages' modules (logging.getLogger(__name__)).
LOGGERS = ("traintest", "data", "models", "utils")


def setup_logging():
    """The toolkit's messages to stderr, on the main process only (other ranks stay silent), and kept in memory until
    log_to_file() names the run's log: a run logs while it checks its inputs, but writes nothing into its folder
    before every check has passed. Other libraries' loggers are left alone."""
    handlers = [logging.NullHandler()]
    if dist.is_main():
        handlers = [logging.StreamHandler(sys.stderr), logging.handlers.MemoryHandler(
            capacity=10**6, flushLevel=logging.CRITICAL + 1, flushOnClose=False)]
        handlers[0].setFormatter(logging.Formatter("%(message)s"))
    close_logging()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def log_to_file(log_path):
    """From now on the messages go to the file `log_path` too (appended), those kept since setup_logging first."""
    logger = logging.getLogger(LOGGERS[0])
    waiting = [h for h in logger.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    if not waiting:  # not the main process
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    waiting[0].setTarget(to_file)
    waiting[0].flush()
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(waiting[0])
        logging.getLogger(name).addHandler(to_file)
    waiting[0].close()


def close_logging():
    """Undo setup_logging (closing train.log), so that a caller in the same process gets logging as it was."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def seed_everything(seed, deterministic):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def amp_dtype(setting, device_type, bf16_native):
    """The autocast dtype for --amp on|off|auto, or None for float32: the rule, apart from asking the hardware.

    CUDA: bfloat16 where the GPU has it natively (Ampere and later: float32's range, so no GradScaler and no
    host synchronization for it), float16 with a GradScaler elsewhere; auto and on alike. CPU: bfloat16 when on;
    auto only where the CPU has native bfloat16 (AVX-512 BF16/AMX; elsewhere it is emulated and many times slower)."""
    if setting == "off":
        return None
    if device_type == "cuda":
        return torch.bfloat16 if bf16_native else torch.float16
    return torch.bfloat16 if setting == "on" or bf16_native else None


def use_amp(setting, device):
    """amp_dtype on this machine's `device`."""
    if device.type == "cuda":
        try:  # torch's default counts bfloat16 emulated in float32 (Volta, Turing) as supported: it is slower there
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            native = torch.cuda.is_bf16_supported()
    else:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return amp_dtype(setting, device.type, native)


def grad_scaler(dtype, device):
    """float16 on CUDA needs a GradScaler (its range is too narrow for small gradients); bfloat16 and float32 none."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None


def amp_name(dtype):
    """How the log and the benchmarks name a precision."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where the run cannot stop at a step's end (setting up, building the cache, testing)."""

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
        """Whether a stop signal has come: to this process, or with `total` (a sum over the ranks) to any rank."""
        return bool(total(self.requested) if total else self.requested)

    @property
    def name(self):
        return signal.Signals(self.requested).name if self.requested else ""

