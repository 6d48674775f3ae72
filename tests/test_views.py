import gzip
import os

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from conftest import REAL_DATA
from data.views import DEFAULT_VIEWS, header_view, keeps, parse_views, view_kind

METADATA = os.path.join(REAL_DATA, "nlmcxr_dicom_metadata.csv.gz")


def test_real_radiographs_headers():
    assert header_view(pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"), stop_before_pixels=True)) == "PA"
    assert header_view(pydicom.dcmread(get_testdata_file("RG3_UNCI.dcm"), stop_before_pixels=True)) == "AP"


def dataset(**values):
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("values, view", [
    ({"ViewPosition": "LL "}, "LL"),
    ({"ViewPosition": "", "SeriesDescription": "CHEST LAT"}, "lateral"),
    ({"ViewPosition": "", "SeriesDescription": "Chest P.A."}, "PA"),
    ({"AcquisitionDeviceProcessingDescription": "NA_chestLAT_auto"}, "lateral"),
    ({"AcquisitionDeviceProcessingDescription": "NA_chest_auto_lat_CES"}, "lateral"),
    ({"AcquisitionDeviceProcessingDescription": "NA_chestAP_auto"}, "AP"),
    ({"SeriesDescription": "Chest PA and Lateral"}, ""),  # names the study's two views, not this image's
    ({"SeriesDescription": "CHEST", "ProtocolName": "Thorax"}, ""),
    ({}, ""),
])
def test_header_view(values, view):
    assert header_view(dataset(**values)) == view


def test_view_code_sequence():
    item = Dataset()
    item.CodeMeaning = "left lateral"
    assert header_view(dataset(ViewCodeSequence=[item])) == "LL"


def test_openi_metadata_kinds_match_an_independent_count():
    with gzip.open(METADATA, "rt") as f:
        frame = pd.read_csv(f, usecols=["View Position"], dtype=str, keep_default_na=False)
    kinds = frame["View Position"].map(view_kind).value_counts().to_dict()
    positions = frame["View Position"].value_counts().to_dict()
    assert kinds == {"frontal": positions["PA"] + positions["AP"],
                     "lateral": positions["LL"] + positions["LATERAL"] + positions["RL"] + positions["LARGE LATERAL"],
                     "": positions[""]}
    assert kinds["frontal"] == 4_016 and kinds[""] == 2_586


def test_parse_views():
    assert parse_views("all") is None
    assert parse_views("frontal") == {"PA", "AP", "AP_horizontal", "frontal"}
    views = parse_views("PA,lateral")
    assert keeps(views, "PA") and keeps(views, "LL") and keeps(views, "lateral") and not keeps(views, "AP")
    assert not keeps(views, "") and keeps(None, "")
    with pytest.raises(ValueError, match="names no view"):
        parse_views(" , ")


def test_parse_views_of_padchest_projections():
    """parselabelfile.py's --views: PadChest's own names in any case, the kinds as the projections of that kind."""
    from data.labels.padchest import PROJECTIONS
    assert parse_views("pa,Ap_Horizontal", PROJECTIONS) == {"PA", "AP_horizontal"}
    assert parse_views("frontal", PROJECTIONS) == set(DEFAULT_VIEWS) == {"PA", "AP", "AP_horizontal"}
    assert parse_views("lateral,costal", PROJECTIONS) == {"L", "COSTAL"}
    assert parse_views("ALL", PROJECTIONS) is None
    with pytest.raises(ValueError, match=r"^LL, XX is not a PadChest projection; give some of PA, AP, "):
        parse_views("LL,pa,XX", PROJECTIONS, "a PadChest projection")  # a DICOM name is not PadChest's



def test_both_views_flags_default_to_the_same_frontal_views():
    import parselabelfile
    import traintest
    step2 = parselabelfile.parse_args(["--padchest-csv", "p.csv", "--out", "o"]).views
    step4 = parse_views(traintest.parse_args(["--csv", "c.csv"]).views)
    assert step2 == set(DEFAULT_VIEWS) and step4 == step2 | {"frontal"}  # step 4 also keeps the classifier's 'frontal'
