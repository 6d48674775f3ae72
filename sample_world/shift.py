"""Another hospital's look for images already written: shift_image() re-windows, crops, rotates and (optionally)
borders one image, shift_files() does it to image files in place.

The sample world draws every source with one renderer, so a model trained on one source meets the same pixels in
the others. Real collections differ in their window and gamma, their field of view (collimation, a cropped export),
the patient's tilt and the black or white borders around the image; a view classifier that is to hold across
hospitals is tested on a source shifted this way while it trains on an unshifted one. The generator is not changed:
the shift is applied to one source's files after they are written (or ingested).
"""
import cv2
import numpy as np


def shift_image(img, rng, border=False):
    """uint8 H x W -> uint8 image: windowed between random percentiles (2-25 and 75-99.5) with a gamma of 0.5-0.7 or
    1.5-2; cropped to 75-90% of each side at a random place; rotated 8-15 degrees either way about its centre (black
    outside); with border, a black or white band of 8-20% of the side added on one or two sides."""
    x = img.astype(np.float32)
    low, high = np.percentile(x, [rng.uniform(2, 25), rng.uniform(75, 99.5)])
    x = np.clip((x - low) / max(high - low, 1.0), 0, 1)
    x = x ** (rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.0))
    h, w = x.shape
    ch, cw = int(h * rng.uniform(0.75, 0.9)), int(w * rng.uniform(0.75, 0.9))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    x = x[top:top + ch, left:left + cw]
    angle = rng.uniform(8, 15) * rng.choice([-1, 1])
    rotation = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0)
    x = cv2.warpAffine(x, rotation, (cw, ch), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if border:
        value = float(rng.choice([0.0, 1.0]))
        for side in rng.choice(4, size=rng.integers(1, 3), replace=False):  # top, bottom, left, right
            pads = [[0, 0], [0, 0]]
            pads[side // 2][side % 2] = int(rng.uniform(0.08, 0.2) * x.shape[side // 2])
            x = np.pad(x, pads, constant_values=value)
    return np.round(x * 255).astype(np.uint8)


def shift_files(paths, seed=0, border=False):
    """Each grayscale image file in `paths` replaced by its shift_image (one draw per file, from `seed` and its place
    in the list)."""
    for k, path in enumerate(paths):
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{path}: not an image cv2 reads")
        cv2.imwrite(str(path), shift_image(img, np.random.default_rng([seed, k]), border))
