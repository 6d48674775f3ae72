"""Images for the models: decode to uint8 on the CPU (workers), normalize on the device.

The loader hands the model 1-channel uint8 tensors (a quarter of float32's bytes, nothing to normalize in the
workers); to_model_input turns a batch into the 3-channel ImageNet-normalized float tensor the networks expect.
"""
import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

# DataLoader workers are forked, and OpenCV's thread pool does not survive a fork: a worker that touches it can
# hang for good. Images are small and the workers are the parallelism, so OpenCV runs single-threaded.
cv2.setNumThreads(1)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FAST_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def read_gray(path):
    """The image at `path` as uint8 HxW at its original size.

    8-bit PNG and JPEG are read by OpenCV directly (the common case after download_images.py); 16-bit PNGs, colour
    files and DICOM go through data.decode.read_image, which maps them to 8 bits exactly as step 1 does.
    """
    path = str(path)
    if path.lower().endswith(FAST_SUFFIXES):
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is not None and img.dtype == np.uint8 and img.ndim == 2:
            return img
    from data.decode import read_image
    return read_image(path)


def load_input(path, image_size):
    """The image at `path` squared to image_size x image_size (stretched: the models' fixed geometry), as a
    torch.uint8 tensor [1, image_size, image_size]."""
    img = read_gray(path)
    if img.shape != (image_size, image_size):
        shrinking = img.shape[0] > image_size or img.shape[1] > image_size
        img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0)


def to_model_input(x_uint8, device):
    """[B, 1, H, W] uint8 -> [B, 3, H, W] float, ImageNet-normalized, channels_last, on `device`."""
    x = x_uint8.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


class ChestImages(Dataset):
    """(image uint8 [1, S, S], labels float [C], row index) for each row of a frame with `path` and class columns.

    cache=True keeps every decoded image in one shared-memory uint8 tensor, filled as images are first read: the
    workers (forked or spawned) write into the same memory, so epochs after the first decode nothing.
    Rows without labels (prediction on new studies) get a label vector of -1.
    """

    def __init__(self, frame, image_size, classes=None, cache=False):
        self.paths = frame["path"].astype(str).tolist()
        self.image_size = image_size
        if classes is not None and all(c in frame.columns for c in classes):
            self.labels = torch.tensor(frame[list(classes)].to_numpy(dtype=np.float32))
        else:
            self.labels = torch.full((len(frame), len(classes or [])), -1.0)
        self.cache = None
        if cache:
            self.cache = torch.zeros((len(frame), 1, image_size, image_size), dtype=torch.uint8).share_memory_()
            self.cached = torch.zeros(len(frame), dtype=torch.bool).share_memory_()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.cache is not None and self.cached[i]:
            img = self.cache[i]
        else:
            img = load_input(self.paths[i], self.image_size)
            if self.cache is not None:
                self.cache[i] = img
                self.cached[i] = True
        return img, self.labels[i], i


def missing_files(paths):
    """The paths in `paths` that are not files."""
    return [p for p in paths if not os.path.isfile(p)]


def image_files(path):
    """The PNG, JPEG and DICOM files at `path` (a file, or a folder searched recursively), sorted."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    found = []
    for root, _, names in os.walk(path):
        found += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)
