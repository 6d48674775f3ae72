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
    """uint8 batch [B, 1, H, W] -> float [B, 3, H, W] on `device`: scaled to [0, 1], the gray channel repeated for
    the three input channels, normalized by the model's mean and std, channels_last."""

    def __init__(self, mean, std, device="cpu"):
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, batch):
        x = batch.to(self.device, non_blocking=True).float().div_(255)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)
