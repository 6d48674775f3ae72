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
# agreed (choose_amp). Empty: no GPU has been measured yet (issue 20's GPU figures are open), so auto follows
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


def auroc_agreement(y_true, prob_a, prob_b, n_boot=1000, seed=0, level=0.95):
    """The convergence check of two precisions: whether the same short run in each reaches the same validation
    AUROC within its interval. (agrees, macro AUROC of a, of b, (low, high)): the macro is the mean over the classes
    with both labels among the labelled rows (y_true -1 left out); the interval is the paired bootstrap's (the same
    resamples for both, utils.stats) of b - a, and they agree when it holds 0."""
    from utils.metrics import per_class_auroc
    from utils.stats import bootstrap_aurocs, macro_samples, percentile_interval
    y_true = np.asarray(y_true)
    prob_a, prob_b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    per_a, per_b = per_class_auroc(y_true, prob_a), per_class_auroc(y_true, prob_b)
    columns = [c for c, value in enumerate(per_a) if not np.isnan(value)]
    if not columns:
        raise ValueError("no class has both labels in the validation set: the check cannot compare the runs")
    difference = (macro_samples(bootstrap_aurocs(y_true, prob_b, None, n_boot, seed), columns)
                  - macro_samples(bootstrap_aurocs(y_true, prob_a, None, n_boot, seed), columns))
    low, high = percentile_interval(difference, level)
    macro_a, macro_b = float(np.mean([per_a[c] for c in columns])), float(np.mean([per_b[c] for c in columns]))
    return bool(low <= 0 <= high), macro_a, macro_b, (low, high)


def choose_amp(rates, agrees):
    """--amp auto's choice on CUDA from measurements: (dtype, why). rates: {torch.bfloat16: images/s,
    torch.float16: images/s (with its GradScaler)} of the model alone; agrees: () -> bool, the convergence check
    (auroc_agreement of a short run in each), called only when float16 is the faster. bfloat16 unless float16 is
    faster and the check agrees: float16's narrow range is a risk that only a run that converges alike excuses."""
    bf16, fp16 = rates[torch.bfloat16], rates[torch.float16]
    if fp16 <= bf16:
        return torch.bfloat16, f"bf16 is as fast or faster ({bf16:.1f} vs fp16 {fp16:.1f} images/s)"
    if agrees():
        return torch.float16, f"fp16 with GradScaler is {fp16 / bf16:.2f}x bf16 and converges alike"
    return torch.bfloat16, (f"fp16 is {fp16 / bf16:.2f}x bf16 but the convergence check disagrees: bf16 kept")


def amp_name(dtype):
    """How the log and the benchmarks name a precision."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
