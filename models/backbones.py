"""The torchvision networks the classifiers are built on: constructors, the ImageNet weights each expects, the input
normalization those weights were trained with, and the convolutional part of each network."""
import re

from torch import nn
from torchvision import models as tvm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StateDictError(ValueError):
    """A state dict that does not fit the network it was given to; the message says how (keys or shapes)."""


class BackboneStateError(StateDictError):
    """A state dict that does not fit the backbone it was given to."""


class Backbone:
    """A torchvision classification network: its constructor, its ImageNet weights, the normalization they expect."""

    def __init__(self, constructor, weights, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        self.constructor, self.weights, self.mean, self.std, self.kwargs = constructor, weights, mean, std, kwargs


BACKBONES = {
    "densenet121": Backbone(tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1),
    "resnet50": Backbone(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "vgg16": Backbone(tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1),
    "alexnet": Backbone(tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1),
    # torchvision's GoogLeNet weights were trained on input scaled to [-1, 1] (its transform_input converts ImageNet
    # normalization to that); here that normalization is the model's own, so it travels with the checkpoint.
    # Trained from scratch, GoogLeNet takes ImageNet's normalization like the others.
    "googlenet": Backbone(tvm.googlenet, tvm.GoogLeNet_Weights.IMAGENET1K_V1, mean=(0.5, 0.5, 0.5),
                          std=(0.5, 0.5, 0.5), aux_logits=False, init_weights=True, transform_input=False),
}

# The published DenseNet file uses the old key names "norm.1", "conv.2"; torchvision renames them when it loads, with
# this pattern (torchvision.models.densenet._load_state_dict's); so do the CheXNet ports' files (models.published).
OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def imagenet_url(arch):
    """Where torchvision publishes the ImageNet weights of `arch`."""
    return BACKBONES[arch].weights.url


def adapt_imagenet_state(arch, state):
    """A published ImageNet state dict of `arch` in the keys its torchvision constructor here expects."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if arch == "densenet121":
        state = {OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    if arch == "googlenet":
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    return state


def input_normalization(arch, pretrained):
    """(mean, std) of the input: the one the ImageNet weights of `arch` expect, ImageNet's from scratch."""
    return (BACKBONES[arch].mean, BACKBONES[arch].std) if pretrained else (IMAGENET_MEAN, IMAGENET_STD)


def torchvision_network(arch, state=None):
    """A torchvision network, randomly initialised, or with `state` (an ImageNet state dict) loaded.
    Raises BackboneStateError when `state` does not fit."""
    backbone = BACKBONES[arch]
    net = backbone.constructor(weights=None, **backbone.kwargs)
    if state is not None:
        try:
            load_state(net, adapt_imagenet_state(arch, state) if isinstance(state, dict) else state)
        except StateDictError as e:
            raise BackboneStateError(str(e)) from None
    return net


def load_state(net, state):
    """net.load_state_dict(state), strict; StateDictError saying which keys are missing or unexpected and which
    shapes differ, in one line (torch's message spans a line per key)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise StateDictError(f"it holds a {type(state).__name__} that is not a state dict (names to tensors)")
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = {k: tuple(getattr(state[k], "shape", ())) for k in expected if k in state}
    wrong = [f"{k} {shapes[k]} instead of {tuple(v.shape)}" for k, v in expected.items()
             if k in shapes and shapes[k] != tuple(v.shape)]
    problems = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("tensors of another shape", wrong))
                if keys]
    if problems:
        raise StateDictError(f"its weights do not fit {type(net).__name__}: {'; '.join(problems)}")
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as e:  # values that are not tensors
        raise StateDictError(f"its weights do not load into {type(net).__name__}: {first_line(e)}") from None


def first_line(error):
    """The first non-empty line of an exception's message, or its type when it has none (EOFError has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def convolutional_part(arch, net):
    """The convolutional part of a torchvision network (everything before global pooling) and its channel count."""
    if arch == "densenet121":
        return net.features, net.classifier.in_features
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
    raise ValueError(f"no backbone {arch!r}")
