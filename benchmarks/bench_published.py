"""Predicting with a torchxrayvision DenseNet, side by side in one run:

  ours  traintest.py --predict FOLDER --load-model FILE (in this process): one decode per image in the loader's
        workers (OpenCV, INTER_AREA), batches, channels_last; model loading and the files it writes included
  xrv   torchxrayvision's documented per-image loop: read (skimage.io.imread, normalize(img, 255); DICOM through
        xrv.utils.read_xray_dcm), XRayCenterCrop, XRayResizer(224), forward one image at a time

The same DenseNet (xrv.models.DenseNet(weights=None), seeded, saved with torch.save(model) as its release files are),
fp32 both, the best of alternating rounds, on one folder of real radiographs (pydicom-data's chest CR as DICOM, and PNG and JPEG files written from
its 8-bit decoding, repeated). Prints images/s of each and the ratio. Goal: ours >= 2x on a 2-core CPU.

    python -m benchmarks.bench_published [--images 240] [--batch-size 16] [--workers N] [--rounds 2] [--device cpu]

--predict pays model loading and its loader's start once per folder: on an idle 2-core CPU the ratio was 1.40x at
24 images, 1.93x at 120 and 2.37x at 240 (22.3 against 9.4 images/s), so the default is a folder of 240.

(from the repository root; torchxrayvision must be installed: it is a test dependency of this toolkit only)
"""
import argparse
import contextlib
import io
import logging
import os
import resource
import shutil
import tempfile
import time

import cv2
import numpy as np
import skimage.io
import torch
from pydicom.data import get_testdata_file

import torchxrayvision as xrv
from data.decode import read_image


def radiograph_folder(folder, n):
    """n files in `folder`: the chest CR of pydicom-data as DICOM, PNG and JPEG in turn."""
    dicom = get_testdata_file("RG1_UNCI.dcm")
    gray = read_image(dicom)
    for i in range(n):
        kind = ("dcm", "png", "jpg")[i % 3]
        target = os.path.join(folder, f"chest{i:03d}.{kind}")
        if kind == "dcm":
            shutil.copyfile(dicom, target)
        else:
            cv2.imwrite(target, gray)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def xrv_loop(model, paths, device):
    """torchxrayvision's README example, one image at a time."""
    transform = xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)
    out = []
    with torch.no_grad():
        for path in paths:
            if path.endswith(".dcm"):
                img = xrv.utils.read_xray_dcm(path)
            else:
                img = xrv.datasets.normalize(skimage.io.imread(path), 255)
                if img.ndim == 3:
                    img = img.mean(2)
            img = img[None, ...]
            for t in transform:
                img = t(img)
            out.append(model(torch.from_numpy(img).float()[None].to(device)).cpu())
    return torch.cat(out)


def ours(folder, model_file, out_dir, args):
    import traintest
    argv = ["--predict", folder, "--load-model", model_file, "--output-dir", out_dir, "--amp", "off",
            "--max-heatmaps", "0", "--batch-size", str(args.batch_size), "--device", args.device]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    with contextlib.redirect_stderr(io.StringIO()):
        status = traintest.main(argv)
    logging.getLogger().handlers.clear()
    if status not in (0, None):
        raise SystemExit(f"traintest.py --predict failed ({status})")


def cpu_seconds():
    """CPU time of this process and of its finished children (--predict's loader workers), user and system."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=240, help="radiographs in the folder (DICOM, PNG, JPEG in turn)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, help="--predict's loader workers (default: traintest.py's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best time of each is reported")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        paths = radiograph_folder(folder, args.images)
        torch.manual_seed(0)
        model = xrv.models.DenseNet(weights=None).eval()
        model_file = os.path.join(tmp, "xrv_densenet.pt")
        torch.save(model, model_file)
        model.to(device)
        xrv_loop(model, paths[:1], device)  # warm-up of both (allocator, kernels)
        ours(folder, model_file, os.path.join(tmp, "warm"), args)
        runs = {"ours": lambda: ours(folder, model_file, os.path.join(tmp, "run"), args),
                "xrv": lambda: xrv_loop(model, paths, device)}
        times = {}
        # alternating rounds, the best of each kept: on a machine shared with other work, a slow moment then
        # penalizes neither side alone
        for round_ in range(args.rounds):
            for name in (("ours", "xrv") if round_ % 2 == 0 else ("xrv", "ours")):
                start, cpu = time.perf_counter(), cpu_seconds()
                runs[name]()
                took = time.perf_counter() - start, cpu_seconds() - cpu
                times[name] = min(times.get(name, took), took)
    rate = {k: args.images / wall for k, (wall, _) in times.items()}
    print(f"{args.images} radiographs (DICOM, PNG, JPEG of 1841 x 1955), DenseNet-121 at 224 px, fp32, "
          f"{torch.get_num_threads()} torch threads, device {args.device}, best of {args.rounds} rounds")
    for name in ("ours", "xrv"):
        wall, cpu = times[name]
        print(f"  {name:5s} {rate[name]:6.2f} images/s  ({wall:.2f} s wall, {cpu:.2f} s CPU with its workers)")
    print(f"  ratio ours / xrv: {rate['ours'] / rate['xrv']:.2f}x (CPU seconds: {times['xrv'][1] / times['ours'][1]:.2f}x"
          f" fewer)")
    return np.float64(rate["ours"] / rate["xrv"])


if __name__ == "__main__":
    main()
