"""The compositing head: the student's swap is built from its two inputs' own pixels.

A plain head paints every output pixel through ``tanh`` (what it never saw in training, e.g. the fine
detail of a sharp photo when it trained on soft crops, comes out blurred). The compositing head instead
predicts, per pixel, how much of the **warped identity crop** to take over the attribute crop (``take``),
plus a smooth colour correction of the identity's pixels (a gain and an offset per channel, pooled over
``smooth`` x ``smooth`` cells so they cannot carry detail of their own)::

    out = take * (warped * (1 + gain) + offset) + (1 - take) * attribute

So the detail of the swap is the identity's own texture where it is taken and the attribute's where it
is kept, at whatever resolution the crops come in. With ``core_scale`` > 1 the UNet reads the crops
average-pooled by that factor and its maps are upsampled bilinearly before the composite: a 256 px swap
for the cost of a 128 px UNet plus a few element-wise operations at 256 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.student.layers import pointwise

GAIN = 0.5  # the colour gain is 1 +- this at most


def resize(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by an integer factor (``align_corners=False``: fully XNNPACK-delegated)."""
    return x if factor == 1 else F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


def pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling by an integer factor, written as a constant depthwise convolution: XNNPACK runs an
    int8 AVERAGE_POOL_2D outside its delegate, an int8 depthwise convolution inside it."""
    if factor == 1:
        return x
    weight = x.new_full((x.shape[1], 1, factor, factor), 1.0 / factor**2)
    return F.conv2d(x, weight, stride=factor, groups=x.shape[1])


class Composer(nn.Module):
    """``forward(features, offset_logits, mask_logits, attribute, warped) -> (image, mask)`` at crop size.

    ``features``/``offset_logits``/``mask_logits`` are at the UNet's (core) resolution; ``attribute`` and
    ``warped`` (the mesh-warped identity crop) at the crop's, both in [-1, 1]."""

    def __init__(self, channels: int, core_scale: int, smooth: int) -> None:
        super().__init__()
        self.core_scale, self.smooth = core_scale, smooth
        self.take = pointwise(channels, 4, bias=True)  # take logit + 3 gain logits
        nn.init.zeros_(self.take.weight)
        nn.init.zeros_(self.take.bias)

    def forward(
        self,
        features: torch.Tensor,
        offset_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        attribute: torch.Tensor,
        warped: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.take(features)
        take = resize(torch.sigmoid(t[:, :1]), self.core_scale)
        colour = torch.cat([torch.tanh(t[:, 1:]) * GAIN, torch.tanh(offset_logits)], dim=1)
        colour = resize(pool(colour, self.smooth), self.smooth * self.core_scale)
        gain, offset = colour[:, :3], colour[:, 3:]
        image = take * (warped * (1.0 + gain) + offset) + (1.0 - take) * attribute
        mask = resize(torch.sigmoid(mask_logits), self.core_scale)
        return torch.clamp(image, -1.0, 1.0), mask


__all__ = ["Composer", "pool", "resize"]
