"""Cost of heatmaps and boxes, side by side in one run:

  plain       inference only (logits)
  cam+boxes   logits + class activation maps of all 22 classes + ChestX-ray8 boxes for all 22 (models.cam,
              utils.localization)
  grad-cam    pytorch-grad-cam's GradCAM for the same 22 classes (one forward + backward per class)

CheXNet (random weights: the cost does not depend on them) on real radiographs (pydicom-data's RG1 files through
step 1's decoder). Targets: cam+boxes at most 1.2x plain; at least 50x faster than Grad-CAM.

    python -m benchmarks.bench_cam [--images 8] [--gradcam-images 2] [--size 224] [--device cpu]

(from the repository root, so that data/, models/ and utils/ import as the scripts import them)
"""
import argparse
import os
import tempfile
import time

import cv2
import pydicom.data
import torch
from torch import nn

from data.classes import NUM_CLASSES
from data.dataset import read_gray
from data.decode import read_image
from data.transforms import Normalize, SquareResize
from models import build_model
from models.cam import class_activation_maps, upsample_maps
from utils.heatmaps import heatmaps_to_uint8, scale_boxes
from utils.localization import CELLS_TO_GRID, boxes_from_heatmaps


class FeatureMap(nn.Module):
    """model.feature_map as a module for Grad-CAM's hooks (CheXNet's map includes DenseNet's final functional ReLU)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.feature_map(x)


class Hooked(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.body = FeatureMap(model)
        self.model = model

    def forward(self, x):
        return self.model.classifier(self.model.pool(self.body(x)))


def radiographs(n, size):
    """n real radiographs as the model's uint8 input [n, 1, size, size] (the three RG1 files, repeated)."""
    names = ["RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]
    resize = SquareResize(size)
    with tempfile.TemporaryDirectory() as tmp:
        tensors = []
        for name in names:
            path = os.path.join(tmp, name.replace(".dcm", ".png"))
            cv2.imwrite(path, read_image(pydicom.data.get_testdata_file(name)))
            tensors.append(resize(read_gray(path)))
    return torch.stack([tensors[i % len(tensors)] for i in range(n)])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns, device, repeats):
    """Fastest wall time of each function over `repeats` rounds, after one warm-up round. The functions take turns
    within a round, so a machine shared with other work slows them alike; the minimum is the run least disturbed."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            t.append(time.perf_counter() - start)
    return [min(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per batch for plain and cam+boxes (default 8)")
    parser.add_argument("--gradcam-images", type=int, default=2, help="images run through Grad-CAM (default 2)")
    parser.add_argument("--size", type=int, default=224, help="input size (default 224, CheXNet's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the fastest is reported (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build_model("chexnet", NUM_CLASSES, input_size=args.size).eval()
    model = model.to(device).to(memory_format=torch.channels_last)
    x = Normalize(model.mean, model.std, device)(radiographs(args.images, args.size))
    original = (2000, 2500)  # boxes are scaled to an original image size, as utils.localization.localize does

    @torch.no_grad()
    def plain():
        return torch.sigmoid(model(x)).cpu()

    def cam_and_boxes():
        logits, fmaps = class_activation_maps(model, x, size=None)
        grid = min(args.size, CELLS_TO_GRID * max(fmaps.shape[-2:]))
        heat = heatmaps_to_uint8(upsample_maps(fmaps, (grid, grid)).cpu().numpy())
        probs = torch.sigmoid(logits).cpu()
        boxes = [[scale_boxes(b, (grid, grid), original) for b in boxes_from_heatmaps(heat[i])] for i in range(len(x))]
        return probs, boxes

    with torch.no_grad():
        fmap = model.feature_map(x)

    @torch.no_grad()
    def extra_only():
        # what cam+boxes adds to a forward pass: the 1x1 class projection, upsampling, scaling and boxes; timed on
        # its own as well, since on a busy machine it is smaller than the noise in two whole forward passes
        maps = torch.nn.functional.conv2d(fmap, model.classifier.weight[:, :, None, None])
        grid = min(args.size, CELLS_TO_GRID * max(maps.shape[-2:]))
        heat = heatmaps_to_uint8(upsample_maps(maps, (grid, grid)).cpu().numpy())
        return [[scale_boxes(b, (grid, grid), original) for b in boxes_from_heatmaps(heat[i])] for i in range(len(x))]

    t_plain, t_cam, t_extra = (t / args.images for t in interleaved([plain, cam_and_boxes, extra_only], device,
                                                                      args.repeats))
    n_boxes = sum(len(b) for image in cam_and_boxes()[1] for b in image) / args.images

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    hooked = Hooked(model).eval()

    with GradCAM(model=hooked, target_layers=[hooked.body]) as cam:
        cam(input_tensor=x[:1], targets=[ClassifierOutputTarget(0)])  # warm-up
        sync(device)
        start = time.perf_counter()
        for i in range(args.gradcam_images):
            for c in range(NUM_CLASSES):
                cam(input_tensor=x[i:i + 1], targets=[ClassifierOutputTarget(c)])
        sync(device)
        t_grad = (time.perf_counter() - start) / args.gradcam_images

    print(f"CheXNet {args.size}x{args.size} on {device} ({torch.get_num_threads()} threads), {NUM_CLASSES} classes")
    print(f"{'plain inference':<34}{t_plain * 1e3:9.1f} ms/image   (batch {args.images})")
    print(f"{'inference + 22 maps + boxes':<34}{t_cam * 1e3:9.1f} ms/image   "
          f"({n_boxes:.0f} boxes/image; target <= 1.2x plain)")
    print(f"{'pytorch-grad-cam GradCAM, 22':<34}{t_grad * 1e3:9.1f} ms/image   ({args.gradcam_images} images, 1 at a time)")
    print(f"{'  of which maps + boxes alone':<34}{t_extra * 1e3:9.1f} ms/image")
    print(f"ratio cam+boxes / plain   = {t_cam / t_plain:.2f}x  (from the parts: {(t_plain + t_extra) / t_plain:.2f}x)")
    print(f"ratio grad-cam / cam+boxes = {t_grad / t_cam:.0f}x faster")


if __name__ == "__main__":
    main()
