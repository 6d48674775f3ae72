"""Training and step-5 throughput on one GPU, in one run of at most five minutes (issue 11's table), side by side:

  model alone  CheXNet and the Unified DCNN (ResNet-50) training on a batch already on the device, channels_last, at
               batch 128 and 256: fp32, fp16 autocast + GradScaler, bf16 autocast, and bf16 under torch.compile
               (its compilation time printed apart, at batch 256 only: it takes minutes)
  full loop    utils.engine.train_one_epoch over traintest.py's loader, on synthetic 512-px PNGs written here, at the
               default precision: decoding every batch (uncached), from the persistent --cache-dir cache
               (data.cache, its build timed apart) and from the in-memory --cache (after its filling pass);
               each beside the model alone at the same precision and batch (the ratio loop / model alone);
               with torch.compile, the cached loop compiled too (its compile time: the first step; its steady rate)
  --amp auto   bf16 against fp16 + GradScaler for CheXNet alone, and the convergence check (utils.amp_choice's
               auroc_agreement of the same short run in both precisions on a learnable synthetic task): on CUDA the
               choice (utils.amp_choice.choose_amp) and the MEASURED_AMP entry that records it
  step 5       utils.engine.predict with maps + utils.localization.localize (boxes for every image, heatmap PNGs
               for 50), images per second

    python -m benchmarks.bench_gpu            # on a GPU VM (torch, torchvision, OpenCV, pandas, scikit-learn,
                                              # scikit-image, tqdm; no pydicom, no GCS client needed)
    python -m benchmarks.bench_gpu --quick    # small sizes, compile left out (what a machine without a GPU runs
                                              # anyway: every code path, the GPU figures open)

(from the repository root, so that data/, models/ and utils/ import as the scripts import them). A measurement
that would not fit in --budget seconds is printed as skipped. The last line projects 20 CheXNet epochs over the
168k-image dataset (134k training images) at the loop's measured rate (and at the compiled loop's, compilation
included: whether torch.compile wins over 20 epochs).
"""
import argparse
import concurrent.futures
import os
import tempfile
import time

import cv2
import numpy as np
import pandas as pd
import torch

from data.classes import CLASSES, NUM_CLASSES
from data.transforms import Normalize
from models import build_model
from models.losses import bce_loss
from utils.engine import autocast, make_loader, optimizer_step, predict, train_one_epoch
from utils.localization import localize
from utils.amp_choice import auroc_agreement, choose_amp
from utils.runtime import amp_name, grad_scaler, use_amp

TRAIN_IMAGES = 134_000  # the training split of the 168k-image dataset
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class Budget:
    """The run's five minutes: what is left, and whether a measurement expected to take `seconds` still fits."""

    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self):
        return self.end - time.perf_counter()

    def fits(self, seconds, what):
        if self.left() >= seconds:
            return True
        print(f"{what}: skipped ({self.left():.0f} s of the budget left, needs about {seconds:.0f} s)", flush=True)
        return False


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_pngs(folder, n, size, distinct=256):
    """`distinct` smooth 8-bit PNGs of side `size` (threads: OpenCV releases the GIL), listed n times over in all:
    every row is decoded when read, as a distinct file would be."""
    def one(i):
        rng = np.random.default_rng(i)
        img = cv2.GaussianBlur(rng.integers(0, 255, (size, size * 7 // 8), dtype=np.uint8), (0, 0), size / 40)
        cv2.circle(img, (int(rng.integers(size // 5, size // 2)), int(rng.integers(size // 5, size // 2))),
                   size // 12, 255, -1)
        path = os.path.join(folder, f"{i:04d}.png")
        cv2.imwrite(path, img)
        return path

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        paths = list(pool.map(one, range(min(n, distinct))))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"ImageID": [f"{i:05d}" for i in range(n)], "path": [paths[i % len(paths)] for i in range(n)]})
    frame[CLASSES] = rng.integers(0, 2, (n, NUM_CLASSES))
    return frame


def fresh_model(name, device, image_size):
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, input_size=image_size).to(device, memory_format=torch.channels_last)


def optimizer_for(model, device):
    # fused Adam takes a GradScaler's inf check on the device: no host synchronization per step (traintest.py's)
    return torch.optim.Adam(model.parameters(), fused=device.type == "cuda")


def model_rate(model, device, image_size, batch_size, dtype, steps, warmup=3):
    """Training images/s of the model alone on a uint8 batch already on the device (normalized as the loop does)."""
    optimizer = optimizer_for(model, device)
    scaler = grad_scaler(dtype, device)
    x = torch.randint(0, 255, (batch_size, 1, image_size, image_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (batch_size, NUM_CLASSES), device=device).float()
    net = getattr(model, "_orig_mod", model)
    normalize = Normalize(net.mean, net.std, device)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, dtype):
            loss = bce_loss(model(normalize(x)), y)
        optimizer_step(loss, optimizer, scaler)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def loop_rate(model, loader, device, dtype, steps):
    """(images/s, seconds of the warm-up step) of utils.engine.train_one_epoch over `loader` as traintest.py runs
    it; the warm-up step starts the workers, autotunes, and compiles a torch.compile'd model."""
    optimizer = optimizer_for(model, device)
    scaler = grad_scaler(dtype, device)
    flips = torch.Generator().manual_seed(0)
    common = dict(scaler=scaler, amp=dtype, flip_generator=flips)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, bce_loss, device, 0, max_batches=1, desc="warm-up", **common)
    sync(device)
    warmup = time.perf_counter() - start
    return train_one_epoch(model, loader, optimizer, bce_loss, device, 0, max_batches=steps, desc="loop",
                           **common).rate, warmup


def learnable(n, size, seed):
    """n uint8 images [n, 1, S, S] and their labels [n, C]: finding c present where cell c of a 5 x 5 grid is
    brighter, on noise, so that a short run learns something and two precisions can be compared on it."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, NUM_CLASSES)) < 0.3).astype(np.float32)
    x = rng.normal(100, 30, (n, size, size))
    cell = size // 5
    for c in range(NUM_CLASSES):
        r, k = divmod(c, 5)
        x[y[:, c] == 1, r * cell:(r + 1) * cell, k * cell:(k + 1) * cell] += 60
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8)).unsqueeze(1), torch.from_numpy(y)


def short_run(name, device, size, batch, steps, dtype, train, val):
    """Validation probabilities [n, C] of `name` trained `steps` steps from seed 0 at `dtype` (float16 with its
    GradScaler) on the batches of `train`, as the training loop steps (Adam, autocast, bce_loss)."""
    model = fresh_model(name, device, size)
    optimizer = optimizer_for(model, device)
    scaler = grad_scaler(dtype, device)
    normalize = Normalize(model.mean, model.std, device)
    (x, y), (vx, _) = train, val
    model.train()
    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % len(x)
        with autocast(device, dtype):
            loss = bce_loss(model(normalize(x[rows].to(device))), y[rows].to(device))
        optimizer_step(loss, optimizer, scaler)
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        return torch.cat([torch.sigmoid(model(normalize(vx[i:i + batch].to(device))).float()).cpu()
                          for i in range(0, len(vx), batch)]).numpy()


def convergence_check(name, device, size, batch, steps, validation, dtypes=(torch.bfloat16, torch.float16)):
    """utils.amp_choice.auroc_agreement of the same short run in each of `dtypes`: (agrees, macro a, macro b,
    interval of b - a)."""
    train, val = learnable(batch * steps, size, 1), learnable(validation, size, 2)
    probs = [short_run(name, device, size, batch, steps, dtype, train, val) for dtype in dtypes]
    return auroc_agreement(val[1].numpy(), *probs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU sizes: 64 px from 128-px PNGs, batches 4 and 8, "
                   "2 timed steps, fp32 and bf16 (float16 on a CPU is emulated), no torch.compile")
    p.add_argument("--precisions", help="precisions of the model alone (default fp32,fp16,bf16; --quick fp32,bf16)")
    p.add_argument("--budget", type=float, default=300, help="seconds the whole run may take")
    p.add_argument("--models", default="chexnet,unified-resnet50", help="models timed alone")
    p.add_argument("--batches", help="batch sizes of the model alone (default 128,256; --quick 4,8); the loop and "
                   "step 5 use the largest")
    p.add_argument("--image-size", type=int, help="training side (default 224; --quick 64)")
    p.add_argument("--stored-size", type=int, help="side of the PNGs written (default 512; --quick 128)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 10; --quick 2)")
    p.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)),
                   help="loader workers of the loop")
    p.add_argument("--compile", choices=["on", "off", "auto"], default="auto",
                   help="time torch.compile too (auto: on a GPU, not with --quick)")
    p.add_argument("--check-steps", type=int, help="training steps of the convergence check's short run in each "
                   "precision (default 60; on a CPU 6)")
    p.add_argument("--check-model", default="chexnet", help="the model of the convergence check (default chexnet)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type != "cuda"  # a CPU runs the same code paths at tiny sizes
    batches = [int(b) for b in (args.batches or ("4,8" if quick else "128,256")).split(",")]
    size = args.image_size or (64 if quick else 224)
    stored = args.stored_size or (128 if quick else 512)
    steps = args.steps or (2 if quick else 10)
    precisions = (args.precisions or ("fp32,bf16" if quick else "fp32,fp16,bf16")).split(",")
    compile_on = args.compile == "on" or args.compile == "auto" and device.type == "cuda" and not quick
    check_steps = args.check_steps or (6 if quick else 60)
    budget = Budget(args.budget)
    default = use_amp("auto", device)  # traintest.py's --amp auto on this machine
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"{where}; torch {torch.__version__}; {size} px from {stored}-px PNGs, {steps} timed steps; default "
          f"precision {amp_name(default)}; budget {args.budget:.0f} s", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        print("no GPU: tiny sizes on the CPU, every code path run; the GPU figures are open", flush=True)

    def time_alone(name, batch, label):
        if budget.fits(5 if quick else 8, f"  {name} batch {batch} {label}"):
            alone[name, batch, PRECISIONS[label]] = model_rate(fresh_model(name, device, size), device, size, batch,
                                                               PRECISIONS[label], steps)
            print(f"  {name:>17} batch {batch:4d} {label}: {alone[name, batch, PRECISIONS[label]]:8.1f}", flush=True)

    # the loop and its reference first: the figures that matter most come before the budget can run out
    alone, batch = {}, max(batches)
    print("\nmodel alone, the loop's reference (training images/s, channels_last):", flush=True)
    time_alone("chexnet", batch, next(k for k, v in PRECISIONS.items() if v == default))
    rows = batch * (steps + 2)
    with tempfile.TemporaryDirectory() as tmp:
        frame = write_pngs(tmp, rows, stored)
        loader = dict(batch_size=batch, workers=args.workers, train=True,
                      pin_memory=device.type == "cuda")
        reference = alone.get(("chexnet", batch, default))
        print(f"\nfull loop, chexnet, batch {batch}, {amp_name(default)}, {args.workers} workers (images/s; ratio to "
              f"the model alone {reference or float('nan'):.1f}):", flush=True)
        loops = {}
        if budget.fits(20 if quick else 30, "  uncached"):
            loops["uncached"] = loop_rate(fresh_model("chexnet", device, size),
                                          make_loader(frame, size, CLASSES, **loader), device, default, steps)[0]
        if budget.fits(20 if quick else 30, "  --cache-dir"):
            start = time.perf_counter()
            cached = make_loader(frame, size, CLASSES, cache_dir=os.path.join(tmp, "cache"), **loader)
            print(f"  --cache-dir build: {rows / (time.perf_counter() - start):8.1f} images/s ({rows} images, all "
                  f"cores)", flush=True)
            loops["--cache-dir"] = loop_rate(fresh_model("chexnet", device, size), cached, device, default,
                                             steps)[0]
        if budget.fits(25 if quick else 40, "  --cache"):
            memory = make_loader(frame, size, CLASSES, cache=True, **loader)
            for _ in memory:  # the filling pass; the epochs after it are what --cache buys
                pass
            loops["--cache"] = loop_rate(fresh_model("chexnet", device, size), memory, device, default, steps)[0]
        compile_s = None
        if compile_on and "--cache-dir" in loops and budget.fits(60 if quick else 200, "  --cache-dir, compiled"):
            # inside the loop, as traintest.py would run it: the warm-up step is the compilation
            loops["--cache-dir, compiled"], compile_s = loop_rate(torch.compile(fresh_model("chexnet", device, size)),
                                                                  cached, device, default, steps)
        for label, rate in loops.items():
            ratio = f"{rate / reference:.2f}" if reference else "n/a"
            print(f"  {label:>11}: {rate:8.1f}  loop/model alone {ratio}", flush=True)
        if compile_s is not None:
            print(f"  torch.compile inside the loop: {compile_s:.0f} s to compile (the first step), then "
                  f"{loops['--cache-dir, compiled']:.1f} images/s", flush=True)

        if budget.fits(15 if quick else 25, "\nstep 5"):
            test = frame.head(batch * min(steps, 4)).copy()  # box finding runs on the CPU: ~100 images/s today
            test["width"], test["height"] = stored * 7 // 8, stored
            model = fresh_model("chexnet", device, size).eval()
            predict_loader = make_loader(test, size, CLASSES, batch_size=batch, workers=args.workers,
                                         pin_memory=device.type == "cuda")
            start = time.perf_counter()
            out = predict(model, predict_loader, device, amp=default, maps=True)
            summary = localize(test, out, os.path.join(tmp, "step5"), input_size=size, max_images=50)
            seconds = time.perf_counter() - start
            print(f"\nstep 5 (predict with maps + localize, {len(test)} images, {summary['boxes']} boxes, "
                  f"{summary['heatmaps']} heatmap PNGs): {len(test) / seconds:8.1f} images/s", flush=True)

    print("\nmodel alone, the others (training images/s, channels_last):", flush=True)
    for name in args.models.split(","):
        for b in batches:
            for label in precisions:
                if (name, b, PRECISIONS[label]) not in alone:
                    time_alone(name, b, label)

    print("\n--amp auto: bf16 against fp16 with GradScaler (chexnet alone, training images/s):", flush=True)
    for label in ("bf16", "fp16"):
        if ("chexnet", batch, PRECISIONS[label]) not in alone:
            time_alone("chexnet", batch, label)
    race = {PRECISIONS[k]: alone.get(("chexnet", batch, PRECISIONS[k])) for k in ("bf16", "fp16")}
    validation = 64 if quick else 512
    check_batch = min(batch, 8 if quick else 64)

    def agrees():
        ok, macro_bf16, macro_fp16, (low, high) = convergence_check(args.check_model, device, size, check_batch,
                                                                    check_steps, validation)
        print(f"  convergence check ({args.check_model}, the same {check_steps} steps of batch {check_batch} in each, "
              f"{validation} validation images): macro AUROC bf16 {macro_bf16:.3f}, fp16 {macro_fp16:.3f}; "
              f"fp16 - bf16 in [{low:+.3f}, {high:+.3f}]: {'agree' if ok else 'differ'}", flush=True)
        return ok
    if None not in race.values() and budget.fits(20 if quick else 60, "  convergence check"):
        if device.type == "cuda":
            dtype, why = choose_amp(race, agrees)
            print(f"  --amp auto for chexnet on {where}: {amp_name(dtype)} ({why}); utils.runtime.MEASURED_AMP"
                  f"[{where!r}, 'chexnet'] = torch.{dtype} records it", flush=True)
        else:
            agrees()  # the check's code path; the choice is CUDA's
            print("  on a CPU --amp auto keeps its rule (bf16 only where native); the GPU's choice is open",
                  flush=True)

    if compile_on:
        print(f"\ntorch.compile, bf16, batch {batch} (the first steps compile):", flush=True)
        for name, needs in (("chexnet", 170), ("unified-resnet50", 90)):
            if name not in args.models.split(",") or not budget.fits(needs, f"  {name} compiled"):
                continue
            start = time.perf_counter()
            model = torch.compile(fresh_model(name, device, size))
            model_rate(model, device, size, batch, torch.bfloat16, 1, warmup=2)
            compiled = time.perf_counter() - start
            rate = model_rate(model, device, size, batch, torch.bfloat16, steps, warmup=1)
            eager = alone.get((name, batch, torch.bfloat16))
            gain = f", {rate / eager:.2f}x eager bf16" if eager else ""
            print(f"  {name:>17}: {rate:8.1f} ({compiled:.0f} s to compile{gain})", flush=True)
    else:
        print("\ntorch.compile: not timed (--quick or no GPU: inductor's compilation takes minutes on a CPU)",
              flush=True)

    best = loops.get("--cache-dir") or loops.get("--cache")
    if best:
        hours = 20 * TRAIN_IMAGES / best / 3600
        print(f"\n20 CheXNet epochs over {TRAIN_IMAGES:,} training images at {best:.1f} images/s (the cached loop): "
              f"{hours:.2f} h ({hours * 60:.0f} min), validation not counted", flush=True)
    if best and "--cache-dir, compiled" in loops:
        compiled = (20 * TRAIN_IMAGES / loops["--cache-dir, compiled"] + compile_s) / 3600
        verdict = "wins" if compiled < hours else "loses"
        print(f"  compiled: {compiled:.2f} h ({compiled * 60:.0f} min) with its {compile_s:.0f} s of compilation: "
              f"torch.compile {verdict} over 20 epochs", flush=True)
    print(f"total {args.budget - budget.left():.0f} s", flush=True)


if __name__ == "__main__":
    main()
