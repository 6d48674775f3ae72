"""utils.localization.localize on one thread vs on its worker threads, side by side in one run on the same predictions:
what the box finding and the heatmap pictures of step 5 cost after the forward pass.

The predictions are drawn here, not computed: --images images stored at longest side --stored-size (PNG noise; the
pictures read them), ChestX-ray8-sized maps (7x7 feature cells, as a 224-px input gives), and probabilities uniform
in 0..1, so that at the default threshold of 0.5 about half the 22 classes are mapped on every image (a random
network's share; a trained one maps fewer). Heatmap PNGs are drawn for the first --max-heatmaps images, as
traintest.py's --max-heatmaps. Both ways must write the same boxes.csv and pictures; the run checks it.

    python -m benchmarks.bench_localize [--images 1024] [--max-heatmaps 50] [--threads N] [--repeats 2]

(from the repository root). No GPU is used: step 5 runs on the CPU after the forward pass.
"""
import argparse
import filecmp
import os
import tempfile
import time

import cv2
import numpy as np
import pandas as pd

from data.classes import NUM_CLASSES
from utils.engine import Predictions
from utils.localization import WORKER_THREADS, localize
from utils.run_folder import BOXES_CSV, HEATMAPS_DIR


def drawn_predictions(folder, n, stored_size, cells=7, seed=0):
    """A frame (ImageID, path, width, height) of n images in folder and their Predictions with maps."""
    rng = np.random.default_rng(seed)
    width = stored_size * 7 // 8
    paths = []
    for j in range(min(n, 64)):  # the pictures read files; 64 distinct ones are enough
        paths.append(os.path.join(folder, f"{j}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (stored_size, width), dtype=np.uint8))
    frame = pd.DataFrame({"ImageID": [f"im{i:06d}.png" for i in range(n)], "path": [paths[i % len(paths)]
                          for i in range(n)], "width": width, "height": stored_size})
    maps = rng.normal(size=(n, NUM_CLASSES, cells, cells)).astype(np.float32)
    probs = rng.random((n, NUM_CLASSES)).astype(np.float32)
    return frame, Predictions(np.arange(n), probs, np.zeros((n, NUM_CLASSES), np.float32),
                              np.tile([stored_size, width], (n, 1)), maps)


def same_outputs(a, b):
    """Whether two run folders hold the same boxes.csv and heatmap files, byte for byte."""
    heat_a, heat_b = os.path.join(a, HEATMAPS_DIR), os.path.join(b, HEATMAPS_DIR)
    names = sorted(os.listdir(heat_a))
    return (filecmp.cmp(os.path.join(a, BOXES_CSV), os.path.join(b, BOXES_CSV), shallow=False)
            and names == sorted(os.listdir(heat_b))
            and filecmp.cmpfiles(heat_a, heat_b, names, shallow=False)[1:] == ([], []))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1024, help="images localized")
    p.add_argument("--stored-size", type=int, default=512, help="longest side of the stored images")
    p.add_argument("--max-heatmaps", type=int, default=50, help="images whose heatmap PNGs are drawn")
    p.add_argument("--threads", type=int, default=WORKER_THREADS, help="the threaded way's threads (default: "
                   "localize's own, min(8, cores))")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each way; the best is kept")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frame, predictions = drawn_predictions(tmp, args.images, args.stored_size)
        rates, out = {}, {}
        for threads in (1, args.threads):
            best = float("inf")
            for r in range(args.repeats):
                out[threads] = os.path.join(tmp, f"run{threads}-{r}")
                start = time.perf_counter()
                summary = localize(frame, predictions, out[threads], input_size=224, max_images=args.max_heatmaps,
                                   threads=threads)
                best = min(best, time.perf_counter() - start)
            rates[threads] = args.images / best
            print(f"{threads:2d} thread{'s' if threads > 1 else ' '}: {rates[threads]:8.1f} images/s "
                  f"({summary['boxes']} boxes, {summary['heatmaps']} heatmap PNGs)", flush=True)
        same = same_outputs(out[1], out[args.threads])
        print(f"{args.threads} threads / 1 thread: {rates[args.threads] / rates[1]:.2f}x on {os.cpu_count()} cores; "
              f"same boxes.csv and pictures: {'yes' if same else 'NO'}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
