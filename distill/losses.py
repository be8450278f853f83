"""Distillation losses on [-1, 1] RGB crops [B,3,S,S] and masks [B,1,S,S].

Terms (weights in `TrainConfig`): ``l1`` and ``ssim`` to the teacher output with pixels inside the
teacher mask weighted up, ``outside`` (L1 to the attribute outside the mask, so the background
stays the input's), ``id`` (1 - cosine of dlib embeddings of the output and of the identity crop;
the dlib ResNet is frozen and differentiable), ``mask`` (BCE to the teacher mask) and ``rec`` (L1
to the attribute on same-identity reconstruction pairs) and ``paste`` (L1 of what the live pipeline shows:
the output blended over the attribute by the student's own mask, to the teacher output; without it a
soft mask ghosts the attribute's face back over a good output). The optional feature and adversarial
terms live in :mod:`pocketswap.distill.features` and :mod:`pocketswap.distill.adversarial`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.core.metrics import ssim_map_torch
from pocketswap.distill.config import TrainConfig
from pocketswap.student.network import composite


def weighted_mean(values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum(w * v) / sum(w), broadcasting ``weights`` [B,1,H,W] over the channels of ``values``."""
    weights = weights.expand_as(values)
    return (weights * values).sum() / (weights.sum() + eps)


def masked_l1(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean absolute error."""
    return weighted_mean((x - y).abs(), weights)


def soft_bce(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary cross-entropy with soft targets; NaN inputs give a NaN loss (F.binary_cross_entropy
    would raise), so a diverging run is reported as such."""
    prob = prob.clamp(eps, 1.0 - eps)
    return -(target * prob.log() + (1.0 - target) * (1.0 - prob).log()).mean()


def pixel_weights(mask: torch.Tensor, inside: float) -> torch.Tensor:
    """1 outside the mask, ``inside`` inside it (soft in between)."""
    return 1.0 + (inside - 1.0) * mask


# -- dlib chips ----------------------------------------------------------------------------------
def arcface_to_dlib_theta(size: int, chip: int = 150) -> torch.Tensor:
    """The [2,3] `affine_grid` matrix that samples a dlib ``chip`` from an ArcFace-aligned ``size`` crop.

    Both templates use pixel centres at integer coordinates (``align_corners=False`` convention)."""
    from pocketswap.faces.align import similarity_transform, template_points

    matrix = similarity_transform(template_points(size, "arcface"), template_points(chip, "dlib")).astype(np.float64)
    forward = np.vstack([matrix, [0.0, 0.0, 1.0]])
    out_to_chip = np.array([[chip / 2, 0, (chip - 1) / 2], [0, chip / 2, (chip - 1) / 2], [0, 0, 1]])
    crop_to_in = np.array([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])
    theta = crop_to_in @ np.linalg.inv(forward) @ out_to_chip
    return torch.from_numpy(theta[:2]).float()


class DlibChipWarp(nn.Module):
    """Differentiable warp of ArcFace-aligned crops [B,3,S,S] to dlib 150 px chips [B,3,150,150]."""

    def __init__(self, size: int, chip: int = 150) -> None:
        super().__init__()
        self.chip = chip
        self.register_buffer("theta", arcface_to_dlib_theta(size, chip)[None], persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        b = crops.shape[0]
        grid = F.affine_grid(self.theta.expand(b, 2, 3), [b, 3, self.chip, self.chip], align_corners=False)
        return F.grid_sample(crops.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class IdentityEmbedder(nn.Module):
    """dlib embeddings of ArcFace-aligned crops in [-1, 1] (frozen encoder, gradients reach the crops)."""

    def __init__(self, size: int, encoder: object | None = None) -> None:
        super().__init__()
        if encoder is None:
            from pocketswap.faces.dlib_resnet import DlibEncoder

            encoder = DlibEncoder()
        self.net = encoder.model  # type: ignore[attr-defined]
        self.net.requires_grad_(False)
        self.warp = DlibChipWarp(size)

    def train(self, mode: bool = True) -> IdentityEmbedder:  # the encoder stays in eval mode
        return self

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((self.warp(crops) + 1.0) * 127.5, normalize=True)


# -- the combined loss ---------------------------------------------------------------------------
class DistillLoss(nn.Module):
    """The pixel, identity and mask terms; ``forward`` returns a dict of scalar tensors including
    ``total`` (the weighted sum). Terms with weight 0 are not computed (reported as 0)."""

    TERMS = ("l1", "ssim", "outside", "id", "mask", "rec", "paste")

    def __init__(self, config: TrainConfig, size: int, embedder: IdentityEmbedder | None = None) -> None:
        super().__init__()
        self.weights = {
            "l1": config.w_l1,
            "ssim": config.w_ssim,
            "outside": config.w_outside,
            "id": config.w_id,
            "mask": config.w_mask,
            "rec": config.w_rec,
            "paste": config.w_paste,
        }
        self.inside = config.inside_weight
        self.id_samples = config.id_samples
        self.embedder = embedder if embedder is not None or config.w_id == 0 else IdentityEmbedder(size)

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        batch: dict[str, torch.Tensor],
        target_embedding: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``image``/``mask``: student outputs; ``batch``: float tensors ``output``, ``attribute``,
        ``identity_image`` ([-1,1]), ``mask`` [B,1,S,S], ``same`` [B] bool."""
        image, mask = image.float(), mask.float()
        teacher, attribute, tmask = batch["output"], batch["attribute"], batch["mask"]
        zero = image.sum() * 0.0
        terms: dict[str, torch.Tensor] = dict.fromkeys(self.TERMS, zero)
        weights = pixel_weights(tmask, self.inside)
        if self.weights["l1"]:
            terms["l1"] = masked_l1(image, teacher, weights)
        if self.weights["ssim"]:
            terms["ssim"] = 1.0 - weighted_mean(ssim_map_torch(image, teacher), weights)
        if self.weights["outside"]:
            terms["outside"] = masked_l1(image, attribute, 1.0 - tmask)
        if self.weights["id"] and self.embedder is not None:
            if target_embedding is None:
                identity = batch["identity_image"]
                if bool((identity == identity[:1]).all()):
                    identity = identity[:1]  # one identity repeated (personalisation batches): embed it once
                with torch.no_grad():
                    target_embedding = self.embedder(identity)
            scored = slice(0, self.id_samples or None)
            terms["id"] = 1.0 - (self.embedder(image[scored]) * target_embedding[scored]).sum(1).mean()
        if self.weights["mask"]:
            terms["mask"] = soft_bce(mask, tmask)
        if self.weights["paste"]:
            terms["paste"] = masked_l1(composite(image, mask, attribute), teacher, weights)
        same = batch["same"]
        if self.weights["rec"] and bool(same.any()):
            terms["rec"] = (image[same] - attribute[same]).abs().mean()
        terms["total"] = sum(self.weights[k] * terms[k] for k in self.TERMS)
        return terms


__all__ = [
    "DistillLoss",
    "DlibChipWarp",
    "IdentityEmbedder",
    "arcface_to_dlib_theta",
    "masked_l1",
    "pixel_weights",
    "soft_bce",
    "weighted_mean",
]
