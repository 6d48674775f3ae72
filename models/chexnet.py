"""CheXNet (Rajpurkar et al. 2017): DenseNet-121 with its classifier replaced by Linear(1024, C), average pooling.

The same network holds torchxrayvision's DenseNet-121 (one input channel, its own [-1024, 1024] scaling and centre
crop: in_channels=1, crop="center") and the CheXNet ports' checkpoints (models.published maps their keys here)."""
import torch.nn.functional as F
from torch import nn

from models.backbones import convolutional_part, torchvision_network
from models.base import CAMClassifier, input_args


class CheXNet(CAMClassifier):
    def __init__(self, num_classes, *, mean=None, std=None, input_size=224, in_channels=3, crop=None,
                 backbone_state=None):
        super().__init__(name="chexnet", num_classes=num_classes,
                         **input_args("densenet121", mean, std, input_size, in_channels, crop, backbone_state))
        self.features, dim = convolutional_part("densenet121", torchvision_network("densenet121", backbone_state))
        if in_channels != 3:
            self.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.features.conv0.weight)  # torchvision's own initialisation of conv0
        self.head(dim, num_classes, "avg", 1.0)

    def conv_features(self, x):
        # torchvision's DenseNet applies this ReLU in forward(), after the last batch norm; the CAM reads it too.
        return F.relu(self.features(x))
