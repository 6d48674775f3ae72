"""CheXNet (Rajpurkar et al. 2017): DenseNet-121 with its classifier replaced by Linear(1024, C), average pooling."""
import torch.nn.functional as F

from models.backbones import convolutional_part, input_normalization, torchvision_network
from models.base import CAMClassifier


class CheXNet(CAMClassifier):
    def __init__(self, num_classes, *, mean=None, std=None, input_size=224, backbone_state=None):
        default_mean, default_std = input_normalization("densenet121", backbone_state is not None)
        super().__init__(name="chexnet", num_classes=num_classes, mean=list(mean or default_mean),
                         std=list(std or default_std), input_size=input_size)
        self.features, dim = convolutional_part("densenet121", torchvision_network("densenet121", backbone_state))
        self.head(dim, num_classes, "avg", 1.0)

    def conv_features(self, x):
        # torchvision's DenseNet applies this ReLU in forward(), after the last batch norm; the CAM reads it too.
        return F.relu(self.features(x))
