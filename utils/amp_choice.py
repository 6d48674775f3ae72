"""--amp auto's choice on CUDA from measurements (benchmarks.bench_gpu): the faster of bfloat16 and float16 with a
GradScaler, float16 only where the convergence check agrees. What it decides is recorded in utils.runtime.MEASURED_AMP,
which use_amp reads."""
import numpy as np
import torch

from utils.metrics import per_class_auroc
from utils.stats import bootstrap_aurocs, macro_samples, percentile_interval


def auroc_agreement(y_true, prob_a, prob_b, n_boot=1000, seed=0, level=0.95):
    """The convergence check of two precisions: whether the same short run in each reaches the same validation
    AUROC within its interval. (agrees, macro AUROC of a, of b, (low, high)): the macro is the mean over the classes
    with both labels among the labelled rows (y_true -1 left out); the interval is the paired bootstrap's (the same
    resamples for both, utils.stats) of b - a, and they agree when it holds 0."""
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
