"""The swap contract as typed data: how a crop becomes a tensor and back, and where the rules are kept.

:data:`PIXELS` is the one pixel normalisation of every student image tensor (uint8 RGB ``p`` ->
``p * scale + offset`` in [-1, 1]; back: ``(y - offset) / scale`` rounded half up and clipped). A
:class:`SwapSpec` is what an artifact's manifest carries as ``swap_spec``: crop size and template, the
normalisation, and the pre- and post-processing rules (front end, crop, paste, identity warp, video) that
:mod:`pocketswap.faces.spec` writes from the constants the code runs with. Distill data, export (CoreML's
image input included), the runners and the reference client read the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketswap.core.errors import PocketswapError

if TYPE_CHECKING:
    import torch


class SpecError(PocketswapError):
    """A manifest's ``swap_spec`` is malformed."""


@dataclass(frozen=True)
class Normalization:
    """uint8 RGB pixels ``p`` <-> model values ``p * scale + offset``."""

    scale: float = 1.0 / 127.5
    offset: float = -1.0
    channels: str = "RGB"

    def to_model(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (any shape, layout kept) -> float32 model values."""
        return np.asarray(pixels).astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Model values (any shape, layout kept) -> uint8 pixels, rounded half up and clipped."""
        return np.clip((np.asarray(values) - self.offset) * (1.0 / self.scale) + 0.5, 0, 255).astype(np.uint8)

    def to_model_torch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> float32 [B,3,H,W] model values (the training batches' layout)."""
        return images.permute(0, 3, 1, 2).float().mul(self.scale).add(self.offset)

    def to_pixels_torch(self, images: torch.Tensor) -> np.ndarray:
        """Float [B,3,H,W] model values -> uint8 [B,H,W,3] numpy, rounded as :meth:`to_pixels`."""
        import torch

        x = images.detach().float().sub(self.offset).mul(1.0 / self.scale).add(0.5).clamp(0, 255).floor()
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset, "channels": self.channels,
                "output": "pixels = (y - offset) / scale, rounded half up and clipped to [0, 255]"}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str = "swap_spec") -> Normalization:
        if not isinstance(data, dict):
            raise SpecError(f"{where}: field 'normalization' must be an object")
        try:
            scale, offset = float(data["scale"]), float(data["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"{where}: field 'normalization' needs numbers 'scale' and 'offset' ({exc})") from exc
        # a model's pixels map to values within a few units: 255 * scale and offset far outside that are garbage
        if not (math.isfinite(scale) and 1e-6 <= scale <= 1e3):
            raise SpecError(f"{where}: field 'normalization.scale' must be in [1e-06, 1000], got {scale!r}")
        if not (math.isfinite(offset) and abs(offset) <= 1e4):
            raise SpecError(f"{where}: field 'normalization.offset' must be in [-10000, 10000], got {offset!r}")
        channels = data.get("channels", "RGB")
        if channels != "RGB":  # the only order any pocketswap model is fed
            raise SpecError(f"{where}: field 'normalization.channels' must be RGB, got {str(channels)[:20]!r}")
        return cls(scale, offset, channels)


PIXELS = Normalization()  # every student image tensor (input, output, warped identity)


@dataclass(frozen=True)
class SwapSpec:
    """An artifact's swap contract: the ``crop_size`` x ``crop_size`` crop on ``template``, the pixel
    ``normalization``, and ``rules`` (sections ``front_end``, ``crop``, ``paste``, ``identity_warp``,
    ``video``: data for clients, see :mod:`pocketswap.faces.spec`)."""

    crop_size: int
    template: str = "arcface"
    normalization: Normalization = PIXELS
    rules: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or self.crop_size < 16:
            raise SpecError(f"swap_spec: field 'crop.size' must be a whole number >= 16, got {self.crop_size!r}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``swap_spec``."""
        crop = {"size": self.crop_size, "template": self.template, **self.rules.get("crop", {})}
        rest = {k: v for k, v in self.rules.items() if k != "crop"}
        return {"crop": crop, "normalization": self.normalization.to_dict(), **rest}

    @classmethod
    def from_dict(cls, data: Any, where: str = "swap_spec", template: str | None = None) -> SwapSpec:
        """Read a manifest's ``swap_spec``; ``template`` fills a crop section written without one."""
        if not isinstance(data, dict) or not isinstance(data.get("crop"), dict):
            raise SpecError(f"{where}: field 'swap_spec' must be an object with a 'crop' section")
        crop = dict(data["crop"])
        size, name = crop.pop("size", None), crop.pop("template", template or "arcface")
        rules = {k: v for k, v in data.items() if k not in ("crop", "normalization")} | {"crop": crop}
        return cls(size, str(name), Normalization.from_dict(data.get("normalization"), where), rules)


__all__ = ["PIXELS", "Normalization", "SpecError", "SwapSpec"]
