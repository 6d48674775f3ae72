"""Step 5 (boxes for the test images), the old way vs the new way, side by side in one run on the same images:

  old   two passes, as traintest.py and utils/heatmaps.py did before the layout refactor: evaluate the test images
        (decode + forward pass -> probabilities, what predictions.csv holds), then localize() built a second
        DataLoader over the same images, decoded every image again, ran the model again through
        models.cam.class_activation_maps and drew boxes with boxes_from_heatmaps. Re-implemented inline below, since
        that code no longer exists; with --without-sizes (a frame without width/height, as traintest.py --predict
        gives) it also read every image a third time for its size.
  new   one pass: utils.engine.predict(..., maps=True) keeps the class activation maps of the forward pass that gave
        the probabilities, and utils.localization.localize() draws the boxes from them.

The work after the maps is the same for both (all 22 classes mapped for every image, the same box thresholds, boxes
scaled to the original size, boxes.csv written, no heatmap PNGs: traintest.py's --max-heatmaps 0), so the ratio
measures the second decode and forward pass. All forward passes of both ways run at the same precision (--amp). The
loaders run in-process (no workers) for both ways, so every call of data.dataset.read_gray is counted: the decodes
per image are printed beside the speed.

Images: --images PNG files written from pydicom-data's RG1_UNCI.dcm through data.decode.read_image (step 1's
decoder), stored at longest side --stored-size as download_images.py --size stores them (0: the original 1955x1841),
their original size in the frame's width/height as combinelabels.py copies it from the manifest. The model has random
weights: the cost does not depend on them.

    python -m benchmarks.bench_step5 [--images 64] [--model unified-alexnet] [--size 224] [--batch-size 16]
                                     [--stored-size 512] [--repeats 5] [--amp auto] [--without-sizes]

(from the repository root, so that data/, models/ and utils/ import as the scripts import them)
"""
import argparse
import os
import tempfile
import time

import cv2
import numpy as np
import pandas as pd
import pydicom.data
import torch
from torch.utils.data import DataLoader

import data.dataset
import utils.heatmaps
from data.classes import CLASSES, NUM_CLASSES
from data.dataset import ChestImages
from data.decode import read_image, resize_longest
from data.transforms import Normalize
from models import build_model
from models.cam import class_activation_maps, upsample_maps
from utils.engine import autocast, make_loader, predict
from utils.heatmaps import heatmaps_to_uint8, scale_boxes
from utils.localization import BOX_COLUMNS, CELLS_TO_GRID, DEFAULT_BOX_THRESHOLDS, boxes_from_heatmaps, localize
from utils.metrics import classes_to_map
from utils.run_folder import BOXES_CSV
from utils.runtime import use_amp


class DecodeCounter:
    """Wraps data.dataset.read_gray (what ChestImages decodes with; utils.heatmaps reads its pictures with the same
    function) and counts its calls. The loaders run in this process, so every decode passes through here."""

    def __init__(self):
        self.calls = 0
        self.read_gray = data.dataset.read_gray

    def __enter__(self):
        def counted(path):
            self.calls += 1
            return self.read_gray(path)
        data.dataset.read_gray = utils.heatmaps.read_gray = counted
        return self

    def __exit__(self, *exc):
        data.dataset.read_gray = utils.heatmaps.read_gray = self.read_gray


def write_radiographs(folder, n, stored_size):
    """n PNG copies of RG1_UNCI.dcm as step 1 stores it; a frame ImageID, path, width, height (original pixels)."""
    gray = read_image(pydicom.data.get_testdata_file("RG1_UNCI.dcm"))
    height, width = gray.shape
    png = cv2.imencode(".png", resize_longest(gray, stored_size) if stored_size else gray)[1].tobytes()
    rows = []
    for i in range(n):
        path = os.path.join(folder, f"RG1_{i:04d}.png")
        with open(path, "wb") as f:
            f.write(png)
        rows.append((f"RG1_{i:04d}", path, width, height))
    return pd.DataFrame(rows, columns=["ImageID", "path", "width", "height"])


def old_way(model, frame, out_dir, *, size, batch_size, device, amp):
    """The two passes of before the refactor. Returns (probabilities [N, C], number of boxes written)."""
    normalize = Normalize(model.mean, model.std, device)
    # pass 1: traintest.py's evaluation of the test split -> predictions.csv's probabilities
    loader = DataLoader(ChestImages(frame, size, CLASSES), batch_size=batch_size, shuffle=False, num_workers=0)
    probs = []
    with torch.no_grad():
        for images, _, _, _, _ in loader:
            with autocast(device, amp):
                logits = model(normalize(images))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    probs = np.concatenate(probs)

    # pass 2: utils.heatmaps.localize(model, frame, ...): original sizes (read from the file where the frame has
    # none), then its own loader, which decodes every image again, and class activation maps from a second forward
    # pass (their probabilities chose the classes to map)
    sizes = []
    for row in frame.itertuples(index=False):
        w, h = getattr(row, "width", None), getattr(row, "height", None)
        if w is None or h is None or pd.isna(w) or pd.isna(h):
            h, w = data.dataset.read_gray(row.path).shape
        sizes.append((int(w), int(h)))
    loader = DataLoader(ChestImages(frame, size), batch_size=batch_size, shuffle=False, num_workers=0)
    rows = []
    for images, _, index, _, _ in loader:
        with autocast(device, amp):
            logits, fmaps = class_activation_maps(model, normalize(images), size=None)
        grid = min(size, CELLS_TO_GRID * max(fmaps.shape[-2:]))
        heat = heatmaps_to_uint8(upsample_maps(fmaps, (grid, grid)).cpu().numpy())
        p = torch.sigmoid(logits).cpu().numpy()
        chosen = classes_to_map(p, None, CLASSES)
        for b, i in enumerate(index.tolist()):
            wanted = np.flatnonzero(chosen[b])
            if not len(wanted):
                continue
            found = boxes_from_heatmaps(heat[b, wanted], DEFAULT_BOX_THRESHOLDS)
            for k, f in zip(wanted, found):
                rows += [(frame.at[i, "ImageID"], CLASSES[k], *bx[:4], p[b, k] * bx[4])
                         for bx in scale_boxes(f, (grid, grid), sizes[i])]
    boxes = pd.DataFrame(rows, columns=BOX_COLUMNS).round({"x": 1, "y": 1, "w": 1, "h": 1, "score": 4})
    boxes.to_csv(os.path.join(out_dir, BOXES_CSV), index=False)
    return probs, len(boxes)


def new_way(model, frame, out_dir, *, size, batch_size, device, amp):
    """One pass: predict with maps, then localize from them. Returns (probabilities [N, C], number of boxes)."""
    loader = make_loader(frame, size, CLASSES, batch_size=batch_size, workers=0)
    predictions = predict(model, loader, device, amp=amp, maps=True, desc="new way")
    summary = localize(frame, predictions, out_dir, input_size=size, classes=CLASSES,
                       box_thresholds=DEFAULT_BOX_THRESHOLDS, max_images=0)
    return predictions.probs, summary["boxes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="test images (default 64)")
    parser.add_argument("--model", default="unified-alexnet", help="model (default unified-alexnet, the demo's)")
    parser.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch of both ways (default 16)")
    parser.add_argument("--stored-size", type=int, default=512,
                        help="longest side of the stored PNGs, as download_images.py --size (default 512; 0: original)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the fastest is reported (default 5)")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="mixed precision of every forward pass, as traintest.py --amp (default auto)")
    parser.add_argument("--without-sizes", action="store_true",
                        help="no width/height in the frame (traintest.py --predict on new studies)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = use_amp(args.amp, device)

    torch.manual_seed(0)
    model = build_model(args.model, NUM_CLASSES, input_size=args.size).eval()
    model = model.to(device, memory_format=torch.channels_last)  # as traintest.py evaluates

    with tempfile.TemporaryDirectory() as tmp:
        frame = write_radiographs(tmp, args.images, args.stored_size)
        if args.without_sizes:
            frame = frame[["ImageID", "path"]]
        stored = data.dataset.read_gray(frame.at[0, "path"]).shape
        ways = {"old": old_way, "new": new_way}
        outs = {name: os.path.join(tmp, name) for name in ways}
        for out in outs.values():
            os.makedirs(out)
        kwargs = dict(size=args.size, batch_size=args.batch_size, device=device, amp=amp)

        # warm-up round, counted: decodes per image and what each way produced
        decodes, result = {}, {}
        for name, way in ways.items():
            with DecodeCounter() as counter:
                result[name] = way(model, frame, outs[name], **kwargs)
            decodes[name] = counter.calls / args.images
        # timed rounds; the two ways take turns within a round, so a machine shared with other work slows them alike
        best = {name: float("inf") for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                way(model, frame, outs[name], **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - start)

    rate = {name: args.images / best[name] for name in ways}
    (old_probs, old_boxes), (new_probs, new_boxes) = result["old"], result["new"]
    print(f"{args.model} {args.size}x{args.size} on {device} ({torch.get_num_threads()} threads, "
          f"{'bf16' if amp and device.type == 'cpu' else 'fp16' if amp else 'fp32'}), {args.images} images of "
          f"{stored[1]}x{stored[0]} stored (RG1_UNCI.dcm), batch {args.batch_size}, {NUM_CLASSES} classes mapped, "
          f"no heatmap PNGs; best of {args.repeats}")
    print(f"{'old: evaluate, then decode + CAM pass':<40}{rate['old']:8.1f} images/s  "
          f"{decodes['old']:g} decodes/image  {old_boxes / args.images:.0f} boxes/image")
    print(f"{'new: predict(maps=True) + localize':<40}{rate['new']:8.1f} images/s  "
          f"{decodes['new']:g} decodes/image  {new_boxes / args.images:.0f} boxes/image")
    print(f"ratio new / old = {rate['new'] / rate['old']:.2f}x  (decodes per image {decodes['old']:g} -> "
          f"{decodes['new']:g}; largest probability difference {np.abs(old_probs - new_probs).max():.1e})")


if __name__ == "__main__":
    main()
