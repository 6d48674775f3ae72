"""OpenI reports: XML parsing from folder and .tgz, MeSH mapping, CheXpert import, bad input."""

import os
import re
import tarfile

import numpy as np
import pandas as pd
import pytest

import parselabelfile
from conftest import REAL_DATA
from data.classes import CLASSES
from data.labels.openi import (CHEXPERT_COLUMNS, CHEXPERT_UNKNOWN, mesh_labels, mesh_term_classes, openi_labels,
                               read_reports, report_text)
from data.errors import LabelFileError

REAL_TGZ = os.path.join(REAL_DATA, "NLMCXR_reports.tgz")


def positives(frame, image_id):
    row = frame.set_index("ImageID").loc[image_id]
    return sorted(c for c in CLASSES if row[c] == 1)


@pytest.fixture(scope="module")
def real():
    return openi_labels(REAL_TGZ)


@pytest.mark.slow
def test_all_real_reports_and_images_parse(real):
    frame, reports, stats = real
    assert stats["reports"] == 3955 == len(reports)
    assert stats["images"] == 7470 == len(frame) == frame["ImageID"].nunique()
    assert stats["reports_without_images"] == 104 and stats["malformed_xml"] == 0
    assert list(frame.columns) == ["ImageID", "PatientID", "StudyID", "Projection", "Source", *CLASSES, "Unlabeled"]
    # the report id is patient and study: all images of report 1000 share it
    r1000 = frame[frame["ImageID"].str.startswith("CXR1000_")]
    assert r1000["ImageID"].tolist() == ["CXR1000_IM-0003-1001", "CXR1000_IM-0003-2001", "CXR1000_IM-0003-3001"]
    assert set(r1000["PatientID"]) == set(r1000["StudyID"]) == {"CXR1000"}
    assert positives(frame, "CXR1000_IM-0003-1001") == ["atelectasis"]  # + Opacity, outside the named classes
    assert positives(frame, "CXR1_IM-0001-3001") == ["normal"]  # the XML says CXR1_1_IM-0001-3001
    assert frame["ImageID"].str.fullmatch(r"CXR\d+_IM-[-\d]+").all()  # the ImageIDs of the DICOM names
    assert frame[CLASSES].isin([0, 1]).all().all()
    text = report_text(reports)
    assert text.iloc[0].startswith("The cardiac silhouette") and text.iloc[0].endswith("Normal chest x-XXXX.")


def test_mesh_mapping():
    assert mesh_term_classes("Catheters, Indwelling/right") == {"catheter"}
    assert mesh_term_classes("Aorta, Thoracic/tortuous/mild") == {"aortic elongation"}
    assert mesh_term_classes("Calcinosis/aorta") == {"other findings"}
    assert mesh_term_classes("Implanted Medical Device/left") == {"electrical device"}
    assert mesh_term_classes("Implanted Medical Device/aortic valve") == {"other findings"}
    assert mesh_term_classes("Implanted Medical Device/humerus/right") == {"surgery"}
    assert mesh_term_classes("Tube, Inserted/trachea") == {"other findings"}
    assert mesh_term_classes("Tube, Inserted/abdomen") == {"nsg tube"}
    assert mesh_term_classes("Pulmonary Disease, Chronic Obstructive") == {"copd signs"}
    assert mesh_term_classes("Hydropneumothorax/right") == {"pleural effusion", "pneumothorax"}
    assert mesh_term_classes("Technical Quality of Image Unsatisfactory ") == set()
    row = dict(zip(CLASSES, mesh_labels(["Granulomatous Disease", "Spine/degenerative"])))
    assert row["other findings"] == 1 and sum(row.values()) == 1
    row = dict(zip(CLASSES, mesh_labels(["Scoliosis/severe", "Spine/degenerative"])))
    assert row["thoracic cage deformation"] == 1 and row["other findings"] == 0


def small_reports(folder, names=("1.xml", "1000.xml", "2.xml")):
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(REAL_TGZ) as tar:
        for name in names:
            data = tar.extractfile(f"ecgen-radiology/{name}").read()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def test_folder_and_archive_agree_and_malformed_xml_is_skipped(tmp_path, caplog):
    folder = tmp_path / "ecgen-radiology"
    small_reports(folder)
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    from_folder, _, _ = openi_labels(str(folder))
    from_archive, _, _ = openi_labels(str(archive))
    pd.testing.assert_frame_equal(from_folder.sort_values("ImageID").reset_index(drop=True),
                                  from_archive.sort_values("ImageID").reset_index(drop=True))
    (folder / "9999.xml").write_text("<eCitation><uId id='CXR9999'/><MeSH>")
    frame, reports, stats = openi_labels(str(folder))
    assert stats["malformed_xml"] == 1 and stats["reports"] == 3
    assert "9999.xml: malformed XML, skipped" in caplog.text
    assert len(frame) == len(from_folder)


def chexpert_csv(path, texts):
    """A CheXpert-labeler output for texts[:4] (the last text has no row): report 0 normal; report 1 opacity +
    devices + uncertain consolidation and effusion; report 2 opacity and an enlarged cardiomediastinum only; report 3
    all blank."""
    texts = texts[:4]
    frame = pd.DataFrame({"Reports": texts, **{c: [np.nan] * len(texts) for c in CHEXPERT_COLUMNS}})
    frame.loc[0, "No Finding"] = 1.0
    frame.loc[1, ["Lung Opacity", "Support Devices"]] = 1.0
    frame.loc[1, ["Consolidation", "Pleural Effusion"]] = [-1.0, -1.0]
    frame.loc[1, "Pneumothorax"] = 0.0
    frame.loc[2, ["Lung Opacity", "Enlarged Cardiomediastinum"]] = [1.0, -1.0]
    frame.to_csv(path, index=False)


def test_chexpert_import_and_bad_chexpert_csv(tmp_path, capsys):
    folder = tmp_path / "reports"
    small_reports(folder, ("1.xml", "1000.xml", "2.xml", "3.xml", "4.xml"))
    _, reports, _ = openi_labels(str(folder))
    csv = tmp_path / "chexpert.csv"
    chexpert_csv(csv, report_text(reports).tolist())
    frame, _, stats = openi_labels(str(folder), "chexpert", str(csv))
    by_report = frame.drop_duplicates("PatientID").set_index("PatientID").loc[reports["ReportID"]]
    row0, row1, row2 = (by_report.iloc[i][CLASSES].to_dict() for i in range(3))
    # the classes no CheXpert observation maps to are unknown, not negative
    for row in (row0, row1, row2):
        assert [c for c in CLASSES if pd.isna(row[c])] == CHEXPERT_UNKNOWN
    known = [c for c in CLASSES if c not in CHEXPERT_UNKNOWN]
    assert [c for c in known if row0[c]] == ["normal"]
    # consolidation is 'infiltrates'; the opacity beside it is no leftover finding; Support Devices names no class
    assert row1["infiltrates"] == -1 and row1["other findings"] == 0
    assert row1["pleural effusion"] == -1 and row1["pneumothorax"] == 0 and row1["normal"] == 0
    # observations outside the named classes, and no named one: 'other findings'
    assert [c for c in known if row2[c]] == ["other findings"]
    # an all-blank row and a report without a row give no label
    assert by_report["Unlabeled"].tolist() == [False, False, False, True, True]
    assert stats["chexpert_unmatched_reports"] == 1 and stats["unlabeled_reports"] == 2

    wrong = tmp_path / "wrong.csv"
    pd.DataFrame({"Reports": ["x"], "Cardiomegaly": [1.0]}).to_csv(wrong, index=False)
    with pytest.raises(LabelFileError, match=r"wrong\.csv: missing columns .*not a CheXpert labeler output"):
        openi_labels(str(folder), "chexpert", str(wrong))
    bad = pd.read_csv(csv)
    bad.loc[1, "Edema"] = 2
    bad.to_csv(wrong, index=False)
    with pytest.raises(LabelFileError, match=r"wrong\.csv, row 3: Edema is"):
        openi_labels(str(folder), "chexpert", str(wrong))
    assert parselabelfile.main(["--openi-reports", str(folder), "--out", str(tmp_path / "out"),
                                "--openi-labels", "chexpert", "--chexpert-csv", str(wrong)]) == 2
    assert "wrong.csv, row 3" in capsys.readouterr().err


def independent_unlabeled_counts():
    """(reports, images) whose MeSH <major> codes are only 'No Indexing' / 'Technical Quality of Image
    Unsatisfactory', and (reports, images) whose FINDINGS and IMPRESSION hold no letter: counted with regexes on the
    raw XML of the real archive, not with data.labels.openi's parser."""
    markers = {"no indexing", "technical quality of image unsatisfactory"}
    mesh, text = [0, 0], [0, 0]
    with tarfile.open(REAL_TGZ) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            xml = tar.extractfile(member).read().decode("utf-8")
            images = len(re.findall(r"<parentImage id=", xml))
            if {t.strip().lower() for t in re.findall(r"<major>(.*?)</major>", xml, re.S)} <= markers:
                mesh[0] += 1
                mesh[1] += images
            sections = re.findall(r'<AbstractText Label="(?:FINDINGS|IMPRESSION)"\s*(?:/>|>(.*?)</AbstractText>)', xml,
                                  re.S)
            if not any(re.search(r"[^\W\d_]", s) for s in sections):
                text[0] += 1
                text[1] += images
    return mesh, text


@pytest.mark.slow
def test_studies_without_a_usable_label_are_marked(real):
    frame, reports, stats = real
    (mesh_reports, mesh_images), (text_reports, text_images) = independent_unlabeled_counts()
    assert (mesh_reports, mesh_images) == (101, 186)  # 95 'No Indexing' + 6 'Technical Quality ...' alone
    assert stats["unlabeled_reports"] == mesh_reports
    assert frame["Unlabeled"].sum() == mesh_images
    # the labeled ones: a report coded 'Technical Quality ...' beside a finding keeps its finding
    assert not frame.loc[frame["PatientID"] == "CXR3912", "Unlabeled"].any()
    assert frame.loc[frame["PatientID"] == "CXR3912", "cardiomegaly"].eq(1).all()
    assert positives(frame, "CXR1_IM-0001-3001") == ["normal"] and not frame["Unlabeled"].iloc[0]
    text_frame, _, text_stats = openi_labels(REAL_TGZ, "text")
    assert (text_reports, text_images) == (28, 40)
    assert text_stats["unlabeled_reports"] == text_reports and text_frame["Unlabeled"].sum() == text_images
    # their text labels are all 0: 'normal' is not claimed for a report with nothing to read
    assert (text_frame.loc[text_frame["Unlabeled"], CLASSES] == 0).all().all()


def test_cli_writes_openi_labels_and_reports(tmp_path):
    folder = tmp_path / "reports"
    small_reports(folder)
    out = tmp_path / "out"
    assert parselabelfile.main(["--openi-reports", str(folder), "--out", str(out), "--openi-labels", "text"]) == 0
    labels = pd.read_csv(out / "openi_labels.csv")
    assert labels["Source"].eq("openi").all() and len(labels) == 7
    assert positives(labels, "CXR1_IM-0001-3001") == ["normal"]
    texts = pd.read_csv(out / "openi_reports.csv", header=None)[0].tolist()
    assert len(texts) == 3
    with pytest.raises(LabelFileError, match="no such folder"):
        read_reports(str(tmp_path / "nothing"))
