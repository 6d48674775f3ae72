"""The persistent cache's build (data.cache, traintest.py's --cache-dir) per core: today's main (--base) and this
tree side by side on the same files.

Writes --images 8-bit PNGs of 512 px (step 1's output size; smooth anatomy-like background plus noise), then builds
the cache at --size with 1 builder (in the calling process) and with --workers builders, each build in a fresh
interpreter (builder start-up counted, as a run pays it). Prints images/s, CPU per image of every process of the
build (benchmarks/cpu_clock.py) and the scaling per core: rate(N) / (N x rate(1)) (target >= 0.9; wall needs idle
cores, so on a shared machine the CPU per image is the figure to compare).

    python -m benchmarks.bench_cache [--images 1024] [--workers 2] [--base /work/wt-base]
"""
import argparse
import os
import shutil
import tempfile

import cv2
import numpy as np

from benchmarks.cpu_clock import run_in_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One build on the tree given (benchmarks/cpu_clock.run_in_tree), CPU of every process of it.
RUNNER = """
listing, folder, size, workers = args
from data.cache import image_cache
from data.dataset import decode_square, worker_process_init
paths = open(listing).read().split()
with cpu_clock.TreeClock() as clock:
    wall = time.perf_counter()
    cache = image_cache(folder, paths, int(size), decode_square, worker_process_init, workers=int(workers),
                        progress=False)
    wall = time.perf_counter() - wall
assert not any(cache.errors), cache.errors[:3]
print(json.dumps({"images": len(paths), "wall": wall, "cpu": clock.total()}))
"""


def write_pngs(folder, n, side=512):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = cv2.resize(rng.uniform(20, 230, (12, 10)).astype(np.float32), (side * 4 // 5, side),
                          interpolation=cv2.INTER_CUBIC)
        img = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        paths.append(os.path.join(folder, f"{i:05d}.png"))
        cv2.imwrite(paths[-1], img)
    return paths


def build(tree, listing, folder, size, workers):
    got = run_in_tree(tree, RUNNER, listing, folder, size, workers)
    shutil.rmtree(folder)
    return got


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="PNGs to cache (default: 1024)")
    p.add_argument("--size", type=int, default=224, help="training side (default: 224)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="builders of the parallel build (default: the cores)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each figure is kept (default: 2)")
    p.add_argument("--base", default=None, help="a checkout to compare with, e.g. today's main")
    args = p.parse_args()
    trees = {"new": ROOT, **({"base": os.path.abspath(args.base)} if args.base else {})}
    work = tempfile.mkdtemp(prefix="bench_cache_")
    try:
        listing = os.path.join(work, "paths.txt")
        with open(listing, "w") as f:
            f.write("\n".join(write_pngs(os.path.join(work, "png"), args.images)))
        best = {}
        for r in range(args.repeat):
            for workers in (1, args.workers):
                for label, tree in trees.items():
                    got = build(tree, listing, os.path.join(work, f"cache_{label}"), args.size, workers)
                    old = best.get((label, workers), (float("inf"), float("inf")))
                    best[label, workers] = (min(old[0], got["wall"] / got["images"]),
                                            min(old[1], got["cpu"] / got["images"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.images} PNGs of 512 px -> {args.size} px; load average {os.getloadavg()[0]:.1f} on "
          f"{len(os.sched_getaffinity(0))} cores (a shared machine: wall times include others' work)")
    for label in trees:
        for workers in (1, args.workers):
            wall, cpu = best[label, workers]
            print(f"  {label:>4}, {workers:2d} builders: {1 / wall:7.1f} images/s, {1000 * cpu:5.2f} ms CPU/image "
                  f"(all processes)")
        one, many = best[label, 1], best[label, args.workers]
        print(f"  {label:>4}: per core {one[0] / many[0] / args.workers:.2f} wall, CPU per image "
              f"{many[1] / one[1]:.2f}x the single builder's  (target >= 0.9 per core)")


if __name__ == "__main__":
    main()
