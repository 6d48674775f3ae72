"""Published chest X-ray models: torchxrayvision's zoo and the CheXNet ports, read without running their pickles.

A registry in the style of timm's: each published model has a card (as timm's pretrained_cfg: architecture, input
mean, std, size, channels and crop, output classes, published thresholds), and a loader that recognizes the file's
format from its contents, maps its keys strictly onto one of this toolkit's networks and maps its outputs onto the
22 classes (data.classes):

- torchxrayvision's DenseNet release files: whole pickled nn.Modules (torch.save(model)); its ResNet: a state dict;
- arnoweng/CheXNet and zoogzog/chexnet: {'state_dict': {'module.densenet121.features....'}}, with the pre-0.4
  DenseNet key names (norm.1, conv.1) or today's;
- jrzech/reproduce-chexnet: {'model': <whole pickled torchvision DenseNet>, ...}.

Nothing in a file is executed: a whole-module pickle is read by RestrictedUnpickler, which turns every module class
it names (torch.nn, torchvision, torchxrayvision) into an inert stand-in that only records the attributes pickled
with it, rebuilds tensors with torch's own functions and refuses any other global; from the stand-ins only the
parameters and persistent buffers are kept. torchxrayvision is not imported here (nor needed at run time).

The 22-class model: the published classifier's rows are mapped onto our classes (MAPPING: one-to-one where the
definitions agree, the mean of the logits of several outputs by a documented rule, NA otherwise) by MappedLinear,
whose logits are NaN for the classes the model does not predict, so that no metric counts them. Probabilities are
the sigmoid of the logits (torchxrayvision's op_norm is not applied: its op_threshs become our thresholds instead,
which gives the same binary decisions).
"""
import collections
import math
import os
import pickle
import re
import types
import warnings

import torch
from torch import nn

from models.backbones import IMAGENET_MEAN, IMAGENET_STD, OLD_DENSENET_KEY, StateDictError, load_state
from models.factory import build_model

# torchxrayvision's 18 outputs (model.targets), and the 14 of ChestX-ray14 in the CheXNet ports' order.
XRV_LABELS = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
              "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion",
              "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
CHEXNET_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                  "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]

# Our class <- its output, where the definitions agree; a rule (a tuple: the mean of those outputs' logits) where one
# of ours covers several of its; every other class of ours is NA.
MAPPING = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "pleural effusion": "Effusion",
           "emphysema": "Emphysema", "mass": "Mass", "nodule": "Nodule", "pneumonia": "Pneumonia",
           "pneumothorax": "Pneumothorax", "pulmonary edema": "Edema", "pulmonary fibrosis": "Fibrosis",
           "infiltrates": ("Infiltration", "Consolidation")}
ONE_TO_ONE = [c for c, source in MAPPING.items() if isinstance(source, str)]

XRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
XRV_CACHE = os.path.join("~", ".torchxrayvision", "models_data")  # its utils.get_cache_dir()
_NAN = math.nan


def _outputs(trained):
    """The 18 labels with the untrained ones '' (as torchxrayvision's model_urls write them)."""
    return [label if label in trained else "" for label in XRV_LABELS]


_CHEX = ["Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
         "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
# registry name -> (release file, labels, op_threshs, input size), from torchxrayvision 1.5.7's models.model_urls
# (tests/test_published.py checks them against it).
XRV_RELEASES = {
    "densenet121-res224-all": (
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        XRV_LABELS,
        [0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
         0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
         0.20204692, 0.05015312], 224),
    "densenet121-res224-nih": (
        "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(XRV_LABELS[:14]),
        [0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827, 0.038744126,
         0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434, _NAN, _NAN, _NAN, _NAN], 224),
    "densenet121-res224-pc": (
        "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(XRV_LABELS[:14] + ["Fracture"]),
        [0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257, 0.0023071, 0.055412333,
         0.044385884, 0.042766232, 0.043258056, 0.037629247, 0.005658899, 0.0091741895, _NAN, 0.026507627, _NAN,
         _NAN], 224),
    "densenet121-res224-chex": (
        "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(_CHEX),
        [0.1988969, 0.05710573, _NAN, 0.0531293, 0.1435217, _NAN, _NAN, 0.27212676, 0.07749717, _NAN, 0.19712369,
         _NAN, _NAN, _NAN, 0.09932402, 0.09273402, 0.3270967, 0.10888247], 224),
    "densenet121-res224-rsna": (
        "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(["Pneumonia", "Lung Opacity"]),
        [_NAN] * 8 + [0.13486601] + [_NAN] * 7 + [0.13511065, _NAN], 224),
    "densenet121-res224-mimic_nb": (
        "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(_CHEX),
        [0.08558747, 0.011884617, _NAN, 0.0040595434, 0.010733786, _NAN, _NAN, 0.118761964, 0.022924708, _NAN,
         0.06358637, _NAN, _NAN, _NAN, 0.022143636, 0.017476924, 0.1258702, 0.014020768], 224),
    "densenet121-res224-mimic_ch": (
        "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _outputs(_CHEX),
        [0.09121389, 0.010573786, _NAN, 0.005023008, 0.003698257, _NAN, _NAN, 0.08001232, 0.037242252, _NAN,
         0.05006329, _NAN, _NAN, _NAN, 0.019866971, 0.03823637, 0.11303808, 0.0069147074], 224),
    "resnet50-res512-all": (
        "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
        XRV_LABELS,  # 16 trained: Lung Lesion's and Enlarged Cardiomediastinum's op_threshs are nan
        [0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252, 0.5038076, 0.51862943, 0.5078151,
         0.50724894, 0.5056339, 0.510706, 0.5053923, 0.5020846, _NAN, 0.5080557, 0.5138526, _NAN], 512),
}
XRV_ALIASES = {"all": "densenet121-res224-all", "nih": "densenet121-res224-nih", "pc": "densenet121-res224-pc",
               "chex": "densenet121-res224-chex", "rsna": "densenet121-res224-rsna",
               "mimic_nb": "densenet121-res224-mimic_nb", "mimic_ch": "densenet121-res224-mimic_ch"}
REGISTRY_PREFIX = "xrv:"
REGISTRY_NAMES = [REGISTRY_PREFIX + name for name in XRV_RELEASES]


class PublishedModelError(ValueError):
    """A published model file that cannot be read safely, is of no known format or does not fit its network; or a
    registry name that does not exist. The message is one line."""


class UnknownFormat(PublishedModelError):
    """A file that holds none of the published formats."""


class RefusedObject(PublishedModelError):
    """A pickle names a global that a published model file does not hold: it was refused, never called."""


# ---------------------------------------------------------------------------------------------------------- cards

def xrv_input(size):
    return {"channels": 1, "mean": [0.5], "std": [0.5 / 1024], "size": size, "crop": "center"}


CHEXNET_INPUT = {"channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "size": 224, "crop": "center"}


def input_line(spec):
    """The one-line text of an input convention (model_card.json's "input")."""
    if spec["channels"] == 1 and spec["mean"] == [0.5] and math.isclose(spec["std"][0], 0.5 / 1024):
        values = "values in [-1024, 1024] (torchxrayvision's normalize(img, 255))"
    else:
        values = f"mean {', '.join(f'{v:g}' for v in spec['mean'])}, std {', '.join(f'{v:g}' for v in spec['std'])}"
    geometry = "centre crop of the longer side" if spec["crop"] == "center" else "whole image stretched"
    return f"{spec['channels']} channel{'s' if spec['channels'] > 1 else ''}, {geometry}, {spec['size']} px, {values}"


def mapping_rows(labels, classes):
    """(our class -> its output, the rule or "NA"; the [22, K] matrix that maps its logits onto ours; which of ours it
    predicts). An output labelled '' (untrained) maps to nothing."""
    index = {label: k for k, label in enumerate(labels) if label}
    matrix, predicted, text = torch.zeros(len(classes), len(labels)), [], {}
    for c, name in enumerate(classes):
        source = MAPPING.get(name)
        sources = [s for s in ((source,) if isinstance(source, str) else source or ()) if s in index]
        for s in sources:
            matrix[c, index[s]] = 1.0 / len(sources)
        predicted.append(bool(sources))
        text[name] = ("NA" if not sources else sources[0] if len(sources) == 1 else
                      f"mean of the logits of {' and '.join(sources)}")
    return text, matrix, torch.tensor(predicted)


def mapped_thresholds(op_threshs, labels, classes):
    """Our thresholds from its operating thresholds: a one-to-one class takes its output's; a rule's class the
    sigmoid of the mean logit of its outputs' (so that it decides as they do where they agree); NA classes 0.5,
    which never applies (their probability is NaN). None when it publishes none."""
    if op_threshs is None:
        return None
    _, matrix, predicted = mapping_rows(labels, classes)
    t = torch.tensor([v if v == v else 0.5 for v in op_threshs], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    mapped = torch.sigmoid(matrix.double() @ torch.logit(t))
    return [float(v) if p else 0.5 for v, p in zip(mapped, predicted)]


def model_card(name, architecture, spec, labels, classes, thresholds):
    """model_card.json's object: JSON strings, lists of strings and flat string dicts only."""
    text, _, _ = mapping_rows(labels, classes)
    return {"name": name, "architecture": architecture, "input": input_line(spec),
            "classes": [label or "(untrained)" for label in labels], "mapping": text, "thresholds": thresholds}


def own_card(model_args, classes, thresholds_from, name=None):
    """The card of one of this toolkit's own models (from its model args): it predicts our classes one to one."""
    spec = {"channels": model_args.get("in_channels", 3), "mean": list(model_args["mean"]),
            "std": list(model_args["std"]), "size": model_args["input_size"], "crop": model_args.get("crop")}
    return {"name": name or model_args["name"], "architecture": model_args["name"], "input": input_line(spec),
            "classes": list(classes), "mapping": {c: c for c in classes}, "thresholds": thresholds_from}


# ------------------------------------------------------------------------------------------------- safe unpickling

class StandIn:
    """What a module class named by a pickle becomes: an object that only records the attributes pickled with it."""

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


_STAND_INS = {}
# The module classes a published model file may name (torch.nn's, torchvision's and torchxrayvision's models).
_MODULE_PREFIXES = ("torch.nn.modules.", "torchvision.models.", "torchxrayvision.")


def _stand_in(module, name):
    key = f"{module}.{name}"
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (StandIn,), {"_qualname": key})
    return _STAND_INS[key]


def _reconstructor(cls, base, state):
    """copyreg._reconstructor for protocols 0 and 1, for stand-ins only (it would otherwise call base(state))."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base is not object:
        raise RefusedObject(f"copyreg._reconstructor of {getattr(cls, '__name__', cls)!r}")
    return cls()


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("copyreg", "_reconstructor"): _reconstructor, ("copy_reg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object, ("__builtin__", "object"): object,
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only _ALLOWED's tensor rebuilds and containers, and module classes as inert
    stand-ins; any other global (os.system, builtins.eval, ...) raises RefusedObject naming it, before it is called.
    torch.load's storage types are resolved by torch's own wrapper before find_class is asked."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith(_MODULE_PREFIXES) and name.lstrip("_")[:1].isupper():  # classes, not functions
            return _stand_in(module, name)
        raise RefusedObject(f"{module}.{name}")


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load's pickle_module: both of its serializations (the zip format, and the legacy one of files saved before
# torch 1.6) unpickle through pickle_module.Unpickler and pickle_module.load.
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


def safe_load(path):
    """The object torch.save wrote to `path`, read without running anything from it: tensors and plain containers as
    they are, module objects as stand-ins. RefusedObject names a global it refused; other failures propagate."""
    with warnings.catch_warnings():  # the legacy format compares the module source it saved with the stand-ins'
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
        except RefusedObject:
            raise
        except pickle.UnpicklingError as e:
            if isinstance(e.__context__, RefusedObject):
                raise e.__context__ from None
            raise


def is_module(obj):
    return isinstance(obj, StandIn)


def module_state(root):
    """The state dict of a stand-in module tree: every parameter and persistent buffer, named as torch names them."""
    state = collections.OrderedDict()

    def walk(module, prefix):
        attrs = module.__dict__
        skip = set(attrs.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (attrs.get(group) or {}).items():
                if value is not None and name not in skip:
                    if not isinstance(value, torch.Tensor):
                        raise PublishedModelError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
                    state[prefix + name] = value.detach()
        for name, child in (attrs.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return state


# -------------------------------------------------------------------------------------------------- key mapping

RESNET_STAGES = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def strip_prefixes(state, prefixes=("module.", "densenet121.")):
    """Keys without DataParallel's 'module.' and arnoweng's 'densenet121.' wrappers."""
    out = collections.OrderedDict()
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def densenet_keys(state):
    """A DenseNet-121 state dict (torchvision's, torchxrayvision's or a CheXNet port's) in CheXNet's keys: the old
    names renamed with torchvision's pattern, a Sequential(Linear, Sigmoid) head's classifier.0 as classifier."""
    out = collections.OrderedDict()
    for key, value in strip_prefixes(state).items():
        key = OLD_DENSENET_KEY.sub(r"\1\2", key)
        key = re.sub(r"^classifier\.0\.", "classifier.", key)
        out[key] = value
    return out


def resnet_keys(state):
    """torchxrayvision's ResNet-50 state dict (torchvision's names) in ResNet50's keys (models.resnet)."""
    out = collections.OrderedDict()
    for key, value in strip_prefixes(state, ("module.", "model.")).items():
        head, _, rest = key.partition(".")
        if head == "fc":
            key = f"classifier.{rest}"
        elif head in RESNET_STAGES:
            key = f"features.{RESNET_STAGES[head]}.{rest}"
        out[key] = value
    return out


def complete_batch_norms(net, state):
    """num_batches_tracked for the batch norms of files saved before torch 0.4.1 had it: it only counts training
    steps (it changes nothing at inference, nor with a momentum, as here), so a zero is the exact value to add."""
    state = collections.OrderedDict(state)
    for key, value in net.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state and key[:-len("num_batches_tracked")] + \
                "running_mean" in state:
            state[key] = torch.zeros_like(value)
    return state


# ------------------------------------------------------------------------------------------------------ formats

class Published:
    """A published model as read from its file: the format, the network's model args, its state dict in that
    network's keys, its output labels and (when known) operating thresholds."""

    def __init__(self, fmt, model_args, state, labels, op_threshs=None, spec=None):
        self.format, self.model_args, self.state, self.labels = fmt, model_args, state, labels
        self.op_threshs, self.spec = op_threshs, spec


def _has(state, *keys):
    return all(any(k.startswith(p) or k == p for k in state) for p in keys)


def _labels_of(module, n):
    """The labels a pickled torchxrayvision model names (targets, pathologies), or its default 18."""
    for attr in ("targets", "pathologies"):
        value = getattr(module, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, str) for v in value):
            return list(value)
    return list(XRV_LABELS) if n == len(XRV_LABELS) else None


def release_key(path):
    """The registry entry whose release file has `path`'s name, or None."""
    base = os.path.basename(path)
    return next((key for key, (file, *_) in XRV_RELEASES.items() if file == base), None)


def recognize(obj, path):
    """The Published model `obj` (what safe_load read from `path`) holds; PublishedModelError saying what it holds
    when it is none of the known formats."""
    release = release_key(path)
    if is_module(obj) and obj._qualname == "torchxrayvision.models.DenseNet":
        state = densenet_keys(module_state(obj))
        state.pop("op_threshs", None)  # a buffer of older versions; the card's thresholds are taken instead
        n = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
        labels = XRV_RELEASES[release][1] if release else _labels_of(obj, n)
        threshs = XRV_RELEASES[release][2] if release else None
        return _xrv(obj._qualname, "chexnet", state, labels, threshs, 224)
    if is_module(obj) and obj._qualname == "torchxrayvision.models.ResNet":
        obj = obj.__dict__.get("_modules", {}).get("model") or obj
        return recognize_state(module_state(obj), path, release)
    if isinstance(obj, dict) and is_module(obj.get("model")):  # jrzech's {'model': <DenseNet>, ...}
        if not obj["model"]._qualname.startswith("torchvision.models.densenet."):
            raise UnknownFormat(f"its 'model' is a pickled {obj['model']._qualname}, not a torchvision "
                                      f"DenseNet (jrzech/reproduce-chexnet)")
        return _port("jrzech/reproduce-chexnet", densenet_keys(module_state(obj["model"])))
    if is_module(obj):
        raise UnknownFormat(f"it holds a pickled {obj._qualname}, not a torchxrayvision model or a CheXNet "
                                  f"port's DenseNet")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # arnoweng's, zoogzog's
        return _port("arnoweng/zoogzog CheXNet", densenet_keys(obj["state_dict"]))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return recognize_state(obj, path, release)
    found = f"entries {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise UnknownFormat(f"it is none of the published formats (torchxrayvision's DenseNet or ResNet, "
                              f"arnoweng's, zoogzog's or jrzech's CheXNet); it holds {found}")


def recognize_state(state, path, release=None):
    """A plain state dict: torchxrayvision's ResNet-50 (conv1, layer1..4, fc) or a DenseNet-121."""
    if _has(state, "conv1.", "layer4.", "fc.weight"):
        state = resnet_keys(state)
        n = state["classifier.weight"].shape[0]
        labels = XRV_RELEASES[release][1] if release else (list(XRV_LABELS) if n == len(XRV_LABELS) else None)
        return _xrv("torchxrayvision.models.ResNet", "resnet50-gap", state, labels,
                    XRV_RELEASES[release][2] if release else None, 512)
    dense = densenet_keys(state)
    if _has(dense, "features.conv0.weight", "classifier.weight"):
        if dense["features.conv0.weight"].shape[1] == 1:  # torchxrayvision's DenseNet saved as a state dict
            dense.pop("op_threshs", None)
            return _xrv("torchxrayvision DenseNet (state dict)", "chexnet", dense,
                        XRV_RELEASES[release][1] if release else list(XRV_LABELS),
                        XRV_RELEASES[release][2] if release else None, 224)
        return _port("a CheXNet port (state dict)", dense)
    raise UnknownFormat(f"its state dict is neither torchxrayvision's ResNet-50 nor a DenseNet-121 (first "
                              f"keys: {', '.join(list(state)[:3])})")


def _xrv(fmt, arch, state, labels, op_threshs, size):
    n = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    if labels is None or n != len(labels):
        raise UnknownFormat(f"its classifier has {n} outputs, not the {len(XRV_LABELS)} of torchxrayvision's "
                                  f"models")
    spec = xrv_input(size)
    args = {"name": arch, "num_classes": len(labels), "mean": spec["mean"], "std": spec["std"], "input_size": size,
            "in_channels": 1, "crop": "center"}
    return Published(fmt, args, state, labels, op_threshs, spec)


def _port(fmt, state):
    n = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    if n != len(CHEXNET_LABELS):
        raise UnknownFormat(f"its classifier has {n} outputs, not ChestX-ray14's {len(CHEXNET_LABELS)}")
    spec = CHEXNET_INPUT
    args = {"name": "chexnet", "num_classes": n, "mean": spec["mean"], "std": spec["std"], "input_size": spec["size"],
            "crop": "center"}
    return Published(fmt, args, state, list(CHEXNET_LABELS), None, spec)


# --------------------------------------------------------------------------------------------------- the model

class MappedLinear(nn.Linear):
    """The published classifier's rows mapped onto our classes (a [C, K] matrix times its weight and bias), with NaN
    logits for the classes it does not predict (`predicted` False): no loss, threshold or metric can count those.
    Their weight rows are zero, so their class activation maps are flat and give no box."""

    def __init__(self, source, matrix, predicted):
        super().__init__(source.in_features, matrix.shape[0])
        with torch.no_grad():
            self.weight.copy_(matrix.to(source.weight) @ source.weight)
            self.bias.copy_(matrix.to(source.bias) @ source.bias)
        self.register_buffer("predicted", predicted.clone(), persistent=False)

    def forward(self, x):
        return super().forward(x).masked_fill(~self.predicted, math.nan)


def load_published(path, classes, loaded=None):
    """(model [22 outputs, NaN where not predicted], Published) from a published model file (`loaded`: what the
    weights-only loader already read from it, a state dict); the network is one of this toolkit's
    (models.build_model(**model_args)), its weights loaded strictly from the file's (mapped keys)."""
    published = recognize(safe_load(path) if loaded is None else loaded, path)
    net = build_model(**published.model_args)
    state = complete_batch_norms(net, published.state)
    try:
        load_state(net, state)
    except StateDictError as e:
        raise PublishedModelError(f"{published.format}: {e}") from None
    _, matrix, predicted = mapping_rows(published.labels, classes)
    net.classifier = MappedLinear(net.classifier, matrix, predicted)
    net.model_args = {**net.model_args, "num_classes": len(classes)}
    net.published = True
    return net.eval(), published


def registry_key(name):
    """The torchxrayvision registry key of `name` ('xrv:densenet121-res224-all', 'xrv:all'); PublishedModelError
    listing the names when there is none."""
    key = name[len(REGISTRY_PREFIX):] if name.startswith(REGISTRY_PREFIX) else name
    key = XRV_ALIASES.get(key, key)
    if key not in XRV_RELEASES:
        raise PublishedModelError(f"no published model {name!r}; the names are {', '.join(REGISTRY_NAMES)} (or "
                                  f"xrv:{', xrv:'.join(XRV_ALIASES)})")
    return key


def registry_file(key, cache_dir=None):
    """(where torchxrayvision keeps the release file of `key`, its download URL)."""
    file = XRV_RELEASES[key][0]
    return os.path.join(os.path.expanduser(cache_dir or XRV_CACHE), file), XRV_URL + file
