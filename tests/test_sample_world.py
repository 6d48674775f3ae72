import ast
import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

import sample_world as sw
from conftest import REAL_DATA
from data.classes import CLASSES

SMALL = dict(padchest_images=40, openi_reports=8, images_per_zip=15, nih_images=0, progress=False)
LATERAL_VIEWS = {"LL", "LATERAL"}
TERM_TO_CLASS = {term: name for name, terms in sw.PADCHEST_TERMS.items() for term in terms}
MESH_TO_CLASS = {"Cardiomegaly": "cardiomegaly", "Pleural Effusion": "pleural effusion", "Nodule": "nodule",
                 "Mass": "mass", "Pneumothorax": "pneumothorax", "Pulmonary Atelectasis": "atelectasis",
                 "Catheters, Indwelling": "catheter", "Tube, Inserted": "nsg tube",
                 "Pacemaker, Artificial": "electrical device"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    summary = sw.generate(out, seed=0, **SMALL)
    return out, summary


def read_files(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = open(path, "rb").read()
    return files


def padchest_frame(out):
    return pd.read_csv(os.path.join(out, "labels", sw.PADCHEST_CSV), keep_default_na=False)


def dicoms(out):
    with tarfile.open(os.path.join(out, "images", "NLMCXR_dcm.tgz")) as tar:
        return {m.name: pydicom.dcmread(io.BytesIO(tar.extractfile(m).read())) for m in tar.getmembers()}


def reports(out):
    with tarfile.open(os.path.join(out, "labels", "NLMCXR_reports.tgz")) as tar:
        return {m.name: ET.fromstring(tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}


def is_lateral(ds):
    """The truth the world keeps in every DICOM, whether or not its ViewPosition says: rows run to the back (P) on a
    lateral, to the patient's left (L) on a frontal."""
    return ds.PatientOrientation[0] == "P"


def test_layout_and_summary(world):
    out, summary = world
    assert sorted(os.listdir(out)) == ["BBox_List_2017.csv", "images", "labels"]  # nih_images=0: no NIH part
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["0.zip", "1.zip", "2.zip", "NLMCXR_dcm.tgz"]
    assert summary["padchest_images"] == 40 and summary["openi_reports"] == 8
    frame, files = padchest_frame(out), dicoms(out)
    assert summary["padchest_lateral"] == (frame.Projection == "L").sum() > 0
    assert summary["openi_lateral"] == sum(map(is_lateral, files.values())) > 0
    assert summary["openi_no_view"] == sum(ds.ViewPosition == "" for ds in files.values()) > 0
    assert summary["nih"]["images"] == 0
    assert set(sw.DRAWN_FINDINGS) <= set(CLASSES) and set(sw.SPECS) <= set(CLASSES)


def test_no_nih_part_removes_an_earlier_one(tmp_path):
    small = dict(padchest_images=2, openi_reports=1, openi_without_image=0, images_per_zip=4, progress=False)
    sw.generate(str(tmp_path), nih_images=3, **small)
    assert len(os.listdir(tmp_path / "nih" / "png")) == 3
    sw.generate(str(tmp_path), nih_images=0, **small)
    assert not (tmp_path / "nih").exists()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    small = dict(padchest_images=6, openi_reports=5, images_per_zip=4, nih_images=4, progress=False)
    sw.generate(str(tmp_path / "a"), seed=3, **small)
    sw.generate(str(tmp_path / "b"), seed=3, **small)
    sw.generate(str(tmp_path / "c"), seed=4, **small)
    a, b, c = (read_files(str(tmp_path / k)) for k in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # the same files but NIH's PNGs, whose names follow the patients' follow-ups
    assert {k for k in a if not k.startswith("nih/png/")} == {k for k in c if not k.startswith("nih/png/")}
    assert len([k for k in a if k.startswith("nih/png/")]) == len([k for k in c if k.startswith("nih/png/")]) == 4
    assert a["labels/" + sw.PADCHEST_CSV] != c["labels/" + sw.PADCHEST_CSV]
    assert a["images/0.zip"] != c["images/0.zip"] and a["images/NLMCXR_dcm.tgz"] != c["images/NLMCXR_dcm.tgz"]
    assert a["nih/png/00000001_000.png"] != c["nih/png/00000001_000.png"]
    assert a["nih/Data_Entry_2017_v2020.csv"] != c["nih/Data_Entry_2017_v2020.csv"]


def test_padchest_csv_has_the_real_columns(world):
    real = os.path.join(REAL_DATA, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    with gzip.open(real, "rt") as f:
        real_header = f.readline().rstrip("\n")
    with open(os.path.join(world[0], "labels", sw.PADCHEST_CSV)) as f:
        assert f.readline().rstrip("\n") == real_header


def test_padchest_rows(world):
    out, _ = world
    frame = padchest_frame(out)
    taxonomy = set(sw.taxonomy_cuis())
    labels = [[t.strip() for t in ast.literal_eval(s)] for s in frame.Labels]
    assert all(t in taxonomy or t == "normal" or t == "exclude" for terms in labels for t in terms)
    assert sum(terms == ["exclude"] for terms in labels) == 2
    assert sum(terms == ["normal"] for terms in labels) >= 5
    assert set(frame.Projection) == {"PA", "AP", "L"}
    assert set(frame.MethodLabel) == {"Physician", "RNN_model"}
    # a lateral is the second image of a PA study: its StudyID, report, labeller and labels (unless 'exclude')
    laterals = frame[frame.Projection == "L"]
    assert set(laterals.ViewPosition_DICOM) <= {"LATERAL", "LL", ""}
    for row in laterals.itertuples():
        study = frame[(frame.StudyID == row.StudyID) & (frame.ImageID != row.ImageID)]
        assert list(study.Projection) == ["PA"]
        assert (study.Report.item(), study.MethodLabel.item()) == (row.Report, row.MethodLabel) or "exclu" in (
            study.Report.item() + row.Report)
    assert (frame.groupby("PatientID").StudyID.nunique() > 1).any()
    assert all(re.fullmatch(r"\d{38,39}_[a-z0-9]{6}\.png", i) for i in frame.ImageID)
    assert all(i.startswith(str(s)) for i, s in zip(frame.ImageID, frame.StudyID))
    for image_dir, group in frame.groupby("ImageDir"):
        with zipfile.ZipFile(os.path.join(out, "images", f"{image_dir}.zip")) as zf:
            assert sorted(zf.namelist()) == sorted(group.ImageID)


def test_padchest_pngs_are_16bit_12bit_range_with_burned_in_pixels(world):
    out, _ = world
    frame = padchest_frame(out).set_index("ImageID")
    saturated = 0
    with zipfile.ZipFile(os.path.join(out, "images", "0.zip")) as zf:
        for name in zf.namelist():
            img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint16 and img.ndim == 2
            assert img.shape == (frame.loc[name, "Rows_DICOM"], frame.loc[name, "Columns_DICOM"])
            assert np.percentile(img, 99.9) <= 4095 and img.min() < 1000
            saturated += img.max() > 60000
    assert saturated >= 2  # hot pixels / markers that break a plain min-max window


def test_dicoms_are_cr_monochrome1_some_jpeg2000(world):
    out, summary = world
    files = dicoms(out)
    assert len(files) == summary["openi_dicoms"] > 0
    syntaxes = [ds.file_meta.TransferSyntaxUID for ds in files.values()]
    assert JPEG2000Lossless in syntaxes and any(s != JPEG2000Lossless for s in syntaxes)
    # ViewPosition: frontal or lateral as the image is, or empty for either
    views = {(is_lateral(ds), ds.ViewPosition) for ds in files.values()}
    assert {v for lateral, v in views if lateral} <= LATERAL_VIEWS | {""}
    assert {v for lateral, v in views if not lateral} <= {"PA", "AP", ""}
    assert (True, "") in views and (False, "") in views or len(files) < 12
    for name, ds in files.items():
        assert re.fullmatch(r"\d{4}_IM-\d{4}-\d001\.dcm", name)
        assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1"
        assert ds.BitsStored == 12 and ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert float(ds.WindowWidth) > 0
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) and arr.max() <= 4095
        # MONOCHROME1: the air outside the body is stored bright, the spine dark
        assert arr[:5, :5].mean() > arr[int(0.8 * ds.Rows), ds.Columns // 2 - 3: ds.Columns // 2 + 3].mean() + 1000


def test_reports_match_dicoms_and_boxes(world):
    out, _ = world
    files = dicoms(out)
    boxes = pd.read_csv(os.path.join(out, "BBox_List_2017.csv"))
    drawn = boxes.groupby("Image Index")["Finding Label"].agg(set).to_dict()
    parents, without_image = set(), 0
    for name, root in reports(out).items():
        assert re.fullmatch(r"ecgen-radiology/\d+\.xml", name)
        sections = {e.get("Label"): e.text for e in root.iter("AbstractText")}
        assert set(sections) == {"COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"}
        major = [e.text for e in root.iter("major")]
        classes = {MESH_TO_CLASS[m.split("/")[0]] for m in major if m != "normal"}
        assert (major == ["normal"]) == (not classes)
        ids = [e.get("id") for e in root.iter("parentImage")]
        without_image += not ids
        parents |= set(ids)
        for image_id in ids:  # laterals have no boxes: localization is scored on frontal views
            lateral = is_lateral(files[image_id[3:] + ".dcm"])
            assert drawn.get(image_id, set()) == (set() if lateral else classes)
        if "pneumothorax" not in classes:
            assert "pneumothorax" not in sections["FINDINGS"].replace("No pneumothorax", "").replace(
                "or pneumothorax", "")
    assert without_image == 3
    assert parents == {"CXR" + n[:-4] for n in files}


def test_boxes_match_labels_and_lie_inside_images(world):
    out, _ = world
    boxes = pd.read_csv(os.path.join(out, "BBox_List_2017.csv"))
    assert list(boxes.columns) == ["Image Index", "Finding Label", "x", "y", "w", "h"]
    assert set(boxes["Finding Label"]) <= set(sw.DRAWN_FINDINGS)
    frame = padchest_frame(out)
    sizes = {i: (r, c) for i, r, c in zip(frame.ImageID, frame.Rows_DICOM, frame.Columns_DICOM)}
    sizes.update({"CXR" + n[:-4]: (ds.Rows, ds.Columns) for n, ds in dicoms(out).items()})
    for b in boxes.itertuples():
        rows, cols = sizes[b[1]]
        assert b.w > 0 and b.h > 0 and b.x >= 0 and b.y >= 0 and b.x + b.w <= cols and b.y + b.h <= rows
    drawn = boxes.groupby("Image Index")["Finding Label"].agg(set).to_dict()
    for image_id, labels, projection in zip(frame.ImageID, frame.Labels, frame.Projection):
        classes = {TERM_TO_CLASS[t.strip()] for t in ast.literal_eval(labels) if t.strip() not in ("normal", "exclude")}
        assert drawn.get(image_id, set()) == (set() if projection == "L" else classes)


SPECS = {
    "atelectasis": {"zone": "lower", "terms": ["laminar atelectasis"]},
    "cardiomegaly": {"terms": ["cardiomegaly"]},
    "catheter": {"route": "jugular", "terms": ["central venous catheter via jugular vein"]},
    "pleural effusion": {"size": "small", "terms": ["pleural effusion"]},
    "electrical device": {"leads": 2, "terms": ["pacemaker", "dual chamber device"]},
    "mass": {"zone": "upper", "terms": ["mass"]},
    "nodule": {"zone": "middle", "count": 1, "terms": ["nodule"]},
    "nsg tube": {"terms": ["NSG tube"]},
    "pneumothorax": {"terms": ["pneumothorax"]},
    "infiltrates": {"zone": "middle", "terms": []},
    "pneumonia": {"zone": "middle", "terms": []},
}


@pytest.mark.parametrize("name", list(sw.SPECS))
def test_each_finding_is_a_visible_localized_sign(name):
    # The same seed draws the same anatomy; only the finding (and noise after it) differs.
    finding = dict(SPECS[name], name=name, side="right")
    for seed in range(3):
        normal, _ = sw.draw_chest(np.random.default_rng(seed), 380, 360, [])
        sick, boxes = sw.draw_chest(np.random.default_rng(seed), 380, 360, [finding])
        assert [b[0] for b in boxes] == [name]
        x, y, w, h = boxes[0][1]
        inside = np.zeros(normal.shape, bool)
        inside[y:y + h, x:x + w] = True
        diff = np.abs(sick - normal)
        assert diff[inside].mean() > 0.03 and diff[inside].mean() > 10 * diff[~inside].mean()


@pytest.mark.parametrize("name", list(sw.SPECS))
def test_each_finding_shows_on_a_lateral_but_a_small_pneumothorax(name):
    finding = dict(SPECS[name], name=name, side="right")
    normal = sw.draw_lateral(np.random.default_rng(0), 380, 360, [])
    sick = sw.draw_lateral(np.random.default_rng(0), 380, 360, [finding])
    changed = (np.abs(sick - normal) > 0.05).mean()
    assert changed == 0 if name == "pneumothorax" else changed > 0.002


@pytest.mark.parametrize("seed", range(3))
def test_a_lateral_has_the_spine_at_the_back_and_the_heart_in_front(seed):
    # mid-chest rows: the densest column is the spine, in the middle of a frontal and at the back (image right: the
    # patient faces left) of a lateral; on the lateral the heart, in front, is denser than the lung behind it
    frontal, _ = sw.draw_chest(np.random.default_rng(seed), 400, 400, [])
    lateral = sw.draw_lateral(np.random.default_rng(seed), 400, 400, [])
    assert 160 <= np.argmax(frontal[100:250].mean(axis=0)) <= 240
    assert 280 <= np.argmax(lateral[100:250].mean(axis=0)) <= 360
    heart, lung = lateral[190:230, 100:160].mean(), lateral[150:190, 220:260].mean()
    assert heart > lung + 0.1


def test_cli_writes_world_and_rejects_bad_counts(tmp_path, capsys):
    sw.main(["--out", str(tmp_path / "w"), "--padchest-images", "5", "--openi-reports", "3", "--quiet",
             "--openi-without-image", "1", "--nih-images", "4",
             "--montage", str(tmp_path / "m.png")])
    out = capsys.readouterr().out
    assert "wrote 5 PadChest PNGs" in out and "4 NIH PNGs" in out
    assert cv2.imread(str(tmp_path / "m.png")).shape[1] == 4 * 256
    assert sw.main(["--out", str(tmp_path / "x"), "--padchest-images", "0"]) == 2


BAD_SETTINGS = {
    "prevalence-negative": (["--prevalence", "-0.1"], "--prevalence must be above 0"),
    "prevalence-above-1": (["--prevalence", "1.5"], "--prevalence must be above 0"),
    "prevalence-nan": (["--prevalence", "nan"], "--prevalence must be above 0"),
    "normal-fraction-above-1": (["--normal-fraction", "1.2"], "--normal-fraction must be from 0 to 1"),
    "normal-fraction-negative": (["--normal-fraction", "-1"], "--normal-fraction must be from 0 to 1"),
    "jpeg2000-fraction": (["--jpeg2000-fraction", "2"], "--jpeg2000-fraction must be from 0 to 1"),
    "no-images": (["--padchest-images", "0"], "--padchest-images must be at least 1"),
    "no-reports": (["--openi-reports", "-3"], "--openi-reports must be at least 1"),
    "exclude-rows-negative": (["--exclude-rows", "-1"], "--exclude-rows must be at least 0"),
    "imageless-reports": (["--openi-without-image", "9"], "at most 8 (the number of reports)"),
    "lateral-fraction": (["--lateral-fraction", "0.6"], "--lateral-fraction must be from 0 to 0.45"),
    "no-view-fraction": (["--openi-no-view-fraction", "-0.1"], "--openi-no-view-fraction must be from 0 to 1"),
    "nih-images-negative": (["--nih-images", "-1"], "--nih-images must be at least 0"),
    "montage-under-a-file": (["--montage", "FILE/m.png"], "cannot be written (Not a directory)"),
    "montage-no-format": (["--montage", "OUT.xyz"], "no image format"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=list(BAD_SETTINGS))
def test_cli_refuses_bad_settings_before_generating(tmp_path, capsys, case):
    args, words = BAD_SETTINGS[case]
    (tmp_path / "file").write_text("")
    args = [a.replace("FILE", str(tmp_path / "file")).replace("OUT", str(tmp_path / "m")) for a in args]
    code = sw.main(["--out", str(tmp_path / "w"), "--padchest-images", "5", "--openi-reports", "8", "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "w" / "images").exists()


def test_prevalence_zero_is_refused_not_an_endless_loop(tmp_path):
    # an abnormal study redraws its findings until it has one: at prevalence 0 that loop would never end
    proc = subprocess.run([sys.executable, "-m", "sample_world", "--out", str(tmp_path / "w"), "--prevalence",
                           "0", "--quiet"], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("python -m sample_world: error: --prevalence must be above 0"), proc.stderr
    with pytest.raises(ValueError, match="--prevalence"):
        sw.generate(str(tmp_path / "w"), prevalence=0, **SMALL)


def test_every_spec_term_and_localization_is_real():
    # the terms must be in the taxonomy the label parser reads, the localizations in the real PadChest CSV
    taxonomy = set(sw.taxonomy_cuis())
    assert all(t in taxonomy for terms in sw.PADCHEST_TERMS.values() for t in terms)
    real = pd.read_csv(os.path.join(REAL_DATA, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"),
                       usecols=["Localizations"]).Localizations.dropna().unique()
    real_locs = {loc.strip() for text in real for loc in ast.literal_eval(text)}
    rng = np.random.default_rng(0)
    drawn = [f for _ in range(300) for f in sw.sample_findings(rng, 0.0, 0.5)]
    assert {f["name"] for f in drawn} == set(sw.DRAWN_FINDINGS)
    assert all(loc in real_locs for f in drawn for loc in sw.FINDINGS[f["name"]].localizations(f))


def test_package_imports_no_utils_or_models_and_has_no_cycles():
    folder = os.path.dirname(sw.__file__)
    imports = {}
    for name in os.listdir(folder):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
            modules = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
            modules += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
            imports[name[:-3]] = modules
    # the generator needs neither torch nor the judging code; only score.py (a run's score) reads utils.metrics
    assert not [m for k, ms in imports.items() if k != "score" for m in ms if m.split(".")[0] in ("utils", "models")]
    inner = {k: {m.rsplit(".", 1)[1] for m in ms if m.startswith("sample_world.")} for k, ms in imports.items()}

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, seen + (m,))) for m in inner.get(start, ()))

    assert not [k for k in inner if reaches(k, k)]


def run_script(*args):
    """A step as a user runs it (a script or module from the repository root); its output."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_view_classifier_learns_the_laterals_and_labels_openi_views_nobody_wrote(tmp_path):
    # steps 1-3 keep every view (--views all), then utils.view_classifier trains on the known views of train and val,
    # scores the test split's known views and labels the OpenI images whose ViewPosition is empty
    world = tmp_path / "world"
    sw.generate(str(world), padchest_images=200, openi_reports=40, images_per_zip=100, nih_images=0, progress=False)
    run_script("download_images.py", "--source", world / "images", "--out", tmp_path / "ingest", "--size", 128,
               "--workers", 1)
    run_script("parselabelfile.py", "--padchest-csv", world / "labels" / sw.PADCHEST_CSV, "--openi-reports",
               world / "labels" / "NLMCXR_reports.tgz", "--out", tmp_path / "labels", "--views", "all")
    combined = tmp_path / "combined.csv"
    run_script("combinelabels.py", "--labels", tmp_path / "labels", "--manifest", tmp_path / "ingest" / "manifest.csv",
               "--out", combined, "--val-frac", 0.2, "--test-frac", 0.3)
    out = run_script("-m", "utils.view_classifier", "--csv", combined, "--out", tmp_path / "views.csv")

    frame = pd.read_csv(combined, dtype={"view": str}, keep_default_na=False)
    padchest_test = frame[(frame.Source == "padchest") & (frame.split == "test")]
    assert (padchest_test.view == "L").sum() >= 10 and (padchest_test.view == "PA").sum() >= 10
    accuracy = float(re.search(r"padchest (\d\.\d+)", out).group(1))
    assert accuracy >= 0.95, out

    truth = {"CXR" + name[:-4]: "lateral" if is_lateral(ds) else "frontal" for name, ds in dicoms(world).items()}
    views = pd.read_csv(tmp_path / "views.csv", dtype={"view": str}, keep_default_na=False)
    guessed = views[views.view_source == "predicted"]
    abstained = views[views.view_source == "abstained"]
    unknown = frame[(frame.Source == "openi") & (frame.view == "")]
    # every unknown view is guessed, or left unknown inside the abstain band (then counted, its view empty)
    assert sorted([*guessed.ImageID, *abstained.ImageID]) == sorted(unknown.ImageID) and len(guessed) >= 8
    assert len(abstained) <= 0.1 * len(unknown) and (abstained.view == "").all(), abstained
    assert {truth[i] for i in guessed.ImageID} == {"frontal", "lateral"}  # both kinds lack a header view
    correct = np.mean([view == truth[i] for i, view in zip(guessed.ImageID, guessed.view)])
    assert correct >= 0.95, guessed[["ImageID", "view", "view_p_lateral"]]
