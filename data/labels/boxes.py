"""Ground-truth boxes: NIH's BBox_List_2017.csv (984 boxes on 880 images over eight findings) or a box CSV in its
plain layout, read as ImageID, class, x, y, w, h.

Step 3 pins the box images' patients to test (combinelabels.py --test-boxes) and step 4 scores localization against
the boxes (traintest.py --boxes-csv); both read the file here, so step 3 needs no torch for it.
"""
import math

import pandas as pd

from data.classes import CLASSES
from data.errors import LabelFileError
from data.files import read_table
from data.labels.nih import finding_class

BOX_COLUMNS = ["ImageID", "class", "x", "y", "w", "h"]
# NIH's eight box findings, as BBox_List_2017 spells them (Data_Entry's 'Infiltration' is 'Infiltrate' there)
NIH_BOX_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia",
                    "Pneumothorax")
BOX_CLASSES = [c for c in CLASSES if c in {finding_class(f) for f in NIH_BOX_FINDINGS}]


def box_class(finding):
    """Our class for a box CSV's finding label, or None: one of CLASSES (any case), or an NIH finding name (any case,
    either spelling of Infiltration) whose class is one of the eight box findings' classes."""
    key = str(finding).strip().lower()
    if key in CLASSES:
        return key
    cls = finding_class(key)
    return cls if cls in BOX_CLASSES else None


def read_box_csv(path):
    """Ground-truth boxes from a CSV in the NIH BBox_List_2017 layout, as a DataFrame ImageID, class, x, y, w, h.

    Accepts the real NIH header (`Image Index,Finding Label,Bbox [x,y,w,h],,,`, which splits into odd column names and
    trailing empty columns, with or without the three empty fields at the end of each row) and the plain
    `Image Index,Finding Label,x,y,w,h`: columns are taken by position (plain or .gz).
    Raises LabelFileError naming the file and row for a row that cannot be read.
    """
    raw = read_table(path, ["Image Index", "Finding Label"], what="a box CSV in the NIH BBox_List_2017 layout "
                     "(Image Index,Finding Label,x,y,w,h)", dtype=str, keep_default_na=False)
    if raw.shape[1] < 6:
        raise LabelFileError(f"{path}: expected columns 'Image Index,Finding Label,x,y,w,h' (NIH BBox_List_2017 "
                             f"layout), got {list(raw.columns)}")
    rows = []
    for i, values in enumerate(raw.iloc[:, :6].itertuples(index=False), start=2):
        image_id, finding = values[0].strip(), values[1]
        cls = box_class(finding)
        if cls is None:
            raise LabelFileError(f"{path}: row {i}: unknown finding {finding!r} (expected one of NIH's box findings "
                                 f"{', '.join(NIH_BOX_FINDINGS)} or one of CLASSES)")
        try:
            box = [float(v) for v in values[2:6]]
        except ValueError:
            box = [math.nan]
        if not all(map(math.isfinite, box)):  # 'nan' and 'inf' parse as floats, and would score as misses
            raise LabelFileError(f"{path}: row {i}: box {list(values[2:6])} is not four numbers")
        x, y, w, h = box
        if not (w > 0 and h > 0):
            raise LabelFileError(f"{path}: row {i}: box width and height must be positive, got w={w}, h={h}")
        rows.append((image_id, cls, x, y, w, h))
    return pd.DataFrame(rows, columns=BOX_COLUMNS)
