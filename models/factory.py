"""The model registry: six constructors by name, the seed's names as aliases, and build_model.

build_model(**model.model_args) rebuilds any model; a checkpoint stores exactly those arguments.
"""
import functools
import inspect

from models.chexnet import CheXNet
from models.resnet import ResNet50
from models.unified import UnifiedDCNN

MODELS = {
    "chexnet": CheXNet,
    "unified-resnet50": functools.partial(UnifiedDCNN, "resnet50"),
    "unified-vgg16": functools.partial(UnifiedDCNN, "vgg16"),
    "unified-alexnet": functools.partial(UnifiedDCNN, "alexnet"),
    "unified-googlenet": functools.partial(UnifiedDCNN, "googlenet"),
    "resnet50-gap": ResNet50,
}
MODEL_NAMES = list(MODELS)
# The smallest input side each network's pooling layers accept (tests/test_models.py checks that one pixel less fails):
# below it torch stops mid-forward with "Output size is too small". ResNet-50 pads every stage, so any side works.
MIN_INPUT_SIZE = {"chexnet": 29, "unified-resnet50": 1, "unified-vgg16": 16, "unified-alexnet": 31,
                  "unified-googlenet": 15, "resnet50-gap": 1}
# The seed's --model values keep working.
ALIASES = {"densenet": "chexnet", "densenet121": "chexnet", "resnet": "unified-resnet50",
           "resnet50": "unified-resnet50", "vgg": "unified-vgg16", "vgg16": "unified-vgg16",
           "alexnet": "unified-alexnet", "googlenet": "unified-googlenet"}


def canonical_name(name):
    """The model's registry name for `name` or one of its aliases; ValueError listing the choices otherwise."""
    name = str(name).lower()
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return name


def backbone_arch(name):
    """The torchvision network a model is built on."""
    name = canonical_name(name)
    return {"chexnet": "densenet121", "resnet50-gap": "resnet50"}.get(name) or name.split("-", 1)[1]


def model_options(name):
    """The keyword arguments the constructor of `name` takes (CheXNet has no pooling, map size or transition)."""
    constructor = MODELS[canonical_name(name)]
    target = constructor.func if isinstance(constructor, functools.partial) else constructor
    return [p.name for p in inspect.signature(target).parameters.values() if p.kind == p.KEYWORD_ONLY]


def checked_input_size(name, size):
    """`size` when the network `name` accepts inputs of that side; ValueError saying its minimum otherwise. The one
    check of an input size: build_model, and traintest.py for a checkpoint fed another --image-size."""
    name = canonical_name(name)
    if not isinstance(size, int) or size < MIN_INPUT_SIZE[name]:
        raise ValueError(f"{size!r} is below {name}'s minimum input of {MIN_INPUT_SIZE[name]} pixels")
    return size


def build_model(name, num_classes, **options):
    """A classifier by name, randomly initialised, or with `backbone_state` (an ImageNet state dict of its backbone).
    Options it does not take are an error: model_options(name) lists them."""
    name = canonical_name(name)
    unknown = set(options) - set(model_options(name))
    if unknown:
        raise TypeError(f"{name} takes no {sorted(unknown)}; it takes {model_options(name)}")
    checked_input_size(name, options.get("input_size", MIN_INPUT_SIZE[name]))
    return MODELS[name](num_classes, **options)
