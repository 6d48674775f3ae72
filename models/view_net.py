"""ViewNet: frontal or lateral from a small grayscale thumbnail, a CNN small enough to train on a CPU in seconds.

A frontal and a lateral chest radiograph differ in their whole layout (two lung fields beside a central heart and
spine against one body profile with the spine at one edge), which a strided stem and three conv-BN-ReLU-pool stages
see at 64 px (the stem halves the side at once: the layout needs no finer detail, and the full-size layers would
cost most of the time). Each
image is standardized to zero mean and unit variance inside forward, so that the brightness and contrast of a
hospital's windowing reach the convolutions as the same numbers; global average pooling makes the answer depend on
what is in the image rather than on where a crop or a border put it. utils.view_classifier trains it from random
initialization on the run's own known views, with augmentations that imitate other scanners.
"""
from torch import nn

STEM, WIDTHS = 8, (16, 32, 64)  # channels: ~25k weights; a training step of 64 images at 64 px ~0.06 s on a core


class ViewNet(nn.Module):
    """[B, 1, S, S] float (any scale) -> [B] logit of 'lateral'."""

    def __init__(self, stem=STEM, widths=WIDTHS):
        super().__init__()
        layers = [nn.Conv2d(1, stem, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        channels = stem
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, x):
        x = x.float()
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return self.classifier(self.features(x).mean(dim=(2, 3))).squeeze(1)
