import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.classes import CLASSES, NUM_CLASSES
from utils.heatmaps import localize
from utils.localization import localization_table, match_image_ids, read_box_csv

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


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
    with pytest.raises(ValueError, match=r"bad.csv: row 3: unknown finding 'Hernia'"):
        read_box_csv(bad)
    bad.write_text("Image Index,Finding Label,x,y,w,h\na.png,mass,1,2,x,4\n")
    with pytest.raises(ValueError, match=r"row 2: box"):
        read_box_csv(bad)


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


class BrightSpot(nn.Module):
    """A model whose class activation map is known: the image's brightness pooled over 8x8 cells, weight +1 for
    cardiomegaly and -1 for the others (so their maps peak in the dark)."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(1, NUM_CLASSES)
        with torch.no_grad():
            self.classifier.weight.fill_(-1)
            self.classifier.weight[CLASSES.index("cardiomegaly")] = 1
            self.classifier.bias.zero_()

    def feature_map(self, x):
        return F.avg_pool2d(x[:, :1], 8)

    def pool(self, fmap):
        return fmap.mean(dim=(2, 3))

    def forward(self, x):
        return self.classifier(self.pool(self.feature_map(x)))


def test_localize_finds_a_bright_region_in_original_pixels(tmp_path):
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
    summary = localize(BrightSpot().eval(), pd.DataFrame(rows), str(run), image_size=128, device="cpu",
                       classes=["cardiomegaly"], boxes_csv=str(tmp_path / "truth.csv"))
    boxes = pd.read_csv(run / "boxes.csv")
    assert list(boxes.columns) == ["ImageID", "class", "x", "y", "w", "h", "score"]
    assert set(boxes["class"]) == {"cardiomegaly"}
    best = boxes[boxes["ImageID"] == "img0.png"].iloc[-1]  # the threshold-180 box, found second
    assert abs(best.x - 600) < 25 and abs(best.y - 200) < 25 and abs(best.w - 300) < 50 and abs(best.h - 200) < 50
    assert summary["iobb_0.5"] == {"cardiomegaly": 1.0}
    assert summary["iobb_0.5_chance"]["cardiomegaly"] < 0.3
    table = pd.read_csv(run / "localization.csv")
    assert table[(table.criterion == "IoU") & (table["T"] == 0.5) & (table.measure == "acc")]["cardiomegaly"].item() == 1
    assert sorted(p.name for p in (run / "heatmaps").glob("*.png")) == ["img0.png__cardiomegaly.png",
                                                                       "img1.png__cardiomegaly.png"]
    picture = cv2.imread(str(run / "heatmaps" / "img0.png__cardiomegaly.png"))
    assert picture.shape == (341, 512, 3)  # the stored image shrunk to a longest side of 512
    # the true box (magenta) drawn where it belongs: (600, 200, 300, 200) of 1200 x 800 is (256, 85, 128, 85) here
    ys, xs = np.nonzero((picture[:, :, 0] > 200) & (picture[:, :, 1] < 60) & (picture[:, :, 2] > 200))
    assert len(xs) > 50
    assert abs(xs.min() - 256) <= 3 and abs(xs.max() - 384) <= 3 and abs(ys.min() - 85) <= 3 and abs(ys.max() - 171) <= 3
