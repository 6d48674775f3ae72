"""The CheXpert labeler's 14 observations mapped to the classes as their definitions say, decided against the PadChest
taxonomy (data/labels/padchest_tree.csv): Fracture is PadChest's 'fracture', a term beside 'thoracic cage deformation',
so 'other findings'; Support Devices spans several classes and terms outside them, so names none (blank)."""

import numpy as np
import pandas as pd
import pytest

from data.classes import CLASSES
from data.labels.openi import CHEXPERT_COLUMNS, CHEXPERT_UNKNOWN, read_chexpert_csv
from data.labels.padchest import term_classes

FRACTURES = ["fracture", "rib fracture", "callus rib fracture", "clavicle fracture", "humeral fracture",
             "vertebral fracture"]
# PadChest's terms for what the CheXpert labeler's Support Devices phrases name (mention_phrases/support_devices.txt:
# line, PICC, catheter, pacer, ICD, tube, drain, valve, hardware, plate, screw, ...)
SUPPORT_DEVICES = ["central venous catheter", "reservoir central venous catheter", "pacemaker", "dai", "nsg tube",
                   "endotracheal tube", "tracheostomy tube", "chest drain tube", "artificial heart valve",
                   "osteosynthesis material"]
DEVICE_CLASSES = {"catheter", "electrical device", "nsg tube", "surgery"}


def test_fracture_is_other_findings_as_in_padchest():
    tree = term_classes()
    # every PadChest fracture, the rib's too, sits under no class ('other findings'), not thoracic cage deformation
    assert {t: tree[t] for t in FRACTURES} == {t: set() for t in FRACTURES}
    assert tree["scoliosis"] == tree["pectum excavatum"] == {"thoracic cage deformation"}
    assert CHEXPERT_COLUMNS["Fracture"] == "other findings"


def test_support_devices_names_no_class():
    tree = term_classes()
    covered = [tree[t] for t in SUPPORT_DEVICES]
    # four classes and terms outside every class: no one class is right
    assert set().union(*covered) == DEVICE_CLASSES and set() in covered
    assert CHEXPERT_COLUMNS["Support Devices"] is None
    # the classes no observation maps to are unknown for this source: those four, and thoracic cage deformation now
    assert DEVICE_CLASSES | {"thoracic cage deformation", "nodule", "emphysema"} <= set(CHEXPERT_UNKNOWN)
    assert not set(CHEXPERT_UNKNOWN) & set(CHEXPERT_COLUMNS.values())


@pytest.mark.parametrize("observations, expected", [
    ({"Fracture": 1.0}, {"other findings": 1}),
    ({"Fracture": 1.0, "Pneumothorax": 1.0}, {"pneumothorax": 1}),
    # CheXpert's No Finding ignores devices; a device is a finding of ours, of a class (or none) it does not say
    ({"No Finding": 1.0, "Support Devices": 1.0}, {"other findings": None}),
    ({"Support Devices": -1.0}, {"other findings": None}),
    ({"Support Devices": 1.0, "Cardiomegaly": 1.0}, {"cardiomegaly": 1}),
    ({"Support Devices": 1.0, "Lung Opacity": 1.0}, {"other findings": 1}),
    ({"No Finding": 1.0, "Support Devices": 0.0}, {"normal": 1}),
], ids=["fracture", "fracture-beside-pneumothorax", "device-beside-no-finding", "uncertain-device",
        "device-beside-cardiomegaly", "device-beside-opacity", "no-device"])
def test_chexpert_rows(tmp_path, observations, expected):
    """expected: the known classes that are not 0 (None: unknown); CHEXPERT_UNKNOWN is always unknown."""
    path = tmp_path / "chexpert.csv"
    pd.DataFrame([{"Reports": "a report", **{c: observations.get(c, np.nan) for c in CHEXPERT_COLUMNS}}]).to_csv(
        path, index=False)
    values, unlabeled, unmatched = read_chexpert_csv(path, ["a  report"])
    row = dict(zip(CLASSES, values[0]))
    assert [c for c in CLASSES if np.isnan(row[c]) and c not in expected] == CHEXPERT_UNKNOWN
    got = {c: (None if np.isnan(v) else int(v)) for c, v in row.items() if c not in CHEXPERT_UNKNOWN
           and (np.isnan(v) or v != 0)}
    assert got == expected
    assert not unlabeled[0] and unmatched == 0
