"""Ingest speed, measured side by side on the same PadChest-sized files.

Builds zips of 16-bit grayscale PNGs of about 2500 x 2048 (smooth anatomy-like
background plus noise, so they compress like radiographs) and measures:
  (a) decode only: cv2.imdecode of each member's bytes, already in memory, one core
  (b) this ingest end to end (download_images.py's code path), with 1 and 2 workers
  (c) the original approach: unzip to disk, PIL open, torchvision Resize, PIL save
Prints images/s for each, b/a (time per image per core of the ingest over decode
alone; target <= 1.2), c/b (how many times faster than the original) and the
speedup from 1 to 2 workers (target >= 1.8).

    python -m benchmarks.bench_ingest [--archives 2] [--per-archive 20] [--size 512]

(from the repository root, so that data/ imports as the scripts import it)
"""
import argparse
import os
import shutil
import tempfile
import time
import zipfile

import cv2
import numpy as np

from data.ingest.pipeline import ingest


def radiograph_like(rng, height, width):
    base = cv2.resize(rng.uniform(300, 3800, (24, 20)).astype(np.float32), (width, height),
                      interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 6, (height, width)), 0, 4095).astype(np.uint16)


def build_source(folder, archives, per_archive, height, width):
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for a in range(archives):
        with zipfile.ZipFile(os.path.join(folder, f"{a}.zip"), "w") as zf:  # stored, as PNGs do not deflate
            for i in range(per_archive):
                png = cv2.imencode(".png", radiograph_like(rng, height, width))[1].tobytes()
                zf.writestr(f"img_{a}_{i:03d}.png", png)


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): CPU time is what contention on a shared machine
    does not inflate."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def decode_only(folder):
    """cv2.imdecode of every member, bytes read beforehand; returns the number of images."""
    blobs = []
    for name in sorted(os.listdir(folder)):
        with zipfile.ZipFile(os.path.join(folder, name)) as zf:
            blobs += [zf.read(n) for n in zf.namelist()]
    cv2.setNumThreads(1)

    def run():
        for data in blobs:
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE)
        return len(blobs)
    return timed(run)


def original(folder, out, size):
    """The original script: unzip everything to disk, then PIL open + torchvision Resize + PIL save."""
    import torch
    from PIL import Image
    from torchvision import transforms
    torch.set_num_threads(1)
    resize = transforms.Resize(size)

    def run():
        unpacked = os.path.join(out, "unzipped")
        for name in sorted(os.listdir(folder)):
            with zipfile.ZipFile(os.path.join(folder, name)) as zf:
                zf.extractall(unpacked)
        for name in sorted(os.listdir(unpacked)):
            resize(Image.open(os.path.join(unpacked, name))).save(os.path.join(out, name))
        return len(os.listdir(unpacked))
    return timed(run)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archives", type=int, default=2, help="number of zips to build (default: 2)")
    p.add_argument("--per-archive", type=int, default=20, help="PNGs per zip (default: 20)")
    p.add_argument("--height", type=int, default=2500, help="image height in pixels (default: 2500)")
    p.add_argument("--width", type=int, default=2048, help="image width in pixels (default: 2048)")
    p.add_argument("--size", type=int, default=512, help="output longest side (default: 512)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each figure is kept (default: 2)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder, deleted)")
    args = p.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="bench_ingest_")
    try:
        src = os.path.join(work, "src")
        t = time.perf_counter()
        if not os.path.isdir(src):  # a kept --workdir is reused
            build_source(src, args.archives, args.per_archive, args.height, args.width)
        mb = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2**20
        print(f"built {args.archives} zips x {args.per_archive} PNGs of {args.height}x{args.width} "
              f"16-bit ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s; cores available: "
              f"{len(os.sched_getaffinity(0))}")

        # Best of --repeat rounds, interleaved, so a burst of load on a shared machine hits all alike.
        best = {}

        def keep(key, n, wall, cpu):
            old = best.get(key, (float("inf"), float("inf")))
            best[key] = (min(old[0], wall / n), min(old[1], cpu / n))  # seconds per image
        for r in range(args.repeat):
            keep("a", *decode_only(src))
            for workers in (0, 1, 2):
                out = os.path.join(work, f"out{workers}_{r}")
                s, wall, cpu = timed(lambda: ingest(src, out, size=args.size, workers=workers, progress=False))
                assert s["error_rows"] == 0, s
                keep(f"b{workers}", s["images_written"], wall, cpu)
                shutil.rmtree(out)
            orig = os.path.join(work, f"orig_{r}")
            keep("c", *original(src, orig, args.size))
            shutil.rmtree(orig)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    def line(label, key, cpu=True):
        wall, cpu_s = best[key]
        extra = f", {1000 * cpu_s:4.0f} ms CPU/image" if cpu else ""
        print(f"{label:<44}: {1 / wall:6.2f} images/s ({1000 * wall:4.0f} ms wall/image{extra})")
    line("(a) decode only (cv2.imdecode, 1 core)", "a")
    line("(b) ingest end to end, in-process (--workers 0)", "b0")
    line("(b) ingest end to end, 1 worker process", "b1", cpu=False)
    line("(b) ingest end to end, 2 worker processes", "b2", cpu=False)
    line("(c) original: unzip, PIL, torchvision Resize", "c")
    print("    (b) counts everything: listing, worker start-up, zip reads, writes, manifest")
    print(f"b/a  per image per core, ingest / decode only   : {best['b0'][1] / best['a'][1]:.2f} CPU, "
          f"{best['b1'][0] / best['a'][0]:.2f} wall with 1 worker  (target <= 1.2)")
    print(f"c/b  per image, original / ingest               : {best['c'][1] / best['b0'][1]:.2f} CPU, "
          f"{best['c'][0] / best['b1'][0]:.2f} wall with 1 worker  (target > 1)")
    print(f"speedup 1 -> 2 workers (wall)                   : {best['b1'][0] / best['b2'][0]:.2f}  "
          f"(target >= 1.8; needs 2 idle cores)")


if __name__ == "__main__":
    main()
