"""Class activation maps for every class in the same forward pass as the logits.

CAM (Zhou et al. 2016; CheXNet; ChestX-ray8's heatmaps) is the last spatial feature map weighted by the classifier:
M_c = sum_k w_ck f_k. For the Unified DCNN that is the transition layer's activations times the prediction layer, which
is what models' feature_map / classifier expose. It needs no backward pass, so all classes cost one 1x1 convolution.
For a network that ends in global average pooling and a linear layer, CAM equals Grad-CAM up to a positive scale
(Grad-CAM's channel weights are the mean gradient w_ck / (h * w)); tests/test_cam.py checks this against pytorch-grad-cam.
"""
import torch
import torch.nn.functional as F


def upsample_maps(maps, size):
    """Maps [B, C, h, w] resized to size (H, W) bilinearly with align_corners=False.

    With align_corners=False, feature cell i covers input pixels [i * H / h, (i + 1) * H / h), and its value lands on that
    span's centre, so the map stays registered with the image for any ratio (align_corners=True would shift it).
    """
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def class_activation_maps(model, x, size="input"):
    """Logits [B, C] and class activation maps of all C classes for a batch x [B, 3, H, W], from one forward pass.

    size: "input" upsamples the maps to x's (H, W); None returns them at the feature map's resolution; or an (h, w).
    The classifier's bias is left out of the maps: it shifts a whole map by a constant and so changes no box.
    """
    fmap = model.feature_map(x)
    logits = model.classifier(model.pool(fmap))
    weight = model.classifier.weight.to(fmap.dtype)
    maps = F.conv2d(fmap, weight[:, :, None, None])
    if size == "input":
        size = x.shape[-2:]
    if size is not None:
        maps = upsample_maps(maps.float(), size)
    return logits.float(), maps.float()


def uncropped_maps(maps, sizes, crop, grid=None):
    """Maps [B, C, h, w] of a model fed each image's centred square (crop "center", data.transforms.center_square),
    resampled onto the whole image stretched to a grid x grid square (default 2h: the crop's detail kept across the
    whole image), the form the maps of a model fed the whole image have, so that step 5 places boxes and heatmaps on
    the image the same way for both. Outside the square the map holds its minimum (no heat). sizes: [B, 2] decoded
    (height, width). crop None: the maps as they are."""
    if crop is None:
        return maps
    grid = grid or 2 * maps.shape[-2]
    centres = (torch.arange(grid, dtype=torch.float32, device=maps.device) + 0.5) / grid  # cell centres in [0, 1]
    rows = []
    for height, width in sizes.tolist():
        side = min(height, width)
        top, left = height // 2 - side // 2, width // 2 - side // 2
        gy = 2 * (centres * height - top) / side - 1  # grid_sample's [-1, 1] over the square (align_corners=False)
        gx = 2 * (centres * width - left) / side - 1
        rows.append(torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1))
    low = maps.amin(dim=(-2, -1), keepdim=True)
    moved = F.grid_sample((maps - low).float(), torch.stack(rows), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return moved + low
