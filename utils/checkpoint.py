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
scaler, best_auroc, history and rng (every global RNG's state), which --resume restores. A last checkpoint written
when a stop signal ended an epoch early (a spot VM's preemption, Ctrl-C) also holds `progress`: the batches done in
epoch `epoch` + 1 and the loss summed so far (utils.engine.Progress), the batch size and number of processes they
were counted with, and the state of the epoch's flip generator; --resume continues that epoch from there.
Checkpoints of the first format ('args' holding the flags) still load: their model args are derived from the flags.

It lives in utils/, not models/: it holds training state (optimizer, RNG), and its errors are the project's bad-input
errors (data.errors), which models/ does not import.
"""
import errno
import logging
import os
import pickle
import random
import re
import shutil
import socket
import urllib.request
import warnings

import numpy as np
import torch

from data.classes import CLASSES
from data.errors import InputError
from data.files import atomic_path
from utils.dist import is_local_main, local_main_first, unwrap
from models import (BackboneStateError, StateDictError, backbone_arch, build_model, canonical_name, checked_input_size,
                    imagenet_url, input_normalization, load_state, model_options)
from models.backbones import first_line
from models import published

log = logging.getLogger(__name__)

FORMAT = 2
# What --resume needs beyond a model checkpoint's entries.
TRAINING_ENTRIES = ("optimizer", "scheduler", "rng", "epoch", "best_auroc")


class CheckpointError(InputError):
    """A checkpoint file that is missing, unreadable, not one of this toolkit's, or for other classes."""


class WeightsUnavailable(InputError):
    """ImageNet weights were asked for but are neither given as a file nor in the local cache, and cannot be
    downloaded there; or they do not fit."""


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
    card = {"card": net.card} if getattr(net, "card", None) else {}
    return {"model_args": net.model_args, "model": net.state_dict(), "classes": CLASSES, **card, **entries}


def training_checkpoint(model, optimizer, scheduler, scaler, **entries):
    """A checkpoint --resume continues from: the model's, plus optimizer, scheduler, scaler and every RNG."""
    return model_checkpoint(model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict() if scaler else None, rng=rng_state(), **entries)


def restore_training(ckpt, path, model, optimizer, scheduler, scaler):
    """Load a training checkpoint (read from `path`) into model, optimizer, scheduler, scaler and the RNGs."""
    training_state(ckpt, path)
    load_weights(unwrap(model), ckpt["model"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its training state does not fit this model ({first_line(e)})") from None


def load_torch_file(path, what, error, map_location="cpu"):
    """torch.load(path, weights_only=True), which runs no pickled code; `error` (an InputError) naming the file and
    saying what it is instead of `what` when it cannot be read. torch's own message would advise turning
    weights_only off, which is exactly what a file of unknown origin must not get."""
    if not os.path.isfile(path):
        raise error(f"{path} not found (expected {what})" if not os.path.exists(path) else
                    f"{path} is not a file (expected {what})")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.errno not in (None, errno.EINVAL):  # EINVAL: torch's reading of a cut zip; others: the file system's
            raise error(f"cannot read {path}: {e.strerror or e}") from None
        reason = unreadable_reason(path, e)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        reason = unreadable_reason(path, e)
    raise error(f"{path} is not {what}: {reason}")


def unreadable_reason(path, error):
    """Why torch.load refused `path`, said from its first bytes (and the class the weights-only loader refused)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "it is empty (0 bytes)"
    safe = "refused by the weights-only loader, which never runs code from a file"
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
    if refused:
        return f"it holds Python objects ({refused.group(1)}), not only tensors ({safe})"
    if head == b"PK\x03\x04":
        return f"a damaged or truncated torch.save file ({first_line(error)})"
    if head[:1] == b"\x80" or isinstance(error, pickle.UnpicklingError) and head[:1] in b"(}]":
        return f"a plain Python pickle, not a torch.save file of tensors ({safe})"
    return "neither a torch.save file nor a pickle (another kind of file, or random bytes)"


def is_own_checkpoint(ckpt):
    return isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and ("model_args" in ckpt or "args" in ckpt)


def read_checkpoint(path, map_location="cpu", classes=CLASSES):
    """The checkpoint dict at `path`, with model_args (derived for the first format); CheckpointError when it is not
    ours or was trained on other classes than `classes`."""
    return checked_checkpoint(load_torch_file(path, "a traintest.py checkpoint", CheckpointError, map_location), path,
                              classes)


def checkpoint_problem(ckpt, path):
    """Why the loaded object `ckpt` is not one of our checkpoints, in one line."""
    found = f"entries {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
    return f"{path} is not a traintest.py checkpoint: it has no 'model' weights and 'model_args' (it holds {found})"


def pickle_kind(path):
    """What the file at `path` is, from its first bytes: a torch.save file (zip, or the legacy format whose pickle
    starts with torch's magic number) or a plain Python pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" or head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a":
        return "a torch.save file"
    return "a plain Python pickle" if head[:1] == b"\x80" else "a pickle"


def checked_checkpoint(ckpt, path, classes=CLASSES):
    """read_checkpoint's checks of a loaded checkpoint dict."""
    if not is_own_checkpoint(ckpt):
        raise CheckpointError(checkpoint_problem(ckpt, path))
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
    thresholds = ckpt.get("thresholds")
    if thresholds is not None and not (isinstance(thresholds, (list, tuple)) and len(thresholds) == len(classes)
                                       and all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds)):
        raise CheckpointError(f"{path}: its thresholds are not {len(classes)} numbers from 0 to 1")
    return ckpt


def training_state(ckpt, path):
    """`ckpt` when it is one --resume can continue (a last checkpoint); CheckpointError naming the file otherwise."""
    missing = [k for k in TRAINING_ENTRIES if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint that --resume can continue: it has no "
                              f"{', '.join(missing)} (a model-only checkpoint such as checkpoint_best.pt? start a new "
                              f"run with --load-model {path} instead)")
    return ckpt


def load_weights(model, state, path):
    """Load a checkpoint's state_dict into `model`; CheckpointError naming the file when it does not fit."""
    try:
        load_state(model, state)
    except StateDictError as e:
        args = getattr(model, "model_args", {})
        raise CheckpointError(f"{path}: weights do not fit {args.get('name')} with {args.get('num_classes')} "
                              f"classes: {e}") from None


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


def load_model(spec, build=True):
    """(model, ckpt) for --load-model `spec`: one of our checkpoints (load_checkpoint), a published model file
    (models.published: torchxrayvision's, the CheXNet ports'; read without running its pickle) or a registry name
    (xrv:densenet121-res224-all, ...: torchxrayvision's cache folder, downloaded there when absent). A published
    model's ckpt holds its mapped thresholds (None when none are published), no temperatures, and its card; the
    model carries the card too (model.card), which model_card.json shows. CheckpointError (one line) otherwise.
    build=False: for one of our checkpoints, (None, ckpt), its weights not loaded into a model."""
    try:
        path, key = registry_path(spec) if spec.startswith(published.REGISTRY_PREFIX) else (spec, None)
    except published.PublishedModelError as e:
        raise CheckpointError(f"--load-model: {e}") from None
    if not os.path.isfile(path):  # its one-line message
        load_torch_file(path, "a traintest.py checkpoint or a published model file", CheckpointError)
    try:
        obj = load_torch_file(path, "a traintest.py checkpoint", CheckpointError)
    except CheckpointError:
        obj = None  # objects that the weights-only loader refuses: a whole-module pickle, or no model file at all
    if is_own_checkpoint(obj):
        ckpt = checked_checkpoint(obj, path)
        if not build:
            return None, ckpt
        model = checkpoint_model(ckpt, path)
        load_weights(model, ckpt["model"], path)
        model.card = ckpt.get("card") or published.own_card(
            model.model_args, CLASSES, "F1-optimal on validation, stored in the checkpoint"
            if ckpt.get("thresholds") else "none stored: chosen on validation (--test-only) or 0.5 (--predict)",
            name=os.path.basename(path))
        return model.eval(), ckpt
    what = "a traintest.py checkpoint or a published model file"
    try:
        model, found = published.load_published(path, CLASSES, loaded=obj)
    except published.RefusedObject as e:
        raise CheckpointError(f"{path} is not {what}: {pickle_kind(path)}; it holds Python objects ({e}) which no "
                              f"model file holds (refused: nothing of it was run)") from None
    except published.UnknownFormat as e:
        if obj is not None:  # tensors and containers only: what is missing for either kind
            raise CheckpointError(f"{checkpoint_problem(obj, path)}; nor is it a published model: {e}") from None
        raise CheckpointError(f"{path} is not {what}: {e}") from None
    except published.PublishedModelError as e:  # a published format whose weights do not fit: named
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path} is not {what}: {unreadable_reason(path, e)}") from None
    key = key or published.release_key(path)
    thresholds = published.mapped_thresholds(found.op_threshs, found.labels, CLASSES)
    origin = (f"torchxrayvision's op_threshs of {key} (Youden's J on its calibration split), mapped onto our classes"
              if thresholds else "none published: chosen on validation (--test-only) or 0.5 (--predict)")
    model.card = published.model_card(f"xrv:{key}" if key else f"{os.path.basename(path)} ({found.format})",
                                      model.model_args["name"], found.spec, found.labels, CLASSES, origin)
    return model, {"thresholds": thresholds, "temperatures": None, "card": model.card, "published": found.format}


def registry_path(spec, cache_dir=None):
    """(the file of registry name `spec` in torchxrayvision's cache folder, downloaded there first when absent, its
    registry key); PublishedModelError for a name that does not exist."""
    key = published.registry_key(spec)
    path, url = published.registry_file(key, cache_dir)
    if not os.path.exists(path):
        download_release(url, path)
    return path, key


def download_release(url, path, timeout=30):
    """`url` downloaded to `path` through a temporary file beside it, renamed only once every byte the server
    announced has arrived: a failed or cut-short download leaves nothing behind. WeightsUnavailable (one line, which
    says which file to put where) when it cannot be downloaded."""
    log.info("downloading %s to %s", url, path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(path) as tmp:
            expected = int(response.headers.get("Content-Length") or -1)
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
            if expected >= 0 and os.path.getsize(tmp) != expected:
                raise OSError(f"cut short: {os.path.getsize(tmp)} of {expected} bytes")
    except (OSError, ValueError) as e:  # URLError (no network), a timeout, a cut connection
        raise WeightsUnavailable(f"{path} is not there and could not be downloaded from {url} ({first_line(e)}); "
                                 f"download that file on a machine with network access and put it at {path}") from None


def model_input_size(args, model):
    """The input side to feed `model`. A published model's card fixes it, and its network: --image-size or --model
    that contradict it are an InputError (before any work). Our checkpoints take --image-size as an override, checked
    against the network (input_size)."""
    name = model.model_args["name"]
    if not getattr(model, "published", False):
        return input_size(name, args.image_size or model.input_size)
    card = model.card
    if "image_size" in args.given and args.image_size != model.input_size:
        raise InputError(f"--image-size {args.image_size} contradicts the card of {card['name']}: it takes "
                         f"{card['input']}; drop --image-size")
    if "model" in args.given and canonical_name(args.model) != name:
        raise InputError(f"--model {args.model} contradicts the card of {card['name']}: it is a {name} "
                         f"({card['architecture']}); drop --model")
    return model.input_size


def cached_weights_path(arch):
    """Where torch.hub keeps the ImageNet weights of `arch` once downloaded (may not exist)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(imagenet_url(arch)))


def imagenet_state_dict(arch, weights_file=None, progress=True):
    """The ImageNet state_dict of `arch`, read from `weights_file` or torch.hub's cache. When the cache lacks it,
    it is downloaded there first, as torchvision downloads it (checked against the hash in its name); without network
    WeightsUnavailable says which file to put where."""
    path = weights_file or cached_weights_path(arch)
    if not weights_file and not os.path.exists(path):
        download_weights(arch, path, progress)
    return load_torch_file(path, f"a file of {arch} ImageNet weights", WeightsUnavailable)


def download_weights(arch, path, progress=True, timeout=30):
    """torchvision's weights file of `arch` downloaded into torch.hub's cache (`path`) as torchvision downloads it
    (torch.hub's download, checked against the hash prefix in its name), without torch.hub's extra stderr line."""
    url = imagenet_url(arch)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torch.hub's download sets none: a network that drops packets would hang it
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, torch.hub.HASH_REGEX.search(os.path.basename(url)).group(1),
                                       progress=progress)
    except (OSError, RuntimeError) as e:  # no network or no route (URLError), a cut or altered download
        raise WeightsUnavailable(
            f"ImageNet weights for {arch} are not at {path} and could not be downloaded from {url} "
            f"({first_line(e)}). Download that file on a machine with network access and copy it to {path} "
            f"(torch.hub's cache, under $TORCH_HOME), or pass --weights FILE, or train from scratch without "
            f"--pretrained.") from None
    finally:
        socket.setdefaulttimeout(before)
    log.info("downloaded the ImageNet weights of %s from %s to %s", arch, url, path)


def pretrained_model(name, num_classes, weights_file=None, progress=True, **options):
    """build_model with the backbone's ImageNet weights loaded (from weights_file or torch.hub's cache, downloaded
    there when absent and the network is there)."""
    arch = backbone_arch(name)
    state = imagenet_state_dict(arch, weights_file, progress)
    try:
        return build_model(name, num_classes, backbone_state=state, **options)
    except BackboneStateError as e:
        raise WeightsUnavailable(f"{weights_file or cached_weights_path(arch)} does not hold {arch} ImageNet "
                                 f"weights: {e}") from None


def new_model(args, num_classes=len(CLASSES)):
    """The model the command line asks for (--model and its options; --pretrained: ImageNet weights, one download
    per machine into the cache its processes share); InputError for an --image-size the network does not accept."""
    options = {"pooling": args.pooling, "lse_r": args.lse_r, "map_size": args.map_size,
               "input_size": input_size(args.model, args.image_size or 224)}
    options = {k: v for k, v in options.items() if k in model_options(args.model)}
    if args.pretrained:
        with local_main_first():
            return pretrained_model(args.model, num_classes, args.weights, progress=is_local_main(), **options)
    return build_model(args.model, num_classes, **options)


def training_model(args, last):
    """(model, resumed): the model a training run trains and, with --resume, its last checkpoint (`last`) to restore
    the rest from; a new run's model is new_model's, with --load-model's weights when given. InputError for a
    checkpoint that does not fit."""
    resumed = training_state(read_checkpoint(last), last) if args.resume else None
    if resumed and resumed["epoch"] > args.epochs:
        raise InputError(f"--epochs {args.epochs}: {args.output_dir} has already trained {resumed['epoch']} epochs; "
                         f"give more to continue it")
    if resumed:
        model = checkpoint_model(resumed, last)  # a resumed run is the same model
        model.card = resumed.get("card") or trained_card(model)
        return model, resumed
    if args.load_model:
        start, init = load_model(args.load_model, build=False)
        if start is not None:  # a published model
            return fine_tuned(args, start), None
    model = new_model(args)
    model.card = trained_card(model)
    if args.load_model:
        if init["model_args"]["name"] != args.model:
            raise InputError(f"{args.load_model} holds a {init['model_args']['name']} model, not {args.model}")
        load_weights(model, init["model"], args.load_model)
    return model, None


def trained_card(model, name=None, **entries):
    """The card of a model this run trains (model_card.json; its checkpoints carry it)."""
    return {**published.own_card(model.model_args, CLASSES, "F1-optimal on validation (thresholds.csv)", name),
            **entries}


def fine_tuned(args, start):
    """The model that fine-tuning a published model trains: its network and input convention (the card's; --model
    and --image-size may not contradict them), and a 22-class head that starts from its mapped rows (an NA class's
    row from zero), all of it trained. Its checkpoints are ours, with its card."""
    model_input_size(args, start)
    if args.pretrained:
        raise InputError(f"--pretrained loads ImageNet weights, --load-model {args.load_model} its own: give one")
    model = build_model(**start.model_args)
    load_weights(model, start.state_dict(), args.load_model)
    model.card = trained_card(model, name=f"{start.card['name']}, fine-tuned",
                              input=start.card["input"], fine_tuned_from=start.card["name"])
    return model


def input_size(name, size):
    """--image-size `size` when the network `name` takes it (models.checked_input_size); InputError otherwise."""
    try:
        return checked_input_size(name, size)
    except ValueError as e:
        raise InputError(f"--image-size {e}") from None


def resume_training(ckpt, path, model, optimizer, scheduler, scaler, args, world_size=1):
    """Restore a training checkpoint (`ckpt`, read from `path` by training_state) into model, optimizer, scheduler,
    scaler and the RNGs; the flags given with --resume (--lr, --weight-decay, --lr-patience) replace the restored ones. Returns
    (epochs done, best validation AUROC, history, the cut epoch's progress or None, the skipped images so far). A cut
    epoch counted with another batch size or number of processes starts again from its first batch."""
    restore_training(ckpt, path, model, optimizer, scheduler, scaler)
    for group in optimizer.param_groups:
        group.update({k: getattr(args, k) for k in ("lr", "weight_decay") if k in args.given})
    if "lr_patience" in args.given:
        scheduler.patience = args.lr_patience
    epoch, cut = ckpt["epoch"], ckpt.get("progress")
    if cut and (cut["batch_size"], cut["world_size"]) != (args.batch_size, world_size):
        log.warning("epoch %d stopped after batch %d of batch size %d on %d processes; with batch size %d on %d it "
                    "starts again from its first batch", epoch + 1, cut["step"], cut["batch_size"],
                    cut["world_size"], args.batch_size, world_size)
        cut = None
    skipped = [tuple(row) for row in ckpt.get("skipped") or []] if cut else []
    log.info("resuming %s after epoch %d%s (best validation mean AUROC %.4f)", os.path.dirname(path), epoch,
             f", batch {cut['step']} of epoch {epoch + 1}" if cut else "", ckpt["best_auroc"])
    return epoch, ckpt["best_auroc"], list(ckpt.get("history", [])), cut, skipped


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
