import numpy as np
import pydicom.data
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from data.classes import NUM_CLASSES
from data.decode import read_image
from data.transforms import Normalize, SquareResize
from models import build_model, class_activation_maps, upsample_maps

SIZE = 224


class FeatureMap(nn.Module):
    """model.feature_map as a module, so Grad-CAM can hook the exact map the CAM reads (CheXNet's includes the final
    ReLU that torchvision's DenseNet applies in forward(), which is no module of its own).

    The map is computed without a graph and handed on as a leaf that requires grad: the gradient of a logit with
    respect to this map is the same however the map was computed, and backward then stops here instead of running
    through DenseNet once per class (22 full backward passes took minutes on a 2-core CPU).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            fmap = self.model.feature_map(x)
        return fmap.requires_grad_()


class Hooked(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.body = FeatureMap(model)
        self.model = model

    def forward(self, x):
        return self.model.classifier(self.model.pool(self.body(x)))


def minmax(a):
    a = a - a.min(axis=(-2, -1), keepdims=True)
    return a / (1e-7 + a.max(axis=(-2, -1), keepdims=True))


@pytest.fixture(scope="module")
def chexnet():
    torch.manual_seed(0)
    return build_model("chexnet", NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def radiograph(chexnet):
    # A real radiograph through step 1's decoder, then the model's input geometry and normalization.
    img = read_image(pydicom.data.get_testdata_file("RG1_UNCI.dcm"))
    return Normalize(chexnet.mean, chexnet.std)(SquareResize(SIZE)(img)[None])


@pytest.fixture(scope="module")
def cams(chexnet, radiograph):
    return class_activation_maps(chexnet, radiograph, size=None)  # logits [1, C], raw maps [1, C, h, w]


def test_cam_equals_grad_cam_up_to_scale_on_a_real_radiograph(chexnet, radiograph, cams):
    model = chexnet
    logits, raw = cams
    raw = raw[0].numpy()
    # pytorch-grad-cam's public __call__ applies ReLU and rescales each map to [0, 1], which would hide the negative
    # half of a signed map (a randomly initialised classifier gives every class both signs), so the comparison uses
    # its raw map: GradCAM.get_cam_image (channel weights = mean gradient, times the activations, summed) before ReLU.
    hooked = Hooked(model).eval()
    with GradCAM(model=hooked, target_layers=[hooked.body]) as cam:
        out = cam.activations_and_grads(radiograph)
        acts = cam.activations_and_grads.activations[0].numpy()
        for c in range(NUM_CLASSES):
            out[0, c].backward(retain_graph=True)
            grads = cam.activations_and_grads.gradients[0].numpy()  # the hook puts the newest gradient first
            theirs = cam.get_cam_image(radiograph, hooked.body, None, acts, grads)[0]
            r = np.corrcoef(raw[c].ravel(), theirs.ravel())[0, 1]
            assert r >= 0.95, f"class {c}: correlation {r:.3f} between CAM and Grad-CAM"
            # the scale is positive (1 / (h * w)), as the identity says
            np.testing.assert_allclose(theirs, raw[c] / raw[c].size, rtol=1e-3, atol=1e-5 * np.abs(raw[c]).max())

    # The upsampled maps: after Grad-CAM's own ReLU, min-max scaling and resize to the input, the positive parts agree.
    c = int(logits[0].argmax())
    with GradCAM(model=hooked, target_layers=[hooked.body]) as cam:
        grad = cam(input_tensor=radiograph, targets=[ClassifierOutputTarget(c)])[0]
    ours = upsample_maps(cams[1], (SIZE, SIZE))[0, c].numpy()
    r = np.corrcoef(minmax(np.maximum(ours, 0)).ravel(), grad.ravel())[0, 1]
    assert r >= 0.95, f"upsampled class {c}: correlation {r:.3f}"


def test_logits_are_the_mean_of_the_maps_for_average_pooling(chexnet, radiograph, cams):
    # CAM's defining identity: with global average pooling, logit_c = mean(M_c) + b_c, so the maps explain the logits;
    # and the logits are the model's own, from the same pass.
    logits, raw = cams
    assert raw.shape == (1, NUM_CLASSES, SIZE // 32, SIZE // 32)
    with torch.no_grad():
        torch.testing.assert_close(logits, chexnet(radiograph), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(raw.mean(dim=(2, 3)) + chexnet.classifier.bias, logits, rtol=1e-4, atol=1e-4)


def test_unified_dcnn_maps_come_from_the_transition_layer():
    torch.manual_seed(0)
    model = build_model("unified-alexnet", NUM_CLASSES, pooling="lse", map_size=8).eval()
    x = torch.randn(2, 3, 128, 128)
    logits, maps = class_activation_maps(model, x)
    with torch.no_grad():
        fmap = model.feature_map(x)
        expected = torch.einsum("cd,bdhw->bchw", model.classifier.weight, fmap)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)
    assert maps.shape == (2, NUM_CLASSES, 128, 128)
    torch.testing.assert_close(class_activation_maps(model, x, size=None)[1], expected, rtol=1e-4, atol=1e-4)


def test_upsampling_keeps_pixel_centres_aligned():
    # One hot cell (row 2, column 5) of a 7x7 map covers input pixels [160, 192) x [64, 96) of a 224 image:
    # the upsampled peak must sit at that span's centre, pixels 175-176 and 79-80 (align_corners=True would put it
    # at 5 * 223 / 6 = 186, ten pixels off).
    cells = torch.zeros(1, 1, 7, 7)
    cells[0, 0, 2, 5] = 1
    up = upsample_maps(cells, (224, 224))[0, 0].numpy()
    rows, cols = np.nonzero(up == up.max())
    assert set(cols.tolist()) <= {175, 176} and set(rows.tolist()) <= {79, 80}
    # and a non-square target keeps the cell's fraction of each axis
    up = upsample_maps(cells, (140, 280))[0, 0].numpy()
    rows, cols = np.nonzero(up == up.max())
    assert set(cols.tolist()) <= {219, 220} and set(rows.tolist()) <= {49, 50}
