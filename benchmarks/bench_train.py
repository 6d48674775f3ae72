"""Training-loop speed, as shipped vs the original's loop, side by side in one run on the same model and batch.

    python -m benchmarks.bench_train [--model chexnet] [--image-size 224] [--batch-size 16] [--batches 3]
                                     [--workers 1] [--threads N] [--speed-models chexnet,unified-resnet50,...]

(from the repository root, so that data/, models/ and utils/ import as the scripts import them)

original: PIL decode -> RGB -> Resize -> RandomHorizontalFlip -> ToTensor -> Normalize in the workers, float32
          batches, default (NCHW) memory format, fp32.
shipped:  utils.engine.train_one_epoch over utils.engine.make_loader (data.dataset.ChestImages): uint8 batches
          (decoded and resized by OpenCV, from the --cache after the first epoch), flip and normalization
          (data.transforms, with the model's mean and std) on the device, channels_last, mixed precision where the
          hardware has it (bfloat16 on CPU only with native support: measured here both ways).
Also: the loader alone (images/s it can supply, no cache) vs the model alone (images/s it can consume); and the
training images/s of each --speed-models model at --speed-size px, to choose a model for a CPU demo.
"""
import argparse
import os
import tempfile
import time

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from data.classes import CLASSES, NUM_CLASSES
from data.transforms import Normalize
from models import build_model
from models.losses import bce_loss
from utils.engine import make_loader, train_one_epoch


def write_images(folder, n, size=256, seed=0):
    """n smooth 8-bit grayscale PNGs, longest side `size` (as the demo world stores them); their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (size, size * 7 // 8), dtype=np.uint8), (0, 0), 6)
        cv2.circle(img, (int(rng.integers(40, 180)), int(rng.integers(40, 200))), 20, 255, -1)
        paths.append(os.path.join(folder, f"{i:04d}.png"))
        cv2.imwrite(paths[-1], img)
    return paths


class OriginalImages(Dataset):
    """The original pipeline: PIL, RGB, torchvision transforms to a normalized float tensor in the workers."""

    def __init__(self, paths, labels, image_size):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([
            transforms.Resize((image_size, image_size)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def original_loop(model, loader, optimizer, batches):
    """The original's step: fp32, NCHW, float batches straight from the loader. Returns images/s."""
    model.train()
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == 1:  # the first batch pays for worker start-up in both loops
            seen, start = 0, time.perf_counter()
        if step > batches:
            break
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def shipped_loop(model, loader, optimizer, batches, amp):
    """utils.engine.train_one_epoch for batches+1 steps; the first (warm-up) batch is not timed."""
    flips = torch.Generator().manual_seed(0)
    train_one_epoch(model, loader, optimizer, bce_loss, torch.device("cpu"), 0, amp=amp, flip_generator=flips,
                    max_batches=1, desc="warm-up")
    return train_one_epoch(model, loader, optimizer, bce_loss, torch.device("cpu"), 0, amp=amp,
                           flip_generator=flips, max_batches=batches, desc="shipped").rate


def fresh_model(name, channels_last):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def loader_rate(loader, batches):
    """Images/s the loader alone supplies (first batch, worker start-up, excluded)."""
    seen, start = 0, None
    for step, batch in enumerate(loader):
        if step == 1:
            seen, start = 0, time.perf_counter()
        if step > batches:
            break
        seen += batch[0].shape[0]
    return seen / (time.perf_counter() - start)


def model_rate(model, image_size, batch_size, batches, amp):
    """Training images/s of the model alone, on a batch already in memory."""
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randint(0, 255, (batch_size, 1, image_size, image_size), dtype=torch.uint8)
    y = torch.randint(0, 2, (batch_size, NUM_CLASSES)).float()
    normalize = Normalize(model.mean, model.std, "cpu")
    model.train()
    for step in range(batches + 1):
        if step == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(normalize(x))
        loss = bce_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batches * batch_size / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chexnet", help="model of the side-by-side loop comparison")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    p.add_argument("--batches", type=int, default=3, help="timed batches per measurement (after one warm-up)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of both loops")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast on a CPU without native "
                   "support (emulated: many times slower, so left out by default)")
    p.add_argument("--speed-models", default="chexnet,unified-resnet50,unified-alexnet",
                   help="comma list of models whose training images/s is measured at --speed-size")
    p.add_argument("--speed-size", type=int, default=128, help="image size of the per-model measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16_native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"CPU: {os.cpu_count()} cores, {args.threads} torch threads, native bfloat16: {bf16_native}; "
          f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.batches} timed batches, "
          f"{args.workers} workers", flush=True)

    n = args.batch_size * (args.batches + 2)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(tmp, n)
        labels = torch.randint(0, 2, (n, NUM_CLASSES)).float()
        frame = pd.DataFrame({"path": paths})
        frame[CLASSES] = labels.numpy()
        common = dict(batch_size=args.batch_size, num_workers=args.workers, shuffle=True, drop_last=True,
                      persistent_workers=args.workers > 0)

        original_loader = DataLoader(OriginalImages(paths, labels, args.image_size), **common)
        model = fresh_model(args.model, channels_last=False)
        original = original_loop(model, original_loader, torch.optim.Adam(model.parameters()), args.batches)
        print(f"original loop (PIL, fp32, NCHW):                 {original:7.1f} images/s", flush=True)

        # traintest.py's training loader: shuffled, last partial batch dropped, workers of one thread each
        shipped_loader = make_loader(frame, args.image_size, CLASSES, batch_size=args.batch_size,
                                     workers=args.workers, train=True, cache=True)
        for _ in shipped_loader:  # the first epoch fills the cache; later epochs are what --cache buys
            pass
        rates = {}
        for amp in (False, True) if bf16_native or args.bf16 else (False,):
            model = fresh_model(args.model, channels_last=True)
            rates[amp] = shipped_loop(model, shipped_loader, torch.optim.Adam(model.parameters()), args.batches, amp)
            print(f"shipped loop (uint8 + cache, channels_last, {'bf16' if amp else 'fp32'}): {rates[amp]:7.1f} images/s",
                  flush=True)
        default = rates[bf16_native]
        forced = f"; {rates[True] / original:.2f}x with bf16 forced" if True in rates and not bf16_native else ""
        print(f"ratio shipped/original: {default / original:.2f}x with the default precision "
              f"({'bf16' if bf16_native else 'fp32'} on this CPU){forced}", flush=True)

        plain_loader = make_loader(frame, args.image_size, CLASSES, batch_size=args.batch_size, workers=args.workers,
                                   train=True)
        supply = loader_rate(plain_loader, args.batches)
        demand = model_rate(fresh_model(args.model, True), args.image_size, args.batch_size, args.batches,
                            bf16_native)
        print(f"loader alone (decode + resize, no cache): {supply:7.1f} images/s; model alone: {demand:7.1f} "
              f"images/s; ratio loader/model: {supply / demand:.1f}x", flush=True)

    for name in [m for m in args.speed_models.split(",") if m]:
        rate = model_rate(fresh_model(name, True), args.speed_size, args.batch_size, args.batches, bf16_native)
        print(f"{name:>18} at {args.speed_size} px: {rate:7.1f} training images/s", flush=True)


if __name__ == "__main__":
    main()
