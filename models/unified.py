"""The Unified DCNN of ChestX-ray8 (Wang et al. 2017): an ImageNet backbone's convolutional part, a transition
layer to a uniform D-channel map, global pooling (LSE, max or average) and a linear prediction layer."""
import os
import re

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from models.pooling import GlobalPool


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights were asked for but are neither in the local cache nor given as a file."""


# torchvision constructor and ImageNet weights of each backbone
ARCHS = {
    "densenet121": (tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1),
    "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1),
    "googlenet": (tvm.googlenet, tvm.GoogLeNet_Weights.IMAGENET1K_V1),
}


def cached_weights_path(arch):
    """Where torch.hub keeps the ImageNet weights of `arch` once downloaded (may not exist)."""
    url = ARCHS[arch][1].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def imagenet_state_dict(arch, weights_file=None):
    """The ImageNet state_dict of `arch`, read from `weights_file` or torch.hub's cache; never downloads,
    since training machines are often offline and a silent multi-minute download is worse than a clear error."""
    path = weights_file or cached_weights_path(arch)
    if not os.path.isfile(path):
        url = ARCHS[arch][1].url
        raise PretrainedUnavailable(
            f"ImageNet weights for {arch} not found at {path}. Download {url} on a machine with network "
            f"access and copy it there, or pass --weights FILE, or train from scratch with --pretrained 0.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if arch == "densenet121":
        # The published DenseNet file uses the old key names "norm.1", "conv.2"; torchvision renames them on load.
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        state = {(pattern.sub(r"\1\2", k)): v for k, v in state.items()}
    return state


def torchvision_model(arch, pretrained=False, weights_file=None):
    """A torchvision classification network, randomly initialised or with ImageNet weights loaded offline."""
    constructor = ARCHS[arch][0]
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = constructor(weights=None, **kwargs)
    if pretrained:
        state = imagenet_state_dict(arch, weights_file)
        if arch == "googlenet":
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise PretrainedUnavailable(f"{weights_file or cached_weights_path(arch)} does not hold {arch} "
                                        f"ImageNet weights: {str(e).splitlines()[0]}") from None
    return model


def backbone_features(arch, net):
    """The convolutional part of a torchvision network (everything before global pooling) and its channel count."""
    if arch == "resnet50":
        layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
        return nn.Sequential(*layers), 2048
    if arch in ("vgg16", "alexnet"):
        # Drop the last max-pool: the heatmap is read from this map, and twice its resolution localizes better.
        return nn.Sequential(*list(net.features.children())[:-1]), net.features[-3].out_channels
    if arch == "googlenet":
        names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                 "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                 "inception5a", "inception5b"]
        return nn.Sequential(*[getattr(net, n) for n in names]), 1024
    raise ValueError(f"no Unified DCNN backbone {arch!r}")


# The paper's D: 2048 for ResNet and 1024 for GoogLeNet; 1024 for VGG and AlexNet as well.
TRANSITION_DIM = {"resnet50": 2048, "googlenet": 1024, "vgg16": 1024, "alexnet": 1024}


class UnifiedDCNN(nn.Module):
    """backbone -> transition (1x1 conv to D channels, batch norm, ReLU, optionally resized to S x S) -> pooling -> Linear(D, C).

    The transition is a 1x1 convolution: it only has to map the backbone's channels to D (a 3x3 one would add 38M
    parameters to ResNet-50 for no gain in this role); batch norm lets it train from scratch at a high learning rate."""

    def __init__(self, arch, num_classes, pretrained=False, weights=None, pooling="lse", lse_r=10.0,
                 transition_dim=None, map_size=None):
        super().__init__()
        net = torchvision_model(arch, pretrained, weights)
        self.arch = arch
        # torchvision's GoogLeNet weights expect its own input transform on top of ImageNet normalization.
        self.googlenet_transform = arch == "googlenet" and pretrained
        self.backbone, in_channels = backbone_features(arch, net)
        dim = transition_dim or TRANSITION_DIM[arch]
        self.transition = nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
                                        nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.map_size = map_size
        self.pool = GlobalPool(pooling, lse_r)
        self.classifier = nn.Linear(dim, num_classes)

    def feature_map(self, x):
        if self.googlenet_transform:
            x = torch.cat([x[:, i:i + 1] * (s / 0.5) + (m - 0.5) / 0.5
                           for i, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))], 1)
        fmap = self.transition(self.backbone(x))
        if self.map_size and fmap.shape[-1] != self.map_size:
            # The paper's uniform S x S map whatever the input size (S in {8, 16, 32}).
            fmap = F.interpolate(fmap, size=(self.map_size, self.map_size), mode="bilinear", align_corners=False)
        return fmap

    def forward(self, x):
        return self.classifier(self.pool(self.feature_map(x)))
