"""The only place that shapes model input: one small callable per transform (as MONAI's), no Compose framework.

The loader hands out 1-channel uint8 images already squared to the model's input size (a quarter of float32's bytes,
nothing to normalize in the workers); the flip and the normalization run on whole batches, the flip in the main
process so that it does not depend on the number of workers, the normalization on the device. The normalization's
mean and std are parameters that travel with the model (its checkpoint's model args): a network pretrained on
ImageNet expects the normalization its weights were trained with.
"""
import cv2
import numpy as np
import torch


class SquareResize:
    """uint8 HxW image -> uint8 tensor [1, size, size]: stretched to the models' fixed square geometry (INTER_AREA
    when shrinking, INTER_LINEAR when enlarging)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, img):
        if img.shape != (self.size, self.size):
            shrinking = img.shape[0] > self.size or img.shape[1] > self.size
            img = cv2.resize(img, (self.size, self.size),
                             interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0)


def center_square(img):
    """The centred square of side min(H, W) of an HxW image, cropped on its longer side exactly as torchxrayvision's
    XRayCenterCrop crops (start = side // 2 - crop // 2), so that its models see the pixels they were trained on."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return img[top:top + side, left:left + side]


class CenterCropResize(SquareResize):
    """uint8 HxW image -> uint8 tensor [1, size, size]: the centred square (center_square), resized. The geometry of
    torchxrayvision's models (XRayCenterCrop, XRayResizer) and of jrzech's CheXNet (Resize + CenterCrop)."""

    def __call__(self, img):
        return super().__call__(center_square(img))


# A model's `crop` (its model args, its card) -> the loader's geometry; None: the whole image stretched to the square.
GEOMETRIES = {None: SquareResize, "center": CenterCropResize}


def square_transform(size, crop=None):
    """The transform that gives a model with `crop` its input square."""
    if crop not in GEOMETRIES:
        raise ValueError(f"unknown crop {crop!r}; one of {sorted(map(str, GEOMETRIES))}")
    return GEOMETRIES[crop](size)


class RandomHorizontalFlip:
    """Flips a random half of a batch [B, 1, H, W] horizontally, CheXNet's only augmentation. The draws come from
    `generator` (seeded by seed and epoch), so a resumed run flips the same images."""

    def __init__(self, generator, p=0.5):
        self.generator, self.p = generator, p

    def __call__(self, batch):
        flip = torch.rand(batch.shape[0], generator=self.generator) < self.p
        if flip.any():
            batch = batch.clone()
            batch[flip] = batch[flip].flip(-1)
        return batch


class Normalize:
    """uint8 batch [B, 1, H, W] -> float [B, C, H, W] on `device`: scaled to [0, 1], the gray channel repeated for
    the C = len(mean) input channels (3 for ImageNet backbones, 1 for torchxrayvision's models), normalized by the
    model's mean and std, channels_last. torchxrayvision's [-1024, 1024] is mean 0.5, std 0.5 / 1024 here:
    (x / 255 - 0.5) * 2048 = (2 x / 255 - 1) * 1024, its normalize(img, 255)."""

    def __init__(self, mean, std, device="cpu"):
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __call__(self, batch):
        x = batch.to(self.device, non_blocking=True).float().div_(255)
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)
