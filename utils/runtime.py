"""The process a run happens in: logging, seeds and determinism, mixed precision (its stop signals:
data.commands)."""
import logging
import logging.handlers
import os
import random
import sys

import numpy as np
import torch

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


# --amp auto on CUDA where benchmarks.bench_gpu has measured a model on a GPU: {(torch.cuda.get_device_name(),
# model name): dtype}, the faster of bfloat16 and float16 with a GradScaler, entered only where its convergence check
# agreed (utils.amp_choice.choose_amp). Empty: no GPU has been measured yet (issue 20's GPU figures are open), so auto follows
# amp_dtype's rule everywhere.
MEASURED_AMP = {}


def amp_dtype(setting, device_type, bf16_native, measured=None):
    """The autocast dtype for --amp on|off|auto, or None for float32: the rule, apart from asking the hardware.

    CUDA: bfloat16 where the GPU has it natively (Ampere and later: float32's range, so no GradScaler and no
    host synchronization for it), float16 with a GradScaler elsewhere; auto and on alike, except that auto takes
    `measured` (MEASURED_AMP's entry for this GPU and model) when there is one. CPU: bfloat16 when on; auto only
    where the CPU has native bfloat16 (AVX-512 BF16/AMX; elsewhere it is emulated and many times slower)."""
    if setting == "off":
        return None
    if device_type == "cuda":
        if setting == "auto" and measured is not None:
            return measured
        return torch.bfloat16 if bf16_native else torch.float16
    return torch.bfloat16 if setting == "on" or bf16_native else None


def use_amp(setting, device, model=None):
    """amp_dtype on this machine's `device`, for the model named `model` (its MEASURED_AMP entry, if any)."""
    measured = None
    if device.type == "cuda":
        try:  # torch's default counts bfloat16 emulated in float32 (Volta, Turing) as supported: it is slower there
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            native = torch.cuda.is_bf16_supported()
        if model is not None:
            measured = MEASURED_AMP.get((torch.cuda.get_device_name(device), model))
    else:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return amp_dtype(setting, device.type, native, measured)


def grad_scaler(dtype, device):
    """float16 needs a GradScaler (its range is too narrow for small gradients); bfloat16 and float32 none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def amp_name(dtype):
    """How the log and the benchmarks name a precision."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
