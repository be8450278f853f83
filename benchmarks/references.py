"""Reference networks timed beside the student so speed-ups are honest ratios on a noisy machine.

Both use random weights: compute does not depend on weight values.

- `simswap_size_generator()`: an AdaIN ResNet generator with SimSwap's layout at 224 (7x7 stem,
  three stride-2 downsamplings to 512 channels, nine AdaIN residual blocks conditioned on a
  512-d identity, three upsample+conv stages, 7x7 head). MobileFaceSwap's paper quotes SimSwap at
  107M parameters / 55.7 GFLOPs; `count_params_and_macs` reports what this module actually has.
- `mobilefaceswap_student()`: MobileFaceSwap's published student layout at 224 (5 encoder blocks of
  depthwise 4x4 stride-2 + pointwise, channels 3-32-64-128-256-512; 4 decoder blocks of bilinear
  upsampling, skip concatenation, depthwise 3x3 + pointwise; image and mask heads), static
  (identity already baked in), as it runs on a phone. The released model has 499,825
  parameters and 0.306 GMAC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaIN(nn.Module):
    """Instance norm whose scale and shift come from the identity latent."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.style = nn.Linear(latent_dim, 2 * channels)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(latent)[:, :, None, None].chunk(2, dim=1)
        return F.instance_norm(x) * (1 + gamma) + beta


class AdaINResBlock(nn.Module):
    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm1, self.norm2 = AdaIN(channels, latent_dim), AdaIN(channels, latent_dim)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x), latent))
        return x + self.norm2(self.conv2(y), latent)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    pad = kernel // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, pad, padding_mode="reflect"), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SimSwapSizeGenerator(nn.Module):
    """AdaIN ResNet generator of SimSwap's size; forward(image [1,3,224,224], latent [1,512])."""

    def __init__(self, latent_dim: int = 512, blocks: int = 9) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _conv_bn_relu(3, 64, 7),
            _conv_bn_relu(64, 128, 3, 2),
            _conv_bn_relu(128, 256, 3, 2),
            _conv_bn_relu(256, 512, 3, 2),
        )
        self.blocks = nn.ModuleList(AdaINResBlock(512, latent_dim) for _ in range(blocks))
        ups = []
        for cin, cout in ((512, 256), (256, 128), (128, 64)):
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv_bn_relu(cin, cout, 3)]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(64, 3, 7, padding=3, padding_mode="reflect"), nn.Tanh())

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = self.encoder(image)
        for block in self.blocks:
            x = block(x, latent)
        return self.decoder(x)


def _separable(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel, stride, padding=(kernel - stride + 1) // 2, groups=cin),
        nn.Conv2d(cin, cout, 1),
        nn.ReLU(inplace=True),
    )


class MobileFaceSwapStudent(nn.Module):
    """MobileFaceSwap's student layout with its identity baked in; forward(image) -> (image, mask)."""

    def __init__(self, channels: tuple[int, ...] = (3, 32, 64, 128, 256, 512)) -> None:
        super().__init__()
        self.down = nn.ModuleList(_separable(channels[i], channels[i + 1], 4, 2) for i in range(5))
        decoder_out = (256, 128, 64, 32)
        skips = channels[4:0:-1]  # 256, 128, 64, 32
        ins = (512, *decoder_out[:-1])
        self.up = nn.ModuleList(
            _separable(cin + skip, cout, 3, 1) for cin, skip, cout in zip(ins, skips, decoder_out, strict=True)
        )
        self.image_head = nn.Conv2d(32, 3, 3, padding=1)
        self.mask_head = nn.Conv2d(32, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        features = []
        for block in self.down:
            x = block(x)
            features.append(x)
        for block, skip in zip(self.up, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.tanh(self.image_head(x)), torch.sigmoid(self.mask_head(x))


def count_params_and_macs(model: nn.Module, *inputs: torch.Tensor) -> tuple[int, float]:
    """(parameters, GMAC) with MACs counted by torch's FLOP counter (MAC = FLOP / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def simswap_size_generator() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return SimSwapSizeGenerator().eval(), (torch.randn(1, 3, 224, 224), torch.randn(1, 512))


def mobilefaceswap_student() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return MobileFaceSwapStudent().eval(), (torch.randn(1, 3, 224, 224),)
