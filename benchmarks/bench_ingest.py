"""Step 1's speed against its decode floor, today's main (--base) and this tree side by side on the same files.

Builds zips of 16-bit grayscale PNGs of PadChest's size, 2500 x 2048 (smooth anatomy-like background plus noise, so
they compress like radiographs; generated here, never committed), and measures per image:
  (a) decode only: cv2.imdecode of each member's bytes, already in memory, one core: the floor (freed buffers kept
      for the next image, data.ingest.workers.keep_image_memory, as step 1 keeps them)
  (b) the ingest end to end (data.ingest.pipeline.ingest, download_images.py's code path) with --workers 0, 1 and 2,
      each in a fresh interpreter (as a run starts: worker start-up counted), for --base and for this tree; wall
      time, and CPU time of every process of the run (the main one, its fork server and workers, read from /proc)
  (c) the original approach: unzip to disk, PIL open, torchvision Resize, PIL save (--original)
  PNG writing: time and size of the 512-px outputs at OpenCV's default settings, at deflate level 1, and at level 1
      with the "up" filter (what step 1 writes)
Prints the two targets of issue 20: wall time per image with 1 worker over decode alone (<= 1.15) and the speedup
from 1 to 2 workers (>= 1.8; needs two idle cores: on a shared machine the CPU figures are the honest ones).

    python -m benchmarks.bench_ingest [--archives 2] [--per-archive 30] [--base /work/wt-base]

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

from benchmarks.cpu_clock import run_in_tree
from data.decode import decode_image_bytes, resize_longest
from data.ingest.workers import PNG_PARAMS, keep_image_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One ingest on the tree given (benchmarks/cpu_clock.run_in_tree): CPU seconds of every process of the run and of its
# busiest thread.
RUNNER = """
src, out, workers, size = args
from data.ingest.pipeline import ingest
with cpu_clock.TreeClock() as clock:
    wall = time.perf_counter()
    s = ingest(src, out, size=int(size), workers=int(workers), progress=False)
    wall = time.perf_counter() - wall
assert s["error_rows"] == 0, s
print(json.dumps({"images": s["images_written"], "wall": wall, "cpu": clock.total(), "busiest": clock.busiest()}))
"""


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


def ingest_run(tree, src, out, workers, size):
    """(images, wall s, CPU s of all its processes, CPU s of its busiest thread) of one ingest on `tree` in a fresh
    interpreter."""
    r = run_in_tree(tree, RUNNER, src, out, workers, size)
    return r["images"], r["wall"], r["cpu"], r["busiest"]


def png_settings(folder, size, limit=12):
    """{setting: (ms per image, mean bytes)} of writing the outputs of the first `limit` members."""
    with zipfile.ZipFile(os.path.join(folder, sorted(os.listdir(folder))[0])) as zf:
        images = [resize_longest(decode_image_bytes(zf.read(n), n)[0], size) for n in zf.namelist()[:limit]]
    settings = {"OpenCV default": [], "level 1": [cv2.IMWRITE_PNG_COMPRESSION, 1],
                "level 1, up filter (step 1)": PNG_PARAMS}
    found = {}
    for name, params in settings.items():
        cpu = time.process_time()
        sizes = [len(cv2.imencode(".png", img, params)[1]) for img in images for _ in range(3)]
        found[name] = (1000 * (time.process_time() - cpu) / len(sizes), sum(sizes) / len(sizes))
    return found


def load():
    return f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archives", type=int, default=2, help="number of zips to build (default: 2)")
    p.add_argument("--per-archive", type=int, default=30, help="PNGs per zip (default: 30)")
    p.add_argument("--height", type=int, default=2500, help="image height in pixels (default: 2500)")
    p.add_argument("--width", type=int, default=2048, help="image width in pixels (default: 2048)")
    p.add_argument("--size", type=int, default=512, help="output longest side (default: 512)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each figure is kept (default: 2)")
    p.add_argument("--base", default=None, help="a checkout of the code to compare with, e.g. today's main "
                   "(default: none, this tree alone)")
    p.add_argument("--workers", default="0,1,2", help="worker counts to time (default: 0,1,2)")
    p.add_argument("--original", action="store_true", help="time the original unzip + PIL approach too")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder, deleted)")
    args = p.parse_args()
    keep_image_memory()  # the floor without the page faults of fresh buffers, as step 1's processes decode
    trees = {"new": ROOT, **({"base": os.path.abspath(args.base)} if args.base else {})}
    counts = [int(w) for w in args.workers.split(",")]

    work = args.workdir or tempfile.mkdtemp(prefix="bench_ingest_")
    try:
        src = os.path.join(work, "src")
        t = time.perf_counter()
        if not os.path.isdir(src):  # a kept --workdir is reused
            build_source(src, args.archives, args.per_archive, args.height, args.width)
        mb = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2**20
        print(f"built {args.archives} zips x {args.per_archive} PNGs of {args.height}x{args.width} 16-bit "
              f"({mb:.0f} MB) in {time.perf_counter() - t:.1f} s; {load()}", flush=True)

        # Best of --repeat rounds, interleaved, so a burst of load on a shared machine hits all alike.
        best = {}

        def keep(key, n, wall, cpu, busiest=None):
            old = best.get(key, (float("inf"),) * 3)
            new = (wall / n, cpu / n, (cpu if busiest is None else busiest) / n)  # seconds per image
            best[key] = tuple(map(min, old, new))
        for r in range(args.repeat):
            keep("decode", *decode_only(src))
            for workers in counts:
                for label, tree in trees.items():
                    out = os.path.join(work, f"out_{label}_{workers}_{r}")
                    keep((label, workers), *ingest_run(tree, src, out, workers, args.size))
                    shutil.rmtree(out)
            if args.original:
                orig = os.path.join(work, f"orig_{r}")
                keep("original", *original(src, orig, args.size))
                shutil.rmtree(orig)
        pngs = png_settings(src, args.size)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    cores = len(os.sched_getaffinity(0))
    print(f"after the runs: {load()} (a shared machine: wall times include others' work)")
    floor_wall, floor = best["decode"][:2]

    def idle(key):
        """A lower bound of the wall time per image on idle cores from the CPU figures: the busiest thread (a
        worker's decoding) or all the CPU spread over the cores, whichever is longer."""
        return max(best[key][2], best[key][1] / cores)
    print(f"{'':<34} {'ms wall':>8} {'ms CPU':>7} {'busiest':>8} {'bound':>8}   ratios to decode alone")
    print(f"{'':<34} {'/image':>8} {'/image':>7} {'thread':>8} {'idle':>8}   wall, CPU, bound")

    def line(label, key):
        wall, cpu, busiest = best[key]
        print(f"{label:<34} {1000 * wall:8.1f} {1000 * cpu:7.1f} {1000 * busiest:8.1f} {1000 * idle(key):8.1f}   "
              f"{wall / floor_wall:.2f}, {cpu / floor:.2f}, {idle(key) / floor:.2f}")
    line("(a) decode only (cv2.imdecode)", "decode")
    for workers in counts:
        for label in trees:
            line(f"(b) {label}, --workers {workers}", (label, workers))
    if args.original:
        line("(c) original: unzip, PIL, torchvision", "original")
    print("    (b) a whole run in a fresh interpreter: worker start-up, zip reads, writes, part markers, manifest;\n"
          "    CPU: every process of the run (main, fork server, workers, all threads); busiest thread: the "
          "critical path;\n    bound idle: max(busiest thread, CPU / cores), the least wall time on idle "
          "cores (the workers' start-up\n    overlaps the main process's first decodes, so with 1 worker it is "
          "below the worker's own time per image)")
    for label in trees:
        if 1 in counts:
            print(f"{label}: 1 worker / decode alone: {best[label, 1][0] / floor_wall:.2f} wall, "
                  f"{best[label, 1][1] / floor:.2f} CPU (all processes)  (target <= 1.15)")
        if 1 in counts and 2 in counts:
            print(f"{label}: speedup 1 -> 2 workers: {best[label, 1][0] / best[label, 2][0]:.2f} wall, "
                  f"{idle((label, 1)) / idle((label, 2)):.2f} from the idle bounds  (target >= 1.8)")
    print(f"\nPNG writing, {args.size}-px outputs (ms CPU per image, mean bytes):")
    ref_ms, ref_bytes = pngs["OpenCV default"]
    for name, (ms, size) in pngs.items():
        print(f"  {name:<28} {ms:6.2f} ms  {size / 1000:7.1f} kB  ({ms / ref_ms:.2f}x the time, "
              f"{size / ref_bytes:.2f}x the size of the default)")


if __name__ == "__main__":
    main()
