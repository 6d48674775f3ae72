"""Step 5 after the forward pass (utils.localization.localize: boxes, heatmap pictures, boxes.csv), today's way against
the way before its worker processes, each on one worker and on every core, side by side in one run on the same
predictions.

  old  as main had it before step 5's worker processes (re-implemented inline below, since that code no longer
       exists): threads of one interpreter (min(8, cores)) boxing chunks of 64 images with every class's map upsampled
       and scaled, and drawing and writing the pictures
  new  utils.localization.localize: worker processes (utils.localization_workers) labelling the maps wanted and
       drawing and encoding the pictures, the main process upsampling the maps and writing the files

Both ways must write the same boxes.csv, heatmaps/index.csv and pictures, byte for byte; the run checks it. The
timed rounds take turns (old 1, new 1, old all, new all, ...), so that a machine shared with other work slows each
alike; the median of --repeats rounds is reported. new's start-up (the fork server and its workers) is inside its
time.

The predictions are drawn here, not computed: --images images stored at longest side --stored-size (PNG noise; the
pictures read them), maps of --cells x --cells feature cells (7: a 224-px input; 11: the demo's 192-px AlexNet), and
probabilities drawn so that about --mapped of the 22 classes reach the default threshold 0.5 on an image (a trained
model of the demo maps 3.7). Heatmap PNGs are drawn for the first --max-heatmaps images, as traintest.py's
--max-heatmaps. --transfer also times pickling one chunk's task against running it (what a worker process costs to
feed; shared memory would save at most that).

    python -m benchmarks.bench_localize [--images 1024] [--max-heatmaps 200] [--mapped 4] [--repeats 3]

(from the repository root). No GPU is used: step 5 runs on the CPU after the forward pass.
"""
import argparse
import filecmp
import os
import pickle
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd
import torch
from skimage.measure import label

from data.classes import CLASSES, NUM_CLASSES
from data.files import write_bytes_atomic, write_text_atomic
from models import upsample_maps
from utils.engine import Predictions
from utils.heatmaps import (caption, display_image, encode_png, heatmap_filename, heatmap_stems, heatmaps_to_uint8,
                            overlay_heatmap, picture_job, picture_title, scale_boxes, truth_word)
from utils.localization import (BOX_COLUMNS, CELLS_TO_GRID, CHUNK, DEFAULT_BOX_THRESHOLDS, GALLERY_COLUMNS, localize,
                                original_sizes)
from data.pools import default_workers
from utils.localization_workers import boxes_from_heatmaps
from utils.metrics import classes_to_map
from utils.run_folder import BOXES_CSV, HEATMAP_INDEX_CSV, HEATMAPS_DIR


def drawn_predictions(folder, n, stored_size, cells, mapped, seed=0):
    """A frame (ImageID, path, width, height) of n images in folder and their Predictions with maps."""
    rng = np.random.default_rng(seed)
    width = stored_size * 7 // 8
    paths = []
    for j in range(min(n, 64)):  # the pictures read files; 64 distinct ones are enough
        paths.append(os.path.join(folder, f"{j}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (stored_size, width), dtype=np.uint8))
    frame = pd.DataFrame({"ImageID": [f"im{i:06d}.png" for i in range(n)], "path": [paths[i % len(paths)]
                          for i in range(n)], "width": width, "height": stored_size})
    # smooth maps, as a network's are: noise blurred over the cells
    maps = np.stack([cv2.GaussianBlur(m, (3, 3), 0) for m in rng.normal(size=(n * NUM_CLASSES, cells, cells))
                     .astype(np.float32)]).reshape(n, NUM_CLASSES, cells, cells)
    # uniform in [0, a): P(p >= 0.5) = 1 - 0.5 / a = mapped / 22
    probs = (rng.random((n, NUM_CLASSES)) * 0.5 / (1 - mapped / NUM_CLASSES)).clip(0, 1).astype(np.float32)
    return frame, Predictions(np.arange(n), probs, np.zeros((n, NUM_CLASSES), np.float32),
                              np.tile([stored_size, width], (n, 1)), maps)


def old_boxes_from_heatmaps(heat, thresholds):
    """boxes_from_heatmaps before: float copies of every tile, regions by sorting their pixels."""
    n, h, w = heat.shape
    thresholds = list(thresholds)
    k = n * len(thresholds)
    tiles = np.zeros((k, h + 1, w), dtype=bool)
    values = np.zeros((k, h + 1, w), dtype=np.float32)
    for j, t in enumerate(thresholds):
        tiles[j::len(thresholds), :h] = heat >= t
        values[j::len(thresholds), :h] = heat
    labels = label(tiles.reshape(k * (h + 1), w), connectivity=2)
    ys, xs = np.nonzero(labels)
    if not len(ys):
        return [np.zeros((0, 5), dtype=np.float32) for _ in range(n)]
    which = labels[ys, xs]
    order = np.argsort(which, kind="stable")
    ys, xs, which = ys[order], xs[order], which[order]
    starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
    top, bottom = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    left, right = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    mean = np.add.reduceat(values.reshape(-1, w)[ys, xs], starts) / np.diff(np.r_[starts, len(ys)]) / 255.0
    tile = top // (h + 1)
    boxes = np.stack([left, top - tile * (h + 1), right - left + 1, bottom - top + 1, mean], 1).astype(np.float32)
    return np.split(boxes, np.searchsorted(tile // len(thresholds), np.arange(1, n)))


def old_localize(frame, predictions, run_dir, *, input_size, max_images, threads):
    """localize() before its worker processes, for the outputs this benchmark compares (no box CSV, no thresholds),
    with today's file names and captions."""
    frame = frame.iloc[predictions.indices].reset_index(drop=True)
    heat_dir = os.path.join(run_dir, HEATMAPS_DIR)
    os.makedirs(heat_dir, exist_ok=True)
    sizes = original_sizes(frame, predictions.sizes)
    probs = predictions.probs
    chosen = classes_to_map(probs)
    wanted = [list(np.flatnonzero(chosen[i])) for i in range(len(frame))]
    stems = heatmap_stems(frame["ImageID"][:max_images])
    captions = {i: [caption(probs[i, k], 0.5, chosen[i, k], truth_word(predictions.labels[i, k])) for k in wanted[i]]
                for i in range(min(max_images, len(frame)))}

    def chunk_boxes(chunk):
        maps = torch.from_numpy(predictions.maps[chunk]).float()
        grid = min(input_size, CELLS_TO_GRID * max(maps.shape[-2:]))
        heat = heatmaps_to_uint8(upsample_maps(maps, (grid, grid)).numpy())
        pairs = [(b, k) for b, i in enumerate(chunk) for k in wanted[i]]
        found = iter(old_boxes_from_heatmaps(heat[[b for b, _ in pairs], [k for _, k in pairs]],
                                             DEFAULT_BOX_THRESHOLDS) if pairs else [])
        return maps, {i: {k: scale_boxes(next(found), (grid, grid), sizes[i]) for k in wanted[i]} for i in chunk}

    def render_image(path, image_id, size, maps, wanted, texts, boxes):
        gray = display_image(path)
        dh, dw = gray.shape
        heat = heatmaps_to_uint8(upsample_maps(maps[wanted][None], (dh, dw))[0].numpy())
        for j, k in enumerate(wanted):
            picture = overlay_heatmap(gray, heat[j], scale_boxes(boxes[k], size, (dw, dh))[:, :4], np.zeros((0, 4)),
                                      picture_title(CLASSES[k], texts[j]))
            write_bytes_atomic(os.path.join(heat_dir, heatmap_filename(stems[image_id], CLASSES[k])),
                               encode_png(picture))
        return wanted

    rows, rendered = [], []
    with ThreadPoolExecutor(threads) as pool:
        chunks = [list(range(start, min(start + CHUNK, len(frame)))) for start in range(0, len(frame), CHUNK)]
        for chunk, (maps, found) in zip(chunks, pool.map(chunk_boxes, chunks)):
            for b, i in enumerate(chunk):
                if not wanted[i]:
                    continue
                image_id = frame.at[i, "ImageID"]
                for k in wanted[i]:
                    rows += [(image_id, CLASSES[k], *bx[:4], probs[i, k] * bx[4]) for bx in found[i][k]]
                if i < max_images:
                    rendered.append((pool.submit(render_image, frame.at[i, "path"], image_id, sizes[i], maps[b],
                                                 wanted[i], captions[i], found[i]), i, found[i]))
        gallery = [(heatmap_filename(stems[frame.at[i, "ImageID"]], CLASSES[k]), frame.at[i, "ImageID"], CLASSES[k],
                    probs[i, k], int(chosen[i, k]), len(boxes[k]), 0, 0.5, int(predictions.labels[i, k]), text)
                   for job, i, boxes in rendered for k, text in zip(job.result(), captions[i])]
    write_text_atomic(os.path.join(heat_dir, HEATMAP_INDEX_CSV),
                      pd.DataFrame(gallery, columns=GALLERY_COLUMNS).to_csv(index=False))
    boxes = pd.DataFrame(rows, columns=BOX_COLUMNS).round({"x": 1, "y": 1, "w": 1, "h": 1, "score": 4})
    write_text_atomic(os.path.join(run_dir, BOXES_CSV), boxes.to_csv(index=False))
    return len(boxes), len(gallery)


def same_outputs(a, b):
    """Whether two run folders hold the same boxes.csv and heatmap files, byte for byte."""
    heat_a, heat_b = os.path.join(a, HEATMAPS_DIR), os.path.join(b, HEATMAPS_DIR)
    names = sorted(os.listdir(heat_a))
    return (filecmp.cmp(os.path.join(a, BOXES_CSV), os.path.join(b, BOXES_CSV), shallow=False)
            and names == sorted(os.listdir(heat_b))
            and filecmp.cmpfiles(heat_a, heat_b, names, shallow=False)[1:] == ([], []))


def transfer_costs(frame, predictions, input_size):
    """(seconds to pickle and unpickle one chunk's boxes task, seconds to run it), and the same for one image's
    pictures task."""
    chunk = list(range(min(CHUNK, len(frame))))
    maps = torch.from_numpy(predictions.maps[chunk])
    grid = min(input_size, CELLS_TO_GRID * max(maps.shape[-2:]))
    b, k = np.nonzero(classes_to_map(predictions.probs[chunk]))
    heat = heatmaps_to_uint8(upsample_maps(maps[b, k][:, None], (grid, grid))[:, 0].numpy())
    wanted = list(np.flatnonzero(classes_to_map(predictions.probs[:1])[0])) or [0]
    boxes = {j: np.zeros((0, 5)) for j in wanted}
    job = picture_job(frame.at[0, "path"], (int(frame.at[0, "width"]), int(frame.at[0, "height"])), maps[0], wanted,
                      [picture_title(CLASSES[j], caption(predictions.probs[0, j], 0.5, True, "")) for j in wanted],
                      boxes, {j: np.zeros((0, 4)) for j in wanted})
    from utils.heatmaps import draw_pictures
    out = []
    for task, run in (((heat, DEFAULT_BOX_THRESHOLDS), boxes_from_heatmaps), (job, draw_pictures)):
        start = time.perf_counter()
        for _ in range(5):
            pickle.loads(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        moved = (time.perf_counter() - start) / 5
        start = time.perf_counter()
        run(*task)
        out.append((moved, time.perf_counter() - start, len(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1024, help="images localized")
    p.add_argument("--stored-size", type=int, default=512, help="longest side of the stored images")
    p.add_argument("--cells", type=int, default=7, help="feature cells along each side of a map")
    p.add_argument("--mapped", type=float, default=4, help="classes mapped per image, on average (below 11)")
    p.add_argument("--max-heatmaps", type=int, default=200, help="images whose heatmap PNGs are drawn")
    p.add_argument("--workers", type=int, default=default_workers(), help="'all cores' (default: the cores this "
                   "process may use)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument("--transfer", action="store_true", help="also time pickling a task against running it")
    args = p.parse_args()
    old_threads = min(8, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        frame, predictions = drawn_predictions(tmp, args.images, args.stored_size, args.cells, args.mapped)
        ways = {("old", 1): lambda out: old_localize(frame, predictions, out, input_size=224,
                                                     max_images=args.max_heatmaps, threads=1),
                ("new", 1): lambda out: localize(frame, predictions, out, input_size=224,
                                                 max_images=args.max_heatmaps, workers=1),
                ("old", args.workers): lambda out: old_localize(frame, predictions, out, input_size=224,
                                                                max_images=args.max_heatmaps, threads=old_threads),
                ("new", args.workers): lambda out: localize(frame, predictions, out, input_size=224,
                                                            max_images=args.max_heatmaps, workers=args.workers)}
        times = {way: [] for way in ways}
        outs = {way: os.path.join(tmp, f"{way[0]}{way[1]}") for way in ways}
        for _ in range(args.repeats):
            for way, run in ways.items():
                start = time.perf_counter()
                run(outs[way])
                times[way].append(time.perf_counter() - start)
        same = all(same_outputs(outs["old", 1], outs[way]) for way in ways)
        boxes = len(pd.read_csv(os.path.join(outs["new", 1], BOXES_CSV)))
        pictures = len(os.listdir(os.path.join(outs["new", 1], HEATMAPS_DIR))) - 1
        rate = {way: args.images / statistics.median(t) for way, t in times.items()}
        print(f"{args.images} images, {args.cells}x{args.cells} maps, {boxes} boxes, {pictures} heatmap PNGs "
              f"({args.max_heatmaps} images, stored at {args.stored_size} px); {os.cpu_count()} cores; median of "
              f"{args.repeats} rounds")
        print(f"{'':24}{'1 worker':>12}{f'{args.workers} workers':>12}{'scaling':>9}")
        for name, label_ in (("old", f"old ({old_threads} threads)"), ("new", "new (processes)")):
            print(f"{label_:<24}{rate[name, 1]:>8.1f} i/s{rate[name, args.workers]:>8.1f} i/s"
                  f"{rate[name, args.workers] / rate[name, 1]:>8.2f}x")
        print(f"{'new / old':<24}{rate['new', 1] / rate['old', 1]:>11.2f}x"
              f"{rate['new', args.workers] / rate['old', args.workers]:>11.2f}x")
        print(f"same boxes.csv, index.csv and pictures in all four: {'yes' if same else 'NO'}")
        if args.transfer:
            for what, (moved, ran, size) in zip(("boxes task (64 images)", "pictures task (1 image)"),
                                                transfer_costs(frame, predictions, 224)):
                print(f"{what}: {size / 1e6:.2f} MB pickled and unpickled in {moved * 1e3:.2f} ms; runs "
                      f"{ran * 1e3:.1f} ms ({moved / ran:.1%})")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
