"""The toolkit's classifiers: CheXNet and the Unified DCNN of ChestX-ray8, behind one factory.

Every model has .feature_map(x) -> [B, D, h, w], .pool(fmap) -> [B, D] and .classifier = nn.Linear(D, C), with
forward(x) == classifier(pool(feature_map(x))), so class activation maps can be computed the same way for all.
"""
import torch

from models.chexnet import CheXNet
from models.pooling import GlobalPool
from models.unified import PretrainedUnavailable, UnifiedDCNN

MODEL_NAMES = ["chexnet", "unified-resnet50", "unified-vgg16", "unified-alexnet", "unified-googlenet"]
# The seed's --model values keep working.
ALIASES = {"densenet": "chexnet", "densenet121": "chexnet", "resnet": "unified-resnet50",
           "resnet50": "unified-resnet50", "vgg": "unified-vgg16", "vgg16": "unified-vgg16",
           "alexnet": "unified-alexnet", "googlenet": "unified-googlenet"}

__all__ = ["build_model", "load_checkpoint", "canonical_name", "MODEL_NAMES", "ALIASES", "CheckpointError",
           "PretrainedUnavailable", "GlobalPool", "CheXNet", "UnifiedDCNN"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not one of this toolkit's."""


def canonical_name(name):
    """The model's canonical name for `name` or one of its aliases; ValueError listing the choices otherwise."""
    name = name.lower()
    name = ALIASES.get(name, name)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return name


def build_model(name, num_classes, pretrained=False, **options):
    """A classifier by name. options: weights (ImageNet weights file), pooling ('lse'|'max'|'avg'), lse_r,
    transition_dim, map_size (Unified DCNN only; CheXNet always averages, as in the paper)."""
    name = canonical_name(name)
    weights = options.get("weights")
    if name == "chexnet":
        return CheXNet(num_classes, pretrained=pretrained, weights=weights)
    arch = name.split("-", 1)[1]
    return UnifiedDCNN(arch, num_classes, pretrained=pretrained, weights=weights,
                       pooling=options.get("pooling") or "lse", lse_r=options.get("lse_r") or 10.0,
                       transition_dim=options.get("transition_dim"), map_size=options.get("map_size"))


def model_options(args):
    """The build_model keyword options stored in a checkpoint's args dict."""
    return {k: args.get(k) for k in ("pooling", "lse_r", "transition_dim", "map_size")}


def read_checkpoint(path, map_location="cpu"):
    """The checkpoint dict at `path`, loaded with weights_only=True; CheckpointError when it is not ours."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise CheckpointError(f"{path} is not a traintest.py checkpoint (it has no 'model' and 'args' entries)")
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """(model, ckpt): the model the checkpoint's args describe, with its weights loaded, in eval mode."""
    ckpt = read_checkpoint(path, map_location)
    args = ckpt["args"]
    model = build_model(args["model"], args["num_classes"], pretrained=False, **model_options(args))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {args['model']} with {args['num_classes']} classes: "
                              f"{str(e).splitlines()[0]}") from None
    return model.eval(), ckpt
