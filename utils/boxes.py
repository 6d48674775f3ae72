"""Boxes from heatmaps as in ChestX-ray8, and the overlap measures its localization scores use.

Wang et al. (CVPR 2017): the heatmap is scaled to [0, 255], thresholded at 60 and at 180 separately, and a box is drawn
around every isolated region of each binary map. A box is (x, y, w, h) with (x, y) its top-left corner; coordinates are
pixel edges, so a box covering pixel columns 3..5 is x=3, w=3, and scaling a box to another image size scales its edges.
"""
import numpy as np
from scipy.ndimage import find_objects
from skimage.measure import label

DEFAULT_BOX_THRESHOLDS = (60, 180)


def heatmaps_to_uint8(maps):
    """Each map of [..., h, w] scaled on its own to 0..255 (its minimum to 0, its maximum to 255), as uint8."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    # A flat map has no region to find: it scales to all zeros rather than dividing by zero.
    scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1) * 255, 0)
    return np.rint(scaled).astype(np.uint8)


def boxes_from_heatmaps(heat, thresholds=DEFAULT_BOX_THRESHOLDS):
    """Boxes around the connected regions of heat >= t for every t, for each map of heat [N, h, w] (uint8, 0..255).

    Returns a list of N float arrays [k, 5]: x, y, w, h in heatmap pixels and the region's mean heat / 255.
    All N * len(thresholds) binary maps are labelled in one scikit-image call: they are stacked into one tall image with
    an empty row between neighbours, so regions connect within a map (8-neighbourhood) but never across maps.
    """
    heat = np.asarray(heat)
    if heat.ndim == 2:
        heat = heat[None]
    n, h, w = heat.shape
    thresholds = list(thresholds)
    k = n * len(thresholds)
    tiles = np.zeros((k, h + 1, w), dtype=bool)
    values = np.zeros((k, h + 1, w), dtype=np.float32)
    for j, t in enumerate(thresholds):
        # tile order: map i, threshold j -> i * len(thresholds) + j
        tiles[j::len(thresholds), :h] = heat >= t
        values[j::len(thresholds), :h] = heat
    labels = label(tiles.reshape(k * (h + 1), w), connectivity=2)
    sums = np.bincount(labels.ravel(), weights=values.ravel())
    counts = np.bincount(labels.ravel())
    out = [[] for _ in range(n)]
    for i, box in enumerate(find_objects(labels), start=1):
        rows, cols = box
        tile = rows.start // (h + 1)
        y0 = rows.start - tile * (h + 1)
        out[tile // len(thresholds)].append(
            (cols.start, y0, cols.stop - cols.start, rows.stop - rows.start, sums[i] / counts[i] / 255.0))
    return [np.asarray(b, dtype=np.float32).reshape(-1, 5) for b in out]


def as_boxes(boxes):
    """Any list or array of boxes (x, y, w, h first, extra columns ignored) as a float64 array [k, 4]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    return boxes.reshape(-1, boxes.shape[-1])[:, :4]


def scale_boxes(boxes, from_size, to_size):
    """Boxes [k, >=4] (x, y, w, h first) from an image of from_size (width, height) to one of to_size (width, height)."""
    boxes = np.array(boxes, dtype=np.float64, copy=True)
    if boxes.size == 0:
        return boxes.reshape(0, max(boxes.shape[-1] if boxes.ndim == 2 else 4, 4))
    boxes = boxes.reshape(-1, boxes.shape[-1])
    boxes[:, [0, 2]] *= to_size[0] / from_size[0]
    boxes[:, [1, 3]] *= to_size[1] / from_size[1]
    return boxes


def box_overlaps(detected, truth):
    """IoU and IoBB of every detected box against every true box; both [k, >=4] as x, y, w, h.

    Returns (iou, iobb), each [len(detected), len(truth)]. IoBB is the intersection over the detected box's area
    (ChestX-ray8's definition), so a small box inside a large finding scores 1.
    """
    d, t = as_boxes(detected), as_boxes(truth)
    ix = np.minimum(d[:, None, 0] + d[:, None, 2], t[None, :, 0] + t[None, :, 2]) - np.maximum(d[:, None, 0], t[None, :, 0])
    iy = np.minimum(d[:, None, 1] + d[:, None, 3], t[None, :, 1] + t[None, :, 3]) - np.maximum(d[:, None, 1], t[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_d = (d[:, 2] * d[:, 3])[:, None]
    area_t = (t[:, 2] * t[:, 3])[None, :]
    union = area_d + area_t - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iobb = np.divide(inter, np.broadcast_to(area_d, inter.shape), out=np.zeros_like(inter), where=area_d > 0)
    return iou, iobb


def paired_overlaps(detected, truth):
    """IoU and IoBB of detected[i] against truth[i] only; both [k, >=4] as x, y, w, h. Returns two arrays [k]."""
    d, t = as_boxes(detected), as_boxes(truth)
    ix = np.minimum(d[:, 0] + d[:, 2], t[:, 0] + t[:, 2]) - np.maximum(d[:, 0], t[:, 0])
    iy = np.minimum(d[:, 1] + d[:, 3], t[:, 1] + t[:, 3]) - np.maximum(d[:, 1], t[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_d, area_t = d[:, 2] * d[:, 3], t[:, 2] * t[:, 3]
    union = area_d + area_t - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iobb = np.divide(inter, area_d, out=np.zeros_like(inter), where=area_d > 0)
    return iou, iobb
