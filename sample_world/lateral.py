"""The lateral view: draw_lateral() draws a chest seen from the side, as the second image of a PA study.

The patient faces the image left: the anterior chest wall and sternum are on the left, the spine on the right. Both
lungs superimpose into one lung field whose two hemidiaphragms are domes falling to the posterior costophrenic
sulcus; the heart sits anterior and low on the diaphragm; the trachea runs down the middle of the upper chest. A
frontal view has two lung fields beside a central heart and spine: the view classifier tells them apart by this
layout. Findings add their spec's lateral sign (Finding.draw_lateral), without boxes: a lateral is never scored for
localization. The density is developed like a frontal one (anatomy.develop).
"""

from dataclasses import dataclass

import numpy as np

from sample_world.anatomy import NORMAL_CARDIOTHORACIC_RATIO, View, _merged, develop, finding_layers
from sample_world.geometry import polyline_layer, smooth, spline

NORMAL_HEART = sum(NORMAL_CARDIOTHORACIC_RATIO) / 2  # the cardiothoracic ratio at which the heart has its base size


@dataclass
class Profile(View):
    """One lateral radiograph's anatomy. front_x: anterior chest wall at mid-chest; neck_x: front of the neck (where
    lines and tubes enter); spine_x: front of the vertebral bodies; y_d: the lower hemidiaphragm's top; dome: per
    pixel, the height of the lower hemidiaphragm at that column; lung: both lungs superimposed, the heart cut out."""
    front_x: float
    neck_x: float
    spine_x: float
    y_d: float
    dome: np.ndarray

    def diaphragm_at(self, x):
        """Height of the lower hemidiaphragm at column x (normalized)."""
        return float(_dome(np.float32(x), self.front_x, self.y_d))

    def lung_point(self, rng, zone):
        """A random point (x, y) in the lung field's upper, middle or lower zone, clear of the heart."""
        x = rng.uniform(self.front_x + 0.1, self.spine_x - 0.02)
        floor = self.diaphragm_at(x)
        if zone == "lower":
            floor = min(floor, self.hcy - self.hb) if x < self.hcx + self.ha else floor
        frac = {"upper": (0.15, 0.35), "middle": (0.4, 0.6), "lower": (0.65, 0.85)}[zone]
        return x, self.y_ap + rng.uniform(*frac) * (floor - self.y_ap)


def _dome(X, front_x, y_d):
    """A hemidiaphragm's height: highest a third of the way back, falling to the posterior sulcus."""
    behind = X - (front_x + 0.2)
    return y_d + 0.8 * behind ** 2 + 0.12 * np.clip(behind, 0, None)


def lateral_anatomy(rng, h, w, cardiothoracic_ratio):
    """The Profile of one lateral image of h x w pixels (drawing size); the heart scales with the ratio drawn."""
    X = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    Y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    X = X + rng.normal(0, 0.01) * (Y - 0.5)  # slight tilt
    front_x, back_x = 0.17 + rng.uniform(-0.02, 0.02), 0.87 + rng.uniform(-0.02, 0.02)
    y_ap, y_d = 0.12 + rng.uniform(-0.03, 0.03), 0.6 + rng.uniform(-0.03, 0.03)
    neck = np.clip((y_ap + 0.02 - Y) / 0.12, 0, 1)
    front = front_x + 0.04 * ((Y - 0.45) / 0.4) ** 2 + 0.2 * neck  # the chest bulges; the neck is narrower
    back = back_x - 0.01 * np.sin(np.pi * Y) - 0.08 * neck
    body = smooth(((X > front) & (X < back)).astype(np.float32), 0.01 * w)
    spine_x = back_x - 0.17 + rng.uniform(-0.01, 0.01)
    # two hemidiaphragms a little apart: the lung field is the mean of two lungs, each with its own dome
    domes = [_dome(X, front_x, y_d + dy) for dy in (0.0, -rng.uniform(0.015, 0.035))]
    apex = y_ap + 1.5 * (X - (front_x + spine_x) / 2) ** 2
    lungs = [((Y > apex) & (Y < dome) & (X > front + 0.05) & (X < spine_x + 0.07)).astype(np.float32)
             for dome in domes]
    k = float(rng.uniform(*cardiothoracic_ratio)) / NORMAL_HEART
    ha, hb = 0.13 * k ** 0.8, 0.115 * k ** 0.7
    hcx = front_x + 0.06 + ha
    hcy = float(_dome(np.float32(hcx), front_x, y_d)) - 0.55 * hb
    heart = (((X - hcx) / ha) ** 2 + ((Y - hcy) / hb) ** 2 < 1).astype(np.float32) * (Y < domes[0])
    lung = (lungs[0] + lungs[1]) / 2 * (1 - heart)
    return Profile(h=h, w=w, px=float(w), X=X, Y=Y, front_x=front_x, neck_x=front_x + 0.25, spine_x=spine_x,
                   y_ap=y_ap, y_d=y_d, dome=domes[0], lung=lung, heart=heart, hcx=hcx, hcy=hcy, ha=ha, hb=hb,
                   body=body)


def _spine(rng, p):
    """Vertebral bodies stacked along the back (dense, with darker disc spaces) and their posterior elements."""
    X, Y = p.X, p.Y
    axis = p.spine_x + 0.045 + 0.015 * np.sin(np.pi * Y)  # a slight thoracic kyphosis
    period, phase = rng.uniform(0.05, 0.058), rng.uniform(0, 1)
    discs = np.abs(((Y / period + phase) % 1) - 0.5) < 0.1
    bodies = (np.abs(X - axis) < 0.045) * np.where(discs, 0.45, 1.0)
    posterior = np.exp(-((X - axis - 0.08) / 0.03) ** 2) * 0.5
    return smooth(((bodies + posterior) * (Y > p.y_ap - 0.1)).astype(np.float32), 0.004 * p.px)


def _ribs(rng, p):
    """Posterior ribs: bands sloping down towards the front across the back of the lung field."""
    spacing = rng.uniform(0.06, 0.07)
    phase = (p.Y - 0.35 * (p.spine_x - p.X)) / spacing + rng.uniform(0, 1)
    bands = np.clip(1 - np.abs(phase - np.round(phase)) / 0.3, 0, 1)
    return bands * np.clip((p.X - p.front_x - 0.2) / 0.3, 0, 1) * (p.X < p.spine_x + 0.1)


def draw_lateral(rng, h, w, findings, scale=0.5):
    """Draw one lateral radiograph: density float32 h x w (drawing at `scale` of the size, as draw_chest)."""
    full_h, full_w = h, w
    h, w = int(round(full_h * scale)), int(round(full_w * scale))
    frng, ratio, by_layer = finding_layers(rng, findings)
    p = lateral_anatomy(rng, h, w, ratio)
    signs = [spec.draw_lateral(frng, p, f) for f, spec in by_layer]
    fluid = _merged([sign.fluid for sign in signs], (h, w))
    X, Y, px = p.X, p.Y, p.px
    lung_soft = smooth(p.lung * (1 - 0.9 * fluid), 0.006 * px)
    t = np.clip((Y - p.y_ap) / (p.y_d - p.y_ap), 0, 1)
    body_density = 0.55 + 0.08 * np.clip(1 - ((X - 0.5) / 0.35) ** 2, 0, 1)
    d = 0.03 + p.body * (body_density - 0.03)
    d = d - (0.4 - 0.08 * t) * lung_soft * p.body
    d = d + 0.05 * smooth(p.heart, 0.01 * px) + 0.05 * smooth(fluid, 0.01 * px)
    hila = np.exp(-(((X - (p.hcx + p.ha)) / 0.07) ** 2 + ((Y - (p.hcy - p.hb)) / 0.07) ** 2))
    d = d + 0.08 * hila * lung_soft
    trachea = spline([(p.neck_x + 0.02, 0.0), (p.neck_x + 0.05, p.y_ap), (p.hcx + p.ha, p.hcy - p.hb - 0.03)], 40)
    d = d - 0.07 * smooth(polyline_layer(h, w, trachea, 0.035 * w), 0.004 * px)
    sternum = spline([(p.front_x + 0.03, p.y_ap + 0.02), (p.front_x + 0.01, p.y_ap + 0.25),
                      (p.front_x + 0.03, p.y_ap + 0.45)], 30)
    d = d + 0.1 * smooth(polyline_layer(h, w, sternum, 0.02 * w), 0.003 * px)
    d = d + 0.11 * _spine(rng, p) + 0.03 * _ribs(rng, p) * p.body
    if rng.random() < 0.5:  # the gastric air bubble under the front of the diaphragm
        gx = p.front_x + rng.uniform(0.12, 0.2)
        gy = p.diaphragm_at(gx) + rng.uniform(0.05, 0.07)
        d = d - 0.2 * smooth((((X - gx) / 0.05) ** 2 + ((Y - gy) / 0.03) ** 2 < 1).astype(np.float32), 0.004 * px)
    for sign in signs:
        for weight, layer in sign.density:
            d = d + weight * layer
    return develop(rng, d, X, Y, full_h, full_w)
