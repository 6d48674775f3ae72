"""A small synthetic "world" shaped exactly like the real inputs, so every pipeline step runs on it unchanged.

    python -m data.sample_world --out WORLD [--seed 0] [--padchest-images 1200] [--openi-reports 150]

writes

    WORLD/images/0.zip, 1.zip, ...     PadChest-style zips of 16-bit grayscale PNGs
                                       (member name = ImageID, zip number = ImageDir)
    WORLD/images/NLMCXR_dcm.tgz        OpenI-style DICOMs 1000_IM-0003-2001.dcm
                                       (CR, MONOCHROME1, 12 bits stored, some JPEG 2000)
    WORLD/labels/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   PadChest label CSV with the real columns
    WORLD/labels/NLMCXR_reports.tgz    OpenI XML reports ecgen-radiology/N.xml
    WORLD/BBox_List_2017.csv           Image Index,Finding Label,x,y,w,h
                                       (one row per drawn finding per image, original pixels)

The images are drawn chest radiographs (lungs, heart, ribs, clavicles, spine, diaphragm) carrying visible,
localized signs of the DRAWN_FINDINGS. Everything is derived from the seed: the same seed gives byte-identical files.
"""

import argparse
import gzip
import io
import os
import sys
import tarfile
import time
import zipfile
from xml.sax.saxutils import escape

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

DRAWN_FINDINGS = [
    "atelectasis",
    "cardiomegaly",
    "catheter",
    "pleural effusion",
    "electrical device",
    "mass",
    "nodule",
    "nsg tube",
    "pneumothorax",
]

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
# Header of the real PadChest CSV, in order (the first column is the unnamed pandas index).
PADCHEST_COLUMNS = [
    "", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
    "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime", "RelativeXRayExposure_DICOM", "ReportID", "Report",
    "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
]

# PadChest terms per drawn finding (all in data/padchest_tree.csv; the label parser rolls children up to the class).
PADCHEST_TERMS = {
    "atelectasis": ["atelectasis", "laminar atelectasis", "atelectasis basal"],
    "cardiomegaly": ["cardiomegaly"],
    "catheter": ["central venous catheter via jugular vein", "central venous catheter via subclavian vein",
                 "central venous catheter"],
    "pleural effusion": ["pleural effusion", "loculated pleural effusion"],
    "electrical device": ["pacemaker", "dual chamber device", "single chamber device"],
    "mass": ["mass", "pulmonary mass"],
    "nodule": ["nodule", "multiple nodules"],
    "nsg tube": ["NSG tube"],
    "pneumothorax": ["pneumothorax"],
}

TREE_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels", "padchest_tree.csv")
FIXED_TIME = (2019, 2, 1, 0, 0, 0)  # archive member timestamps, so archives are byte-identical per seed
FIXED_MTIME = 1548979200


# ----------------------------------------------------------------------------------------------------------------------
# Study-level ground truth: which findings, on which side, in which zone


def taxonomy_cuis(path=TREE_CSV):
    """term -> CUI (or '') for every term of the PadChest taxonomy tree file."""
    cuis = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "── " not in line:
                continue
            rest = line.split("── ", 1)[1]
            term = rest.split(" [", 1)[0].strip()
            cui = rest.split("CUI:", 1)[1].split(",", 1)[0] if "CUI:" in rest else ""
            cuis[term] = cui
    return cuis


def sample_findings(rng, normal_fraction, prevalence):
    """One study's findings: a list of dicts {name, term(s), side, zone, ...}; empty list = normal study."""
    if rng.random() < normal_fraction:
        return []
    while True:
        names = [n for n in DRAWN_FINDINGS if rng.random() < prevalence]
        if names:
            break
    findings = []
    for name in names:
        f = {"name": name, "side": str(rng.choice(["right", "left"]))}
        if name == "atelectasis":
            f["terms"] = [str(rng.choice(PADCHEST_TERMS[name], p=[0.3, 0.5, 0.2]))]
            f["zone"] = str(rng.choice(["lower", "middle"], p=[0.7, 0.3]))
            if f["terms"][0] == "atelectasis basal":
                f["zone"] = "lower"
        elif name == "catheter":
            term = str(rng.choice(PADCHEST_TERMS[name], p=[0.5, 0.3, 0.2]))
            f["terms"] = [term]
            f["route"] = "subclavian" if "subclavian" in term else ("jugular" if "jugular" in term else
                                                                     str(rng.choice(["jugular", "subclavian"])))
            f["side"] = str(rng.choice(["right", "left"], p=[0.75, 0.25]))
        elif name == "electrical device":
            f["leads"] = int(rng.choice([1, 2]))
            f["terms"] = ["pacemaker"] + (["dual chamber device"] if f["leads"] == 2 else
                                          (["single chamber device"] if rng.random() < 0.5 else []))
            f["side"] = str(rng.choice(["left", "right"], p=[0.8, 0.2]))
        elif name == "nodule":
            f["count"] = 1 if rng.random() < 0.75 else int(rng.integers(2, 4))
            f["terms"] = ["nodule"] if f["count"] == 1 else ["multiple nodules"]
            f["zone"] = str(rng.choice(["upper", "middle", "lower"]))
        elif name == "mass":
            f["terms"] = [str(rng.choice(PADCHEST_TERMS[name]))]
            f["zone"] = str(rng.choice(["upper", "middle", "lower"], p=[0.45, 0.35, 0.2]))
        elif name == "pleural effusion":
            f["terms"] = [str(rng.choice(PADCHEST_TERMS[name], p=[0.85, 0.15]))]
            f["size"] = str(rng.choice(["small", "moderate"]))
        else:
            f["terms"] = list(PADCHEST_TERMS[name])
        findings.append(f)
    return findings


# ----------------------------------------------------------------------------------------------------------------------
# Drawing. Everything is a "density" map (bright = dense, as displayed in MONOCHROME2),
# coordinates normalized to [0, 1].


def _smooth(a, sigma_px):
    return cv2.GaussianBlur(a, (0, 0), sigma_px) if sigma_px > 0.3 else a


def _bbox(mask, threshold=0.5):
    """[x, y, w, h] of the pixels where mask > threshold, or None."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _polyline_layer(h, w, points, thickness_px):
    """Anti-aliased polyline (points in normalized coords) as a float layer in [0, 1]."""
    layer = np.zeros((h, w), np.uint8)
    pts = np.round(np.asarray(points, np.float64) * [w * 16, h * 16]).astype(np.int32)
    cv2.polylines(layer, [pts], False, 255, max(1, int(round(thickness_px))), cv2.LINE_AA, shift=4)
    return layer.astype(np.float32) / 255.0


def _spline(points, n=60):
    """Smooth curve through a few control points (Catmull-Rom), for tubes and leads."""
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


def _anatomy(rng, enlarged_heart):
    """Per-image geometry (normalized coordinates)."""
    cx = 0.5 + rng.normal(0, 0.015)
    y_ap = 0.12 + rng.uniform(-0.03, 0.03)
    y_d = 0.70 + rng.uniform(-0.04, 0.04)
    tw = 0.37 + rng.uniform(-0.03, 0.03)
    ctr = rng.uniform(0.58, 0.66) if enlarged_heart else rng.uniform(0.38, 0.45)
    return {
        "cx": cx, "y_ap": y_ap, "tw": tw, "ctr": ctr,
        # the right hemidiaphragm (image left, side -1) sits a little higher than the left
        "y_d": {-1: y_d - rng.uniform(0.01, 0.03), 1: y_d},
        "tilt": rng.normal(0, 0.01),
    }


def _side_sign(side):
    """Patient's right is on the image left in a PA/AP radiograph."""
    return -1 if side == "right" else 1


def _lung_point(rng, a, side, zone, lateral=(0.3, 0.75)):
    """A random point (x, y) inside the given lung and zone."""
    s = _side_sign(side)
    y_d = a["y_d"][s]
    frac = {"upper": (0.12, 0.32), "middle": (0.38, 0.58), "lower": (0.62, 0.78)}[zone]
    y = a["y_ap"] + rng.uniform(*frac) * (y_d - a["y_ap"])
    t = (y - a["y_ap"]) / (y_d + 0.08 - a["y_ap"])
    lat = 0.07 + (a["tw"] - 0.07) * min(1.0, t / 0.5) ** 0.5
    lo, hi = lateral
    if zone == "lower" and s == 1:
        lo = max(lo, 0.55)  # keep lesions off the heart shadow
    x = a["cx"] + s * (0.07 + rng.uniform(lo, hi) * (lat - 0.07))
    return x, y


def draw_chest(rng, h, w, findings, scale=0.5):
    """Draw one radiograph. Returns (density float32 HxW, list of (class name, [x, y, w, h]) boxes in pixels).

    The anatomy is drawn at `scale` of the final size (for speed) and upsampled; noise is added at full size."""
    full_h, full_w = h, w
    h, w = int(round(full_h * scale)), int(round(full_w * scale))
    names = {f["name"] for f in findings}
    # finding parameters come from their own stream, so a normal and a sick image of one seed share anatomy and noise
    frng = np.random.default_rng(rng.integers(2 ** 63))
    a = _anatomy(rng, "cardiomegaly" in names)
    cx, y_ap, tw = a["cx"], a["y_ap"], a["tw"]
    X = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    Y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    X = X + a["tilt"] * (Y - 0.5)  # slight patient rotation
    px = float(w)
    boxes = []

    # body: neck widening to the shoulders, thicker (denser) in the middle
    bw = 0.11 + (tw + 0.11 - 0.11) * np.clip((Y - (y_ap - 0.11)) / 0.09, 0, 1)
    dx_abs = np.abs(X - cx)
    body = _smooth((dx_abs < bw).astype(np.float32), 0.012 * px)
    body_density = 0.48 + 0.14 * np.clip(1 - (dx_abs / bw) ** 2, 0, 1)

    # lungs: parabolic apex, lateral wall, diaphragm dome with a sharp costophrenic angle
    lungs, domes = {}, {}
    for s in (-1, 1):
        y_d = a["y_d"][s]
        dx = s * (X - cx)
        t = (Y - y_ap) / (y_d + 0.1 - y_ap)
        med = 0.065 + 0.06 * (1 - np.clip(t / 0.25, 0, 1)) ** 2
        lat = 0.07 + (tw - 0.07) * np.clip(t / 0.5, 0, 1) ** 0.5
        dome_x = 0.42 * tw
        domes[s] = y_d + np.where(dx > dome_x, 0.32, 0.2) * ((dx - dome_x) / tw) ** 2
        lungs[s] = ((t > 0) & (dx > med) & (dx < lat) & (Y < domes[s])).astype(np.float32)
    below_diaphragm = _smooth((Y > np.where(X < cx, domes[-1], domes[1])).astype(np.float32), 0.01 * px)

    # heart: ellipse, two thirds of it left of the midline (image right); aortic knob above it
    hw_ = a["ctr"] * 2 * tw
    hcx, hcy = cx + 0.13 * hw_, (a["y_d"][1] + a["y_d"][-1]) / 2 - 0.05 + rng.uniform(-0.01, 0.01)
    ha, hb = hw_ / 2, 0.14 + rng.uniform(-0.01, 0.015)
    heart = (((X - hcx) / ha) ** 2 + ((Y - hcy) / hb) ** 2 < 1).astype(np.float32)
    aorta = (((X - (cx + 0.06)) / 0.035) ** 2 + ((Y - (hcy - hb - 0.02)) / 0.03) ** 2 < 1).astype(np.float32)
    mediastinum = np.maximum(heart, aorta)
    if "cardiomegaly" in names:
        boxes.append(("cardiomegaly", _bbox(heart * (Y < max(a["y_d"].values()) + 0.01))))

    # effusion: meniscus-shaped opacity filling a lung base, higher laterally
    effusion = np.zeros((h, w), np.float32)
    for f in findings:
        if f["name"] == "pleural effusion":
            s = _side_sign(f["side"])
            depth = (0.19 if f.get("size") == "moderate" else 0.14) + frng.uniform(-0.02, 0.02)
            dx = s * (X - cx)
            top = a["y_d"][s] + 0.08 - depth * (0.5 + 0.6 * np.clip(dx / tw, 0, 1) ** 2)
            fluid = lungs[s] * (Y > top)
            effusion = np.maximum(effusion, fluid)
            boxes.append(("pleural effusion", _bbox(fluid)))

    # pneumothorax: a rim of air without markings along the apex and lateral chest wall, tapering downwards,
    # bounded by a visible visceral pleural line
    ptx = np.zeros((h, w), np.float32)
    pleural_line = np.zeros((h, w), np.float32)
    for f in findings:
        if f["name"] == "pneumothorax":
            s = _side_sign(f["side"])
            # distance to the apex and lateral wall only: extend the lung medially before measuring
            walls = (lungs[s] > 0) | ((s * (X - cx) < 0.12) & (Y > y_ap + 0.02) & (Y < a["y_d"][s]))
            dist = cv2.distanceTransform(walls.astype(np.uint8), cv2.DIST_L2, 5) / px
            y_lim = y_ap + frng.uniform(0.55, 0.75) * (a["y_d"][s] - y_ap)
            depth = frng.uniform(0.07, 0.1) * np.clip((y_lim - Y) / (y_lim - y_ap) * 1.6, 0, 1) ** 0.6
            inside = (lungs[s] > 0) & (Y < y_lim)
            region = (inside & (dist < depth)).astype(np.float32)
            ptx = np.maximum(ptx, region)
            line = inside & (np.abs(dist - depth) < 0.006) & (depth > 0.01)
            pleural_line = np.maximum(pleural_line, line.astype(np.float32))
            boxes.append(("pneumothorax", _bbox(region)))

    lung = (lungs[-1] + lungs[1]) * (1 - mediastinum)
    lung_soft = _smooth(lung * (1 - 0.9 * effusion), 0.006 * px)

    # vessels / lung markings: ridges of band-passed noise, stronger near the hila
    small = rng.normal(0, 1, (h // 2 + 1, w // 2 + 1)).astype(np.float32)
    band = cv2.resize(_smooth(small, 1.0) - _smooth(small, 2.5), (w, h), interpolation=cv2.INTER_LINEAR)
    ridges = np.clip(1 - np.abs(band) / (0.7 * band.std() + 1e-6), 0, 1) ** 2
    hila = np.exp(-(((np.abs(X - cx) - 0.1) / 0.08) ** 2 + ((Y - (hcy - hb + 0.02)) / 0.09) ** 2))
    markings = lung_soft * (0.07 * ridges * (0.4 + hila) + 0.12 * hila) * (1 - _smooth(ptx, 0.004 * px))

    # composition: soft tissue body, air-filled lungs (darker at the apices), denser heart, trachea
    t_all = np.clip((Y - y_ap) / (max(a["y_d"].values()) - y_ap), 0, 1)
    d = 0.03 + body * (body_density - 0.03)
    d = d - (0.42 - 0.10 * t_all) * lung_soft * body + markings
    d = d + 0.06 * _smooth(mediastinum, 0.01 * px) * body * (1 - below_diaphragm)
    d = d - 0.07 * np.exp(-((X - cx) / 0.016) ** 4) * (Y < hcy - hb + 0.02) * body  # trachea air column
    d = d + 0.05 * _smooth(effusion, 0.01 * px)

    # spine with vertebral bodies, clavicles, ribs (one periodic band per side)
    spine = np.exp(-((X - cx) / 0.03) ** 4) * (Y > y_ap - 0.12)
    d = d + spine * (0.06 + 0.025 * np.cos(2 * np.pi * Y / 0.045 + rng.uniform(0, 6)))
    clav = np.zeros((h, w), np.float32)
    for s in (-1, 1):
        yc = y_ap + rng.uniform(0.0, 0.04)
        pts = _spline([(cx + s * 0.035, yc + 0.035), (cx + s * 0.15, yc + 0.015),
                       (cx + s * (tw + 0.04), yc - 0.03)], 30)
        clav = np.maximum(clav, _polyline_layer(h, w, pts, 0.02 * h))
    d = d + 0.12 * _smooth(clav, 0.004 * px)
    spacing = (max(a["y_d"].values()) - y_ap + 0.04) / 9.0
    dxn = np.clip(np.abs(X - cx) / tw, 0, 1.2)
    phase = (Y - y_ap + 0.03 + 0.05 * dxn - 0.2 * dxn ** 2) / spacing
    ribs = np.clip(1 - np.abs(phase - np.round(phase)) / (0.38 + rng.uniform(-0.05, 0.05)), 0, 1) ** 0.7
    ribs = ribs * ((np.abs(X - cx) > 0.04) & (np.abs(X - cx) < tw + 0.03) & (phase > -0.3) & (phase < 9.3))
    d = d + 0.045 * ribs * body * (0.4 + 0.6 * lung_soft)

    # gastric bubble under the left hemidiaphragm
    if rng.random() < 0.6:
        gx, gy = cx + tw * rng.uniform(0.35, 0.55), a["y_d"][1] + rng.uniform(0.05, 0.08)
        bubble = (((X - gx) / 0.05) ** 2 + ((Y - gy) / 0.03) ** 2 < 1).astype(np.float32)
        d = d - 0.2 * _smooth(bubble, 0.004 * px)

    # pneumothorax: darker, no markings, thin bright pleural line
    d = d - 0.18 * _smooth(ptx, 0.003 * px) + 0.2 * _smooth(pleural_line, 0.002 * px)

    # focal opacities
    for f in findings:
        if f["name"] in ("nodule", "mass"):
            count = f.get("count", 1)
            for _ in range(count):
                x0, y0 = _lung_point(frng, a, f["side"], f["zone"])
                if f["name"] == "nodule":
                    r = frng.uniform(0.026, 0.034)
                    blob = ((((X - x0) / r) ** 2 + ((Y - y0) * h / w / r) ** 2) < 1).astype(np.float32)
                else:
                    r = frng.uniform(0.06, 0.085)
                    blob = np.zeros((h, w), np.float32)
                    for _ in range(3):  # lobulated: a few overlapping discs
                        ox, oy = frng.uniform(-0.35, 0.35, 2) * r
                        rr = r * frng.uniform(0.65, 0.85)
                        blob = np.maximum(blob, ((((X - x0 - ox) / rr) ** 2 + ((Y - y0 - oy) * h / w / rr) ** 2) < 1))
                    blob = blob.astype(np.float32)
                d = d + (0.45 if f["name"] == "nodule" else 0.4) * _smooth(blob, 0.003 * px)
                boxes.append((f["name"], _bbox(blob)))
        elif f["name"] == "atelectasis":
            s = _side_sign(f["side"])
            x0, y0 = _lung_point(frng, a, f["side"], f["zone"], lateral=(0.35, 0.55))
            length = frng.uniform(0.16, 0.24)
            ang = np.deg2rad(frng.uniform(-18, 8)) * -s  # roughly horizontal, dipping laterally
            p0 = (x0 - s * length / 2 * np.cos(ang), y0 - length / 2 * np.sin(ang) * w / h)
            p1 = (x0 + s * length / 2 * np.cos(ang), y0 + length / 2 * np.sin(ang) * w / h)
            band = _polyline_layer(h, w, [p0, p1], frng.uniform(0.022, 0.03) * w) * (lung > 0)
            d = d + 0.30 * _smooth(band, 0.002 * px)
            boxes.append(("atelectasis", _bbox(band)))

    # radio-opaque lines and devices: drawn last, brighter than bone
    for f in findings:
        if f["name"] == "nsg tube":
            x0 = cx + frng.uniform(-0.01, 0.01)
            yd = a["y_d"][1]
            pts = _spline([(x0 - 0.005, 0.0), (x0 + 0.01, y_ap + 0.05), (x0 + 0.015, 0.45), (x0 + 0.03, yd),
                           (cx + tw * frng.uniform(0.3, 0.45), yd + frng.uniform(0.08, 0.12)),
                           (cx + tw * frng.uniform(0.15, 0.3), yd + frng.uniform(0.14, 0.18))], 80)
            tube = _polyline_layer(h, w, pts, frng.uniform(0.015, 0.019) * w)
            d = d + 0.55 * tube
            boxes.append(("nsg tube", _bbox(tube)))
        elif f["name"] == "catheter":
            s = _side_sign(f["side"])
            svc = (cx - 0.045 + frng.uniform(-0.01, 0.01), hcy - hb + frng.uniform(-0.02, 0.03))
            if f["route"] == "jugular":
                pts = [(cx + s * 0.07, 0.0), (cx + s * 0.065, y_ap), (cx + s * 0.05, y_ap + 0.08)]
            else:
                pts = [(cx + s * (tw + 0.02), y_ap + 0.01), (cx + s * 0.22, y_ap + 0.06), (cx + s * 0.07, y_ap + 0.09)]
            pts = _spline(pts + [(cx - 0.04, svc[1] - 0.1), svc], 60)
            line = _polyline_layer(h, w, pts, frng.uniform(0.015, 0.018) * w)
            d = d + 0.5 * line
            boxes.append(("catheter", _bbox(line)))
        elif f["name"] == "electrical device":
            s = _side_sign(f["side"])
            gx, gy = cx + s * frng.uniform(0.2, 0.26), y_ap + frng.uniform(0.06, 0.11)
            gw, gh = frng.uniform(0.09, 0.12), frng.uniform(0.065, 0.085)
            gen = np.zeros((h, w), np.uint8)
            corners = np.array([[gx - gw / 2, gy - gh / 2], [gx + gw / 2, gy - gh / 2],
                                [gx + gw / 2, gy + gh / 2], [gx - gw / 2, gy + gh / 2]])
            rot = np.deg2rad(frng.uniform(-20, 20))
            c, sn = np.cos(rot), np.sin(rot)
            centered = corners - [gx, gy]
            corners = np.stack([centered[:, 0] * c - centered[:, 1] * sn,
                                centered[:, 0] * sn + centered[:, 1] * c], 1) + [gx, gy]
            cv2.fillPoly(gen, [np.round(corners * [w, h]).astype(np.int32)], 255, cv2.LINE_AA)
            gen = _smooth(gen.astype(np.float32) / 255.0, 0.004 * px)
            leads = np.zeros((h, w), np.float32)
            targets = [(hcx + 0.4 * ha, hcy + 0.5 * hb)]  # right ventricular apex
            if f["leads"] == 2:
                targets.append((cx - 0.02, hcy - 0.45 * hb))  # right atrium
            for tx, ty in targets:
                pts = _spline([(gx, gy), (cx + s * 0.09, y_ap + 0.08), (cx - 0.03, hcy - hb + 0.02),
                               (tx, ty)], 60)
                leads = np.maximum(leads, _polyline_layer(h, w, pts, 0.011 * w))
            d = d + 0.45 * leads + 0.9 * gen
            boxes.append(("electrical device", _bbox(gen)))

    # exposure gradient, blur, upsampling and quantum noise
    d = d * (1 + rng.uniform(-0.06, 0.06) * (X - 0.5) + rng.uniform(-0.06, 0.06) * (Y - 0.5))
    d = _smooth(d.astype(np.float32), rng.uniform(0.3, 0.55))
    d = cv2.resize(d, (full_w, full_h), interpolation=cv2.INTER_CUBIC)
    d = d + rng.normal(0, 0.006, (full_h, full_w)).astype(np.float32)
    sx, sy = full_w / w, full_h / h
    boxes = [(name, _scale_box(box, sx, sy, full_w, full_h)) for name, box in boxes if box is not None]
    return np.clip(d, 0, 1.3).astype(np.float32), boxes


def _scale_box(box, sx, sy, w, h):
    x0, y0 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    x1, y1 = min(w, int(np.ceil((box[0] + box[2]) * sx))), min(h, int(np.ceil((box[1] + box[3]) * sy)))
    return [x0, y0, x1 - x0, y1 - y0]


def to_12bit(rng, density):
    """Map density to a ~12-bit detector response with per-image contrast (uint16, max 4095)."""
    lo, hi = rng.uniform(60, 450), rng.uniform(3300, 4095)
    gamma = rng.uniform(0.85, 1.15)
    v = lo + (hi - lo) * (np.clip(density, 0, 1.3) / 1.3) ** gamma
    return np.clip(np.round(v), 0, 4095).astype(np.uint16)


def add_burned_in(rng, img):
    """Hot pixels and a burned-in marker near 65535, as real PadChest PNGs have (a plain min-max window fails)."""
    h, w = img.shape
    if rng.random() < 0.3:
        n = int(rng.integers(2, 12))
        img[rng.integers(0, h, n), rng.integers(0, w, n)] = 65535
    if rng.random() < 0.25:
        mw, mh = int(0.06 * w), int(0.05 * h)
        x0 = int(rng.choice([int(0.03 * w), w - mw - int(0.03 * w)]))
        y0 = int(0.03 * h)
        marker = img[y0:y0 + mh, x0:x0 + mw]
        marker[:, :2] = 65280
        marker[-2:, :] = 65280  # an "L"
        marker[: mh // 2, mw // 2: mw // 2 + 2] = 65535
    return img


# ----------------------------------------------------------------------------------------------------------------------
# PadChest


def _digits(rng, n):
    return str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, n - 1))


def _alnum(rng, n):
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(chars[i] for i in rng.integers(0, len(chars), n))


LOCALIZATIONS = {
    "atelectasis": lambda f: ["loc " + f["side"], "loc basal" if f["zone"] == "lower" else "loc middle lung field"],
    "cardiomegaly": lambda f: ["loc cardiac"],
    "catheter": lambda f: ["loc superior cave vein"] + (["loc subclavian vein"] if f["route"] == "subclavian" else []),
    "pleural effusion": lambda f: ["loc " + f["side"], "loc pleural", "loc costophrenic angle"],
    "electrical device": lambda f: ["loc cardiac"],
    "mass": lambda f: ["loc " + f["side"] + (" upper lobe" if f["zone"] == "upper" else
                                              (" lower lobe" if f["zone"] == "lower" else ""))],
    "nodule": lambda f: ["loc " + f["side"] + (" upper lobe" if f["zone"] == "upper" else
                                                (" lower lobe" if f["zone"] == "lower" else ""))],
    "nsg tube": lambda f: ["loc gastric chamber"],
    "pneumothorax": lambda f: ["loc " + f["side"], "loc apical"],
}
SPANISH = {
    "atelectasis": "atelectasi laminar", "cardiomegaly": "cardiomegali", "catheter": "cateter venos central",
    "pleural effusion": "derram pleural", "electrical device": "marcapas", "mass": "mas pulmonar",
    "nodule": "nodul pulmonar", "nsg tube": "sond nasogastr", "pneumothorax": "neumotorax",
}


def padchest_row(rng, index, image_id, image_dir, study, h, w, cuis):
    findings = study["findings"]
    if study["exclude"]:
        labels, locs, by_sentence, report = ["exclude"], [], [["exclude"]], " exclu ."
    elif not findings:
        labels, locs, by_sentence = ["normal"], [], [["normal"]]
        report = str(rng.choice([" sin hallazg patolog .", " sin alter radiolog significacion .",
                                 " estudi sin alter significacion ."]))
    else:
        labels, locs, by_sentence, sentences = [], [], [], []
        for f in findings:
            floc = [loc for loc in LOCALIZATIONS[f["name"]](f) if loc in ALL_LOCS]
            labels += [t for t in f["terms"] if t not in labels]
            locs += [loc for loc in floc if loc not in locs]
            by_sentence.append(list(f["terms"]) + floc)
            sentences.append(SPANISH[f["name"]] + (" " + ("derech" if f["side"] == "right" else "izquierd")
                                                   if f["name"] in ("pleural effusion", "pneumothorax") else ""))
        report = " " + " . ".join(sentences) + " ."
    method = "Physician" if rng.random() < 0.25 else "RNN_model"
    label_text = str(labels)
    if method == "RNN_model" and rng.random() < 0.08:
        label_text = "[' " + label_text[2:]  # real quirk: a leading space inside the first item
    modality = "CR" if rng.random() < 0.9 else "DX"
    manufacturer = str(rng.choice(["PhilipsMedicalSystems", "ImagingDynamicsCompanyLtd"]))
    label_cuis = [cuis.get(t.strip(), "") for t in labels]
    view = {"PA": ["POSTEROANTERIOR", "PA"], "AP": ["ANTEROPOSTERIOR", "AP", None]}[study["projection"]]
    return {
        "": index,
        "ImageID": image_id,
        "ImageDir": image_dir,
        "StudyDate_DICOM": study["date"],
        "StudyID": study["study_id"],
        "PatientID": study["patient_id"],
        "PatientBirth": float(study["birth"]),
        "PatientSex_DICOM": study["sex"],
        "ViewPosition_DICOM": view[int(rng.integers(0, len(view)))],
        "Projection": study["projection"],
        "MethodProjection": "Manual review of DICOM fields",
        "Pediatric": "No",
        "Modality_DICOM": modality,
        "Manufacturer_DICOM": manufacturer,
        "PhotometricInterpretation_DICOM": "MONOCHROME2",
        "PixelRepresentation_DICOM": 0,
        "PixelAspectRatio_DICOM": "['1', '1']" if manufacturer.startswith("Philips") else "None",
        "SpatialResolution_DICOM": "0.143" if manufacturer.startswith("Philips") else "None",
        "BitsStored_DICOM": 12,
        "WindowCenter_DICOM": float(int(rng.integers(1900, 2400))),
        "WindowWidth_DICOM": float(int(rng.integers(2000, 4095))),
        "Rows_DICOM": h,
        "Columns_DICOM": w,
        "XRayTubeCurrent_DICOM": float(int(rng.choice([250, 320, 400]))),
        "Exposure_DICOM": float(int(rng.integers(2, 11))),
        "ExposureInuAs_DICOM": float(int(rng.choice([2000, 2500, 3200, 10000]))),
        "ExposureTime": float(int(rng.choice([5, 10, 25]))),
        "RelativeXRayExposure_DICOM": round(float(rng.uniform(-1.5, 1.5)), 2),
        "ReportID": study["report_id"],
        "Report": report,
        "MethodLabel": method,
        "Labels": label_text,
        "Localizations": str(locs),
        "LabelsLocalizationsBySentence": str(by_sentence),
        "labelCUIS": "[" + " ".join(f"'{c}'" for c in label_cuis if c) + "]",
        "LocalizationsCUIS": "[]",
    }


# localization terms used above, all real PadChest localizations
ALL_LOCS = {"loc right", "loc left", "loc basal", "loc middle lung field", "loc cardiac", "loc superior cave vein",
            "loc subclavian vein", "loc pleural", "loc costophrenic angle", "loc right upper lobe",
            "loc left upper lobe",
            "loc right lower lobe", "loc left lower lobe", "loc gastric chamber", "loc apical"}


def padchest_studies(rng, n_images, n_exclude, normal_fraction, prevalence):
    """Studies (one PA/AP image each) grouped into patients, some patients with 2-3 studies."""
    studies = []
    while len(studies) < n_images:
        patient_id = _digits(rng, int(rng.choice([37, 38, 39])))
        birth, sex = int(rng.integers(1925, 2000)), str(rng.choice(["M", "F"]))
        for k in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
            if len(studies) == n_images:
                break
            study_id = _digits(rng, int(rng.choice([38, 39])))
            studies.append({
                "patient_id": patient_id, "birth": birth, "sex": sex, "study_id": study_id,
                "date": int(f"20{rng.integers(9, 18):02d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"),
                "projection": "PA" if rng.random() < 0.85 else "AP",
                "report_id": int(rng.integers(1_000_000, 9_999_999)),
                "exclude": False,
                "findings": sample_findings(rng, normal_fraction, prevalence),
            })
    for i in rng.choice(len(studies), n_exclude, replace=False):
        studies[i]["exclude"] = True
        studies[i]["findings"] = []
    order = rng.permutation(len(studies))
    return [studies[i] for i in order]


def _png16(img):
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def write_padchest(out_dir, seed, n_images, per_zip, n_exclude, normal_fraction, prevalence, cuis, progress=True):
    """Zips + label CSV. Returns (list of box rows, number of images)."""
    rng = np.random.default_rng([seed, 1])
    studies = padchest_studies(rng, n_images, n_exclude, normal_fraction, prevalence)
    rows, box_rows = [], []
    images_dir = os.path.join(out_dir, "images")
    zf = None
    for i, study in enumerate(tqdm(studies, desc="padchest", unit="img", disable=not progress)):
        image_dir = i // per_zip
        if i % per_zip == 0:
            if zf is not None:
                zf.close()
            zf = zipfile.ZipFile(os.path.join(images_dir, f"{image_dir}.zip"), "w", zipfile.ZIP_STORED)
        irng = np.random.default_rng([seed, 2, i])
        h, w = int(irng.integers(340, 421)), int(irng.integers(320, 401))
        density, boxes = draw_chest(irng, h, w, study["findings"])
        img = add_burned_in(irng, to_12bit(irng, density))
        image_id = f"{study['study_id']}_{_alnum(irng, 6)}.png"
        info = zipfile.ZipInfo(image_id, date_time=FIXED_TIME)
        zf.writestr(info, _png16(img))
        rows.append(padchest_row(irng, i, image_id, image_dir, study, h, w, cuis))
        box_rows += [(image_id, name, *box) for name, box in boxes]
    if zf is not None:
        zf.close()
    frame = pd.DataFrame(rows, columns=PADCHEST_COLUMNS)
    frame.to_csv(os.path.join(out_dir, "labels", PADCHEST_CSV), index=False)
    return box_rows, len(rows)


# ----------------------------------------------------------------------------------------------------------------------
# OpenI: DICOMs and XML reports



def _zone_lobe(f):
    if f["zone"] == "middle":
        return "lingula" if f["side"] == "left" else "middle lobe"
    return f["zone"] + " lobe"


def finding_sentences(rng, f):
    """(findings sentence, impression sentence, MeSH major, MeSH automatic) for one present finding."""
    side, Side = f["side"], f["side"].capitalize()
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    name = f["name"]
    if name == "cardiomegaly":
        grade = pick(["mild", "moderate"])
        s = pick([f"The heart is {grade}ly enlarged.", "Cardiomegaly is present.", "Enlarged cardiac silhouette.",
                  "The cardiac silhouette is enlarged.", f"{grade.capitalize()} cardiomegaly."])
        return s, pick(["Cardiomegaly.", "Enlarged heart."]), f"Cardiomegaly/{grade}", "cardiomegaly"
    if name == "pleural effusion":
        size = f.get("size", "small")
        s = pick([f"There is a {size} {side} pleural effusion.",
                  f"{size.capitalize()} {side}-sided effusion with blunting of the {side} costophrenic angle.",
                  f"{size.capitalize()} {side} pleural effusion."])
        return s, f"{size.capitalize()} {side} pleural effusion.", f"Pleural Effusion/{side}", "pleural effusion"
    if name == "nodule":
        lobe = _zone_lobe(f)
        if f.get("count", 1) > 1:
            s = pick([f"Multiple pulmonary nodules in the {side} lung.",
                      f"Several nodules are seen in the {side} lung."])
            return s, "Multiple pulmonary nodules.", "Nodule/lung/multiple", "multiple pulmonary nodules"
        size = pick(["8 mm", "1 cm", "1.2 cm", "1.5 cm"])
        s = pick([f"There is a {size} nodule in the {side} {lobe}.", f"Nodular opacity in the {side} {lobe}.",
                  f"{Side} {lobe} pulmonary nodule measuring {size}."])
        return s, f"{Side} {lobe} nodule.", f"Nodule/lung/{lobe}/{side}", "nodule"
    if name == "mass":
        lobe = _zone_lobe(f)
        size = pick(["3.5", "4", "5", "6"])
        s = pick([f"There is a {size} cm mass in the {side} {lobe}.", f"Large {side} {lobe} mass.",
                  f"Rounded masslike opacity in the {side} lung measuring {size} cm."])
        return s, f"{Side} lung mass, recommend chest CT.", f"Mass/lung/{side}", "mass lesion"
    if name == "pneumothorax":
        s = pick([f"There is a small {side} apical pneumothorax.", f"{Side} pneumothorax is present.",
                  f"Moderate {side} pneumothorax with visible visceral pleural line."])
        return s, f"{Side} pneumothorax.", f"Pneumothorax/{side}", "pneumothorax"
    if name == "atelectasis":
        if f["zone"] == "lower":
            s = pick([f"Linear opacity in the {side} lung base consistent with subsegmental atelectasis.",
                      f"{Side} basilar atelectasis.", f"Streaky {side} basilar opacity compatible with atelectasis."])
            return s, f"{Side} basilar atelectasis.", f"Pulmonary Atelectasis/base/{side}", "atelectases"
        s = pick([f"Platelike atelectasis in the {side} midlung.", f"Linear {side} midlung atelectasis."])
        return s, f"{Side} midlung atelectasis.", f"Pulmonary Atelectasis/lung/{side}", "atelectases"
    if name == "catheter":
        if f["route"] == "jugular":
            short = "IJ" if side == "right" else "internal jugular"
            s = pick([f"{Side} {short} central venous catheter with tip in the SVC.",
                      f"{Side} internal jugular central line terminates in the superior vena cava."])
            imp = f"{Side} {short} catheter in satisfactory position."
        else:
            s = pick([f"{Side} subclavian central venous catheter with tip in the SVC.",
                      f"{Side} subclavian line with tip at the cavoatrial junction."])
            imp = f"{Side} subclavian catheter in satisfactory position."
        return s, imp, "Catheters, Indwelling", "central venous catheters"
    if name == "electrical device":
        if f["leads"] == 2:
            s = pick([f"{Side}-sided pacemaker with leads in the right atrium and right ventricle.",
                      "Dual lead cardiac pacemaker in place."])
        else:
            s = pick([f"{Side} chest wall pacemaker with a single lead in the right ventricle.",
                      "Cardiac pacemaker in place."])
        return s, "Pacemaker in place.", "Pacemaker, Artificial", "pacemaker"
    if name == "nsg tube":
        s = pick(["NG tube tip in the stomach.", "Nasogastric tube courses below the diaphragm into the stomach.",
                  "Enteric tube with tip in the stomach."])
        return s, "NG tube in the stomach.", "Tube, Inserted", "nasogastric tube"
    raise ValueError(name)


def report_texts(rng, findings):
    """COMPARISON, INDICATION, FINDINGS, IMPRESSION, MeSH major list, MeSH automatic list."""
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    comparison = pick(["None.", "None", "XXXX, XXXX", "PA and lateral chest radiographs XXXX",
                       "Chest radiographs XXXX."])
    indication = pick(["Chest pain", "XXXX-year-old male with shortness of breath.", "Cough.",
                       "Preoperative evaluation.",
                       "XXXX-year-old female, dyspnea.", "Positive TB test", "Fever and cough."])
    names = {f["name"] for f in findings}
    if not findings:
        text = " ".join([
            pick(["The heart is normal in size.", "Heart size is within normal limits.",
                  "The cardiomediastinal silhouette is within normal limits for size and contour."]),
            pick(["The mediastinum is unremarkable.", "Normal mediastinal contour."]),
            pick(["The lungs are clear.", "The lungs are clear bilaterally.",
                  "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax."]),
            pick(["No pneumothorax or pleural effusion.", "There is no pleural effusion or pneumothorax."]),
            pick(["No acute bony abnormality.", "The visualized osseous structures are unremarkable."]),
        ])
        impression = pick(["No acute cardiopulmonary abnormality.", "Normal chest x-XXXX.", "No active disease.",
                           "No acute cardiopulmonary process."])
        return comparison, indication, text, impression, ["normal"], []
    sentences, impressions, major, automatic = [], [], [], []
    for f in findings:
        s, imp, m, auto = finding_sentences(rng, f)
        sentences.append(s)
        impressions.append(imp)
        major.append(m)
        if auto not in automatic:
            automatic.append(auto)
    if "cardiomegaly" not in names:
        sentences.insert(0, pick(["Heart size is within normal limits.", "The heart is normal in size."]))
    absent = [n for n in ("pneumothorax", "pleural effusion") if n not in names]
    if len(absent) == 2:
        sentences.append(pick(["No pneumothorax or pleural effusion.",
                               "There is no pleural effusion or pneumothorax."]))
    elif absent:
        sentences.append(f"No {absent[0]}.")
    if not names & {"nodule", "mass", "atelectasis", "pleural effusion"} and rng.random() < 0.5:
        sentences.append("No focal airspace disease.")
    sentences.append(pick(["No acute bony abnormality.", "Osseous structures are intact."]))
    if len(impressions) == 1:
        impression = impressions[0]
    else:
        impression = " ".join(f"{k}. {imp}" for k, imp in enumerate(impressions, 1))
    return comparison, indication, " ".join(sentences), impression, major, automatic


def report_xml(report_id, texts, image_ids):
    comparison, indication, findings, impression, major, automatic = texts
    mesh = "".join(f"\n   \n      <major>{escape(m)}</major>\n" for m in major)
    mesh += "".join(f"\n      <automatic>{escape(a)}</automatic>\n" for a in automatic)
    images = ""
    for k, image_id in enumerate(image_ids, 1):
        images += f"""
   <parentImage id="{image_id}">
      
      
      <figureId>F{k}</figureId>
      
      
      <caption>Xray Chest PA and Lateral</caption>
      
      
      <panel type="single">
         
         
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         
         
         <imgModality>7</imgModality>
      
      
      </panel>
   
   
   </parentImage>"""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{report_id}"/>
   <pmcId id="{report_id}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{report_id}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleURL/>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <note>The data are drawn from multiple hospital systems.</note>
   <specialty>pulmonary diseases</specialty>
   <subset>CXR</subset>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
   
      <Article PubModel="Electronic">
      
         <Journal>
         
            <JournalIssue>
            
               <PubDate>
               
                  <Year>2013</Year>
               
                  <Month>08</Month>
               
                  <Day>01</Day>
            
               </PubDate>
         
            </JournalIssue>
      
         </Journal>
      
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      
         <Abstract>
         
            <AbstractText Label="COMPARISON">{escape(comparison)}</AbstractText>
         
            <AbstractText Label="INDICATION">{escape(indication)}</AbstractText>
         
            <AbstractText Label="FINDINGS">{escape(findings)}</AbstractText>
         
            <AbstractText Label="IMPRESSION">{escape(impression)}</AbstractText>
      
         </Abstract>
      
         <Affiliation>Indiana University</Affiliation>
      
         <Language>eng</Language>
      
         <PublicationTypeList>
         
            <PublicationType>Radiology Report</PublicationType>
      
         </PublicationTypeList>
   
      </Article>
   
      <EssieArticleTitle>Indiana University Chest X-ray Collection</EssieArticleTitle>

   </MedlineCitation>
   <MeSH>{mesh}
   </MeSH>{images}
</eCitation>"""


def dicom_bytes(img12, report_id, image_name, seed, compress):
    """A CR DICOM file (MONOCHROME1: stored values inverted, air bright) of a 12-bit image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (JPEG2000Lossless, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID,
                             ComputedRadiographyImageStorage, generate_uid)

    stored = (4095 - img12.astype(np.int32)).astype(np.uint16)
    study_uid = generate_uid(entropy_srcs=[str(seed), "study", str(report_id)])
    series_uid = generate_uid(entropy_srcs=[str(seed), "series", image_name])
    sop_uid = generate_uid(entropy_srcs=[str(seed), "sop", image_name])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = "20110328"
    ds.StudyTime = ds.ContentTime = "090650"
    ds.AccessionNumber = str(report_id)
    ds.Modality = "CR"
    ds.Manufacturer = ""
    ds.PatientName = str(report_id)
    ds.PatientID = str(report_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(report_id)
    ds.SeriesNumber = int(image_name.split("-")[1])
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.PixelSpacing = [0.15, 0.15]
    ds.set_pixel_data(stored, "MONOCHROME1", 12, generate_instance_uid=False)
    lo, hi = int(np.percentile(stored, 1)), int(np.percentile(stored, 99))
    ds.WindowCenter = (lo + hi) // 2
    ds.WindowWidth = max(hi - lo, 1)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if compress:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _tar_add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _open_tgz(path):
    """A gzip'd tar with a fixed gzip timestamp (deterministic bytes)."""
    raw = open(path, "wb")
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    return raw, gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT)


def write_openi(out_dir, seed, n_reports, n_without_image, normal_fraction, prevalence, j2k_fraction, progress=True):
    """DICOM tgz + report tgz. Returns (box rows, number of DICOMs, number compressed)."""
    rng = np.random.default_rng([seed, 3])
    box_rows, n_dicoms, n_j2k = [], 0, 0
    without_image = set(int(i) for i in rng.choice(n_reports, min(n_without_image, n_reports), replace=False))
    dcm_raw, dcm_gz, dcm_tar = _open_tgz(os.path.join(out_dir, "images", "NLMCXR_dcm.tgz"))
    rep_raw, rep_gz, rep_tar = _open_tgz(os.path.join(out_dir, "labels", "NLMCXR_reports.tgz"))
    dir_info = tarfile.TarInfo("ecgen-radiology")
    dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
    rep_tar.addfile(dir_info)
    series = 2
    for k in tqdm(range(n_reports), desc="openi", unit="report", disable=not progress):
        report_id = 1000 + k
        findings = sample_findings(rng, normal_fraction, prevalence)
        n_images = 0 if k in without_image else int(rng.choice([1, 2], p=[0.4, 0.6]))
        series += int(rng.integers(1, 4))
        image_ids = []
        for j in range(n_images):
            name = f"{report_id}_IM-{series:04d}-{j + 1}001"
            irng = np.random.default_rng([seed, 4, report_id, j])
            h, w = int(irng.integers(380, 461)), int(irng.integers(360, 441))
            density, boxes = draw_chest(irng, h, w, findings)
            compress = irng.random() < j2k_fraction
            _tar_add(dcm_tar, name + ".dcm", dicom_bytes(to_12bit(irng, density), report_id, name, seed, compress))
            n_dicoms += 1
            n_j2k += compress
            image_ids.append("CXR" + name)
            box_rows += [("CXR" + name, fname, *box) for fname, box in boxes]
        xml = report_xml(report_id, report_texts(rng, findings), image_ids)
        _tar_add(rep_tar, f"ecgen-radiology/{report_id}.xml", xml.encode("utf-8"))
    for tar, gz, raw in ((dcm_tar, dcm_gz, dcm_raw), (rep_tar, rep_gz, rep_raw)):
        tar.close()
        gz.close()
        raw.close()
    return box_rows, n_dicoms, n_j2k


# ----------------------------------------------------------------------------------------------------------------------


def generate(out_dir, seed=0, padchest_images=1200, openi_reports=150, images_per_zip=300, exclude_rows=2,
             openi_without_image=3, normal_fraction=0.3, prevalence=0.21, jpeg2000_fraction=0.33, progress=True):
    """Write the sample world into out_dir and return a summary dict (counts, prevalence per finding, seconds)."""
    start = time.time()
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    for name in os.listdir(os.path.join(out_dir, "images")):
        if name.endswith(".zip") and name[:-4].isdigit():  # stale zips from a bigger earlier world
            os.remove(os.path.join(out_dir, "images", name))
    cuis = taxonomy_cuis()
    pad_boxes, n_pad = write_padchest(out_dir, seed, padchest_images, images_per_zip, exclude_rows, normal_fraction,
                                      prevalence, cuis, progress)
    openi_boxes, n_dcm, n_j2k = write_openi(out_dir, seed, openi_reports, openi_without_image, normal_fraction,
                                            prevalence, jpeg2000_fraction, progress)
    boxes = pd.DataFrame(pad_boxes + openi_boxes, columns=["Image Index", "Finding Label", "x", "y", "w", "h"])
    boxes.to_csv(os.path.join(out_dir, "BBox_List_2017.csv"), index=False)
    n_images = n_pad + n_dcm
    per_image = boxes.drop_duplicates(["Image Index", "Finding Label"])["Finding Label"].value_counts()
    return {
        "out_dir": out_dir,
        "padchest_images": n_pad,
        "zips": (n_pad + images_per_zip - 1) // images_per_zip,
        "openi_reports": openi_reports,
        "openi_dicoms": n_dcm,
        "openi_jpeg2000": int(n_j2k),
        "boxes": len(boxes),
        "prevalence": {name: round(float(per_image.get(name, 0)) / max(n_images, 1), 3) for name in DRAWN_FINDINGS},
        "seconds": round(time.time() - start, 1),
    }


def montage(world_dir, out_path, n=12, columns=4, size=256):
    """A grid of the world's first images (8-bit window, OpenI inverted) with their boxes, to eyeball the drawing."""
    import pydicom

    boxes = pd.read_csv(os.path.join(world_dir, "BBox_List_2017.csv"))
    tiles = []
    with zipfile.ZipFile(os.path.join(world_dir, "images", "0.zip")) as zf:
        for name in zf.namelist()[: n - n // 3]:
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
            lo, hi = np.percentile(img, [0.5, 99.5])
            tiles.append((name, np.clip((img - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)))
    with tarfile.open(os.path.join(world_dir, "images", "NLMCXR_dcm.tgz")) as tar:
        for member in tar.getmembers()[: n // 3]:
            ds = pydicom.dcmread(tar.extractfile(member))
            arr = ds.pixel_array.astype(np.float32)
            wc, ww = float(ds.WindowCenter), float(ds.WindowWidth)
            img = np.clip((arr - (wc - ww / 2)) / ww * 255, 0, 255)
            tiles.append(("CXR" + member.name[:-4], (255 - img).astype(np.uint8)))
    cells = []
    for image_id, img in tiles:
        h, w = img.shape
        scale = size / max(h, w)
        cell = np.zeros((size, size, 3), np.uint8)
        small = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        cell[: small.shape[0], : small.shape[1]] = small[..., None]
        for _, b in boxes[boxes["Image Index"] == image_id].iterrows():
            p0 = (int(b.x * scale), int(b.y * scale))
            p1 = (int((b.x + b.w) * scale), int((b.y + b.h) * scale))
            cv2.rectangle(cell, p0, p1, (0, 200, 255), 1)
            cv2.putText(cell, b["Finding Label"], (p0[0], max(p0[1] - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (0, 255, 0), 1)
        cells.append(cell)
    while len(cells) % columns:
        cells.append(np.zeros((size, size, 3), np.uint8))
    rows = [np.hstack(cells[i: i + columns]) for i in range(0, len(cells), columns)]
    cv2.imwrite(out_path, np.vstack(rows))
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate a small synthetic PadChest + OpenI world shaped like the real inputs.")
    parser.add_argument("--out", required=True, help="output folder (created; files of an earlier world are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    parser.add_argument("--padchest-images", type=int, default=1200, help="number of PadChest PNG images / CSV rows")
    parser.add_argument("--openi-reports", type=int, default=150, help="number of OpenI XML reports (1-2 DICOMs each)")
    parser.add_argument("--images-per-zip", type=int, default=300,
                        help="PadChest images per zip (zip number = ImageDir)")
    parser.add_argument("--exclude-rows", type=int, default=2,
                        help="PadChest rows labelled ['exclude'] (images still zipped)")
    parser.add_argument("--openi-without-image", type=int, default=3,
                        help="OpenI reports that have no image, as in the real data")
    parser.add_argument("--normal-fraction", type=float, default=0.3,
                        help="fraction of studies drawn and labelled normal")
    parser.add_argument("--prevalence", type=float, default=0.21,
                        help="chance of each drawn finding in an abnormal study (about 0.17 of all images at 0.21)")
    parser.add_argument("--jpeg2000-fraction", type=float, default=0.33,
                        help="fraction of DICOMs stored JPEG 2000 lossless")
    parser.add_argument("--montage", default=None,
                        help="also write a PNG grid of 12 images with their boxes to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for flag in ("padchest_images", "openi_reports", "images_per_zip"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            sys.exit(2)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"error: --out {args.out} exists and is not a folder", file=sys.stderr)
        sys.exit(2)
    if args.exclude_rows > args.padchest_images or args.openi_without_image > args.openi_reports:
        print("error: more exclude rows / imageless reports than images / reports", file=sys.stderr)
        sys.exit(2)
    summary = generate(args.out, args.seed, args.padchest_images, args.openi_reports, args.images_per_zip,
                       args.exclude_rows, args.openi_without_image, args.normal_fraction, args.prevalence,
                       args.jpeg2000_fraction, progress=not args.quiet)
    if args.montage:
        montage(args.out, args.montage)
    prevalence = ", ".join(f"{k} {v:.2f}" for k, v in summary["prevalence"].items())
    print(f"wrote {summary['padchest_images']} PadChest PNGs in {summary['zips']} zips, "
          f"{summary['openi_dicoms']} OpenI DICOMs "
          f"({summary['openi_jpeg2000']} JPEG 2000) for {summary['openi_reports']} reports, {summary['boxes']} boxes "
          f"to {args.out} in {summary['seconds']:.1f} s; prevalence: {prevalence}")


if __name__ == "__main__":
    main()
