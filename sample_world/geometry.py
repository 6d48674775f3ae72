"""Array primitives shared by the anatomy and the findings.

Every drawing is a "density" map (bright = dense, as displayed in MONOCHROME2) in float32, with coordinates
normalized to [0, 1] of the image width and height.
"""

import cv2
import numpy as np


def side_sign(side):
    """-1 for the patient's right, 1 for the left: the patient's right is on the image left in a PA/AP radiograph."""
    return -1 if side == "right" else 1


def smooth(a, sigma_px):
    """a blurred with a Gaussian of sigma_px pixels; below a third of a pixel the blur would do nothing visible."""
    return cv2.GaussianBlur(a, (0, 0), sigma_px) if sigma_px > 0.3 else a


def bbox(mask, threshold=0.5):
    """[x, y, w, h] of the pixels where mask > threshold, or None."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def polyline_layer(h, w, points, thickness_px):
    """Anti-aliased polyline (points in normalized coords) as a float layer in [0, 1]."""
    layer = np.zeros((h, w), np.uint8)
    # 4 fractional bits: sub-pixel vertices, so thin lines do not jitter
    pts = np.round(np.asarray(points, np.float64) * [w * 16, h * 16]).astype(np.int32)
    cv2.polylines(layer, [pts], False, 255, max(1, int(round(thickness_px))), cv2.LINE_AA, shift=4)
    return layer.astype(np.float32) / 255.0


def spline(points, n=60):
    """About n points of a smooth curve through a few control points (Catmull-Rom), for tubes, leads and bones."""
    p = np.array(points, np.float64)
    p = np.vstack([p[0], p, p[-1]])
    t = np.linspace(0, 1, max(2, n // (len(p) - 3)), endpoint=False)[:, None]
    segments = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        segments.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                               + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    segments.append(p[-2][None])
    return np.vstack(segments)
