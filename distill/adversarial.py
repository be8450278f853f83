"""Optional adversarial term: a small PatchGAN discriminator trained with the hinge loss.

Off by default (``w_adv: 0``). The discriminator sees the teacher output as real and the student
output as fake; each of its outputs judges one ~22 px patch (receptive field at 4 layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """4 conv layers (two stride-2), spectral norm, LeakyReLU; [B,3,S,S] -> logits [B,1,S/4-2,S/4-2]."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(3, c, 4, 2, 1)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(2 * c, 4 * c, 3, 1, 1)),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * c, 1, 3, 1, 0),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: relu(1 - D(real)) + relu(1 + D(fake))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -D(fake)."""
    return -fake_logits.mean()


__all__ = ["PatchDiscriminator", "d_hinge_loss", "g_hinge_loss"]
