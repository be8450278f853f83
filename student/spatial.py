"""Spatial identity: the aligned identity crop -> feature maps added to the student's skips and logits.

The geometric teacher (and every swap teacher) paints the identity's own texture into the attribute's
face; an embedding vector cannot carry that texture, a map in the crop's (ArcFace-aligned) frame can.
For one identity the maps are constants, so a baked artifact holds them as constant tensors (one Add
each) and the encoder never runs on the phone. Its projections start at zero: a student with the
encoder computes what it computed without one until training moves them.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pocketswap.student.config import StudentConfig
from pocketswap.student.layers import SeparableDown, pointwise


class SpatialIdentity(nn.Module):
    """``forward(identity_crop [B,3,S,S] in [-1,1]) -> ({decoder block: map [B,C,s,s]}, logit map [B,4,S,S])``."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.levels = config.map_levels()
        deepest = max(len(config.enc_channels) - 2 - i for i, _, _ in self.levels)
        chans = (3, *config.enc_channels[: deepest + 1])
        self.encoder = nn.ModuleList(SeparableDown(a, b, config.norm, config.act) for a, b in itertools.pairwise(chans))
        self.depth = len(config.enc_channels)
        self.proj = nn.ModuleDict({str(i): pointwise(c, c, bias=True) for i, c, _ in self.levels})
        self.logits = pointwise(3, 4, bias=True)  # identity pixels straight into the image/mask logits
        for conv in [*self.proj.values(), self.logits]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, crop: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        feats, x = [], crop
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        # decoder block i takes the skip of encoder level depth - 2 - i
        maps = {i: self.proj[str(i)](feats[self.depth - 2 - i]) for i, _, _ in self.levels}
        return maps, self.logits(crop)


__all__ = ["SpatialIdentity"]
