"""Modules for on-device enrollment: an app embeds a new face and makes identity weights without a server.

- :class:`EncoderModule`: dlib's ResNet (``pocketswap.faces.dlib_resnet``), ``chip`` [1,3,150,150] RGB
  0..255 aligned to the dlib template -> ``embedding`` [1,128] L2-normalised.
- :class:`HyperParamsModule`: ``embedding`` [1,D] -> ``identity`` [1,P], the flat vector a dynamic student
  takes (equal to ``StudentNet.identity_params``).
- :class:`BakedWeightsModule`: ``embedding`` [1,D] -> ``weights`` [1,N], the identity-dependent tensors of
  the baked student in a patch record's order and layout, so an app can overwrite a baked model's bytes
  (entry k of the manifest's ``patch.tensors`` covers the next ``prod(torch_shape)`` values).

The student's own hypernetwork reshapes to [B,C,3,3], which onnx2tf transposes as if it were an image.
These wrappers compute the same numbers with 2-D ops only: the tap-major reordering and the BatchNorm
scale of the depthwise kernels are folded into the head's rows, demodulation is a matmul with the
squared pointwise weight, and the L2 normalisation is ReduceSum + Rsqrt (onnx2tf fails on ReduceL2).
"""

from __future__ import annotations

import torch
from torch import nn

from pocketswap.export.common import UnsupportedError


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` as ReduceSum + Rsqrt."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=eps * eps))


def concat(parts: list[torch.Tensor], max_inputs: int = 4) -> torch.Tensor:
    """``torch.cat(parts, dim=1)`` as a tree of concats with at most ``max_inputs`` inputs each: XNNPACK
    does not take a CONCATENATION with more inputs (the whole model then falls off full delegation)."""
    while len(parts) > max_inputs:
        parts = [torch.cat(parts[i : i + max_inputs], dim=1) for i in range(0, len(parts), max_inputs)]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class EncoderModule(nn.Module):
    """dlib ResNet with L2 normalisation (export wrapper)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet.eval()

    def forward(self, chip: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.resnet(chip))


def load_encoder_module() -> EncoderModule:
    from pocketswap.faces.dlib_resnet import load_dlib_resnet

    return EncoderModule(load_dlib_resnet())


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


class _Block(nn.Module):
    """Identity tensors of one decoder block from the hypernetwork's hidden state (2-D ops only)."""

    def __init__(self, dw_head: nn.Linear, style_head: nn.Linear, block: nn.Module) -> None:
        super().__init__()
        from pocketswap.student.layers import bn_affine

        c, o = block.pw.in_channels, block.pw.out_channels
        with torch.no_grad():
            dw_scale, _ = bn_affine(block.dw_norm, c, block.pw.weight)
            pw_scale, _ = bn_affine(block.pw_norm, o, block.pw.weight)
            w = dw_head.weight.view(c, 9, -1) * dw_scale.view(c, 1, 1)  # rows c*9 + t
            b = dw_head.bias.view(c, 9) * dw_scale.view(c, 1)
            self.dw_tap_major = _linear(w.transpose(0, 1).reshape(9 * c, -1), b.t().reshape(-1))  # rows t*C + c
            self.dw_channel_major = _linear(w.reshape(9 * c, -1), b.reshape(-1))
            self.style = _linear(style_head.weight, style_head.bias)
            weight = block.pw.weight.detach().flatten(1)  # [O, C]
            self.register_buffer("weight", weight.clone())
            self.register_buffer("weight_sq_t", weight.square().t().contiguous())
            self.register_buffer("pw_scale", pw_scale.detach().view(1, o).clone())
        self.eps = float(block.eps)

    def scales(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        style = self.style(h)
        demod = torch.rsqrt(torch.matmul(style * style, self.weight_sq_t) + self.eps)
        return style, demod * self.pw_scale

    def pointwise(self, h: torch.Tensor) -> torch.Tensor:
        """The baked 1x1 weight out_scale[o] * W[o, c] * in_scale[c], flattened row-major [1, O*C]."""
        in_scale, out_scale = self.scales(h)
        return (torch.matmul(out_scale.t(), in_scale) * self.weight).reshape(1, -1)


@torch.no_grad()
def _input_scale(hyper: nn.Module, dim: int) -> float | None:
    """How the hypernetwork prepares its input, observed on its trunk: None (as is) or ``k`` (L2-normalised
    times ``k``). Anything else raises, so a change in the student is caught here rather than shipped."""
    seen = []
    handle = hyper.trunk.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        probe = torch.randn(2, dim, generator=torch.Generator().manual_seed(5)) * 3.0
        hyper(probe)
    finally:
        handle.remove()
    x = seen[0]
    if torch.allclose(x, probe, atol=1e-6):
        return None
    unit = probe / probe.norm(dim=1, keepdim=True)
    scale = float((x * unit).sum() / (unit * unit).sum())
    if not torch.allclose(x, unit * scale, rtol=1e-5, atol=1e-6):
        raise UnsupportedError(
            "the hypernetwork's input preprocessing is not a scaled L2 normalisation; cannot export it"
        )
    return scale


class HyperParamsModule(nn.Module):
    """embedding [1,D] -> flat identity params [1,P] (layout: ``StudentNet.param_layout()``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        hyper = net.hypernet
        self.input_scale = _input_scale(hyper, net.config.embed_dim)
        self.trunk = hyper.trunk
        self.blocks = nn.ModuleList(
            _Block(d, s, b) for d, s, b in zip(hyper.dw_heads, hyper.style_heads, net.decoder, strict=True)
        )
        self.eval()

    def hidden(self, embedding: torch.Tensor) -> torch.Tensor:
        if self.input_scale is None:
            return self.trunk(embedding)
        return self.trunk(l2_normalize(embedding) * self.input_scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        h = self.hidden(embedding)
        parts = []
        for block in self.blocks:
            in_scale, out_scale = block.scales(h)
            parts += [block.dw_tap_major(h), in_scale, out_scale]
        return concat(parts)


class BakedWeightsModule(HyperParamsModule):
    """embedding [1,D] -> the baked student's identity tensors, each in its patch entry's layout, concatenated."""

    def __init__(self, net: nn.Module, entries: list[dict]) -> None:
        super().__init__(net)
        self.plan = [_plan(e) for e in entries]

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        h = self.hidden(embedding)
        parts = []
        for index, kind in self.plan:
            block = self.blocks[index]
            if kind == "pw":
                parts.append(block.pointwise(h))
            else:
                parts.append(block.dw_tap_major(h) if kind == "dw_tap_major" else block.dw_channel_major(h))
        return concat(parts)


def _plan(entry: dict) -> tuple[int, str]:
    """(decoder block, how to lay it out) for a patch entry of ``decoder.{i}.0.weight`` / ``decoder.{i}.2.weight``."""
    parts = entry["name"].split(".")
    if len(parts) != 4 or parts[0] != "decoder" or parts[2] not in ("0", "2") or parts[3] != "weight":
        raise ValueError(f"unexpected identity tensor {entry['name']!r}")
    shape = entry["torch_shape"]
    order = [p for p in entry["permutation"] if shape[p] != 1]  # non-singleton torch dims in stored order
    if parts[2] == "2":  # [O, C, 1, 1]: O before C is row-major O x C
        if order != [0, 1]:
            raise ValueError(f"unsupported layout {entry['permutation']} for {entry['name']}")
        return int(parts[1]), "pw"
    if order == [2, 3, 0]:  # [C,1,3,3] stored as (ky, kx, C): tap-major
        return int(parts[1]), "dw_tap_major"
    if order == [0, 2, 3]:  # stored as (C, ky, kx): channel-major
        return int(parts[1]), "dw_channel_major"
    raise ValueError(f"unsupported layout {entry['permutation']} for {entry['name']}")
