"""NIH ChestX-ray14-style output, laid out as NIH and Google's bucket gs://gcs-public-data--healthcare-nih-chest-xray
hold it: loose 8-bit 1024 x 1024 PNGs nih/png/<Image Index> (00000001_000.png: patient 1, follow-up 0), and beside
them Data_Entry_2017_v2020.csv with NIH's columns, BBox_List_2017.csv with NIH's odd header, and NIH's split lists
test_list.txt and train_val_list.txt.

Only NIH's findings are drawn (NIH_FINDINGS: the six shared ones and the NIH-only infiltration and pneumonia, which
are its eight box findings), and Finding Labels says exactly what is drawn ('No Finding' when nothing is). Boxes are
in the PNG's 1024 x 1024 pixels, one per drawn sign, on every image with a finding of the box patients: about a fifth
of the patients, chosen among those with a finding, all in test_list.txt (as NIH's 880 box images are in its test
list). OriginalImage[Width,Height] is the size of the DICOM NIH converted from, NOT the frame of the boxes.
"""

import os

import cv2
import numpy as np
from tqdm import tqdm

from sample_world.anatomy import draw_chest
from sample_world.findings import NIH_FINDINGS, SPECS, sample_findings

NIH_DIR = "nih"
DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BOX_LIST = "BBox_List_2017.csv"
# NIH's headers as they are: the brackets' commas split them into more fields than names
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                     "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
SIZE = 1024
BOX_PATIENTS = 0.2  # share of the patients whose images with a finding get boxes
# (width, height, pixel spacing) of the originals, common ones in the real Data_Entry
ORIGINALS = [(2500, 2048, 0.168), (2500, 2048, 0.171), (2992, 2991, 0.143), (3056, 2544, 0.139), (2048, 2500, 0.168),
             (2021, 2021, 0.194)]


def nih_images(rng, n_images, normal_fraction, prevalence):
    """The images, patient by patient (1 to 5 follow-ups each): dicts with patient, follow_up, age, sex, view and
    findings (drawn from NIH_FINDINGS only)."""
    images, patient = [], 0
    while len(images) < n_images:
        patient += 1
        age, sex = int(rng.integers(12, 86)), str(rng.choice(["M", "F"], p=[0.56, 0.44]))
        for k in range(int(rng.choice([1, 2, 3, 4, 5], p=[0.45, 0.2, 0.15, 0.1, 0.1]))):
            if len(images) == n_images:
                break
            age += int(rng.integers(0, 2))
            images.append({"patient": patient, "follow_up": k, "age": age, "sex": sex,
                           "view": "PA" if rng.random() < 0.6 else "AP",
                           "findings": sample_findings(rng, normal_fraction, prevalence, names=NIH_FINDINGS)})
    return images


def to_8bit(rng, density):
    """Density to the 8-bit display values NIH's PNGs hold: windowed to the image's own range (as a viewer would
    before export), then a per-image output range and gamma. In float32 and OpenCV: a 1024 x 1024 image is a million
    pixels."""
    low, high = np.percentile(density[::4, ::4], [0.5, 99.8])
    lo, hi, gamma = rng.uniform(0, 25), rng.uniform(230, 255), rng.uniform(0.85, 1.15)
    t = (density - np.float32(low)) * np.float32(1 / max(high - low, 1e-6))
    np.clip(t, 0, 1, out=t)
    return cv2.convertScaleAbs(cv2.pow(t, gamma), alpha=hi - lo, beta=lo)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def write_nih(out_dir, seed, n_images, normal_fraction, prevalence, progress=True):
    """nih/png/*.png, Data_Entry, the box list and the split lists. Returns a dict of counts (images, patients,
    boxes, box_images, test_images)."""
    rng = np.random.default_rng([seed, 5])
    images = nih_images(rng, n_images, normal_fraction, prevalence)
    patients = sorted({i["patient"] for i in images})
    sick = sorted({i["patient"] for i in images if i["findings"]})
    n_box = min(len(sick), max(1, round(BOX_PATIENTS * len(patients)))) if sick else 0
    box_patients = set(int(p) for p in rng.choice(sick, n_box, replace=False)) if n_box else set()
    others = [p for p in patients if p not in box_patients]
    test = box_patients | set(int(p) for p in rng.choice(others, min(len(others), round(0.05 * len(patients))),
                                                       replace=False))
    png_dir = os.path.join(out_dir, NIH_DIR, "png")
    os.makedirs(png_dir, exist_ok=True)
    for name in os.listdir(png_dir):  # a bigger earlier world's images
        os.remove(os.path.join(png_dir, name))
    entries, box_rows = [DATA_ENTRY_HEADER], []
    for index, image in enumerate(tqdm(images, desc="nih", unit="img", disable=not progress)):
        name = f"{image['patient']:08d}_{image['follow_up']:03d}.png"
        irng = np.random.default_rng([seed, 6, index])
        # drawn at a quarter of the size: NIH's PNGs are downscaled from larger originals, so they are smooth anyway
        density, boxes = draw_chest(irng, SIZE, SIZE, image["findings"], scale=0.25)
        ok, png = cv2.imencode(".png", to_8bit(irng, density))
        assert ok
        with open(os.path.join(png_dir, name), "wb") as f:
            f.write(png.tobytes())
        width, height, spacing = ORIGINALS[int(irng.integers(len(ORIGINALS)))]
        labels = "|".join(sorted(SPECS[f["name"]].nih for f in image["findings"])) or "No Finding"
        entries.append(f"{name},{labels},{image['follow_up']},{image['patient']},{image['age']},{image['sex']},"
                       f"{image['view']},{width},{height},{spacing},{spacing}")
        if image["patient"] in box_patients:
            box_rows += [(SPECS[finding].nih_box, name, box) for finding, box in boxes]
    nih_dir = os.path.join(out_dir, NIH_DIR)
    _write_lines(os.path.join(nih_dir, DATA_ENTRY), entries)
    # grouped by finding as NIH's list is, each row ending in the three empty fields its header names
    _write_lines(os.path.join(nih_dir, BOX_LIST), [BOX_HEADER] + [
        f"{name},{label},{x},{y},{w},{h},,," for label, name, (x, y, w, h) in sorted(box_rows, key=lambda r: r[:2])])
    names = [line.split(",", 1)[0] for line in entries[1:]]
    in_test = [image["patient"] in test for image in images]
    _write_lines(os.path.join(nih_dir, "test_list.txt"), [n for n, t in zip(names, in_test) if t])
    _write_lines(os.path.join(nih_dir, "train_val_list.txt"), [n for n, t in zip(names, in_test) if not t])
    return {"images": len(images), "patients": len(patients), "boxes": len(box_rows),
            "box_images": len({row[1] for row in box_rows}), "test_images": int(sum(in_test))}
