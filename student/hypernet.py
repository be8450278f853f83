"""Identity hypernetwork: embedding -> per-decoder-block depthwise kernels and pointwise styles.

Runs once per identity (or per training sample). Its outputs are what the baked student folds into
constant weights and what the dynamic student takes as its flat ``params`` input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.student.config import StudentConfig

# Std of the identity-dependent part of the outputs at init, relative to the identity-free part.
_HEAD_GAIN = 0.5


class HyperNet(nn.Module):
    """MLP trunk + one linear head per predicted tensor.

    For decoder block ``i`` with ``C`` input channels it predicts ``dw_i`` [B,C,3,3] (the depthwise
    kernels) and ``style_i`` [B,C] (the per-input-channel modulation of the pointwise conv, ~1 at init).
    Each head's bias is the identity-free part: a depthwise kernel init for ``dw``, ones for ``style``.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.normalize = config.normalize_embedding
        self.embed_dim = config.embed_dim
        hidden = config.hyper_hidden
        layers: list[nn.Module] = []
        width = config.embed_dim
        for _ in range(config.hyper_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.channels = config.decoder_in_channels()
        self.dw_heads = nn.ModuleList(nn.Linear(hidden, 9 * c) for c in self.channels)
        self.style_heads = nn.ModuleList(nn.Linear(hidden, c) for c in self.channels)
        self.reset_heads()

    @torch.no_grad()
    def reset_heads(self) -> None:
        """He-init the trunk; init heads so the identity-dependent part is about half the identity-free part."""
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        dw_std = math.sqrt(2.0 / 9.0)  # He init for a 3x3 depthwise filter (fan_in 9)
        for head in self.dw_heads:
            nn.init.normal_(head.bias, std=dw_std)
            nn.init.normal_(head.weight, std=_HEAD_GAIN * dw_std / math.sqrt(head.in_features))
        for head in self.style_heads:
            nn.init.ones_(head.bias)
            nn.init.normal_(head.weight, std=_HEAD_GAIN / math.sqrt(head.in_features))

    def forward(self, embedding: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """embedding [B,D] -> per decoder block (kernels [B,C,3,3], style [B,C])."""
        if embedding.ndim == 1:
            embedding = embedding.unsqueeze(0)
        if self.normalize:  # unit-variance entries: L2-normalised, times sqrt(D)
            embedding = F.normalize(embedding, dim=1) * math.sqrt(self.embed_dim)
        h = self.trunk(embedding)
        b = h.shape[0]
        return [
            (dw(h).view(b, c, 3, 3), style(h))
            for c, dw, style in zip(self.channels, self.dw_heads, self.style_heads, strict=True)
        ]
