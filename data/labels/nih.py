"""NIH ChestX-ray14 labels: Data_Entry_2017_v2020.csv -> the 22 classes.

NIH's 14 findings were text-mined from the reports (Wang et al. 2017) and map onto our classes as below; consolidation
counts as infiltrates, as the PadChest tree places it. The nine classes NIH never annotates (devices, tubes, surgery,
aortic elongation, ...) are unknown for its images, not negative: nih_labels.csv leaves them blank, and every loss and
metric leaves a blank out exactly as it leaves out -1. 'No Finding' means none of the 14, and becomes 'normal'.

Google's 2019 relabelling (google2019_nih-chest-xray-labels.csv: 4,376 NIH images, each read by three radiologists
for Fracture, Pneumothorax, Airspace opacity and Nodule or mass) is a stricter label set for those four findings. It is
kept apart from the 22 classes, as columns google_fracture, google_pneumothorax, google_airspace_opacity and
google_nodule_or_mass (1 or 0; in combined.csv blank for images Google did not relabel), for a metrics group of its own.
"""
import os

import numpy as np
import pandas as pd

from data.classes import CLASSES
from data.errors import LabelFileError
from data.files import read_table

CSV_NAME = "Data_Entry_2017_v2020.csv"
SOURCE = "nih"
# NIH finding (as spelt in Finding Labels) -> our class
FINDING_CLASS = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "infiltrates",
    "Edema": "pulmonary edema",
    "Effusion": "pleural effusion",
    "Emphysema": "emphysema",
    "Fibrosis": "pulmonary fibrosis",
    "Hernia": "other findings",
    "Infiltration": "infiltrates",
    "Mass": "mass",
    "No Finding": "normal",
    "Nodule": "nodule",
    "Pleural_Thickening": "other findings",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}
ANNOTATED = sorted(set(FINDING_CLASS.values()), key=CLASSES.index)
UNKNOWN = [c for c in CLASSES if c not in ANNOTATED]
REQUIRED_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
GOOGLE_CSV_NAME = "google2019_nih-chest-xray-labels.csv"
# Google's finding (its column) -> our column in nih_google_labels.csv and combined.csv
GOOGLE_COLUMNS = {"Fracture": "google_fracture", "Pneumothorax": "google_pneumothorax",
                  "Airspace opacity": "google_airspace_opacity", "Nodule or mass": "google_nodule_or_mass"}
GOOGLE_VALUES = {"YES": 1, "NO": 0}


def finding_class(finding):
    """Our class for an NIH finding name, any case ('effusion', 'Infiltrate' as the box list spells it), or None."""
    key = str(finding).strip().lower().replace(" ", "_")
    lookup = {k.lower(): v for k, v in FINDING_CLASS.items()} | {"infiltrate": "infiltrates", "no_finding": "normal"}
    return lookup.get(key)


def read_data_entry(path):
    """The Data_Entry CSV (plain or .gz) with its required columns checked; LabelFileError naming what is missing."""
    return read_table(path, REQUIRED_COLUMNS, what="NIH's Data_Entry_2017 CSV",
                      dtype={"Image Index": str, "Finding Labels": str, "Patient ID": str, "View Position": str},
                      keep_default_na=False)


def nih_labels(path):
    """(frame, stats): ImageID, PatientID, StudyID, Projection, view, Source and the 22 classes (1, 0, or NaN for the
    classes NIH does not annotate) for every row of the Data_Entry CSV."""
    entry = read_data_entry(path)
    cells = entry["Finding Labels"].str.split("|")
    exploded = cells.explode().str.strip()
    unknown = exploded[exploded.map(finding_class).isna()]
    if len(unknown):
        row = int(unknown.index[0])
        raise LabelFileError(f"{path}, row {row + 2}: Finding Labels has unknown finding {unknown.iloc[0]!r} (expected "
                             f"{' | '.join(FINDING_CLASS)})")
    labels = pd.DataFrame(0.0, index=entry.index, columns=CLASSES)
    classes = exploded.map(finding_class)
    hit = pd.crosstab(classes.index, classes).reindex(index=entry.index, fill_value=0)
    for cls in hit.columns:
        labels[cls] = (hit[cls] > 0).astype(float)
    labels[UNKNOWN] = np.nan
    frame = pd.DataFrame({
        "ImageID": entry["Image Index"].str.strip(),
        # NIH's patient numbers are small integers: prefixed, they cannot meet another source's PatientID
        "PatientID": "nih-" + entry["Patient ID"].str.strip(),
        "StudyID": entry["Image Index"].str.strip().str.rsplit(".", n=1).str[0],
        "Projection": entry["View Position"].str.strip(),
        "view": entry["View Position"].str.strip(),
        "Source": SOURCE,
    })
    frame = pd.concat([frame, labels], axis=1)
    duplicated = frame["ImageID"].duplicated()
    if duplicated.any():
        raise LabelFileError(f"{path}, row {int(np.flatnonzero(duplicated)[0]) + 2}: Image Index "
                             f"{frame['ImageID'][duplicated].iloc[0]!r} appears twice")
    stats = {"rows": len(entry), "patients": int(frame["PatientID"].nunique()),
             "views": frame["view"].value_counts().to_dict()}
    return frame, stats


def google_labels(path):
    """(frame, stats) of Google's 2019 NIH labels: ImageID and the GOOGLE_COLUMNS values 1 (YES) or 0 (NO) per image;
    stats: rows and the images per 'Set Id' (NIH's val or test). LabelFileError naming the file and row for a missing
    column, a value other than YES or NO, or an image listed twice."""
    raw = read_table(path, ["Image Index", *GOOGLE_COLUMNS], what="Google's 2019 NIH relabelling CSV "
                     f"({GOOGLE_CSV_NAME})", dtype=str, keep_default_na=False)
    frame = pd.DataFrame({"ImageID": raw["Image Index"].str.strip()})
    for finding, column in GOOGLE_COLUMNS.items():
        value = raw[finding].str.strip().str.upper().map(GOOGLE_VALUES)
        if value.isna().any():
            row = int(np.flatnonzero(value.isna())[0])
            raise LabelFileError(f"{path}, row {row + 2}: {finding} is {raw[finding].iloc[row]!r}, expected YES or NO")
        frame[column] = value.astype(np.int8)
    duplicated = frame["ImageID"].duplicated()
    if duplicated.any():
        raise LabelFileError(f"{path}, row {int(np.flatnonzero(duplicated)[0]) + 2}: Image Index "
                             f"{frame['ImageID'][duplicated].iloc[0]!r} appears twice")
    sets = raw["Set Id"].value_counts().to_dict() if "Set Id" in raw else {}
    return frame, {"rows": len(frame), "sets": sets}


def read_test_list(path):
    """NIH's test_list.txt (or train_val_list.txt): one image name a line, blank lines skipped -> the names.
    LabelFileError naming the file, and the row, for a missing or binary file or a line that is not one name."""
    if not os.path.isfile(path):
        raise LabelFileError(f"{path}: NIH's test list not found" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise LabelFileError(f"{path}: not a text file of image names (not UTF-8)") from None
    except OSError as e:
        raise LabelFileError(f"{path}: cannot read: {e.strerror or e}") from None
    names = []
    for row, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if any(c in name for c in ",\t ") or "\x00" in name:
            raise LabelFileError(f"{path}, row {row}: {name[:60]!r} is not one image name (the file lists one image "
                                 f"name a line, as NIH's test_list.txt does)")
        names.append(name)
    if not names:
        raise LabelFileError(f"{path}: no image names (NIH's test_list.txt lists one a line)")
    return names
