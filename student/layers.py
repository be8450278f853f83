"""Export-friendly building blocks: separable convs, bilinear 2x upsampling, BN folding and the two
runtime-weight ops (depthwise 3x3 as 9 shifted multiply-adds, modulated/demodulated pointwise).

Everything here lowers to Conv/Mul/Add/Pad/Slice/Resize(bilinear) in ONNX: no GroupNorm/LayerNorm,
no nearest resize, no transposed convs, no gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_act(name: str) -> nn.Module:
    """ReLU or ReLU6 (both map to fused activations in TFLite/CoreML)."""
    return nn.ReLU6(inplace=True) if name == "relu6" else nn.ReLU(inplace=True)


def make_norm(name: str, channels: int) -> nn.Module:
    """BatchNorm (folded away at bake time) or nothing."""
    return nn.BatchNorm2d(channels) if name == "bn" else nn.Identity()


class Upsample2x(nn.Module):
    """Bilinear 2x upsampling with ``align_corners=False`` (fully XNNPACK-delegated, converts correctly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def depthwise(channels: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """Depthwise conv with TF-"SAME"-compatible symmetric padding for k=3/s=1 and k=4/s=2."""
    padding = 1 if (kernel, stride) in ((3, 1), (4, 2)) else kernel // 2
    return nn.Conv2d(channels, channels, kernel, stride, padding, groups=channels, bias=bias)


def pointwise(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


class SeparableDown(nn.Module):
    """Encoder block: depthwise 4x4 stride 2 (pad 1: no explicit PAD op) + pointwise, each with norm + act."""

    def __init__(self, cin: int, cout: int, norm: str, act: str) -> None:
        super().__init__()
        self.dw = depthwise(cin, 4, 2, bias=norm == "none")
        self.dw_norm = make_norm(norm, cin)
        self.dw_act = make_act(act)
        self.pw = pointwise(cin, cout, bias=norm == "none")
        self.pw_norm = make_norm(norm, cout)
        self.pw_act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_norm(self.dw(x)))
        return self.pw_act(self.pw_norm(self.pw(x)))


def bn_affine(norm: nn.Module, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that ``norm(y) == y * scale + shift`` in eval mode (identity for no norm)."""
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return torch.ones(channels, dtype=like.dtype), torch.zeros(channels, dtype=like.dtype)


def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to ``norm(conv(x))`` in eval mode."""
    scale, shift = bn_affine(norm, conv.out_channels, conv.weight)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    return conv_from(conv.weight * scale.view(-1, 1, 1, 1), bias * scale + shift, conv)


def conv_from(weight: torch.Tensor, bias: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with the geometry of ``like`` and the given constant weight/bias."""
    conv = nn.Conv2d(
        like.in_channels, like.out_channels, like.kernel_size, like.stride, like.padding, groups=like.groups, bias=True
    )
    with torch.no_grad():
        conv.weight.copy_(weight.detach())
        conv.bias.copy_(bias.detach())
    return conv


def depthwise3x3_per_sample(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 (pad 1) with a different kernel per sample: x [B,C,H,W], kernels [B,C,3,3].

    Runs as one grouped conv over the batch folded into channels (training path; not for export).
    """
    b, c, h, w = x.shape
    out = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(b * c, 1, 3, 3), padding=1, groups=b * c)
    return out.reshape(b, c, h, w)


def depthwise3x3_shifted(x: torch.Tensor, taps: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
    """Depthwise 3x3 (pad 1) with runtime weights as 9 shifted multiply-adds.

    ``taps[dy * 3 + dx]`` is the per-channel weight broadcast as [1,C,1,1] (or [B,C,1,1]); ``hw`` is the
    static spatial size of ``x`` (passed as ints so traced graphs get constant slices, not shape arithmetic).
    Pads once, slices 9 windows, multiplies and sums: converts to TFLite where ``conv2d`` with a runtime
    weight does not.
    """
    h, w = hw
    xp = F.pad(x, (1, 1, 1, 1))
    out = xp[:, :, 0:h, 0:w] * taps[0]
    for t in range(1, 9):
        dy, dx = divmod(t, 3)
        out = out + xp[:, :, dy : dy + h, dx : dx + w] * taps[t]
    return out


def demodulation(weight: torch.Tensor, style: torch.Tensor, eps: float) -> torch.Tensor:
    """StyleGAN2 demodulation ``d_o = rsqrt(sum_i (w_oi * s_i)^2 + eps)``: weight [O,I], style [B,I] -> [B,O]."""
    return torch.rsqrt(style.square() @ weight.square().t() + eps)
