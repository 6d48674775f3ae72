"""Heatmap pictures: a radiograph under one class activation map in the jet colormap, with predicted and true boxes.

Pure rendering: utils.localization decides what to draw and where; this module reads the radiograph for display and
draws it.
"""
import cv2
import numpy as np

from data.dataset import read_gray
from data.decode import resize_longest

DISPLAY_SIZE = 512  # longest side of a heatmap PNG
PRED_COLOUR = (255, 255, 255)  # BGR: predicted boxes white
TRUE_COLOUR = (255, 0, 255)  # true boxes magenta: a colour the jet colormap never takes


def heatmap_filename(image_id, cls):
    """`<ImageID>__<class>.png`, with path separators in the id replaced so the file stays in heatmaps/."""
    safe = str(image_id).replace("/", "_").replace("\\", "_")
    return f"{safe}__{cls}.png"


def display_image(path):
    """The radiograph at `path` as uint8 gray, longest side DISPLAY_SIZE (never enlarged)."""
    return resize_longest(read_gray(path), DISPLAY_SIZE)


def overlay_heatmap(gray, heat, pred_boxes=(), true_boxes=(), title="", alpha=0.45):
    """A BGR uint8 picture: the radiograph `gray` (HxW uint8) under `heat` (HxW, 0..255) in the jet colormap, with
    predicted boxes (white) and true boxes (magenta), both given as x, y, w, h in `gray`'s pixels."""
    colour = cv2.applyColorMap(np.asarray(heat, np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    out = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
    thick = max(1, round(max(gray.shape) / 256))
    for boxes, col in ((true_boxes, TRUE_COLOUR), (pred_boxes, PRED_COLOUR)):
        for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1), col,
                          thick)
    if title:
        scale = max(gray.shape) / 900
        org = (6, int(22 * scale) + 6)
        cv2.putText(out, title, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3 * thick, cv2.LINE_AA)
        cv2.putText(out, title, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
