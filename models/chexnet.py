"""CheXNet (Rajpurkar et al. 2017): DenseNet-121 with its classifier replaced by Linear(1024, C)."""
import torch.nn.functional as F
from torch import nn

from models.pooling import GlobalPool
from models.unified import torchvision_model


class CheXNet(nn.Module):
    def __init__(self, num_classes, pretrained=False, weights=None):
        super().__init__()
        net = torchvision_model("densenet121", pretrained, weights)
        self.features = net.features
        self.pool = GlobalPool("avg")
        self.classifier = nn.Linear(net.classifier.in_features, num_classes)

    def feature_map(self, x):
        # torchvision's DenseNet applies this ReLU in forward(), after the last batch norm; the CAM reads it too.
        return F.relu(self.features(x))

    def forward(self, x):
        return self.classifier(self.pool(self.feature_map(x)))
