"""Global pooling layers of the Unified DCNN (Wang et al. 2017): average, max and log-sum-exp."""

import torch
from torch import nn


class GlobalPool(nn.Module):
    """[B, D, h, w] -> [B, D] by average, max or log-sum-exp (LSE) pooling over the h*w positions.

    LSE with sharpness r interpolates between average (r -> 0) and max (r -> inf) pooling:
    x_p = x* + (1/r) * log(mean(exp(r * (x - x*)))). The paper takes x* = max|x|; we take x* = max x, which
    is the same value mathematically and keeps every exponent <= 0, so nothing overflows and the largest term is 1
    (with max|x| a map of large negative values would underflow to log(0)).
    """

    def __init__(self, mode="lse", r=10.0):
        super().__init__()
        if mode not in ("lse", "max", "avg"):
            raise ValueError(f"pooling must be lse, max or avg, not {mode!r}")
        if mode == "lse" and not r > 0:
            raise ValueError(f"LSE pooling needs r > 0, got {r}")
        self.mode = mode
        self.r = float(r)

    def forward(self, fmap):
        x = fmap.flatten(2)
        if self.mode == "avg":
            return x.mean(dim=2)
        if self.mode == "max":
            return x.amax(dim=2)
        # The sum of exponentials is taken in float32 even under autocast: bf16 loses the small terms.
        x = x.float()
        x_star = x.amax(dim=2, keepdim=True)
        lse = x_star + torch.log(torch.exp(self.r * (x - x_star)).mean(dim=2, keepdim=True)) / self.r
        return lse.squeeze(2).to(fmap.dtype)

    def extra_repr(self):
        return f"mode={self.mode}" + (f", r={self.r}" if self.mode == "lse" else "")


def lse_reference(fmap, r):
    """The paper's formula computed naively in float64, for tests: (1/r) * log((1/S) * sum(exp(r * x)))."""
    x = fmap.double().flatten(2)
    return (torch.log(torch.exp(r * x).sum(dim=2) / x.shape[2]) / r)
