"""The student UNet in three forms that compute the same function for a given identity.

- :class:`StudentNet` (training): image + identity embedding -> (image, mask). Holds the encoder,
  the identity-conditioned decoder, the heads and the :class:`HyperNet`.
- :class:`~pocketswap.student.folded.BakedStudent` (``StudentNet.bake(emb)``): image -> (image, mask); plain Conv2d/ReLU/bilinear
  with BN, the depthwise kernels and modulation x demodulation folded into constant weights.
- :class:`~pocketswap.student.folded.DynamicIdentityStudent` (``StudentNet.dynamic()``): (image, params[1,P]) -> (image, mask);
  the identity enters as one flat vector from ``StudentNet.identity_params(emb)`` whose layout is
  ``StudentNet.param_layout()``.

Identity-dependent part of decoder block ``i`` (input C_in channels, output C_out), after
``x = cat(up2x(x), skip)``::

    x = act(bn(depthwise3x3(x, k_i)))                          # k_i from the hypernetwork
    x = act(bn(d_i * conv1x1(x * s_i, W_i)))                   # s_i from the hypernetwork
    d_i[o] = rsqrt(sum_c (W_i[o, c] * s_i[c])^2 + eps)         # StyleGAN2 demodulation

Flat params layout (``param_layout()``, float32, batch dim first), per block in order:

- ``decoder.{i}.dw.weight`` shape (3, 3, C_in), tap-major: element ``(ky*3 + kx)*C_in + c`` is the
  BN-scaled depthwise weight ``W[c, 0, ky, kx]`` (``.permute(2, 0, 1)`` gives the Conv2d layout).
- ``decoder.{i}.pw.in_scale`` shape (C_in,): the modulation ``s_i``.
- ``decoder.{i}.pw.out_scale`` shape (C_out,): demodulation times the BN scale.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.core.errors import ConfigError
from pocketswap.student.compose import Composer, pool
from pocketswap.student.config import StudentConfig
from pocketswap.student.hypernet import HyperNet
from pocketswap.student.layers import (
    SeparableDown,
    Upsample2x,
    bn_affine,
    demodulation,
    depthwise,
    depthwise3x3_per_sample,
    make_act,
    make_norm,
    pointwise,
)
from pocketswap.student.spatial import SpatialIdentity

if TYPE_CHECKING:
    from pocketswap.student.folded import BakedStudent, DynamicIdentityStudent

log = logging.getLogger(__name__)

Identity = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder block: (kernels [B,C,3,3], style [B,C])
Maps = tuple[dict[int, torch.Tensor], torch.Tensor | None]  # maps added to skips (by decoder block), to the logits


def composite(image: torch.Tensor, mask: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
    """What the live pipeline shows, in crop space: the student's ``image`` blended over the
    ``attribute`` crop by its own ``mask`` [B,1,S,S] (the pipeline pastes the crop back the same way)."""
    return mask * image + (1.0 - mask) * attribute


@dataclass(frozen=True)
class ParamSlot:
    """One tensor inside the flat identity vector: ``params[:, offset : offset + numel].view(shape)``."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class IdentityDecoderBlock(nn.Module):
    """Upsample, concat skip, identity depthwise 3x3, modulated/demodulated pointwise."""

    def __init__(self, cin: int, cout: int, config: StudentConfig) -> None:
        super().__init__()
        self.eps = config.demod_eps
        self.up = Upsample2x()
        self.dw_bias = nn.Parameter(torch.zeros(cin)) if config.norm == "none" else None
        self.dw_norm = make_norm(config.norm, cin)
        self.dw_act = make_act(config.act)
        self.pw = pointwise(cin, cout, bias=config.norm == "none")
        self.pw_norm = make_norm(config.norm, cout)
        self.pw_act = make_act(config.act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, kernels: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        b = x.shape[0]
        if kernels.shape[0] == 1:  # one identity for the whole batch: a plain depthwise conv (much faster)
            x = F.conv2d(x, kernels[0].unsqueeze(1), padding=1, groups=x.shape[1])
        else:
            x = depthwise3x3_per_sample(x, kernels.expand(b, -1, -1, -1))
        if self.dw_bias is not None:
            x = x + self.dw_bias.view(1, -1, 1, 1)
        x = self.dw_act(self.dw_norm(x))
        style = style.expand(b, -1)
        weight = self.pw.weight
        demod = demodulation(weight.flatten(1), style, self.eps)
        x = F.conv2d(x * style[:, :, None, None], weight) * demod[:, :, None, None]
        if self.pw.bias is not None:
            x = x + self.pw.bias.view(1, -1, 1, 1)
        return self.pw_act(self.pw_norm(x))


class Head(nn.Module):
    """Core-resolution head: upsample, optional concat of the (pooled) input crop, depthwise 3x3, then two
    1x1 heads; with ``compose`` the :class:`Composer` builds the swap at crop size from the two crops."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        cin = config.dec_channels[-1] + (3 if config.head_image_skip else 0)
        self.image_skip = config.head_image_skip
        self.up = Upsample2x()
        self.dw = depthwise(cin, 3, bias=config.norm == "none")
        self.norm = make_norm(config.norm, cin)
        self.act = make_act(config.act)
        self.image = pointwise(cin, 3, bias=True)
        self.mask = pointwise(cin, 1, bias=True)
        self.composer = Composer(cin, config.core_scale, config.compose_smooth) if config.compose else None

    def forward(
        self,
        x: torch.Tensor,
        core: torch.Tensor,
        image: torch.Tensor,
        logit_map: torch.Tensor | None = None,
        warped: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``core``: the input crop as the UNet reads it (pooled by ``core_scale``); ``image``: at crop size."""
        x = self.up(x)
        if self.image_skip:
            x = torch.cat([x, core], dim=1)
        x = self.act(self.norm(self.dw(x)))
        return finish(x, self.image(x), self.mask(x), logit_map, self.composer, image, warped)


def finish(
    x: torch.Tensor,
    image_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    logit_map: torch.Tensor | None,
    composer: Composer | None,
    image: torch.Tensor,
    warped: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's last step (shared by the training and folded networks): logits -> (image, mask)."""
    if logit_map is not None:
        image_logits, mask_logits = image_logits + logit_map[:, :3], mask_logits + logit_map[:, 3:]
    if composer is not None:
        if warped is None:
            raise ConfigError("a compositing student needs the warped identity crop")
        return composer(x, image_logits, mask_logits, image, warped)
    return torch.tanh(image_logits), torch.sigmoid(mask_logits)


class StudentNet(nn.Module):
    """Training-time student: ``forward(image [B,3,S,S] in [-1,1], embedding [B or 1, D]) -> (image, mask)``."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        chans = (3, *config.enc_channels)
        self.encoder = nn.ModuleList(SeparableDown(a, b, config.norm, config.act) for a, b in itertools.pairwise(chans))
        self.decoder = nn.ModuleList(
            IdentityDecoderBlock(cin, cout, config)
            for cin, cout in zip(config.decoder_in_channels(), config.dec_channels, strict=True)
        )
        self.head = Head(config)
        self.hypernet = HyperNet(config)
        # Personalised students: learned constants added to skips / logits (zero: no effect until trained).
        self.skip_maps = nn.ParameterDict(
            {str(i): nn.Parameter(torch.zeros(1, c, side, side)) for i, c, side in config.skip_maps()}
        )
        core = config.core_size
        self.head_map = nn.Parameter(torch.zeros(1, 4, core, core)) if config.head_map else None
        self.spatial = SpatialIdentity(config) if config.identity_encoder else None

    def forward(
        self, image: torch.Tensor, embedding: torch.Tensor, identity_image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``identity_image``: the aligned identity crop [B or 1,3,S,S] in [-1,1] (used when the config
        has ``identity_encoder``)."""
        if embedding.ndim == 2 and embedding.shape[0] > 1 and bool((embedding == embedding[:1]).all()):
            embedding = embedding[:1]  # one identity repeated (personalisation batches): run it once
        return self.run(image, self.identity(embedding), self.maps(identity_image), identity_image)

    def constant_maps(self) -> Maps:
        """The learned constant maps (personalised students) added to skips (by decoder block) and logits."""
        return {int(i): m for i, m in self.skip_maps.items()}, self.head_map

    def maps(self, identity_image: torch.Tensor | None = None) -> Maps:
        """The maps added to skips (by decoder block) and to the logits: :meth:`constant_maps` plus the
        spatial identity encoder's output for ``identity_image`` (the warped crop with ``identity_warp``)."""
        skips, head = self.constant_maps()
        if self.spatial is not None:
            if identity_image is None:
                raise ConfigError(
                    "this student has 'identity_encoder': it needs the aligned identity crop as well as the "
                    "embedding (give a photo, not an embedding .npy)"
                )
            found, logits = self.spatial(pool(identity_image, self.config.core_scale))
            for i, m in found.items():
                skips[i] = skips[i] + m if i in skips else m
            head = logits if head is None else head + logits
        return skips, head

    def identity(self, embedding: torch.Tensor) -> Identity:
        """Hypernetwork outputs for an embedding [B,D] or [D] (cache them to reuse one identity)."""
        if embedding.shape[-1] != self.config.embed_dim:
            raise ConfigError(
                f"embedding has {embedding.shape[-1]} dims but config field 'embed_dim' is {self.config.embed_dim}"
            )
        return self.hypernet(embedding)

    def run(
        self, image: torch.Tensor, identity: Identity, maps: Maps | None = None, warped: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward with precomputed :meth:`identity` (and :meth:`maps`) outputs; ``warped``: the warped
        identity crop a compositing student builds its swap from."""
        size = self.config.size
        if image.ndim != 4 or image.shape[1:] != (3, size, size):
            raise ConfigError(
                f"image must be [B,3,{size},{size}] for config field 'size' = {size}, got {list(image.shape)}"
            )
        feats = []
        x = core = pool(image, self.config.core_scale)
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        skip_maps, head_map = maps if maps is not None else self.maps()
        x = feats.pop()
        for i, (block, (kernels, style)) in enumerate(zip(self.decoder, identity, strict=True)):
            skip = feats.pop()
            if i in skip_maps:
                skip = skip + skip_maps[i]
            x = block(x, skip, kernels, style)
        return self.head(x, core, image, head_map, warped)

    # -- identity export -------------------------------------------------------------------------

    def param_layout(self) -> list[ParamSlot]:
        """Names, shapes and offsets of the tensors in :meth:`identity_params`' flat vector."""
        slots, offset = [], 0
        for i, (cin, cout) in enumerate(zip(self.config.decoder_in_channels(), self.config.dec_channels, strict=True)):
            for name, shape in ((f"decoder.{i}.dw.weight", (3, 3, cin)), (f"decoder.{i}.pw.in_scale", (cin,))):
                slots.append(ParamSlot(name, shape, offset))
                offset += slots[-1].numel
            slots.append(ParamSlot(f"decoder.{i}.pw.out_scale", (cout,), offset))
            offset += cout
        return slots

    @property
    def num_identity_params(self) -> int:
        """P: floats per identity in the flat vector."""
        last = self.param_layout()[-1]
        return last.offset + last.numel

    @torch.no_grad()
    def folded_identity(self, embedding: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per decoder block, the identity folded with BN (eval statistics) into constants.

        Keys: ``dw_weight`` [C,3,3], ``dw_bias`` [C], ``in_scale`` [C], ``out_scale`` [O], ``pw_bias`` [O].
        """
        if embedding.ndim == 2 and embedding.shape[0] != 1:
            raise ConfigError(f"bake one identity at a time: embedding batch is {embedding.shape[0]}, expected 1")
        if self.training:
            log.debug("folding BatchNorm with running statistics; the result matches eval mode")
        out = []
        for block, (kernels, style) in zip(self.decoder, self.identity(embedding.reshape(1, -1)), strict=True):
            cin, cout = block.pw.in_channels, block.pw.out_channels
            dw_scale, dw_shift = bn_affine(block.dw_norm, cin, kernels)
            dw_bias = block.dw_bias if block.dw_bias is not None else torch.zeros(cin)
            pw_scale, pw_shift = bn_affine(block.pw_norm, cout, kernels)
            pw_bias = block.pw.bias if block.pw.bias is not None else torch.zeros(cout)
            demod = demodulation(block.pw.weight.flatten(1), style, block.eps)[0]
            out.append(
                {
                    "dw_weight": kernels[0] * dw_scale.view(-1, 1, 1),
                    "dw_bias": dw_bias * dw_scale + dw_shift,
                    "in_scale": style[0],
                    "out_scale": demod * pw_scale,
                    "pw_bias": pw_bias * pw_scale + pw_shift,
                }
            )
        return out

    @torch.no_grad()
    def identity_params(self, embedding: torch.Tensor) -> torch.Tensor:
        """Flat [1, P] identity vector for :class:`DynamicIdentityStudent` (layout: :meth:`param_layout`)."""
        parts = []
        for f in self.folded_identity(embedding):
            parts += [f["dw_weight"].permute(1, 2, 0).reshape(-1), f["in_scale"], f["out_scale"]]
        return torch.cat(parts).unsqueeze(0).contiguous()

    @torch.no_grad()
    def bake(self, embedding: torch.Tensor, identity_image: torch.Tensor | None = None) -> BakedStudent:
        """A static network for one identity (matches eval-mode :meth:`forward`): image-only, or with
        ``identity_warp`` ``forward(image, warped identity crop)`` (the encoder runs per frame then)."""
        if identity_image is not None and identity_image.shape[0] != 1:
            raise ConfigError(f"bake one identity at a time: identity_image batch is {identity_image.shape[0]}")
        from pocketswap.student.folded import BakedStudent

        if self.config.identity_warp:
            return BakedStudent(self, self.folded_identity(embedding), self.constant_maps(), self.spatial)
        return BakedStudent(self, self.folded_identity(embedding), self.maps(identity_image))

    @torch.no_grad()
    def dynamic(self) -> DynamicIdentityStudent:
        """The identity-as-input network (matches eval-mode :meth:`forward` given :meth:`identity_params`)."""
        from pocketswap.student.folded import DynamicIdentityStudent

        if self.spatial is not None:
            raise ConfigError(
                "students with 'identity_encoder' export baked only: their identity maps would be a second "
                "run-time input (use --identity-mode baked)"
            )
        return DynamicIdentityStudent(self, self.maps())
