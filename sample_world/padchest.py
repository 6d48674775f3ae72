"""PadChest-style output: zips of 16-bit grayscale PNGs (member name = ImageID, zip number = ImageDir) and the label
CSV with the real header, real taxonomy terms and CUIs, stemmed Spanish reports and the real quirks. As in PadChest,
many PA studies have a lateral second image (Projection L) under the same StudyID and report."""

import os
import zipfile

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data.labels.padchest import TAXONOMY
from sample_world.anatomy import draw_chest, to_12bit
from sample_world.findings import FINDINGS, sample_findings
from sample_world.lateral import draw_lateral

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


FIXED_TIME = (2019, 2, 1, 0, 0, 0)  # zip member timestamps, so the zips are byte-identical per seed


def taxonomy_cuis(path=TAXONOMY):
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


def _digits(rng, n):
    return str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, n - 1))


def _alnum(rng, n):
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(chars[i] for i in rng.integers(0, len(chars), n))


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


# ViewPosition_DICOM of each Projection, with the real CSV's shares (its laterals: LATERAL 24,527, LL 3,383, none 21,663)
VIEW_POSITIONS = {"PA": (["POSTEROANTERIOR", "PA"], None), "AP": (["ANTEROPOSTERIOR", "AP", None], None),
                  "L": (["LATERAL", "LL", None], [0.5, 0.07, 0.43])}


def padchest_row(rng, index, image_id, image_dir, image, h, w, cuis):
    """The label CSV row of one image (a dict over PADCHEST_COLUMNS): the study's report and labels, the image's
    projection."""
    study = image["study"]
    findings = study["findings"]
    if image["exclude"]:
        labels, locs, by_sentence, report = ["exclude"], [], [["exclude"]], " exclu ."
    elif not findings:
        labels, locs, by_sentence = ["normal"], [], [["normal"]]
        report = study["normal_report"]
    else:
        labels, locs, by_sentence, sentences = [], [], [], []
        for f in findings:
            spec = FINDINGS[f["name"]]
            floc = spec.localizations(f)
            labels += [t for t in f["terms"] if t not in labels]
            locs += [loc for loc in floc if loc not in locs]
            by_sentence.append(list(f["terms"]) + floc)
            sentences.append(spec.spanish_sentence(f))
        report = " " + " . ".join(sentences) + " ."
    method = study["method"]
    label_text = str(labels)
    if study["quirk"] and labels:
        label_text = "[' " + label_text[2:]  # real quirk: a leading space inside the first item
    modality = "CR" if rng.random() < 0.9 else "DX"
    manufacturer = str(rng.choice(["PhilipsMedicalSystems", "ImagingDynamicsCompanyLtd"]))
    label_cuis = [cuis.get(t.strip(), "") for t in labels]
    views, shares = VIEW_POSITIONS[image["projection"]]
    return {
        "": index,
        "ImageID": image_id,
        "ImageDir": image_dir,
        "StudyDate_DICOM": study["date"],
        "StudyID": study["study_id"],
        "PatientID": study["patient_id"],
        "PatientBirth": float(study["birth"]),
        "PatientSex_DICOM": study["sex"],
        "ViewPosition_DICOM": views[int(rng.choice(len(views), p=shares))],
        "Projection": image["projection"],
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


def padchest_images(rng, n_images, n_exclude, normal_fraction, prevalence, lateral_fraction):
    """The images, study by study: studies grouped into patients (some with 2-3 studies), each a PA or AP image, and
    a PA study followed by a lateral of the same report with the chance that makes about `lateral_fraction` of the
    images laterals. Each image: {"study", "projection", "exclude"}; `n_exclude` images are labelled 'exclude'."""
    # laterals / images = 0.85 p / (1 + 0.85 p) for a lateral chance p per study, 85% of studies being PA
    lateral_chance = lateral_fraction / (0.85 * (1 - lateral_fraction))
    studies, count = [], 0
    while count < n_images:
        patient_id = _digits(rng, int(rng.choice([37, 38, 39])))
        birth, sex = int(rng.integers(1925, 2000)), str(rng.choice(["M", "F"]))
        for k in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
            if count == n_images:
                break
            study_id = _digits(rng, int(rng.choice([38, 39])))
            study = {
                "patient_id": patient_id, "birth": birth, "sex": sex, "study_id": study_id,
                "date": int(f"20{rng.integers(9, 18):02d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"),
                "report_id": int(rng.integers(1_000_000, 9_999_999)),
                "method": "Physician" if rng.random() < 0.25 else "RNN_model",
                "findings": sample_findings(rng, normal_fraction, prevalence),
                "normal_report": str(rng.choice([" sin hallazg patolog .", " sin alter radiolog significacion .",
                                                 " estudi sin alter significacion ."])),
            }
            study["quirk"] = study["method"] == "RNN_model" and rng.random() < 0.08
            frontal = "PA" if rng.random() < 0.85 else "AP"
            projections = [frontal] + (["L"] if frontal == "PA" and rng.random() < lateral_chance else [])
            projections = projections[:n_images - count]
            studies.append([{"study": study, "projection": p, "exclude": False} for p in projections])
            count += len(projections)
    images = [image for i in rng.permutation(len(studies)) for image in studies[i]]
    for i in rng.choice(len(images), n_exclude, replace=False):
        images[i]["exclude"] = True
    return images


def _png16(img):
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def write_padchest(out_dir, seed, n_images, per_zip, n_exclude, normal_fraction, prevalence, lateral_fraction, cuis,
                   progress=True):
    """Zips + label CSV. Returns (list of box rows, number of images, number of laterals). Laterals get no box rows:
    localization is scored on frontal views only."""
    rng = np.random.default_rng([seed, 1])
    images = padchest_images(rng, n_images, n_exclude, normal_fraction, prevalence, lateral_fraction)
    rows, box_rows = [], []
    images_dir = os.path.join(out_dir, "images")
    zf = None
    for i, image in enumerate(tqdm(images, desc="padchest", unit="img", disable=not progress)):
        image_dir = i // per_zip
        if i % per_zip == 0:
            if zf is not None:
                zf.close()
            zf = zipfile.ZipFile(os.path.join(images_dir, f"{image_dir}.zip"), "w", zipfile.ZIP_STORED)
        irng = np.random.default_rng([seed, 2, i])
        h, w = int(irng.integers(340, 421)), int(irng.integers(320, 401))
        findings = [] if image["exclude"] else image["study"]["findings"]
        if image["projection"] == "L":
            density, boxes = draw_lateral(irng, h, w, findings), []
        else:
            density, boxes = draw_chest(irng, h, w, findings)
        img = add_burned_in(irng, to_12bit(irng, density))
        image_id = f"{image['study']['study_id']}_{_alnum(irng, 6)}.png"
        info = zipfile.ZipInfo(image_id, date_time=FIXED_TIME)
        zf.writestr(info, _png16(img))
        rows.append(padchest_row(irng, i, image_id, image_dir, image, h, w, cuis))
        box_rows += [(image_id, name, *box) for name, box in boxes]
    if zf is not None:
        zf.close()
    frame = pd.DataFrame(rows, columns=PADCHEST_COLUMNS)
    frame.to_csv(os.path.join(out_dir, "labels", PADCHEST_CSV), index=False)
    return box_rows, len(rows), int((frame["Projection"] == "L").sum())
