"""The Unified DCNN of ChestX-ray8 (Wang et al. 2017): an ImageNet backbone's convolutional part, a transition
layer to a uniform D-channel map, global pooling (LSE, max or average) and a linear prediction layer."""
from torch import nn

from models.backbones import convolutional_part, input_normalization, torchvision_network
from models.base import CAMClassifier

# The paper's D: 2048 for ResNet and 1024 for GoogLeNet; 1024 for VGG and AlexNet as well.
TRANSITION_DIM = {"resnet50": 2048, "googlenet": 1024, "vgg16": 1024, "alexnet": 1024}


class UnifiedDCNN(CAMClassifier):
    """backbone -> transition (1x1 conv to D channels, batch norm, ReLU, optionally resized to S x S) -> pooling ->
    Linear(D, C).

    The transition is a 1x1 convolution: it only has to map the backbone's channels to D (a 3x3 one would add 38M
    parameters to ResNet-50 for no gain in this role); batch norm lets it train from scratch at a high learning rate."""

    def __init__(self, arch, num_classes, *, pooling="lse", lse_r=10.0, transition_dim=None, map_size=None,
                 mean=None, std=None, input_size=224, backbone_state=None):
        dim = transition_dim or TRANSITION_DIM[arch]
        default_mean, default_std = input_normalization(arch, backbone_state is not None)
        super().__init__(name=f"unified-{arch}", num_classes=num_classes, pooling=pooling, lse_r=lse_r,
                         transition_dim=dim, map_size=map_size, mean=list(mean or default_mean),
                         std=list(std or default_std), input_size=input_size)
        self.arch = arch
        self.backbone, in_channels = convolutional_part(arch, torchvision_network(arch, backbone_state))
        self.transition = nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
                                        nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.head(dim, num_classes, pooling, lse_r, map_size)

    def conv_features(self, x):
        return self.transition(self.backbone(x))
