"""ChestX-ray8 localization scores: accuracy at T(IoU) and T(IoBB), average false positives, and a chance baseline.

Protocol (Wang et al., CVPR 2017): for every ground-truth box of class c on an image, the localization is correct when
any predicted box of class c on that image has IoU > T (or IoBB > T, IoBB = intersection / area of the detected box).
Accuracy = correct / number of ground-truth boxes. Average false positives (AFP) = predicted boxes of class c that match
no ground-truth box of class c at that T, per image with a ground-truth box of class c. The chance baseline replaces the
predictions by one box of the same size as each ground-truth box at a uniformly random position inside the image.
"""
import os

import numpy as np
import pandas as pd

from data.classes import CLASSES
from utils.boxes import box_overlaps, paired_overlaps

T_VALUES = (0.1, 0.25, 0.5, 0.75, 0.9)

# NIH ChestX-ray14 finding names (BBox_List_2017.csv) -> our class names; matched case-insensitively.
NIH_TO_CLASS = {
    "atelectasis": "atelectasis",
    "cardiomegaly": "cardiomegaly",
    "effusion": "pleural effusion",
    "infiltrate": "infiltrates",
    "infiltration": "infiltrates",
    "mass": "mass",
    "nodule": "nodule",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
}


def class_name(finding):
    """Our class name for a finding label from a box CSV (NIH name or one of CLASSES, any case), or None."""
    key = str(finding).strip().lower()
    if key in CLASSES:
        return key
    return NIH_TO_CLASS.get(key)


def read_box_csv(path):
    """Ground-truth boxes from a CSV in the NIH BBox_List_2017 layout, as a DataFrame ImageID, class, x, y, w, h.

    Accepts the real NIH header (`Image Index,Finding Label,Bbox [x,y,w,h],,,`, which splits into odd column names and
    trailing empty columns) and the plain `Image Index,Finding Label,x,y,w,h`: columns are taken by position.
    Raises ValueError naming the file and row for a row that cannot be read.
    """
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if raw.shape[1] < 6 or raw.columns[0].strip().lower() != "image index":
        raise ValueError(f"{path}: expected columns 'Image Index,Finding Label,x,y,w,h' (NIH BBox_List_2017 layout), "
                         f"got {list(raw.columns)}")
    rows = []
    for i, values in enumerate(raw.iloc[:, :6].itertuples(index=False), start=2):
        image_id, finding = values[0].strip(), values[1]
        cls = class_name(finding)
        if cls is None:
            raise ValueError(f"{path}: row {i}: unknown finding {finding!r} (expected an NIH finding or one of CLASSES)")
        try:
            x, y, w, h = (float(v) for v in values[2:6])
        except ValueError:
            raise ValueError(f"{path}: row {i}: box {list(values[2:6])} is not four numbers") from None
        if not (w > 0 and h > 0):
            raise ValueError(f"{path}: row {i}: box width and height must be positive, got w={w}, h={h}")
        rows.append((image_id, cls, x, y, w, h))
    return pd.DataFrame(rows, columns=["ImageID", "class", "x", "y", "w", "h"])


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


def localization_table(pred, truth, image_sizes, t_values=T_VALUES, chance_draws=20, seed=0):
    """The ChestX-ray8 localization table, as a DataFrame.

    pred, truth: DataFrames ImageID, class, x, y, w, h (original-image pixels); pred holds the boxes found on the maps
    of each image's ground-truth classes. image_sizes: {ImageID: (width, height)} for the chance boxes.
    Rows: criterion (IoU, IoBB) x T x measure (acc, chance_acc, afp); columns: criterion, T, measure, then one per class
    with ground-truth boxes (in CLASSES order), then 'mean' over those classes. Also stores 'n_boxes' / 'n_images' rows.
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
            iou, iobb = paired_overlaps(random_boxes_like(repeated, image_sizes[image_id], rng), repeated)
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
        col["count", 0, "n_boxes"] = n_boxes
        col["count", 0, "n_images"] = n_images
        columns[c] = col
    table = pd.DataFrame(columns)
    table.index.names = ["criterion", "T", "measure"]
    table = table.reset_index()
    if classes:
        table["mean"] = table[classes].mean(axis=1)
        table.loc[table["measure"] == "n_boxes", "mean"] = len(truth)
        table.loc[table["measure"] == "n_images", "mean"] = truth["ImageID"].nunique()
    return table


def format_table(table):
    """The localization table as text in the paper's layout: one row per T, acc / AFP with chance accuracy beside."""
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
    counts = table[table["criterion"] == "count"].set_index("measure")
    if "n_boxes" in counts.index:
        lines.append(f"{'boxes':<14}" + "".join(f"{int(counts.at['n_boxes', c]):>20d}" for c in classes))
    return "\n".join(lines)
