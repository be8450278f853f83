"""The phone forms of a :class:`~pocketswap.student.network.StudentNet`, with every BatchNorm folded:
:class:`BakedStudent` (one identity's weights as constants) and :class:`DynamicIdentityStudent` (the identity as
a flat input vector). See :mod:`pocketswap.student.network` for the parameter layout."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pocketswap.core.errors import ConfigError
from pocketswap.student.compose import pool
from pocketswap.student.layers import (
    SeparableDown,
    Upsample2x,
    bn_affine,
    conv_from,
    depthwise,
    depthwise3x3_shifted,
    fold_conv_norm,
    make_act,
)
from pocketswap.student.network import IdentityDecoderBlock, Maps, StudentNet, finish
from pocketswap.student.spatial import SpatialIdentity


def _folded_down(block: SeparableDown, act: str) -> nn.Sequential:
    """An encoder block with its BatchNorms folded into the convolutions."""
    return nn.Sequential(
        fold_conv_norm(block.dw, block.dw_norm), make_act(act), fold_conv_norm(block.pw, block.pw_norm), make_act(act)
    )


def _folded_spatial(spatial: SpatialIdentity, act: str) -> SpatialIdentity:
    """A copy of the spatial identity encoder with BN folded (same forward), for artifacts that take the
    warped identity as an input."""
    folded = copy.deepcopy(spatial)
    folded.encoder = nn.ModuleList(_folded_down(b, act) for b in spatial.encoder)
    return folded


class _FoldedUNet(nn.Module):
    """Identity-free parts of a student with BN folded: encoder and heads (shared by baked/dynamic)."""

    def __init__(self, net: StudentNet, maps: Maps, spatial: SpatialIdentity | None = None) -> None:
        super().__init__()
        act = net.config.act
        self.config = net.config
        self.encoder = nn.ModuleList(_folded_down(b, act) for b in net.encoder)
        self.spatial = None if spatial is None else _folded_spatial(spatial, act)
        self.up = Upsample2x()
        self.image_skip, self.core_scale = net.config.head_image_skip, net.config.core_scale
        self.composer = copy.deepcopy(net.head.composer)
        self.head_dw = nn.Sequential(fold_conv_norm(net.head.dw, net.head.norm), make_act(act))
        self.image_head = conv_from(net.head.image.weight, net.head.image.bias, net.head.image)
        self.mask_head = conv_from(net.head.mask.weight, net.head.mask.bias, net.head.mask)
        skip_maps, head_map = maps  # constants of this network: one Add each
        self.skip_map_index = sorted(skip_maps)
        for i in self.skip_map_index:
            self.register_buffer(f"skip_map_{i}", skip_maps[i].detach().clone())
        self.register_buffer("head_map", None if head_map is None else head_map.detach().clone())

    def _decode(self, index: int, x: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _forward(
        self, image: torch.Tensor, params: torch.Tensor | None = None, identity: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Written as one flat function so eager PyTorch frees each activation as soon as it is consumed.
        core = pool(image, self.core_scale)
        feats, x = [], core
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        found, logit_map = ({}, None) if self.spatial is None else self.spatial(pool(identity, self.core_scale))
        if self.head_map is not None:
            logit_map = self.head_map if logit_map is None else logit_map + self.head_map
        x = feats.pop()
        for index in range(len(feats)):
            skip = feats.pop()
            if index in self.skip_map_index:
                skip = skip + getattr(self, f"skip_map_{index}")
            if index in found:
                skip = skip + found[index]
            x = self._decode(index, torch.cat([self.up(x), skip], dim=1), params)
        x = self.up(x)
        if self.image_skip:
            x = torch.cat([x, core], dim=1)
        x = self.head_dw(x)
        return finish(x, self.image_head(x), self.mask_head(x), logit_map, self.composer, image, identity)


class BakedStudent(_FoldedUNet):
    """Static student for one identity: ``forward(image) -> (image, mask)``; only Conv2d, ReLU, bilinear,
    cat, add. With ``identity_warp``: ``forward(image, identity_warped)`` (the crop from
    ``faces.warp.warp_identity``, [1,3,S,S] in [-1, 1])."""

    def __init__(
        self, net: StudentNet, folded: list[dict[str, torch.Tensor]], maps: Maps, spatial: SpatialIdentity | None = None
    ) -> None:
        super().__init__(net, maps, spatial)
        act = net.config.act
        self.decoder = nn.ModuleList()
        for block, f in zip(net.decoder, folded, strict=True):
            cin = block.pw.in_channels
            dw = conv_from(f["dw_weight"].unsqueeze(1), f["dw_bias"], depthwise(cin, 3))
            weight = f["out_scale"].view(-1, 1, 1, 1) * block.pw.weight * f["in_scale"].view(1, -1, 1, 1)
            pw = conv_from(weight, f["pw_bias"], block.pw)
            self.decoder.append(nn.Sequential(dw, make_act(act), pw, make_act(act)))
        self.eval().requires_grad_(False)

    def forward(self, image: torch.Tensor, identity: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spatial is not None and identity is None:
            raise ConfigError("this student reads the warped identity crop: call it with (image, identity_warped)")
        return self._forward(image, identity=identity)

    def _decode(self, index: int, x: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        return self.decoder[index](x)


class DynamicDecoderBlock(nn.Module):
    """Decoder block whose identity arrives at run time: 9-shift depthwise + constant 1x1 between two scales."""

    def __init__(
        self, block: IdentityDecoderBlock, hw: int, dw_bias: torch.Tensor, pw_bias: torch.Tensor, act: str
    ) -> None:
        super().__init__()
        self.channels = block.pw.in_channels
        self.hw = (hw, hw)  # static input size: traced graphs get constant slices
        self.pw = nn.Conv2d(block.pw.in_channels, block.pw.out_channels, 1, bias=False)
        self.pw.weight.data.copy_(block.pw.weight.detach())
        self.register_buffer("dw_bias", dw_bias.detach().view(1, -1, 1, 1).clone())
        self.register_buffer("pw_bias", pw_bias.detach().view(1, -1, 1, 1).clone())
        self.dw_act = make_act(act)
        self.pw_act = make_act(act)

    def forward(
        self, x: torch.Tensor, taps: list[torch.Tensor], in_scale: torch.Tensor, out_scale: torch.Tensor
    ) -> torch.Tensor:
        x = self.dw_act(depthwise3x3_shifted(x, taps, self.hw) + self.dw_bias)
        return self.pw_act(self.pw(x * in_scale) * out_scale + self.pw_bias)


class DynamicIdentityStudent(_FoldedUNet):
    """Student with the identity as input: ``forward(image [1,3,S,S], params [1,P]) -> (image, mask)``.

    ``params`` comes from :meth:`StudentNet.identity_params`; ``layout`` lists its (name, shape, offset).
    Only static slices of ``params`` are taken (no gather), each reshaped to [1,C,1,1].
    """

    def __init__(self, net: StudentNet, maps: Maps) -> None:
        super().__init__(net, maps)
        act = net.config.act
        self.layout = net.param_layout()
        self.num_params = net.num_identity_params
        self.decoder = nn.ModuleList()
        for i, block in enumerate(net.decoder):
            hw = net.config.core_size // 2 ** (len(net.config.enc_channels) - 1 - i)
            cin, cout = block.pw.in_channels, block.pw.out_channels
            dw_scale, dw_shift = bn_affine(block.dw_norm, cin, block.pw.weight)
            dw_bias = block.dw_bias if block.dw_bias is not None else torch.zeros(cin)
            pw_scale, pw_shift = bn_affine(block.pw_norm, cout, block.pw.weight)
            pw_bias = block.pw.bias if block.pw.bias is not None else torch.zeros(cout)
            self.decoder.append(
                DynamicDecoderBlock(block, hw, dw_bias * dw_scale + dw_shift, pw_bias * pw_scale + pw_shift, act)
            )
        self.eval().requires_grad_(False)

    def forward(self, image: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() and params.shape[-1] != self.num_params:
            raise ConfigError(f"params must be [1, {self.num_params}] for this config, got {list(params.shape)}")
        return self._forward(image, params)

    def _decode(self, index: int, x: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        block = self.decoder[index]
        dw_slot, in_slot, out_slot = self.layout[3 * index : 3 * index + 3]
        c = block.channels
        taps = [_vector(params, dw_slot.offset + t * c, c) for t in range(9)]
        in_scale = _vector(params, in_slot.offset, c)
        out_scale = _vector(params, out_slot.offset, out_slot.numel)
        return block(x, taps, in_scale, out_scale)


def _vector(params: torch.Tensor, offset: int, n: int) -> torch.Tensor:
    """``params[:, offset:offset+n]`` as a per-channel [B,n,1,1] broadcast tensor."""
    return params[:, offset : offset + n].reshape(-1, n, 1, 1)
