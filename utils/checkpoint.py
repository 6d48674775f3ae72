"""The one owner of the checkpoint format, and of the other weight files a run reads (ImageNet backbones).

A checkpoint is a dict saved with torch.save and read with weights_only=True (no pickled code runs):
  format      2
  model_args  the keyword arguments that rebuild the model: models.build_model(**model_args), input mean, std and
              size included, so the model is always fed the input it was trained on
  model       its state_dict
  classes     the class names, in the order of the classifier's outputs
  config      the run's flags, for the record
  epoch       epochs trained
best checkpoints add val_auroc and thresholds (F1-optimal on validation); last checkpoints add optimizer, scheduler,
scaler, best_auroc, history and rng (every global RNG's state), which --resume restores.
Checkpoints of the first format ('args' holding the flags) still load: their model args are derived from the flags.

It lives in utils/, not models/: it holds training state (optimizer, RNG), and its errors are the project's bad-input
errors (data.errors), which models/ does not import.
"""
import os
import random

import numpy as np
import torch

from data.classes import CLASSES
from data.errors import InputError
from data.files import atomic_path
from utils.dist import unwrap
from models import (BackboneStateError, backbone_arch, build_model, canonical_name, imagenet_url, input_normalization,
                    model_options)

FORMAT = 2


class CheckpointError(InputError):
    """A checkpoint file that is missing, unreadable, not one of this toolkit's, or for other classes."""


class WeightsUnavailable(InputError):
    """ImageNet weights were asked for but are neither in the local cache nor given as a file, or do not fit."""


def model_args_from_flags(flags):
    """The model args of a first-format checkpoint, from the flags it stored. GoogLeNet with ImageNet weights was
    fed [-1, 1] input (its weights' normalization); from scratch, ImageNet's."""
    name = canonical_name(flags["model"])
    args = {"name": name, "num_classes": flags["num_classes"], "input_size": flags.get("image_size") or 224}
    options = model_options(name)
    args.update({k: flags[k] for k in ("pooling", "lse_r", "transition_dim", "map_size")
                 if k in options and flags.get(k) is not None})
    mean, std = input_normalization(backbone_arch(name), bool(flags.get("pretrained")))
    args["mean"], args["std"] = list(mean), list(std)
    return args


def save_checkpoint(state, path):
    """torch.save through a temporary file: a run killed while saving keeps its previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def model_checkpoint(model, **entries):
    """A checkpoint of `model` (DDP-wrapped or not): model_args, weights, classes, plus `entries`."""
    net = unwrap(model)
    return {"model_args": net.model_args, "model": net.state_dict(), "classes": CLASSES, **entries}


def training_checkpoint(model, optimizer, scheduler, scaler, **entries):
    """A checkpoint --resume continues from: the model's, plus optimizer, scheduler, scaler and every RNG."""
    return model_checkpoint(model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict() if scaler else None, rng=rng_state(), **entries)


def restore_training(ckpt, path, model, optimizer, scheduler, scaler):
    """Load a training checkpoint (read from `path`) into model, optimizer, scheduler, scaler and the RNGs."""
    load_weights(unwrap(model), ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def read_checkpoint(path, map_location="cpu", classes=CLASSES):
    """The checkpoint dict at `path`, with model_args (derived for the first format); CheckpointError when it is not
    ours or was trained on other classes than `classes`."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not ("model_args" in ckpt or "args" in ckpt):
        raise CheckpointError(f"{path} is not a traintest.py checkpoint (it has no 'model' and 'model_args' entries)")
    try:
        if "model_args" not in ckpt:
            ckpt["model_args"] = model_args_from_flags(ckpt["args"])
        canonical_name(ckpt["model_args"]["name"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model arguments describe no model of this toolkit ({e})") from None
    if ckpt.get("classes") is not None and list(ckpt["classes"]) != list(classes):
        raise CheckpointError(f"{path} was trained on other classes ({len(ckpt['classes'])}: "
                              f"{', '.join(ckpt['classes'][:4])}, ...); this toolkit classifies the {len(classes)} "
                              f"in data/classes.py")
    return ckpt


def load_weights(model, state, path):
    """Load a checkpoint's state_dict into `model`; CheckpointError naming the file when it does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        args = getattr(model, "model_args", {})
        raise CheckpointError(f"{path}: weights do not fit {args.get('name')} with {args.get('num_classes')} "
                              f"classes: {str(e).splitlines()[0]}") from None


def checkpoint_model(ckpt, path):
    """The model a checkpoint's model_args describe (weights not loaded); CheckpointError when they describe none."""
    try:
        return build_model(**ckpt["model_args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model arguments describe no model of this toolkit ({e})") from None


def load_checkpoint(path, map_location="cpu"):
    """(model, ckpt): the model the checkpoint's model_args describe, with its weights loaded, in eval mode."""
    ckpt = read_checkpoint(path, map_location)
    model = checkpoint_model(ckpt, path)
    load_weights(model, ckpt["model"], path)
    return model.eval(), ckpt


def cached_weights_path(arch):
    """Where torch.hub keeps the ImageNet weights of `arch` once downloaded (may not exist)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(imagenet_url(arch)))


def imagenet_state_dict(arch, weights_file=None):
    """The ImageNet state_dict of `arch`, read from `weights_file` or torch.hub's cache; never downloads, since
    training machines are often offline and a silent multi-minute download is worse than a clear error."""
    path = weights_file or cached_weights_path(arch)
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"ImageNet weights for {arch} not found at {path}. Download {imagenet_url(arch)} on a machine with "
            f"network access and copy it there, or pass --weights FILE, or train from scratch without --pretrained.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise WeightsUnavailable(f"cannot read ImageNet weights {path}: {str(e).splitlines()[0]}") from None


def pretrained_model(name, num_classes, weights_file=None, **options):
    """build_model with the backbone's ImageNet weights loaded (from weights_file or torch.hub's cache)."""
    arch = backbone_arch(name)
    state = imagenet_state_dict(arch, weights_file)
    try:
        return build_model(name, num_classes, backbone_state=state, **options)
    except BackboneStateError as e:
        raise WeightsUnavailable(f"{weights_file or cached_weights_path(arch)} does not hold {arch} ImageNet "
                                 f"weights: {e}") from None


def rng_state():
    """Every global RNG's state, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
