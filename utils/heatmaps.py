"""Heatmaps, boxes and localization scores for a set of images: what traintest.py runs after evaluation or prediction.

For every image: one forward pass gives the probabilities and the class activation maps of all classes (models.cam);
each class predicted positive (or each class named with --heatmap-classes) gets ChestX-ray8 boxes (utils.boxes) in
original-image pixels and a heatmap PNG. Images listed in a ground-truth box CSV are also mapped for their true classes,
whatever the prediction (as the paper does), and those boxes are scored (utils.localization).
"""
import os

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.classes import CLASSES
from data.dataset import ChestImages, read_gray, to_model_input
from data.decode import resize_longest
from utils.boxes import DEFAULT_BOX_THRESHOLDS, boxes_from_heatmaps, heatmaps_to_uint8, scale_boxes
from models.cam import class_activation_maps, upsample_maps
from utils.localization import format_table, localization_table, match_image_ids, read_box_csv

BOX_COLUMNS = ["ImageID", "class", "x", "y", "w", "h", "score"]
# heatmaps/index.csv: what each PNG shows (predicted: the probability reached the class's threshold, 0.5 without
# thresholds; boxes: predicted boxes drawn; true_boxes: ground-truth boxes drawn)
GALLERY_COLUMNS = ["file", "ImageID", "class", "probability", "predicted", "boxes", "true_boxes"]
DISPLAY_SIZE = 512  # longest side of a heatmap PNG
CELLS_TO_GRID = 8  # boxes are found on the map upsampled to 8 pixels per feature cell (capped at the input size)
PRED_COLOUR = (255, 255, 255)  # BGR: predicted boxes white
TRUE_COLOUR = (255, 0, 255)  # true boxes magenta: a colour the jet colormap never takes


def heatmap_filename(image_id, cls):
    """`<ImageID>__<class>.png`, with path separators in the id replaced so the file stays in heatmaps/."""
    safe = str(image_id).replace("/", "_").replace("\\", "_")
    return f"{safe}__{cls}.png"


def overlay_heatmap(gray, heat, pred_boxes=(), true_boxes=(), title="", alpha=0.45):
    """A BGR uint8 picture: the radiograph `gray` (HxW uint8) under `heat` (HxW, 0..255) in the jet colormap, with
    predicted boxes (white) and true boxes (magenta), both given as x, y, w, h in `gray`'s pixels."""
    colour = cv2.applyColorMap(np.asarray(heat, np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    out = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
    thick = max(1, round(max(gray.shape) / 256))
    for boxes, col in ((true_boxes, TRUE_COLOUR), (pred_boxes, PRED_COLOUR)):
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1), col, thick)
    if title:
        scale = max(gray.shape) / 900
        org = (6, int(22 * scale) + 6)
        cv2.putText(out, title, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3 * thick, cv2.LINE_AA)
        cv2.putText(out, title, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def classes_to_map(probs, thresholds=None, classes=None):
    """Boolean [N, C]: the classes each image gets boxes and heatmaps for.

    classes (names) maps those for every image; otherwise a class is mapped where prob >= its threshold (0.5 if none).
    """
    if classes:
        unknown = [c for c in classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown heatmap classes {unknown}; choose from: {', '.join(CLASSES)}")
        chosen = np.zeros(probs.shape, dtype=bool)
        chosen[:, [CLASSES.index(c) for c in classes]] = True
        return chosen
    thresholds = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return probs >= thresholds[None, :]


def image_sizes(frame):
    """[(width, height)] of each row's original image: from the frame's width/height, or read from the file."""
    sizes = []
    for row in frame.itertuples(index=False):
        w, h = getattr(row, "width", None), getattr(row, "height", None)
        if w is None or h is None or pd.isna(w) or pd.isna(h):
            h, w = read_gray(row.path).shape
        sizes.append((int(w), int(h)))
    return sizes


def localize(model, frame, run_dir, *, image_size, device, thresholds=None, classes=None,
             box_thresholds=DEFAULT_BOX_THRESHOLDS, boxes_csv=None, max_images=None, batch_size=16):
    """Heatmaps, boxes and (with boxes_csv) localization scores for the images of `frame` (ImageID, path, width, height).

    Writes run_dir/boxes.csv (ImageID, class, x, y, w, h, score; original-image pixels; score = class probability x
    mean normalized heat in the region), run_dir/heatmaps/<ImageID>__<class>.png for at most max_images images (those
    with ground-truth boxes first), and with boxes_csv run_dir/localization.csv, also printed.
    Returns {"images", "heatmaps", "boxes", "iobb_0.5" ({class: accuracy at T(IoBB) = 0.5}), "iobb_0.5_chance"
    ({class: the chance baseline's})}; the last two are empty without boxes_csv.
    """
    frame = frame.reset_index(drop=True)
    heat_dir = os.path.join(run_dir, "heatmaps")
    os.makedirs(heat_dir, exist_ok=True)
    truth = None
    true_boxes = {}  # (ImageID, class) -> ground-truth boxes [k, 4] in original pixels
    if boxes_csv:
        truth = match_image_ids(read_box_csv(boxes_csv), frame["ImageID"])
        for key, g in truth.groupby(["ImageID", "class"]):
            true_boxes[key] = g[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        if truth.empty:
            print(f"warning: no image of {boxes_csv} is among the {len(frame)} images localized; no localization scores")
    true_classes = {}  # ImageID -> set of classes with ground-truth boxes
    for image_id, c in true_boxes:
        true_classes.setdefault(image_id, set()).add(c)
    # Images with true boxes first, so the heatmap gallery (capped by max_images) shows what can be checked.
    order = sorted(range(len(frame)), key=lambda i: frame.at[i, "ImageID"] not in true_classes)
    frame = frame.iloc[order].reset_index(drop=True)
    sizes = image_sizes(frame)
    render_limit = len(frame) if max_images is None else max_images

    loader = DataLoader(ChestImages(frame, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=0 if len(frame) < 4 * batch_size else min(8, os.cpu_count() or 1))
    model.eval()
    pred_rows, eval_rows = [], []
    gallery = []  # one row per heatmap PNG, for report.html
    for x, _, index in tqdm(loader, desc="heatmaps", unit="batch", leave=False):
        logits, fmaps = class_activation_maps(model, to_model_input(x, device), size=None)
        grid = min(image_size, CELLS_TO_GRID * max(fmaps.shape[-2:]))
        heat = heatmaps_to_uint8(upsample_maps(fmaps, (grid, grid)).cpu().numpy())
        probs = torch.sigmoid(logits).cpu().numpy()
        chosen = classes_to_map(probs, thresholds, classes)
        positive = classes_to_map(probs, thresholds)
        for b, i in enumerate(index.tolist()):
            image_id, size = frame.at[i, "ImageID"], sizes[i]
            gt = true_classes.get(image_id, set())
            wanted = [c for k, c in enumerate(CLASSES) if chosen[b, k] or c in gt]
            if not wanted:
                continue
            idx = [CLASSES.index(c) for c in wanted]
            found = boxes_from_heatmaps(heat[b, idx], box_thresholds)
            boxes = {c: scale_boxes(f, (grid, grid), size) for c, f in zip(wanted, found)}
            for c in wanted:
                k = CLASSES.index(c)
                rows = [(image_id, c, *bx[:4], probs[b, k] * bx[4]) for bx in boxes[c]]
                if chosen[b, k]:
                    pred_rows += rows
                if c in gt:
                    eval_rows += rows
            if i < render_limit:
                truths = {c: true_boxes.get((image_id, c), np.zeros((0, 4))) for c in wanted}
                files = write_heatmaps(frame.at[i, "path"], image_id, size, fmaps[b], wanted, probs[b],
                                       boxes, truths, heat_dir)
                for c, name in zip(wanted, files):
                    k = CLASSES.index(c)
                    gallery.append((name, image_id, c, float(probs[b, k]), int(positive[b, k]), len(boxes[c]),
                                    len(truths[c])))
    pd.DataFrame(gallery, columns=GALLERY_COLUMNS).to_csv(os.path.join(heat_dir, "index.csv"), index=False,
                                                          float_format="%.4f")
    n_heatmaps = len(gallery)
    boxes_frame = pd.DataFrame(pred_rows, columns=BOX_COLUMNS).round({"x": 1, "y": 1, "w": 1, "h": 1, "score": 4})
    boxes_frame.to_csv(os.path.join(run_dir, "boxes.csv"), index=False)

    acc, chance = {}, {}
    if truth is not None and not truth.empty:
        pred_eval = pd.DataFrame(eval_rows, columns=BOX_COLUMNS)
        size_of = dict(zip(frame["ImageID"], sizes))
        table = localization_table(pred_eval, truth, size_of)
        table.to_csv(os.path.join(run_dir, "localization.csv"), index=False, float_format="%.4f")
        print(format_table(table))
        at = table[(table["criterion"] == "IoBB") & (table["T"] == 0.5)].set_index("measure")
        found_classes = [c for c in at.columns if c in CLASSES]
        acc = {c: float(at.at["acc", c]) for c in found_classes}
        chance = {c: float(at.at["chance_acc", c]) for c in found_classes}
    print(f"localize: {len(frame)} images, {n_heatmaps} heatmaps, {len(boxes_frame)} boxes -> {run_dir}")
    return {"images": len(frame), "heatmaps": n_heatmaps, "boxes": len(boxes_frame), "iobb_0.5": acc,
            "iobb_0.5_chance": chance}


def write_heatmaps(path, image_id, size, fmap_maps, wanted, probs, boxes, truths, heat_dir):
    """Write one heatmap PNG per class in `wanted` for one image; returns their file names.

    fmap_maps: the image's maps [C, h, w] at feature resolution; boxes: {class: [k, 5] predicted, original pixels};
    truths: {class: [k, 4] ground truth, original pixels}.
    """
    gray = resize_longest(read_gray(path), DISPLAY_SIZE)
    dh, dw = gray.shape
    idx = [CLASSES.index(c) for c in wanted]
    # Upsampled straight from the feature cells to the display size: the model's input is the image stretched to a
    # square, so a map cell covers the same fraction of the image along each axis whatever the aspect ratio.
    heat = heatmaps_to_uint8(upsample_maps(fmap_maps[idx][None].float(), (dh, dw))[0].cpu().numpy())
    for j, c in enumerate(wanted):
        pred = scale_boxes(boxes[c], size, (dw, dh))[:, :4]
        true = scale_boxes(truths[c], size, (dw, dh))
        title = f"{c}  p={probs[CLASSES.index(c)]:.2f}"
        cv2.imwrite(os.path.join(heat_dir, heatmap_filename(image_id, c)), overlay_heatmap(gray, heat[j], pred, true, title))
    return [heatmap_filename(image_id, c) for c in wanted]
