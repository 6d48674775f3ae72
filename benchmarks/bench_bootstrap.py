"""The AUROC bootstrap, old and new, side by side: roc_auc_score on each image resample of each class (the old
metrics.csv interval) against one sort per class and weighted resamples (utils.stats, which also resamples patients).

    python -m benchmarks.bench_bootstrap [--images 3000] [--boot 1000]
"""
import argparse
import time

import numpy as np

from utils.metrics import bootstrap_auroc_interval
from utils.stats import bootstrap_aurocs, percentile_interval


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="test images (default %(default)s)")
    parser.add_argument("--boot", type=int, default=1000, help="resamples (default %(default)s)")
    parser.add_argument("--classes", type=int, default=22, help="classes (default %(default)s)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (args.images, args.classes))
    p = y + rng.normal(0, 1, y.shape)
    patients = np.arange(args.images) // 3

    start = time.perf_counter()
    old = [bootstrap_auroc_interval(y[:, c], p[:, c], args.boot, 0) for c in range(args.classes)]
    t_old = time.perf_counter() - start
    start = time.perf_counter()
    by_image = bootstrap_aurocs(y, p, None, args.boot, 0)
    t_new = time.perf_counter() - start
    start = time.perf_counter()
    bootstrap_aurocs(y, p, patients, args.boot, 0)
    t_patients = time.perf_counter() - start
    width_old = np.mean([hi - lo for lo, hi in old])
    width_new = np.mean([np.subtract(*percentile_interval(by_image[:, c])[::-1]) for c in range(args.classes)])
    print(f"{args.images} images x {args.classes} classes x {args.boot} resamples")
    print(f"old  roc_auc_score per resample: {t_old:7.2f} s   mean interval width {width_old:.4f}")
    print(f"new  weighted, images:           {t_new:7.2f} s   mean interval width {width_new:.4f}")
    print(f"new  weighted, patients (3 each): {t_patients:6.2f} s")
    print(f"speed-up (old / new, images): {t_old / t_new:.1f}x")


if __name__ == "__main__":
    main()
