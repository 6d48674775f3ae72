import html
import json
import os
import re
import shutil
import subprocess
from urllib.parse import unquote

import cv2
import numpy as np
import pandas as pd
import pydicom.data
import pytest

from data.classes import CLASSES
from data.decode import read_image
from data.errors import InputError
from utils.calibration import fitted_thresholds, reported_probs
from utils.compare import main as compare_main
from utils.evaluation import judge
from utils.metrics import choose_thresholds
from utils.report import write_report

HEADER_BGR = (121, 78, 31)  # the table header colour, #1f4e79


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bright_spot, localize_images):
    """A run folder as traintest.py leaves it: metrics, ROC, and heatmaps, boxes and localization scores from
    utils.localization.localize on a real radiograph (RG1_UNCI through step 1's decoder) with a known bright region."""
    root = tmp_path_factory.mktemp("report")
    img = read_image(pydicom.data.get_testdata_file("RG1_UNCI.dcm"))
    h, w = img.shape
    img //= 2
    img[h // 4:h // 2, w // 2:w * 3 // 4] = 255  # a bright patch the BrightSpot model maps for cardiomegaly
    cv2.imwrite(str(root / "RG1_UNCI.png"), img)
    (root / "truth.csv").write_text("Image Index,Finding Label,x,y,w,h\n"
                                    f"RG1_UNCI.png,Cardiomegaly,{w // 2},{h // 4},{w // 4},{h // 4}\n")
    run = root / "run"
    frame = pd.DataFrame([{"ImageID": "RG1_UNCI.png", "path": str(root / "RG1_UNCI.png"), "width": w, "height": h}])
    summary = localize_images(bright_spot, frame, run, classes=["cardiomegaly", "mass"],
                              boxes_csv=str(root / "truth.csv"))
    assert summary["iobb_0.5"] == {"cardiomegaly": 1.0}
    rng = np.random.default_rng(0)
    y = (rng.random((40, len(CLASSES))) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
    rows = pd.DataFrame({"ImageID": [f"i{i}" for i in range(40)], "PatientID": [f"p{i // 2}" for i in range(40)],
                         "Source": np.where(np.arange(40) < 25, "padchest", "openi"), "view": "PA"})
    temperatures = fitted_thresholds(y, p, True, choose_thresholds)[1]
    judge(run, {"test": (rows, reported_probs(p, temperatures), y)}, [0.5] * len(CLASSES), n_boot=20)
    return run


def test_report_shows_groups_calibration_and_comparisons(run_dir, tmp_path):
    run_dir = shutil.copytree(run_dir, tmp_path / "run")  # the module's run folder stays without a comparison
    other = tmp_path / "other"
    other.mkdir()
    frame = pd.read_csv(run_dir / "predictions.csv")
    probs = [c for c in frame.columns if c.startswith("prob_")]
    frame[probs] = frame[probs].to_numpy() * 0.5  # the same order within a class: equal AUROCs
    frame.to_csv(other / "predictions.csv", index=False)
    assert compare_main([str(other), str(run_dir), "--bootstrap", "20"]) == 0
    page = open(write_report(str(run_dir)), encoding="utf-8").read()
    assert "<h2>By group</h2>" in page and ">openi<" in page and ">padchest<" in page
    assert "<h2>Calibration</h2>" in page and 'src="reliability.png"' in page and "ece_calibrated" in page
    assert "<h2>Compared with" in page and "DeLong p" in page


def page_tables(page):
    """Every <table> of the page as a list of rows, each a list of its cells' text (tags dropped)."""
    def cells(row):
        return [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]

    return [[cells(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]
            for table in re.findall(r"<table>(.*?)</table>", page)]


def table_with(tables, heading):
    """{first cell: {column: cell}} of the one table whose header row holds `heading`."""
    (table,) = [t for t in tables if heading in t[0]]
    return {row[0]: dict(zip(table[0], row)) for row in table[1:]}


def test_report_shows_this_runs_numbers(run_dir):
    tables = page_tables(open(write_report(str(run_dir)), encoding="utf-8").read())
    metrics = pd.read_csv(run_dir / "metrics.csv").query("group == 'all'").set_index("class")
    shown = table_with(tables, "auroc 95% CI")  # the classification metrics of group 'all'
    for name in ("macro", "pleural effusion", "micro"):
        assert shown[name]["auroc"] == f"{metrics.at[name, 'auroc']:.3f}", name
    macro = metrics.loc["macro"]
    assert shown["macro"]["auroc 95% CI"] == f"{macro['auroc_low']:.3f}-{macro['auroc_high']:.3f}"
    assert shown["pleural effusion"]["AP"] == f"{metrics.at['pleural effusion', 'average_precision']:.3f}"
    assert table_with(tables, "macro AUROC")["all"]["macro AUROC"] == f"{macro['auroc']:.3f}"
    localization = pd.read_csv(run_dir / "localization.csv")
    at = localization[(localization["criterion"] == "IoBB") & (localization["T"] == 0.5)].set_index("measure")[
        "cardiomegaly"]
    assert table_with(tables, "cardiomegaly")["T(IoBB)=0.5"]["cardiomegaly"] == \
        f"{at['acc']:.3f} ({at['chance_acc']:.3f}) / {at['afp']:.2f}"


def test_report_references_every_result_relatively(run_dir):
    path = write_report(str(run_dir))
    assert path == str(run_dir / "report.html")
    page = open(path, encoding="utf-8").read()
    assert "Classification metrics" in page and "pleural effusion" in page and "macro" in page
    assert "Localization" in page and "T(IoBB)=0.5" in page
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert "roc.png" in sources
    assert "heatmaps/RG1_UNCI__cardiomegaly.png" in [unquote(s) for s in sources]
    for src in sources:
        assert not src.startswith(("/", "http", "file:")), src
        assert os.path.isfile(run_dir / unquote(src)), src
    # the gallery puts the image with a true box first
    first = [unquote(s) for s in sources if s.startswith("heatmaps/")][0]
    assert first.endswith("__cardiomegaly.png")


def screenshot(html_path, out_png, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make test` installs it where it can)")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={out_png}", "--window-size=1200,4000",
           f"file://{html_path}"]
    subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    picture = cv2.imread(str(out_png))
    assert picture is not None, f"chromium wrote no screenshot {out_png}"
    return picture.astype(int)


def header_pixels(picture):
    return int((np.abs(picture - np.array(HEADER_BGR)).max(axis=2) <= 6).sum())


def heatmap_pixels(picture):
    # the jet colormap's warm half (red, orange, yellow) over the radiograph: red well above blue, in patches; the
    # erosion drops thin lines (the ROC curves, text), and the page's other colours are white, grey or blue
    warm = (picture[:, :, 2] - picture[:, :, 0] > 80).astype(np.uint8)
    return int(cv2.erode(warm, np.ones((5, 5), np.uint8)).sum())


@pytest.mark.slow
def test_report_renders_tables_and_heatmaps_in_headless_chromium(run_dir, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(run_dir, good)
    good_shot = screenshot(write_report(str(good)), tmp_path / "good.png", tmp_path)

    # The same page with its heatmap files gone: the images are broken, the tables stay.
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    html_path = write_report(str(broken))
    for f in (broken / "heatmaps").glob("*.png"):
        f.unlink()
    broken_shot = screenshot(html_path, tmp_path / "broken.png", tmp_path)

    # A run folder with heatmaps only: no table to draw.
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    for name in ("metrics.csv", "localization.csv", "roc.png", "calibration.csv", "reliability.png"):
        (bare / name).unlink()
    bare_shot = screenshot(write_report(str(bare)), tmp_path / "bare.png", tmp_path)

    # tables: the header band of the metrics and localization tables is on screen
    assert header_pixels(good_shot) > 5000, header_pixels(good_shot)
    assert header_pixels(broken_shot) > 5000
    assert header_pixels(bare_shot) < 100
    # heatmaps: the gallery shows the coloured overlays, and they vanish when the files are missing
    assert heatmap_pixels(good_shot) > 5000, heatmap_pixels(good_shot)
    assert heatmap_pixels(bare_shot) > 5000
    assert heatmap_pixels(broken_shot) < 200, heatmap_pixels(broken_shot)


HISTORY = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.41, 0.33, 0.29, 0.27],
                        "val_loss": [0.38, 0.34, 0.35, 0.31], "val_auroc": [0.61, float("nan"), 0.72, 0.775],
                        "lr": [1e-3, 1e-3, 1e-4, 1e-4], "images_per_s": [30.5, 31.0, 29.25, 30.0]})


def history_run(folder):
    """A run folder holding only history.csv, as utils.training.write_history leaves it."""
    folder.mkdir()
    HISTORY.to_csv(folder / "history.csv", index=False, na_rep="NA")
    return folder


def test_report_shows_the_training_history_as_curves_and_a_table(tmp_path):
    run = history_run(tmp_path / "run")
    page = open(write_report(str(run)), encoding="utf-8").read()
    assert "<h2>Training</h2>" in page and 'src="training.png"' in page
    picture = cv2.imread(str(run / "training.png"))
    assert picture is not None and picture.shape[1] > 2 * picture.shape[0]  # three panels side by side
    shown = table_with(page_tables(page), "val macro AUROC")
    assert list(shown) == ["1", "2", "3", "4"]
    assert shown["3"] == {"epoch": "3", "train loss": "0.2900", "val loss": "0.3500", "val macro AUROC": "0.7200",
                          "lr": "0.0001", "images/s": "29.2"}
    assert shown["2"]["val macro AUROC"] == "NA" and shown["4"]["val macro AUROC"] == "0.7750"


def test_report_without_a_history_has_no_training_section(run_dir):
    page = open(write_report(str(run_dir)), encoding="utf-8").read()
    assert "<h2>Training</h2>" not in page and not (run_dir / "training.png").exists()


def test_report_shows_the_model_card_key_by_key_and_escapes_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    card = {"name": "unified-alexnet <b>demo</b>", "architecture": "AlexNet features, transition layer, LSE pooling",
            "classes": ["atelectasis", "cardiomegaly"], "mapping": {"Support Devices": "electrical device & lines"},
            "input": {"size": "192", "normalization": "ImageNet mean/std"}}
    (run / "model_card.json").write_text(json.dumps(card))
    page = open(write_report(str(run)), encoding="utf-8").read()
    assert "<h2>Model</h2>" in page and "<b>demo</b>" not in page
    section = page.split("<h2>Model</h2>")[1]
    text = html.unescape(re.sub(r"<[^>]+>", "|", section))
    cells = [c for c in text.split("|") if c]
    for key, value in (("name", "unified-alexnet <b>demo</b>"), ("classes", "atelectasis, cardiomegaly"),
                       ("Support Devices", "electrical device & lines"), ("size", "192")):
        assert cells[cells.index(key) + 1] == value, key
    assert cells.index("architecture") < cells.index("classes") < cells.index("mapping")  # the card's order


@pytest.mark.parametrize("text, problem", [("{not json", "not readable JSON"), ('["a list"]', "JSON list")])
def test_report_names_a_model_card_it_cannot_read(tmp_path, text, problem):
    (tmp_path / "model_card.json").write_text(text)
    with pytest.raises(InputError, match=f"model_card.json: .*{problem}"):
        write_report(str(tmp_path))


# matplotlib's tab:orange, tab:green and tab:red: training.png's validation loss, validation AUROC and learning rate
CURVES_BGR = ((14, 127, 255), (44, 160, 44), (40, 39, 214))


def curve_pixels(picture, tolerance=40):
    return int(sum((np.abs(picture - np.array(bgr)).max(axis=2) <= tolerance).sum() for bgr in CURVES_BGR))


@pytest.mark.slow
def test_report_renders_the_training_section_in_headless_chromium(tmp_path):
    good = history_run(tmp_path / "good")
    good_shot = screenshot(write_report(str(good)), tmp_path / "good.png", tmp_path)
    broken = history_run(tmp_path / "broken")
    html_path = write_report(str(broken))
    (broken / "training.png").unlink()  # the picture gone: the table stays
    broken_shot = screenshot(html_path, tmp_path / "broken.png", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_shot = screenshot(write_report(str(empty)), tmp_path / "empty.png", tmp_path)

    assert curve_pixels(good_shot) > 300, curve_pixels(good_shot)
    assert curve_pixels(broken_shot) < 30, curve_pixels(broken_shot)
    # the training table's header band, with or without the picture; none on a page without a history
    assert header_pixels(good_shot) > 1000 and header_pixels(broken_shot) > 1000, header_pixels(good_shot)
    assert header_pixels(empty_shot) < 100
