"""The drawn chest radiograph: anatomy, the findings' signs on it, and the detector.

draw_chest() draws the anatomy (body, lungs, heart, ribs, clavicles, spine, diaphragm, gastric bubble) at half size
for speed, asks each finding's spec for its Sign and composes both, then adds the exposure gradient, blur,
upsampling and quantum noise. The anatomy knows findings only through the spec interface: the heart size a spec
implies, and the pleural fluid, pleural air and pleural line its Sign returns.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from sample_world.findings import LAYERS, SPECS
from sample_world.geometry import bbox, polyline_layer, side_sign, smooth, spline

NORMAL_CARDIOTHORACIC_RATIO = (0.38, 0.45)


@dataclass
class View:
    """What the findings are drawn against on either view, at drawing size (normalized coordinates): h x w pixels;
    X, Y: pixel-centre coordinates; px: pixels per unit of X; y_ap: lung apex height; lung: the lung field less the
    heart; heart: heart shadow mask, centred at (hcx, hcy) with half axes (ha, hb); body: soft tissue mask."""
    h: int
    w: int
    px: float
    X: np.ndarray
    Y: np.ndarray
    y_ap: float
    lung: np.ndarray
    heart: np.ndarray
    hcx: float
    hcy: float
    ha: float
    hb: float
    body: np.ndarray


@dataclass
class Chest(View):
    """One frontal radiograph's anatomy: X follows the patient's slight rotation; cx: midline; tw: half the thoracic
    width; y_d: diaphragm height and lungs: lung field mask, per side sign (-1: patient's right, 1: left); lung: both
    lungs less the mediastinum; mediastinum: heart and aortic knob; body_density: the soft tissue's density;
    below_diaphragm: the abdomen mask."""
    cx: float
    tw: float
    y_d: dict
    lungs: dict
    mediastinum: np.ndarray
    body_density: np.ndarray
    below_diaphragm: np.ndarray

    def lung_point(self, rng, side, zone, lateral=(0.3, 0.75)):
        """A random point (x, y) inside the given lung and zone, at a fraction `lateral` of the way from the
        mediastinum to the lateral wall."""
        s = side_sign(side)
        y_d = self.y_d[s]
        frac = {"upper": (0.12, 0.32), "middle": (0.38, 0.58), "lower": (0.62, 0.78)}[zone]
        y = self.y_ap + rng.uniform(*frac) * (y_d - self.y_ap)
        t = (y - self.y_ap) / (y_d + 0.08 - self.y_ap)
        lat = 0.07 + (self.tw - 0.07) * min(1.0, t / 0.5) ** 0.5
        lo, hi = lateral
        if zone == "lower" and s == 1:
            lo = max(lo, 0.55)  # keep lesions off the heart shadow
        x = self.cx + s * (0.07 + rng.uniform(lo, hi) * (lat - 0.07))
        return x, y


def _proportions(rng, cardiothoracic_ratio):
    """Per-image proportions (normalized coordinates); ctr: heart width over thoracic width."""
    cx = 0.5 + rng.normal(0, 0.015)
    y_ap = 0.12 + rng.uniform(-0.03, 0.03)
    y_d = 0.70 + rng.uniform(-0.04, 0.04)
    tw = 0.37 + rng.uniform(-0.03, 0.03)
    ctr = rng.uniform(*cardiothoracic_ratio)
    return {
        "cx": cx, "y_ap": y_ap, "tw": tw, "ctr": ctr,
        # the right hemidiaphragm (image left, side -1) sits a little higher than the left
        "y_d": {-1: y_d - rng.uniform(0.01, 0.03), 1: y_d},
        "tilt": rng.normal(0, 0.01),
    }


def body(X, Y, cx, y_ap, tw, px):
    """(mask, density) of the body: neck widening to the shoulders, thicker (denser) in the middle."""
    # tw + 0.11 - 0.11 can round differently from tw: simplifying it would change the bytes of worlds
    bw = 0.11 + (tw + 0.11 - 0.11) * np.clip((Y - (y_ap - 0.11)) / 0.09, 0, 1)
    dx_abs = np.abs(X - cx)
    mask = smooth((dx_abs < bw).astype(np.float32), 0.012 * px)
    density = 0.48 + 0.14 * np.clip(1 - (dx_abs / bw) ** 2, 0, 1)
    return mask, density


def lung_fields(X, Y, cx, y_ap, tw, y_d):
    """({side sign: lung mask}, {side sign: diaphragm height per pixel}): a parabolic apex, the lateral wall and a
    diaphragm dome with a sharp costophrenic angle."""
    lungs, domes = {}, {}
    for s in (-1, 1):
        dx = s * (X - cx)
        t = (Y - y_ap) / (y_d[s] + 0.1 - y_ap)
        med = 0.065 + 0.06 * (1 - np.clip(t / 0.25, 0, 1)) ** 2
        lat = 0.07 + (tw - 0.07) * np.clip(t / 0.5, 0, 1) ** 0.5
        dome_x = 0.42 * tw
        domes[s] = y_d[s] + np.where(dx > dome_x, 0.32, 0.2) * ((dx - dome_x) / tw) ** 2
        lungs[s] = ((t > 0) & (dx > med) & (dx < lat) & (Y < domes[s])).astype(np.float32)
    return lungs, domes


def heart_shadow(rng, X, Y, cx, tw, ctr, y_d):
    """(heart mask, aortic knob mask, (hcx, hcy, ha, hb)): an ellipse two thirds left of the midline (image right),
    centre (hcx, hcy) and half axes (ha, hb), the aortic knob above it."""
    hw_ = ctr * 2 * tw
    hcx, hcy = cx + 0.13 * hw_, (y_d[1] + y_d[-1]) / 2 - 0.05 + rng.uniform(-0.01, 0.01)
    ha, hb = hw_ / 2, 0.14 + rng.uniform(-0.01, 0.015)
    heart = (((X - hcx) / ha) ** 2 + ((Y - hcy) / hb) ** 2 < 1).astype(np.float32)
    aorta = (((X - (cx + 0.06)) / 0.035) ** 2 + ((Y - (hcy - hb - 0.02)) / 0.03) ** 2 < 1).astype(np.float32)
    return heart, aorta, (hcx, hcy, ha, hb)


def chest_anatomy(rng, h, w, cardiothoracic_ratio):
    """The Chest of one image of h x w pixels (drawing size) with a heart of the given cardiothoracic ratio range."""
    p = _proportions(rng, cardiothoracic_ratio)
    cx, y_ap, tw, y_d = p["cx"], p["y_ap"], p["tw"], p["y_d"]
    X = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    Y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    X = X + p["tilt"] * (Y - 0.5)  # slight patient rotation
    px = float(w)
    body_mask, body_density = body(X, Y, cx, y_ap, tw, px)
    lungs, domes = lung_fields(X, Y, cx, y_ap, tw, y_d)
    below_diaphragm = smooth((Y > np.where(X < cx, domes[-1], domes[1])).astype(np.float32), 0.01 * px)
    heart, aorta, (hcx, hcy, ha, hb) = heart_shadow(rng, X, Y, cx, tw, p["ctr"], y_d)
    mediastinum = np.maximum(heart, aorta)
    return Chest(h=h, w=w, px=px, X=X, Y=Y, cx=cx, y_ap=y_ap, tw=tw, y_d=y_d, lungs=lungs,
                 lung=(lungs[-1] + lungs[1]) * (1 - mediastinum), heart=heart, hcx=hcx, hcy=hcy, ha=ha, hb=hb,
                 mediastinum=mediastinum, body=body_mask, body_density=body_density, below_diaphragm=below_diaphragm)


def lung_markings(rng, chest, lung_soft, air):
    """Vessels: ridges of band-passed noise, stronger near the hila, none where pleural air lies."""
    h, w, X, Y = chest.h, chest.w, chest.X, chest.Y
    small = rng.normal(0, 1, (h // 2 + 1, w // 2 + 1)).astype(np.float32)
    band = cv2.resize(smooth(small, 1.0) - smooth(small, 2.5), (w, h), interpolation=cv2.INTER_LINEAR)
    ridges = np.clip(1 - np.abs(band) / (0.7 * band.std() + 1e-6), 0, 1) ** 2
    hila = np.exp(-(((np.abs(X - chest.cx) - 0.1) / 0.08) ** 2 + ((Y - (chest.hcy - chest.hb + 0.02)) / 0.09) ** 2))
    return lung_soft * (0.07 * ridges * (0.4 + hila) + 0.12 * hila) * (1 - smooth(air, 0.004 * chest.px))


def vertebrae(rng, chest):
    """Density of the spine, with vertebral bodies."""
    spine = np.exp(-((chest.X - chest.cx) / 0.03) ** 4) * (chest.Y > chest.y_ap - 0.12)
    return spine * (0.06 + 0.025 * np.cos(2 * np.pi * chest.Y / 0.045 + rng.uniform(0, 6)))


def clavicles(rng, chest):
    """Mask of both clavicles."""
    cx, y_ap, tw = chest.cx, chest.y_ap, chest.tw
    clav = np.zeros((chest.h, chest.w), np.float32)
    for s in (-1, 1):
        yc = y_ap + rng.uniform(0.0, 0.04)
        pts = spline([(cx + s * 0.035, yc + 0.035), (cx + s * 0.15, yc + 0.015), (cx + s * (tw + 0.04), yc - 0.03)], 30)
        clav = np.maximum(clav, polyline_layer(chest.h, chest.w, pts, 0.02 * chest.h))
    return clav


def ribs(rng, chest):
    """Rib bands in [0, 1]: one periodic band per side, curving down laterally."""
    X, Y, cx, y_ap, tw = chest.X, chest.Y, chest.cx, chest.y_ap, chest.tw
    spacing = (max(chest.y_d.values()) - y_ap + 0.04) / 9.0
    dxn = np.clip(np.abs(X - cx) / tw, 0, 1.2)
    phase = (Y - y_ap + 0.03 + 0.05 * dxn - 0.2 * dxn ** 2) / spacing
    bands = np.clip(1 - np.abs(phase - np.round(phase)) / (0.38 + rng.uniform(-0.05, 0.05)), 0, 1) ** 0.7
    return bands * ((np.abs(X - cx) > 0.04) & (np.abs(X - cx) < tw + 0.03) & (phase > -0.3) & (phase < 9.3))


def gastric_bubble(rng, chest):
    """Mask of the gastric air bubble under the left hemidiaphragm, or None (not every stomach shows one)."""
    if rng.random() >= 0.6:
        return None
    gx, gy = chest.cx + chest.tw * rng.uniform(0.35, 0.55), chest.y_d[1] + rng.uniform(0.05, 0.08)
    return (((chest.X - gx) / 0.05) ** 2 + ((chest.Y - gy) / 0.03) ** 2 < 1).astype(np.float32)


def _merged(layers, shape):
    """Pixel-wise maximum of the layers that are not None; zeros if none is."""
    merged = np.zeros(shape, np.float32)
    for layer in layers:
        if layer is not None:
            merged = np.maximum(merged, layer)
    return merged


def radiograph(rng, chest, signs):
    """Density of the chest with the findings' signs, at drawing size, before exposure, blur and noise."""
    X, Y, cx, y_ap, px, body_mask = chest.X, chest.Y, chest.cx, chest.y_ap, chest.px, chest.body
    shape = (chest.h, chest.w)
    fluid = _merged([sign.fluid for sign in signs], shape)
    air = _merged([sign.air for sign in signs], shape)
    pleural_line = _merged([sign.line for sign in signs], shape)
    lung_soft = smooth(chest.lung * (1 - 0.9 * fluid), 0.006 * px)
    markings = lung_markings(rng, chest, lung_soft, air)

    # soft tissue body, air-filled lungs (darker at the apices), denser heart, trachea, pleural fluid
    t_all = np.clip((Y - y_ap) / (max(chest.y_d.values()) - y_ap), 0, 1)
    d = 0.03 + body_mask * (chest.body_density - 0.03)
    d = d - (0.42 - 0.10 * t_all) * lung_soft * body_mask + markings
    d = d + 0.06 * smooth(chest.mediastinum, 0.01 * px) * body_mask * (1 - chest.below_diaphragm)
    d = d - 0.07 * np.exp(-((X - cx) / 0.016) ** 4) * (Y < chest.hcy - chest.hb + 0.02) * body_mask  # trachea
    d = d + 0.05 * smooth(fluid, 0.01 * px)

    d = d + vertebrae(rng, chest)
    d = d + 0.12 * smooth(clavicles(rng, chest), 0.004 * px)
    d = d + 0.045 * ribs(rng, chest) * body_mask * (0.4 + 0.6 * lung_soft)
    bubble = gastric_bubble(rng, chest)
    if bubble is not None:
        d = d - 0.2 * smooth(bubble, 0.004 * px)

    # pleural air: darker, no markings (above), a thin bright visceral pleural line
    d = d - 0.18 * smooth(air, 0.003 * px) + 0.2 * smooth(pleural_line, 0.002 * px)
    # focal opacities, then lines and devices brighter than bone (the signs are in LAYERS order)
    for sign in signs:
        for weight, layer in sign.density:
            d = d + weight * layer
    return d


def finding_layers(rng, findings):
    """(the findings' own random stream, the cardiothoracic ratio range they imply, [(finding, spec)] in LAYERS
    order): what a drawing of either view needs before its anatomy."""
    specs = [SPECS[f["name"]] for f in findings]
    # finding parameters come from their own stream, so a normal and a sick image of one seed share anatomy and noise
    frng = np.random.default_rng(rng.integers(2 ** 63))
    ratio = next((spec.cardiothoracic_ratio for spec in specs if spec.cardiothoracic_ratio),
                 NORMAL_CARDIOTHORACIC_RATIO)
    return frng, ratio, sorted(zip(findings, specs), key=lambda pair: LAYERS.index(pair[1].layer))


def draw_chest(rng, h, w, findings, scale=0.5):
    """Draw one radiograph. Returns (density float32 HxW, list of (class name, [x, y, w, h]) boxes in pixels).

    findings: finding dicts (see findings.py), drawn layer by layer. The anatomy is drawn at `scale` of the final
    size (for speed) and upsampled; noise is added at full size."""
    full_h, full_w = h, w
    h, w = int(round(full_h * scale)), int(round(full_w * scale))
    frng, ratio, by_layer = finding_layers(rng, findings)
    chest = chest_anatomy(rng, h, w, ratio)
    signs = [(f["name"], spec.draw(frng, chest, f)) for f, spec in by_layer]
    d = radiograph(rng, chest, [sign for _, sign in signs])
    sx, sy = full_w / w, full_h / h
    boxes = [(name, bbox(mask)) for name, sign in signs for mask in sign.boxes]
    boxes = [(name, _scale_box(box, sx, sy, full_w, full_h)) for name, box in boxes if box is not None]
    return develop(rng, d, chest.X, chest.Y, full_h, full_w), boxes


def develop(rng, d, X, Y, full_h, full_w):
    """The density drawn at drawing size as a detector sees it at full size: exposure gradient, blur, upsampling and
    quantum noise, clipped to 0..1.3 (float32)."""
    d = d * (1 + rng.uniform(-0.06, 0.06) * (X - 0.5) + rng.uniform(-0.06, 0.06) * (Y - 0.5))
    d = smooth(d.astype(np.float32), rng.uniform(0.3, 0.55))
    d = cv2.resize(d, (full_w, full_h), interpolation=cv2.INTER_CUBIC)
    # in place and in float32: an NIH image is a million pixels
    d += rng.standard_normal((full_h, full_w), dtype=np.float32) * np.float32(0.006)
    return np.clip(d, 0, 1.3, out=d)


def _scale_box(box, sx, sy, w, h):
    """A box from drawing size to full size (w x h): outward to whole pixels, clipped to the image."""
    x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    x1, y1 = min(w, int(np.ceil((box[0] + box[2]) * sx))), min(h, int(np.ceil((box[1] + box[3]) * sy)))
    return [x0, y0, x1 - x0, y1 - y0]


def to_12bit(rng, density):
    """Map density to a ~12-bit detector response with per-image contrast (uint16, max 4095)."""
    lo, hi = rng.uniform(60, 450), rng.uniform(3300, 4095)
    gamma = rng.uniform(0.85, 1.15)
    v = lo + (hi - lo) * (np.clip(density, 0, 1.3) / 1.3) ** gamma
    return np.clip(np.round(v), 0, 4095).astype(np.uint16)
