"""Step 5: boxes from maps, overlaps, the NIH box file, the ChestX-ray8 localization table, and localize() end to end."""
import csv
import gzip
import math
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA
from data.errors import LabelFileError
from utils.heatmaps import caption, heatmap_stems, heatmaps_to_uint8, scale_boxes, truth_word
from utils.localization import (PAPER_ACCURACY, box_overlaps, clip_to_images, format_table, ground_truth,
                                localization_table, match_image_ids, read_box_csv)
from utils.localization_workers import boxes_from_heatmaps

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
REAL_BOXES = os.path.join(REAL_DATA, "BBox_List_2017.csv.gz")


def blob(shape, cx, cy, sigma, peak):
    """A Gaussian blob centred on pixel (cx, cy) (column, row)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


def expected_box(cx, cy, radius):
    """The pixel-edge box of the pixels whose centres lie within `radius` of (cx, cy) along each axis."""
    x0, x1 = math.ceil(cx - radius), math.floor(cx + radius) + 1
    y0, y1 = math.ceil(cy - radius), math.floor(cy + radius) + 1
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=float)


def test_boxes_around_known_blobs_at_both_thresholds():
    # A strong blob (peak 255 after scaling) and a weak one (peak 0.6 * 255 = 153): threshold 180 keeps only the
    # strong one; threshold 60 finds both. A Gaussian of height p crosses t at radius sigma * sqrt(2 ln(p / t)).
    heat = blob((224, 256), 60, 50, 10, 1.0) + blob((224, 256), 170, 160, 15, 0.6)
    scaled = heatmaps_to_uint8(heat)
    assert scaled.dtype == np.uint8 and scaled.max() == 255 and scaled.min() == 0
    (boxes,) = boxes_from_heatmaps(scaled[None], thresholds=(60, 180))
    assert len(boxes) == 3
    strong_hi = expected_box(60, 50, 10 * math.sqrt(2 * math.log(255 / 180)))
    strong_lo = expected_box(60, 50, 10 * math.sqrt(2 * math.log(255 / 60)))
    weak_lo = expected_box(170, 160, 15 * math.sqrt(2 * math.log(0.6 * 255 / 60)))
    for want in (strong_hi, strong_lo, weak_lo):
        err = np.abs(boxes[:, :4] - want).max(axis=1)
        assert err.min() <= 1.0, f"no box near {want}: {boxes[:, :4]}"
    # the score is the mean normalized heat inside the region: at least the threshold, at most 1
    assert ((boxes[:, 4] >= 60 / 255) & (boxes[:, 4] <= 1)).all()
    assert boxes[:, 4].max() >= 180 / 255


def test_maps_are_boxed_separately_even_when_blobs_touch_across_them():
    # All maps are labelled in one call; a blob at the bottom edge of one map and another at the top edge of the next
    # must not merge, and every box must land in its own map.
    a = blob((64, 64), 32, 63, 6, 1.0)
    b = blob((64, 64), 32, 0, 6, 1.0)
    flat = np.full((64, 64), 3.0)
    result = boxes_from_heatmaps(heatmaps_to_uint8(np.stack([a, flat, b, a])), thresholds=(128,))
    assert [len(r) for r in result] == [1, 0, 1, 1]
    assert result[0][0, 1] + result[0][0, 3] == 64  # reaches the bottom edge of map 0
    assert result[2][0, 1] == 0  # starts at the top edge of map 2
    np.testing.assert_array_equal(result[0], result[3])


def test_eight_connected_pixels_form_one_region():
    heat = np.zeros((20, 20), np.uint8)
    heat[5, 5] = heat[6, 6] = heat[7, 7] = 255  # a diagonal line
    heat[15, 15] = 255
    (boxes,) = boxes_from_heatmaps(heat, thresholds=(180,))
    assert sorted(map(tuple, boxes[:, :4].tolist())) == [(5, 5, 3, 3), (15, 15, 1, 1)]


def test_scaling_moves_box_edges_with_the_image():
    boxes = np.array([[8, 4, 16, 8, 0.5]])
    # a 64x64 map grid stretched back to a 640 x 320 original
    out = scale_boxes(boxes, (64, 64), (640, 320))
    np.testing.assert_allclose(out, [[80, 20, 160, 40, 0.5]])
    assert scale_boxes(np.zeros((0, 5)), (64, 64), (640, 320)).shape == (0, 5)


def test_iou_and_iobb_on_hand_computed_boxes():
    detected = [[0, 0, 10, 10], [20, 20, 2, 2], [100, 100, 5, 5]]
    truth = [[5, 5, 10, 10], [10, 10, 40, 40]]
    iou, iobb = box_overlaps(detected, truth)
    # box 0 vs truth 0: intersection 5 x 5 = 25, union 100 + 100 - 25
    assert iou[0, 0] == pytest.approx(25 / 175)
    assert iobb[0, 0] == pytest.approx(25 / 100)
    # a small box inside a large finding: IoBB 1 (over the detected box), IoU small
    assert iobb[1, 1] == pytest.approx(1.0)
    assert iou[1, 1] == pytest.approx(4 / 1600)
    # disjoint boxes
    assert iou[2].max() == 0 and iobb[2].max() == 0
    assert box_overlaps(np.zeros((0, 4)), truth)[0].shape == (0, 2)
    # the paired form agrees with the matrix's diagonal
    pairs = box_overlaps(detected[:2], truth, paired=True)
    np.testing.assert_allclose(pairs[0], np.diag(iou))
    np.testing.assert_allclose(pairs[1], np.diag(iobb))


def test_reads_the_real_nih_layout_and_ours(tmp_path):
    nih = tmp_path / "BBox_List_2017.csv"
    nih.write_text(NIH_HEADER
                   + "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,\n"
                   + "00014716_007.png,Effusion,686.101694915254,131.543322121028,185.491525423729,313.491525423729,,,\n"
                   + "00029817_009.png,Infiltrate,112.5,430.08,281.6,167.25,,,\n")
    boxes = read_box_csv(nih)
    assert list(boxes.columns) == ["ImageID", "class", "x", "y", "w", "h"]
    assert boxes["class"].tolist() == ["atelectasis", "pleural effusion", "infiltrates"]
    assert boxes.loc[0, "x"] == pytest.approx(225.084745762712)
    assert boxes.loc[1, "h"] == pytest.approx(313.491525423729)

    ours = tmp_path / "ours.csv"
    ours.write_text("Image Index,Finding Label,x,y,w,h\nCXR1000_IM-0003-2001,Cardiomegaly,10,20,30,40\n"
                    "a.png,pleural effusion,1,2,3,4\n")
    boxes = read_box_csv(ours)
    assert boxes["class"].tolist() == ["cardiomegaly", "pleural effusion"]
    assert boxes.iloc[0, 2:].tolist() == [10, 20, 30, 40]


def test_bad_rows_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(NIH_HEADER + "a.png,Effusion,1,2,3,4,,,\nb.png,Hernia,1,2,3,4,,,\n")
    with pytest.raises(LabelFileError, match=r"bad.csv: row 3: unknown finding 'Hernia'"):
        read_box_csv(bad)
    bad.write_text("Image Index,Finding Label,x,y,w,h\na.png,mass,1,2,x,4\n")
    with pytest.raises(LabelFileError, match=r"row 2: box"):
        read_box_csv(bad)
    bad.write_text("Image Index,Finding Label,x,y,w,h\na.png,mass,1,2,3,4\na.png,mass,nan,2,3,4\n")
    with pytest.raises(LabelFileError, match=r"row 3: box \['nan', '2', '3', '4'\] is not four numbers"):
        read_box_csv(bad)


def real_rows():
    """NIH's BBox_List_2017 read with the csv module alone: [(Image Index, Finding Label, x, y, w, h)]."""
    with gzip.open(REAL_BOXES, "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]  # its real header
    return [(r[0], r[1], *map(float, r[2:6])) for r in rows[1:]]


def test_the_real_box_list_is_read_with_its_header():
    rows = real_rows()
    boxes = read_box_csv(REAL_BOXES)
    assert len(boxes) == len(rows) == 984 and boxes.ImageID.nunique() == len({r[0] for r in rows}) == 880
    assert boxes["class"].value_counts().to_dict() == {
        "atelectasis": 180, "pleural effusion": 153, "cardiomegaly": 146, "infiltrates": 123, "pneumonia": 120,
        "pneumothorax": 98, "mass": 85, "nodule": 79}
    assert boxes[["x", "y", "w", "h"]].to_numpy().tolist() == [list(r[2:]) for r in rows]


def test_hand_placed_boxes_on_real_rows_score_the_hand_computed_accuracy():
    # The first four images with a lone Atelectasis box and the first two with a lone Cardiomegaly box of NIH's real
    # list, with predicted boxes placed by hand relative to each true box (x, y, w, h):
    #   atelectasis 1: the true box itself                   IoU 1      IoBB 1
    #   atelectasis 2: shifted right by 0.3 w                IoU 0.7/1.3 = 0.538   IoBB 0.7
    #   atelectasis 3: w/2 x h/3 inside it                   IoU 1/6    IoBB 1
    #   atelectasis 4: a box beside it (a false positive)    IoU 0      IoBB 0
    #   cardiomegaly 1: shifted right by 0.55 w              IoU 0.45/1.55 = 0.290  IoBB 0.45
    #   cardiomegaly 2: nothing predicted
    rows = real_rows()
    per_image = pd.Series([r[0] for r in rows]).value_counts()
    lone = [r for r in rows if per_image[r[0]] == 1]
    atelectasis = [r for r in lone if r[1] == "Atelectasis"][:4]
    cardiomegaly = [r for r in lone if r[1] == "Cardiomegaly"][:2]
    placed = []
    for k, (image, _, x, y, w, h) in enumerate(atelectasis):
        placed.append([(x, y, w, h), (x + 0.3 * w, y, w, h), (x + w / 4, y + h / 3, w / 2, h / 3),
                       (x + w + 5, y, w, h)][k] + (image, "atelectasis"))
    image, _, x, y, w, h = cardiomegaly[0]
    placed.append((x + 0.55 * w, y, w, h, image, "cardiomegaly"))
    pred = pd.DataFrame(placed, columns=["x", "y", "w", "h", "ImageID", "class"])
    sizes = {r[0]: (1024, 1024) for r in atelectasis + cardiomegaly}

    truth, counts, _ = ground_truth(REAL_BOXES, sizes)  # as localize() reads --boxes-csv
    assert len(truth) == 6 and counts["n_clipped"] == counts["n_outside"] == {}
    # every other row is counted, not silently dropped
    assert counts["n_not_scored"] == {"atelectasis": 176, "pleural effusion": 153, "cardiomegaly": 144,
                                      "infiltrates": 123, "pneumonia": 120, "pneumothorax": 98, "mass": 85,
                                      "nodule": 79}
    table = localization_table(pred, truth, sizes, counts=counts).set_index(["criterion", "T", "measure"])
    assert list(table.columns) == ["atelectasis", "cardiomegaly", "mean"]
    expected = {  # (criterion, T): (atelectasis, cardiomegaly)
        ("IoU", 0.1): (3 / 4, 1 / 2), ("IoU", 0.25): (2 / 4, 1 / 2), ("IoU", 0.5): (2 / 4, 0), ("IoU", 0.75): (1 / 4, 0),
        ("IoBB", 0.25): (4 / 4 - 1 / 4, 1 / 2), ("IoBB", 0.5): (3 / 4, 0), ("IoBB", 0.75): (2 / 4, 0),
        ("IoBB", 0.9): (2 / 4, 0)}
    for (criterion, t), (a, c) in expected.items():
        assert table.loc[(criterion, t, "acc"), ["atelectasis", "cardiomegaly"]].tolist() == pytest.approx([a, c])
    assert table.loc[("IoBB", 0.5, "acc"), "mean"] == pytest.approx((3 / 4 + 0) / 2)
    # false positives per image with a true box: the box beside atelectasis 4; cardiomegaly 1's box matches at IoU 0.25
    assert table.loc[("IoBB", 0.5, "afp"), "atelectasis"] == pytest.approx(1 / 4)
    assert table.loc[("IoU", 0.25, "afp"), "cardiomegaly"] == 0 and table.loc[("IoU", 0.5, "afp"), "cardiomegaly"] == 0.5
    # the paper's row beside ours, and the counts
    assert table.loc[("IoBB", 0.5, "paper_acc")].tolist() == pytest.approx([0.2833, 0.8767, (0.2833 + 0.8767) / 2])
    assert table.loc[("count", 0, "n_boxes")].tolist() == [4, 2, 6]
    assert table.loc[("count", 0, "n_not_scored")].tolist() == [176, 144, 978]
    text = format_table(table.reset_index())
    assert "\n  ChestX-ray8   0.283" in text and "not scored" in text and "clipped" not in text


def test_paper_row_uses_our_class_names_and_is_blank_where_the_paper_has_no_figure():
    assert PAPER_ACCURACY == {"atelectasis": 0.2833, "cardiomegaly": 0.8767, "pleural effusion": 0.3333,
                              "infiltrates": 0.4227, "mass": 0.1411, "nodule": 0.0126, "pneumonia": 0.3833,
                              "pneumothorax": 0.1836}
    truth = pd.DataFrame([("a", "catheter", 0, 0, 10, 10), ("a", "mass", 0, 0, 10, 10)],
                         columns=["ImageID", "class", "x", "y", "w", "h"])
    table = localization_table(truth, truth, {"a": (100, 100)}).set_index(["criterion", "T", "measure"])
    paper = table.loc[("IoBB", 0.5, "paper_acc")]
    assert math.isnan(paper["catheter"]) and paper["mass"] == 0.1411
    assert math.isnan(paper["mean"])  # a mean over fewer classes than ours would not compare
    assert table.loc[("IoBB", 0.5, "acc"), "mean"] == 1


def test_boxes_outside_the_image_are_clipped_or_left_out_and_counted():
    truth = pd.DataFrame([("a", "mass", 10, 10, 20, 20),  # inside
                          ("a", "mass", 90, -5, 20, 20),  # reaches past the right and top edges: (90, 0, 10, 15)
                          ("a", "nodule", 150, 10, 5, 5),  # wholly outside: no pixel to score
                          ("b", "nodule", -10, -10, 10, 10)],  # touches the corner from outside
                         columns=["ImageID", "class", "x", "y", "w", "h"])
    clipped, counts = clip_to_images(truth, {"a": (100, 50), "b": (64, 64)})
    assert clipped[["x", "y", "w", "h"]].values.tolist() == [[10, 10, 20, 20], [90, 0, 10, 15]]
    assert counts == {"n_clipped": {"mass": 1}, "n_outside": {"nodule": 2}}


def test_image_ids_match_with_or_without_png():
    truth = pd.DataFrame({"ImageID": ["a.png", "CXR1_IM-1", "CXR2_IM-2.png", "zzz.png"], "class": ["mass"] * 4,
                          "x": 0, "y": 0, "w": 1, "h": 1})
    matched = match_image_ids(truth, ["a.png", "CXR1_IM-1", "CXR2_IM-2", "other.png"])
    assert matched["ImageID"].tolist() == ["a.png", "CXR1_IM-1", "CXR2_IM-2"]


def test_table_counts_hits_false_positives_and_chance():
    truth = pd.DataFrame([("a", "mass", 10, 10, 20, 20), ("b", "mass", 10, 10, 20, 20),
                          ("c", "cardiomegaly", 0, 0, 100, 100)], columns=["ImageID", "class", "x", "y", "w", "h"])
    pred = pd.DataFrame([("a", "mass", 10, 10, 20, 20),  # exact hit
                         ("a", "mass", 60, 60, 10, 10),  # a false positive beside it
                         ("b", "mass", 15, 15, 5, 5),  # small box inside the finding: IoBB 1, IoU 1/16
                         ("c", "cardiomegaly", 0, 0, 50, 100)],  # half the finding: IoU 0.5, IoBB 1
                        columns=["ImageID", "class", "x", "y", "w", "h"])
    sizes = {"a": (100, 100), "b": (100, 100), "c": (100, 100)}
    table = localization_table(pred, truth, sizes).set_index(["criterion", "T", "measure"])
    assert list(table.columns) == ["cardiomegaly", "mass", "mean"]
    assert table.loc[("IoU", 0.5, "acc"), "mass"] == 0.5
    assert table.loc[("IoU", 0.9, "acc"), "mass"] == 0.5
    assert table.loc[("IoBB", 0.9, "acc"), "mass"] == 1.0
    assert table.loc[("IoU", 0.25, "acc"), "cardiomegaly"] == 1.0
    assert table.loc[("IoU", 0.5, "acc"), "cardiomegaly"] == 0.0  # IoU must exceed T
    assert table.loc[("IoBB", 0.9, "acc"), "cardiomegaly"] == 1.0
    # false positives per image: image a's extra box at every T; image b's small box at IoU T >= 0.1
    assert table.loc[("IoBB", 0.5, "afp"), "mass"] == 0.5
    assert table.loc[("IoU", 0.5, "afp"), "mass"] == 1.0
    # chance: a finding that fills the image is always hit; a 20x20 box in 100x100 rarely overlaps by more than half
    assert table.loc[("IoU", 0.9, "chance_acc"), "cardiomegaly"] == 1.0
    assert table.loc[("IoU", 0.5, "chance_acc"), "mass"] < 0.2
    assert table.loc[("count", 0, "n_boxes"), "mass"] == 2
    assert table.loc[("IoU", 0.5, "acc"), "mean"] == pytest.approx(0.25)


def test_localize_finds_a_bright_region_in_original_pixels(tmp_path, bright_spot, localize_images):
    # A 600 x 400 (w x h) original holding a bright 150 x 100 rectangle at (300, 100); the model sees it stretched to
    # 128 x 128, so boxes must be scaled back with different factors along x and y.
    rows = []
    for i, (x, y) in enumerate([(300, 100), (60, 260)]):
        img = np.full((400, 600), 40, np.uint8)
        img[y:y + 100, x:x + 150] = 230
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), img)
        rows.append({"ImageID": f"img{i}.png", "path": str(path), "width": 1200, "height": 800})  # stored at half size
    (tmp_path / "truth.csv").write_text("Image Index,Finding Label,x,y,w,h\n"
                                        "img0.png,Cardiomegaly,600,200,300,200\nimg1,cardiomegaly,120,520,300,200\n")
    run = tmp_path / "run"
    summary = localize_images(bright_spot, pd.DataFrame(rows), run, classes=["cardiomegaly"],
                              boxes_csv=str(tmp_path / "truth.csv"))
    boxes = pd.read_csv(run / "boxes.csv")
    assert list(boxes.columns) == ["ImageID", "class", "x", "y", "w", "h", "score"]
    assert set(boxes["class"]) == {"cardiomegaly"}
    best = boxes[boxes["ImageID"] == "img0.png"].iloc[-1]  # the threshold-180 box, found second
    assert abs(best.x - 600) < 25 and abs(best.y - 200) < 25 and abs(best.w - 300) < 50 and abs(best.h - 200) < 50
    assert summary["iobb_0.5"] == {"cardiomegaly": 1.0}
    assert summary["iobb_0.5_chance"]["cardiomegaly"] < 0.3
    table = pd.read_csv(run / "localization.csv")
    assert table[(table.criterion == "IoU") & (table["T"] == 0.5) & (table.measure == "acc")]["cardiomegaly"].item() == 1
    # what the run folder holds, and nothing else: no temporary file, no .rows count
    assert sorted(os.listdir(run)) == ["boxes.csv", "heatmaps", "localization.csv"]
    assert sorted(os.listdir(run / "heatmaps")) == ["img0__cardiomegaly.png", "img1__cardiomegaly.png", "index.csv"]
    # the caption keeps the model's call apart from the truth: both images are truly positive (a true box)
    index = pd.read_csv(run / "heatmaps" / "index.csv")
    assert index["file"].tolist() == ["img0__cardiomegaly.png", "img1__cardiomegaly.png"]
    assert index["truth"].tolist() == [1, 1] and index["threshold"].tolist() == [0.5, 0.5]
    for row in index.itertuples():
        call = "positive" if row.probability >= 0.5 else "negative"
        assert row.caption == f"p {row.probability:.4f} · threshold 0.5000 · predicted {call} · truth positive"
    picture = cv2.imread(str(run / "heatmaps" / "img0__cardiomegaly.png"))
    assert picture.shape == (341, 512, 3)  # the stored image shrunk to a longest side of 512
    # the true box (magenta) drawn where it belongs: (600, 200, 300, 200) of 1200 x 800 is (256, 85, 128, 85) here
    ys, xs = np.nonzero((picture[:, :, 0] > 200) & (picture[:, :, 1] < 60) & (picture[:, :, 2] > 200))
    assert len(xs) > 50
    assert abs(xs.min() - 256) <= 3 and abs(xs.max() - 384) <= 3 and abs(ys.min() - 85) <= 3 and abs(ys.max() - 171) <= 3


def test_heatmap_names_drop_the_image_extension_and_stay_unique():
    ids = ["00000012_000.png", "CXR1000_IM-0003-2001", "1.2.840.113619.2.55", "scan.DCM", "a.png", "a.jpg", "b",
           "b.png", "x/y.png", "x_y.jpeg", ".png"]
    assert heatmap_stems(ids) == {
        "00000012_000.png": "00000012_000",  # NIH's ids carry .png
        "CXR1000_IM-0003-2001": "CXR1000_IM-0003-2001",  # OpenI's do not
        "1.2.840.113619.2.55": "1.2.840.113619.2.55",  # a DICOM UID's dots are not an extension
        "scan.DCM": "scan",
        "a.png": "a.png", "a.jpg": "a.jpg",  # the stems would coincide: the whole ids
        "b": "b", "b.png": "b.png",
        "x/y.png": "x_y.png", "x_y.jpeg": "x_y.jpeg",  # a path separator replaced, then the same rule
        ".png": ".png",  # nothing left without it
    }
    # ids still alike after the separators are replaced
    assert heatmap_stems(["x/y", "x_y"]) == {"x/y": "x_y", "x_y": "x_y~2"}


def test_caption_separates_the_model_from_the_truth():
    # the case: a truly positive image whose probability sits just below its threshold
    assert caption(0.99849, 0.99861, False, truth_word(1)) == \
        "p 0.9985 · threshold 0.9986 · predicted negative · truth positive"
    assert caption(0.7, 0.5, True, truth_word(0)) == "p 0.7000 · threshold 0.5000 · predicted positive · truth negative"
    # uncertain, or new studies without labels: no truth said; a true box makes it positive whatever the label
    assert caption(0.2, 0.5, False, truth_word(-1)) == "p 0.2000 · threshold 0.5000 · predicted negative"
    assert truth_word(0, has_box=True) == "positive"
