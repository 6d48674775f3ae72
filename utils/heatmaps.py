"""Heatmap pictures: a radiograph under one class activation map in the jet colormap, with predicted and true boxes.

The whole rendering, in two halves: picture_job (in step 5's main process) reads the radiograph for display, upsamples
the image's maps to its size and puts the boxes and titles in its pixels; draw_pictures (in a worker process of
utils.localization_workers, or in the main process) draws them and encodes the PNGs, whose bytes the main process
writes. utils.localization decides which classes of which images are drawn and where their boxes are.

This module's top level imports neither torch nor pandas: step 5's worker processes import it, and start in a fraction
of a second without them (torch alone takes seconds); the main-process half imports them where it uses them.
"""
import collections
import os

import cv2
import numpy as np

from data.decode import IMAGE_SUFFIXES, resize_longest

DISPLAY_SIZE = 512  # longest side of a heatmap PNG
PRED_COLOUR = (255, 255, 255)  # BGR: predicted boxes white
TRUE_COLOUR = (255, 0, 255)  # true boxes magenta: a colour the jet colormap never takes


def heatmaps_to_uint8(maps):
    """Each map of [..., h, w] scaled on its own to 0..255 (its minimum to 0, its maximum to 255), as uint8."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    # A flat map has no region to find: it scales to all zeros rather than dividing by zero.
    scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1) * 255, 0)
    return np.rint(scaled).astype(np.uint8)


def scale_boxes(boxes, from_size, to_size):
    """Boxes [k, >=4] (x, y, w, h first) from an image of from_size (width, height) to one of to_size (width, height)."""
    boxes = np.array(boxes, dtype=np.float64, copy=True)
    if boxes.size == 0:
        return boxes.reshape(0, max(boxes.shape[-1] if boxes.ndim == 2 else 4, 4))
    boxes = boxes.reshape(-1, boxes.shape[-1])
    boxes[:, [0, 2]] *= to_size[0] / from_size[0]
    boxes[:, [1, 3]] *= to_size[1] / from_size[1]
    return boxes


def heatmap_stems(image_ids):
    """{ImageID: the stem its heatmap files are named by}: the id without its image extension (.png, .jpg, .dcm, ...;
    NIH's ids carry one), path separators replaced so the file stays in heatmaps/. Unique: ids whose stems would
    coincide (a.png and a.jpg, or a and a.png) keep their whole id, and a name still taken gets ~2, ~3, ..."""
    def safe(text):
        return str(text).replace("/", "_").replace("\\", "_")

    ids = list(dict.fromkeys(str(i) for i in image_ids))
    stems = {i: safe(i[:-len(ext)] if (ext := os.path.splitext(i)[1]).lower() in IMAGE_SUFFIXES and len(ext) < len(i)
                     else i) for i in ids}
    shared = collections.Counter(stems.values())
    names, taken = {}, set()
    for i in ids:
        name = stems[i] if shared[stems[i]] == 1 else safe(i)
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}~{n}"
        taken.add(name)
        names[i] = name
    return names


def heatmap_filename(stem, cls):
    """`<stem>__<class>.png`, stem from heatmap_stems."""
    return f"{stem}__{cls}.png"


def truth_word(label, has_box=False):
    """The truth of one class on one image for a caption: "positive" (label 1, or a ground-truth box), "negative"
    (label 0), or "" when unknown (uncertain, or new studies without labels)."""
    return "positive" if has_box or label == 1 else "negative" if label == 0 else ""


def caption(prob, threshold, predicted, truth):
    """What a heatmap shows, the model apart from the truth: "p 0.9985 · threshold 0.9986 · predicted negative ·
    truth positive" (the truth left out when unknown)."""
    parts = [f"p {prob:.4f}", f"threshold {threshold:.4f}", f"predicted {'positive' if predicted else 'negative'}"]
    return " · ".join(parts + ([f"truth {truth}"] if truth else []))


def display_image(path):
    """The radiograph at `path` as uint8 gray, longest side DISPLAY_SIZE (never enlarged)."""
    from data.dataset import read_gray  # torch, pandas: see the module's docstring
    return resize_longest(read_gray(path), DISPLAY_SIZE)


def overlay_heatmap(gray, heat, pred_boxes=(), true_boxes=(), title="", alpha=0.45):
    """A BGR uint8 picture: the radiograph `gray` (HxW uint8) under `heat` (HxW, 0..255) in the jet colormap, with
    predicted boxes (white) and true boxes (magenta), both given as x, y, w, h in `gray`'s pixels, and `title` (lines
    split at newlines) at the top left."""
    colour = cv2.applyColorMap(np.asarray(heat, np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    out = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
    thick = max(1, round(max(gray.shape) / 256))
    for boxes, col in ((true_boxes, TRUE_COLOUR), (pred_boxes, PRED_COLOUR)):
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1), col,
                          thick)
    if title:
        # one line per line of the title, all at one size: the picture's, shrunk so that the longest line fits
        lines = title.split("\n")
        widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1, thick)[0][0] for line in lines)
        scale = min(max(gray.shape) / 900, (gray.shape[1] - 12) / max(widest, 1))
        step = int(30 * scale) + 4
        text = np.zeros(out.shape[:2], np.uint8)
        for n, line in enumerate(lines):
            cv2.putText(text, line, (6, int(22 * scale) + 6 + n * step), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick,
                        cv2.LINE_AA)
        # white letters in a dark halo, readable on any colour: the halo is the letters grown by a pixel or two (a
        # second, thicker putText would advance wider than the letters and smear their ends)
        halo = cv2.dilate(text, np.ones((2 * thick + 1, 2 * thick + 1), np.uint8))
        out = np.maximum(out * (1 - halo[..., None] / 255.0), text[..., None]).astype(np.uint8)
    return out


def encode_png(picture):
    """`picture` (uint8, gray or BGR) as PNG bytes: cv2.imwrite's, fixed settings, so the same picture always gives
    the same file."""
    ok, png = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError("OpenCV could not encode the picture as PNG")
    return png.tobytes()


def draw_pictures(gray, heat, pred_boxes, true_boxes, titles):
    """The PNG bytes of one image's pictures, one per map of heat [j, H, W] (uint8, gray's size), each with its
    predicted and true boxes ([k, 4], gray's pixels) and title: what a worker process of step 5 runs."""
    return [encode_png(overlay_heatmap(gray, h, p, t, title))
            for h, p, t, title in zip(heat, pred_boxes, true_boxes, titles)]


def picture_title(cls, text):
    """A picture's title: the class on its own line, then the caption in two lines (OpenCV's fonts have no "·")."""
    parts = text.split(" · ")
    return "\n".join([cls, " | ".join(parts[:2]), " | ".join(parts[2:])])


def picture_job(path, size, maps, wanted, titles, boxes, truths):
    """draw_pictures' arguments for one image, one picture per class index in `wanted` (the radiograph read again,
    for display).

    maps: the image's maps [C, h, w] at feature resolution (a tensor); titles: each picture's (picture_title), in
    wanted's order; boxes: {class index: [k, 5] predicted, original pixels}; truths: {class index: [k, 4] ground truth,
    original pixels}; size: the original (width, height).
    """
    from models import upsample_maps  # torch: see the module's docstring

    gray = display_image(path)
    dh, dw = gray.shape
    # Upsampled straight from the feature cells to the display size: the model's input is the image stretched to a
    # square, so a map cell covers the same fraction of the image along each axis whatever the aspect ratio.
    heat = heatmaps_to_uint8(upsample_maps(maps[wanted][None], (dh, dw))[0].numpy())
    return (gray, heat, [scale_boxes(boxes[k], size, (dw, dh))[:, :4] for k in wanted],
            [scale_boxes(truths[k], size, (dw, dh)) for k in wanted], list(titles))
