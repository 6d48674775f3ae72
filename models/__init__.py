"""tensor -> logits and maps: CheXNet and the Unified DCNN of ChestX-ray8, their pooling, losses and CAM."""
from models.backbones import (BACKBONES, IMAGENET_MEAN, IMAGENET_STD, BackboneStateError, StateDictError, imagenet_url,
                              input_normalization, load_state)
from models.base import CAMClassifier
from models.cam import class_activation_maps, uncropped_maps, upsample_maps
from models.chexnet import CheXNet
from models.factory import (ALIASES, MIN_INPUT_SIZE, MODEL_NAMES, MODELS, backbone_arch, build_model, canonical_name,
                            checked_input_size, model_options)
from models.losses import LOSSES
from models.pooling import GlobalPool
from models.unified import UnifiedDCNN

__all__ = ["ALIASES", "BACKBONES", "BackboneStateError", "input_normalization", "IMAGENET_MEAN", "IMAGENET_STD",
           "backbone_arch", "CAMClassifier", "CheXNet", "GlobalPool", "LOSSES", "MIN_INPUT_SIZE", "MODELS",
           "MODEL_NAMES", "StateDictError", "UnifiedDCNN", "build_model", "canonical_name", "checked_input_size",
           "class_activation_maps", "imagenet_url", "load_state", "model_options", "uncropped_maps", "upsample_maps"]
