import math

import numpy as np
import pytest

from utils.boxes import box_overlaps, boxes_from_heatmaps, heatmaps_to_uint8, paired_overlaps, scale_boxes


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
    pairs = paired_overlaps(detected[:2], truth)
    np.testing.assert_allclose(pairs[0], np.diag(iou))
    np.testing.assert_allclose(pairs[1], np.diag(iobb))
