"""ResNet-50 with global average pooling and a linear classifier: torchxrayvision's resnet50-res512-all (one input
channel, 512 px), whose state dict models.published maps here. Unlike the Unified DCNN it has no transition layer."""
from torch import nn

from models.backbones import convolutional_part, torchvision_network
from models.base import CAMClassifier, input_args


class ResNet50(CAMClassifier):
    def __init__(self, num_classes, *, mean=None, std=None, input_size=224, in_channels=3, crop=None,
                 backbone_state=None):
        super().__init__(name="resnet50-gap", num_classes=num_classes,
                         **input_args("resnet50", mean, std, input_size, in_channels, crop, backbone_state))
        net = torchvision_network("resnet50", backbone_state)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's
        self.features, dim = convolutional_part("resnet50", net)
        self.head(dim, num_classes, "avg", 1.0)

    def conv_features(self, x):
        return self.features(x)
