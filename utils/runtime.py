"""The process a run happens in: logging, seeds and determinism, mixed precision."""
import logging
import os
import random
import sys

import numpy as np
import torch

from utils import dist


# The toolkit's loggers: the scripts' and those of its packages' modules (logging.getLogger(__name__)).
LOGGERS = ("traintest", "data", "models", "utils")


def setup_logging(out_dir=None):
    """The toolkit's messages to stderr and, with out_dir, to out_dir/train.log, on the main process only (other
    ranks stay silent). Other libraries' loggers are left alone."""
    handlers = [logging.NullHandler()]
    if dist.is_main():
        handlers = [logging.StreamHandler(sys.stderr)]
        handlers[0].setFormatter(logging.Formatter("%(message)s"))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            handlers.append(logging.FileHandler(os.path.join(out_dir, "train.log")))
            handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    close_logging()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


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


def use_amp(setting, device):
    """Mixed precision for --amp on|off|auto: auto turns it on for CUDA and for CPUs with native bfloat16
    (AVX-512 BF16/AMX; elsewhere bfloat16 is emulated and many times slower)."""
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
