"""What every classifier here is: a feature map, a global pooling and a linear classifier, plus the input it expects.

forward(x) == classifier(pool(feature_map(x))), so class activation maps (models.cam) are computed the same way for
all. `model_args` are exactly the keyword arguments that rebuild the model with models.build_model (as nanoGPT
rebuilds GPT from a checkpoint's model_args); among them the input's mean, std and size (as timm's pretrained_cfg
carries them), which utils.engine hands to data.transforms.Normalize, so a checkpoint is always fed the input it was
trained on.
"""
import torch.nn.functional as F
from torch import nn

from models.backbones import input_normalization
from models.pooling import GlobalPool


def input_args(arch, mean, std, input_size, in_channels=3, crop=None, backbone_state=None):
    """The input's model args: mean and std (the ImageNet weights' when loaded), size, and in_channels and crop
    only where they are not the default (3 channels, the whole image stretched to the square), so that the model
    args of checkpoints written before these existed stay exactly as they were."""
    if in_channels != 3 and backbone_state is not None:
        raise ValueError("ImageNet weights take 3 input channels")
    default_mean, default_std = input_normalization(arch, backbone_state is not None)
    return {"mean": list(mean or default_mean), "std": list(std or default_std), "input_size": input_size,
            **({"in_channels": in_channels} if in_channels != 3 else {}), **({"crop": crop} if crop else {})}


class CAMClassifier(nn.Module):
    def __init__(self, **model_args):
        super().__init__()
        self.model_args = model_args

    def head(self, dim, num_classes, pooling, lse_r, map_size=None):
        """Global pooling and the prediction layer over a D-channel map, optionally resized to S x S."""
        self.map_size = map_size
        self.pool = GlobalPool(pooling, lse_r)
        self.classifier = nn.Linear(dim, num_classes)

    @property
    def mean(self):
        return tuple(self.model_args["mean"])

    @property
    def std(self):
        return tuple(self.model_args["std"])

    @property
    def input_size(self):
        return self.model_args["input_size"]

    @property
    def crop(self):
        """None: the whole image stretched to the square; "center": its centred square (data.transforms)."""
        return self.model_args.get("crop")

    def conv_features(self, x):
        raise NotImplementedError

    def feature_map(self, x):
        fmap = self.conv_features(x)
        if self.map_size and fmap.shape[-1] != self.map_size:
            # ChestX-ray8's uniform S x S map whatever the input size (S in {8, 16, 32}).
            fmap = F.interpolate(fmap, size=(self.map_size, self.map_size), mode="bilinear", align_corners=False)
        return fmap

    def forward(self, x):
        return self.classifier(self.pool(self.feature_map(x)))
