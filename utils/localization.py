"""Step 5: boxes from class activation maps as in ChestX-ray8, and their localization scores.

Boxes (Wang et al., CVPR 2017): each map is scaled to [0, 255], thresholded at 60 and at 180 separately, and a box is
drawn around every isolated region of each binary map. A box is (x, y, w, h) with (x, y) its top-left corner;
coordinates are pixel edges, so a box covering pixel columns 3..5 is x=3, w=3, and scaling a box to another image size
scales its edges.

Scores: for every ground-truth box of class c on an image, the localization is correct when any predicted box of
class c on that image has IoU > T (or IoBB > T, IoBB = intersection / area of the detected box). Accuracy = correct /
number of ground-truth boxes. Average false positives (AFP) = predicted boxes of class c that match no ground-truth box
of class c at that T, per image with a ground-truth box of class c. The chance baseline replaces the predictions by
one box of the same size as each ground-truth box at a uniformly random position inside the image. Beside our
accuracy at T(IoBB) = 0.5 stands the paper's (measure 'paper_acc'): ChestX-ray8's ResNet-50 on NIH's 984 boxes.

Ground truth is in original pixels (NIH's boxes: the 1024 x 1024 PNG; step 1 records that size in the manifest's
width/height, and combinelabels.py carries it on), so boxes on any stored size map back through it. Box rows whose image
is not among the images localized are counted, not scored ('n_not_scored'); a box reaching outside its image is clipped
to it ('n_clipped'), and one with no pixel inside it is not scored ('n_outside').

localize() runs it all on evaluation's own forward pass (utils.engine.predict with maps=True): no image is decoded
again for boxes, and every probability here is the one in predictions.csv.
"""
import logging
import os
import shutil

import numpy as np
import pandas as pd
import torch

from data.classes import CLASSES
from data.files import temporary_path, write_text_atomic
from data.labels.boxes import BOX_COLUMNS as TRUE_BOX_COLUMNS, read_box_csv
from data.labels.nih import finding_class
from data.pools import default_workers
from models import upsample_maps
from utils.heatmaps import (caption, heatmap_filename, heatmap_stems, heatmaps_to_uint8, picture_job, picture_title,
                            scale_boxes, truth_word)
from utils.localization_workers import Step5Pool
from utils.metrics import classes_to_map
from utils.run_folder import BOXES_CSV, HEATMAP_INDEX_CSV, HEATMAPS_DIR, LOCALIZATION_CSV

log = logging.getLogger(__name__)

# boxes.csv: the true boxes' columns, and the score of each predicted box
BOX_COLUMNS = [*TRUE_BOX_COLUMNS, "score"]
CELLS_TO_GRID = 8  # boxes are found on the map upsampled to 8 pixels per feature cell (capped at the input size)
CHUNK = 64  # images whose maps are upsampled and labelled at once: one task of a worker process

DEFAULT_BOX_THRESHOLDS = (60, 180)


def as_boxes(boxes):
    """Any list or array of boxes (x, y, w, h first, extra columns ignored) as a float64 array [k, 4]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    return boxes.reshape(-1, boxes.shape[-1])[:, :4]


def box_overlaps(detected, truth, paired=False):
    """IoU and IoBB of detected boxes against true boxes, both [k, >=4] as x, y, w, h.

    Every detected box against every true box: two arrays [len(detected), len(truth)]; paired=True: detected[i]
    against truth[i] only, two arrays [k]. IoBB is the intersection over the detected box's area (ChestX-ray8's
    definition), so a small box inside a large finding scores 1.
    """
    d, t = as_boxes(detected), as_boxes(truth)
    if not paired:
        d, t = d[:, None, :], t[None, :, :]
    ix = np.minimum(d[..., 0] + d[..., 2], t[..., 0] + t[..., 2]) - np.maximum(d[..., 0], t[..., 0])
    iy = np.minimum(d[..., 1] + d[..., 3], t[..., 1] + t[..., 3]) - np.maximum(d[..., 1], t[..., 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_d = np.broadcast_to(d[..., 2] * d[..., 3], inter.shape)
    union = area_d + t[..., 2] * t[..., 3] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iobb = np.divide(inter, area_d, out=np.zeros_like(inter), where=area_d > 0)
    return iou, iobb


T_VALUES = (0.1, 0.25, 0.5, 0.75, 0.9)

# ChestX-ray8 (Wang et al., CVPR 2017), ResNet-50 with W-CEL: localization accuracy at T(IoBB) = 0.5 on NIH's boxes
PAPER = {"criterion": "IoBB", "T": 0.5, "measure": "paper_acc"}
PAPER_ACCURACY = {finding_class(name): acc for name, acc in {
    "Atelectasis": 0.2833, "Cardiomegaly": 0.8767, "Effusion": 0.3333, "Infiltration": 0.4227, "Mass": 0.1411,
    "Nodule": 0.0126, "Pneumonia": 0.3833, "Pneumothorax": 0.1836}.items()}
# count rows of localization.csv beside n_boxes / n_images: box rows of images not localized, boxes clipped to their
# image, boxes wholly outside it
BOX_COUNTS = ("n_not_scored", "n_clipped", "n_outside")


def match_image_ids(truth, image_ids):
    """truth with ImageID rewritten to the matching id in image_ids; rows matching none are dropped.

    Ids match exactly, or without a trailing '.png' on either side (NIH names carry '.png', OpenI ids do not).
    """
    image_ids = list(image_ids)
    by_stem = {os.path.splitext(i)[0] if i.endswith(".png") else i: i for i in image_ids}
    exact = set(image_ids)

    def find(i):
        if i in exact:
            return i
        return by_stem.get(os.path.splitext(i)[0] if i.endswith(".png") else i)

    truth = truth.assign(ImageID=truth["ImageID"].map(find))
    return truth[truth["ImageID"].notna()].reset_index(drop=True)


def _score(pred_boxes, true_boxes, t_values):
    """Per T: (number of true boxes matched by some predicted box, number of predicted boxes matching none)."""
    iou, iobb = box_overlaps(pred_boxes, true_boxes)
    out = {}
    for criterion, overlap in (("IoU", iou), ("IoBB", iobb)):
        for t in t_values:
            hit = overlap > t
            out[criterion, t] = (int(hit.any(axis=0).sum()), int((~hit.any(axis=1)).sum()))
    return out


def random_boxes_like(true_boxes, image_size, rng):
    """One box of each true box's size at a uniformly random position inside an image of image_size (width, height)."""
    boxes = np.array(true_boxes, dtype=np.float64)[:, :4].copy()
    boxes[:, 2] = np.minimum(boxes[:, 2], image_size[0])
    boxes[:, 3] = np.minimum(boxes[:, 3], image_size[1])
    boxes[:, 0] = rng.uniform(0, 1, len(boxes)) * (image_size[0] - boxes[:, 2])
    boxes[:, 1] = rng.uniform(0, 1, len(boxes)) * (image_size[1] - boxes[:, 3])
    return boxes


def clip_to_images(truth, image_sizes):
    """(truth clipped to each image's (width, height) in image_sizes, without the boxes that have no pixel inside it;
    {"n_clipped": per-class counts of boxes clipped, "n_outside": of boxes left out}). A box inside its image keeps
    its numbers exactly (x + w - x need not give w back in floating point)."""
    size = np.array([image_sizes[i] for i in truth["ImageID"]], dtype=np.float64).reshape(-1, 2)
    x, y, w, h = (truth[k].to_numpy(dtype=np.float64) for k in ("x", "y", "w", "h"))
    x0, y0 = np.maximum(x, 0), np.maximum(y, 0)
    x1, y1 = np.minimum(x + w, size[:, 0]), np.minimum(y + h, size[:, 1])
    reaches_out = (x < 0) | (y < 0) | (x + w > size[:, 0]) | (y + h > size[:, 1])
    outside = (x1 <= x0) | (y1 <= y0)
    clipped = truth.assign(x=np.where(reaches_out, x0, x), y=np.where(reaches_out, y0, y),
                           w=np.where(reaches_out, x1 - x0, w), h=np.where(reaches_out, y1 - y0, h))
    counts = {"n_clipped": truth["class"][reaches_out & ~outside].value_counts().to_dict(),
              "n_outside": truth["class"][outside].value_counts().to_dict()}
    return clipped[~outside].reset_index(drop=True), counts


def localization_table(pred, truth, image_sizes, t_values=T_VALUES, chance_draws=20, seed=0, counts=None):
    """The ChestX-ray8 localization table, as a DataFrame.

    pred, truth: DataFrames ImageID, class, x, y, w, h (original-image pixels); pred holds the boxes found on the maps
    of each image's ground-truth classes. image_sizes: {ImageID: (width, height)} for the chance boxes.
    Rows: criterion (IoU, IoBB) x T x measure (acc, chance_acc, afp), and the paper's row (PAPER: IoBB, 0.5,
    paper_acc; blank for a class the paper has no figure for); columns: criterion, T, measure, then one per class with
    ground-truth boxes (in CLASSES order), then 'mean' over those classes (the paper's mean only when it has a figure for
    every one). Also stores count rows (criterion 'count', T 0): n_boxes, n_images, and each of `counts` ({measure:
    {class: number}}, a class without a column counted in 'mean' only, which holds the total).
    """
    rng = np.random.default_rng(seed)
    classes = [c for c in CLASSES if (truth["class"] == c).any()]
    pred_groups = {key: g[["x", "y", "w", "h"]].to_numpy() for key, g in pred.groupby(["ImageID", "class"])}
    columns = {}
    for c in classes:
        true_c = truth[truth["class"] == c]
        hits, false_pos, chance = {}, {}, {}
        for image_id, g in true_c.groupby("ImageID"):
            true_boxes = g[["x", "y", "w", "h"]].to_numpy()
            scores = _score(pred_groups.get((image_id, c), np.zeros((0, 4))), true_boxes, t_values)
            for key, (hit, fp) in scores.items():
                hits[key] = hits.get(key, 0) + hit
                false_pos[key] = false_pos.get(key, 0) + fp
            # chance_draws random boxes per true box, each scored only against the true box it was drawn for
            repeated = np.repeat(true_boxes, chance_draws, axis=0)
            iou, iobb = box_overlaps(random_boxes_like(repeated, image_sizes[image_id], rng), repeated, paired=True)
            for criterion, overlap in (("IoU", iou), ("IoBB", iobb)):
                for t in t_values:
                    chance[criterion, t] = chance.get((criterion, t), 0) + int((overlap > t).sum())
        n_boxes, n_images = len(true_c), true_c["ImageID"].nunique()
        col = {}
        for criterion in ("IoU", "IoBB"):
            for t in t_values:
                col[criterion, t, "acc"] = hits[criterion, t] / n_boxes
                col[criterion, t, "chance_acc"] = chance[criterion, t] / (n_boxes * chance_draws)
                col[criterion, t, "afp"] = false_pos[criterion, t] / n_images
        if PAPER["T"] in t_values:
            col[PAPER["criterion"], PAPER["T"], PAPER["measure"]] = PAPER_ACCURACY.get(c, np.nan)
        col["count", 0, "n_boxes"] = n_boxes
        col["count", 0, "n_images"] = n_images
        for measure, per_class in (counts or {}).items():
            col["count", 0, measure] = per_class.get(c, 0)
        columns[c] = col
    table = pd.DataFrame(columns)
    table.index.names = ["criterion", "T", "measure"]
    table = table.reset_index()
    if classes:
        # skipna=False: a mean over fewer classes than ours (the paper's) would not compare with ours
        table["mean"] = table[classes].mean(axis=1, skipna=False)
        table.loc[table["measure"] == "n_boxes", "mean"] = len(truth)
        table.loc[table["measure"] == "n_images", "mean"] = truth["ImageID"].nunique()
        for measure, per_class in (counts or {}).items():
            table.loc[table["measure"] == measure, "mean"] = sum(per_class.values())
    return table


def format_table(table):
    """The localization table as text in the paper's layout: one row per T, acc / AFP with chance accuracy beside,
    the paper's accuracy under its T, then the box counts."""
    classes = [c for c in table.columns if c not in ("criterion", "T", "measure")]
    head = f"{'criterion':<14}" + "".join(f"{c[:18]:>20}" for c in classes)
    lines = ["localization: acc (chance) / AFP per class", head]
    for criterion in ("IoU", "IoBB"):
        for t in sorted(table.loc[table["criterion"] == criterion, "T"].unique()):
            part = table[(table["criterion"] == criterion) & (table["T"] == t)].set_index("measure")
            cells = "".join(
                f"{part.at['acc', c]:>7.3f} ({part.at['chance_acc', c]:.3f})/{part.at['afp', c]:<4.1f}".rjust(20)
                for c in classes)
            lines.append(f"{'T(' + criterion + ')=' + format(t, 'g'):<14}" + cells)
            if PAPER["measure"] in part.index:
                lines.append(f"{'  ChestX-ray8':<14}" + "".join(
                    (" " * 7 if pd.isna(v) else f"{v:>7.3f}").ljust(20) for v in part.loc[PAPER["measure"], classes]))
    counts = table[table["criterion"] == "count"].set_index("measure")
    for measure in ("n_boxes", *BOX_COUNTS):
        if measure in counts.index and (measure == "n_boxes" or counts.loc[measure, "mean"] > 0):
            name = measure[2:].replace("_", " ")
            lines.append(f"{name:<14}" + "".join(f"{int(counts.at[measure, c]):>20d}" for c in classes))
    return "\n".join(lines)


# heatmaps/index.csv: what each PNG shows (predicted: the probability reached the class's threshold, 0.5 without
# thresholds; boxes: predicted boxes drawn; true_boxes: ground-truth boxes drawn; truth: the image's label, 1, 0 or
# -1 for unknown, 1 where it has a true box; caption: utils.heatmaps.caption, the model's call apart from the truth)
GALLERY_COLUMNS = ["file", "ImageID", "class", "probability", "predicted", "boxes", "true_boxes", "threshold", "truth",
                   "caption"]


def parse_levels(text):
    """--box-thresholds: comma-separated heatmap levels 0..255 -> tuple of ints; ValueError otherwise."""
    try:
        levels = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        levels = ()
    if not levels or not all(0 <= v <= 255 for v in levels):
        raise ValueError(f"expected comma-separated heatmap levels from 0 to 255, got {text!r}")
    return levels


def original_sizes(frame, decoded):
    """[(width, height)] of each row's original image: the frame's width/height (the manifest records the size
    before step 1 resized it), else the size the loader decoded (`decoded`: [N, 2] height, width)."""
    sizes = []
    for k, row in enumerate(frame.itertuples(index=False)):
        w, h = getattr(row, "width", None), getattr(row, "height", None)
        if w is None or h is None or pd.isna(w) or pd.isna(h):
            h, w = decoded[k]
        sizes.append((int(w), int(h)))
    return sizes


def ground_truth(boxes_csv, image_sizes):
    """(truth, counts, {(ImageID, class): boxes [k, 4]}) from a box CSV, for the images of image_sizes ({ImageID:
    (width, height)}): truth holds the rows of those images, clipped to them; counts ({measure: {class: number}}, the
    BOX_COUNTS) says what was left out or clipped, and is logged. (None, {}, {}) without a box CSV."""
    if not boxes_csv:
        return None, {}, {}
    rows = read_box_csv(boxes_csv)
    truth = match_image_ids(rows, image_sizes)
    not_scored = rows["class"].value_counts().sub(truth["class"].value_counts(), fill_value=0)
    truth, counts = clip_to_images(truth, image_sizes)
    counts = {"n_not_scored": {c: int(n) for c, n in not_scored.items() if n}, **counts}
    total = {k: sum(v.values()) for k, v in counts.items()}
    if truth.empty:
        log.warning("no box of %s (%d rows) is on the %d images localized; no localization scores", boxes_csv,
                    len(rows), len(image_sizes))
    else:
        log.info("%s: %d of %d box rows scored on %d images; %d not scored (their image is not among the %d images "
                 "localized: another split, or not ingested); %d clipped to their image, %d wholly outside it (not "
                 "scored)", boxes_csv, len(truth), len(rows), truth["ImageID"].nunique(), total["n_not_scored"],
                 len(image_sizes), total["n_clipped"], total["n_outside"])
    return truth, counts, {key: g[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
                           for key, g in truth.groupby(["ImageID", "class"])}


def localize(frame, predictions, run_dir, *, input_size, thresholds=None, classes=None,
             box_thresholds=DEFAULT_BOX_THRESHOLDS, boxes_csv=None, max_images=None, workers=None):
    """Boxes, heatmap PNGs and (with boxes_csv) localization scores from evaluation's forward pass.

    frame: ImageID, path (and width, height) of the images predicted; predictions: utils.engine.Predictions with
    maps, its probs the reported ones (utils.calibration.reported_probs(...).reported, what predictions.csv holds:
    they choose the classes mapped and score the boxes, as given); input_size: the model's input side. Writes
    run_dir/boxes.csv (ImageID, class, x, y, w, h, score; original pixels; score = class probability x mean
    normalized heat in the region), run_dir/heatmaps/<ImageID>__<class>.png (the ImageID without its image extension:
    utils.heatmaps.heatmap_stems) for at most max_images images (those with ground-truth boxes first), captioned with
    the model's call apart from the truth, with heatmaps/index.csv (GALLERY_COLUMNS), and with boxes_csv
    run_dir/localization.csv, each written atomically, and only once every box and picture is made: a run stopped or
    failed in step 5 leaves none of them (the pictures wait in a temporary folder). Images listed in boxes_csv are mapped for their true classes whatever
    the prediction, as in the paper. Returns {"images", "heatmaps", "boxes", "iobb_0.5" ({class: accuracy at T(IoBB) =
    0.5}), "iobb_0.5_chance" ({class: the chance baseline's}), "box_counts" ({BOX_COUNTS measure: total})}; the last
    three are empty without boxes_csv. workers: the worker processes that find boxes and draw pictures
    (utils.localization_workers; default all cores, 0: all in this process); the output is the same for any number.
    """
    frame = frame.iloc[predictions.indices].reset_index(drop=True)
    heat_dir = os.path.join(run_dir, HEATMAPS_DIR)
    os.makedirs(heat_dir, exist_ok=True)
    sizes = original_sizes(frame, predictions.sizes)
    truth, counts, true_boxes = ground_truth(boxes_csv, dict(zip(frame["ImageID"], sizes)))
    true_classes = {}  # ImageID -> set of classes with ground-truth boxes
    for image_id, c in true_boxes:
        true_classes.setdefault(image_id, set()).add(c)
    probs = predictions.probs
    # the true labels (1, 0, -1 unknown) for the captions; new studies have none
    labels = predictions.labels if np.shape(predictions.labels) == probs.shape else np.full(probs.shape, -1)
    levels = np.full(len(CLASSES), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    chosen = classes_to_map(probs, thresholds, classes)
    positive = classes_to_map(probs, thresholds)
    # Images with true boxes first, so the heatmap gallery (capped by max_images) shows what can be checked.
    order = sorted(range(len(frame)), key=lambda i: frame.at[i, "ImageID"] not in true_classes)
    render = set(order[:len(frame) if max_images is None else max_images])
    gts = [true_classes.get(image_id, set()) for image_id in frame["ImageID"]]
    wanted = [[k for k, c in enumerate(CLASSES) if chosen[i, k] or c in gts[i]] for i in range(len(frame))]
    chunks = [order[start:start + CHUNK] for start in range(0, len(order), CHUNK)]
    stems = heatmap_stems(frame["ImageID"].iloc[sorted(render)])
    workers = default_workers() if workers is None else workers

    def chunk_heat(number, chunk):
        """The boxes task of one chunk: the heatmaps of every (image, class) map wanted in it, at the grid that
        boxes are found on, with what names the chunk should a worker die on it."""
        maps = torch.from_numpy(predictions.maps[chunk]).float()
        grid = min(input_size, CELLS_TO_GRID * max(maps.shape[-2:]))
        pairs = [(b, k) for b, i in enumerate(chunk) for k in wanted[i]]
        # Every class upsampled (torch's bilinear kernel rounds differently for another number of channels), but only
        # the maps wanted scaled to 0..255: each map is scaled on its own.
        heat = heatmaps_to_uint8(upsample_maps(maps, (grid, grid))[[b for b, _ in pairs], [k for _, k in pairs]]
                                 .numpy()) if pairs else np.zeros((0, grid, grid), np.uint8)
        ids = frame["ImageID"].iloc[[chunk[0], chunk[-1]]].tolist()
        what = f"chunk {number + 1} of {len(chunks)} ({len(chunk)} images, {ids[0]} ... {ids[1]})"
        return maps, grid, what, heat

    pictures_dir = temporary_path(heat_dir)  # renamed into heat_dir at the end: no partial set of pictures
    pred_rows, eval_rows, gallery, pictures, boxes_in_flight = [], [], [], [], []
    # torch keeps its threads here: a bilinear upsample's last bits depend on how its loop is split among them, and
    # the maps are upsampled as before, so the pictures stay what they were
    try:
        with Step5Pool(workers, len(chunks) + len(render)) as pool:
            def write_pictures(limit):
                while len(pictures) > limit or (pictures and pictures[0][0].done()):
                    job, names = pictures.pop(0)
                    for name, png in zip(names, job.result()):
                        with open(os.path.join(pictures_dir, name), "wb") as f:
                            f.write(png)

            def collect(chunk, maps, grid, job):
                found = iter(job.result())
                for b, i in enumerate(chunk):
                    if not wanted[i]:
                        continue
                    image_id, gt = frame.at[i, "ImageID"], gts[i]
                    boxes = {k: scale_boxes(next(found), (grid, grid), sizes[i]) for k in wanted[i]}
                    for k in wanted[i]:
                        rows = [(image_id, CLASSES[k], *bx[:4], probs[i, k] * bx[4]) for bx in boxes[k]]
                        pred_rows.extend(rows if chosen[i, k] else [])
                        eval_rows.extend(rows if CLASSES[k] in gt else [])
                    if i in render:
                        truths = {k: true_boxes.get((image_id, CLASSES[k]), np.zeros((0, 4))) for k in wanted[i]}
                        names = [heatmap_filename(stems[image_id], CLASSES[k]) for k in wanted[i]]
                        said = [(k, truth_word(labels[i, k], len(truths[k]) > 0)) for k in wanted[i]]
                        captions = [caption(probs[i, k], levels[k], positive[i, k], truth) for k, truth in said]
                        job = pool.submit("pictures", f"the heatmaps of {image_id}", *picture_job(
                            frame.at[i, "path"], sizes[i], maps[b], wanted[i],
                            [picture_title(CLASSES[k], text) for k, text in zip(wanted[i], captions)], boxes, truths))
                        pictures.append((job, names))
                        gallery.extend((name, image_id, CLASSES[k], probs[i, k], int(positive[i, k]), len(boxes[k]),
                                        len(truths[k]), levels[k], {"positive": 1, "negative": 0}.get(truth, -1), text)
                                       for name, (k, truth), text in zip(names, said, captions))
                        write_pictures(2 * workers)  # bounded: the pictures wait in memory until written

            os.makedirs(pictures_dir)
            for number, chunk in enumerate(chunks):
                maps, grid, what, heat = chunk_heat(number, chunk)
                boxes_in_flight.append((chunk, maps, grid, pool.submit("boxes", what, heat, box_thresholds)))
                # Chunks go out well ahead of the pictures, which queue behind them: the workers label while this
                # process prepares pictures, and never wait for a chunk behind pictures. Bounded, for memory.
                if len(boxes_in_flight) > 4 * workers:
                    collect(*boxes_in_flight.pop(0))
            while boxes_in_flight:
                collect(*boxes_in_flight.pop(0))
            write_pictures(0)
        for name in os.listdir(pictures_dir):
            os.replace(os.path.join(pictures_dir, name), os.path.join(heat_dir, name))
    finally:
        shutil.rmtree(pictures_dir, ignore_errors=True)
    write_text_atomic(os.path.join(heat_dir, HEATMAP_INDEX_CSV),
                      pd.DataFrame(gallery, columns=GALLERY_COLUMNS).to_csv(index=False))
    boxes_frame = pd.DataFrame(pred_rows, columns=BOX_COLUMNS).round({"x": 1, "y": 1, "w": 1, "h": 1, "score": 4})
    write_text_atomic(os.path.join(run_dir, BOXES_CSV), boxes_frame.to_csv(index=False))

    acc, chance = {}, {}
    if truth is not None and not truth.empty:
        table = localization_table(pd.DataFrame(eval_rows, columns=BOX_COLUMNS), truth,
                                   dict(zip(frame["ImageID"], sizes)), counts=counts)
        write_text_atomic(os.path.join(run_dir, LOCALIZATION_CSV), table.to_csv(index=False, float_format="%.4f"))
        log.info(format_table(table))
        at = table[(table["criterion"] == "IoBB") & (table["T"] == 0.5)].set_index("measure")
        acc = {c: float(at.at["acc", c]) for c in at.columns if c in CLASSES}
        chance = {c: float(at.at["chance_acc", c]) for c in at.columns if c in CLASSES}
    log.info("localize: %d images, %d heatmaps, %d boxes -> %s", len(frame), len(gallery), len(boxes_frame), run_dir)
    return {"images": len(frame), "heatmaps": len(gallery), "boxes": len(boxes_frame), "iobb_0.5": acc,
            "iobb_0.5_chance": chance, "box_counts": {k: sum(v.values()) for k, v in counts.items()}}
