"""What the trainer shows of its EMA student on held-out pairs: the validation figures (loss terms, face
PSNR as trained and as pasted) and the image grid of identity | attribute | teacher | student pasted | mask."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketswap.core.metrics import psnr_torch
from pocketswap.core.shards import Sample
from pocketswap.core.spec import PIXELS
from pocketswap.distill.data import Split, batch_to_device, iter_batches, iter_split
from pocketswap.distill.logs import image_grid
from pocketswap.distill.losses import DistillLoss
from pocketswap.student.network import composite

GRID_ROWS = 6


@torch.no_grad()
def validate(
    student: nn.Module,
    loss_fn: DistillLoss,
    samples: Iterable[Sample],
    batch_size: int,
    warp_shape: float | None,
    device: torch.device,
) -> dict[str, float]:
    """Mean loss terms (``loss`` for the total), ``psnr_face`` and ``psnr_pasted`` of ``student`` over
    ``samples``, and their count; {} when there are none."""
    sums: dict[str, float] = {}
    count = 0
    for batch in iter_batches(samples, batch_size, warp_shape):
        t = batch_to_device(batch, device)
        image, mask = student(t["attribute"], t["embedding"], t["identity_input"])
        terms = loss_fn(image, mask, t)
        n = len(batch["keys"])
        image = image.float().clamp(-1, 1)
        terms["psnr_face"] = psnr_torch(image, t["output"], t["mask"])
        terms["psnr_pasted"] = psnr_torch(composite(image, mask.float(), t["attribute"]), t["output"], t["mask"])
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    if count == 0:
        return {}
    return {("loss" if k == "total" else k): v / count for k, v in sums.items()} | {"samples": count}


class ValidationGrid:
    """The same ``GRID_ROWS`` held-out pairs at every image step (the first training batch's when the
    validation split is empty)."""

    def __init__(self, data: Path, split: Split, warp_shape: float | None, device: torch.device) -> None:
        self.data, self.split, self.warp_shape, self.device = data, split, warp_shape, device
        self.batch: dict[str, Any] | None = None

    @torch.no_grad()
    def render(self, student: nn.Module, fallback: dict[str, Any]) -> np.ndarray:
        """The grid image (uint8 RGB) of ``student`` on the grid's pairs."""
        if self.batch is None:
            rows = iter_split(self.data, self.split, "val", limit=GRID_ROWS)
            val = next(iter_batches(rows, GRID_ROWS, self.warp_shape), None)
            self.batch = (
                val if val is not None else {k: v[:GRID_ROWS] for k, v in fallback.items() if not k.startswith("_")}
            )
        b = self.batch
        t = batch_to_device(b, self.device)
        image, mask = student(t["attribute"], t["embedding"], t["identity_input"])
        pasted = composite(image.float().clamp(-1, 1), mask.float(), t["attribute"])
        return image_grid(
            b["identity_image"].numpy(), b["attribute"].numpy(), b["output"].numpy(), PIXELS.to_pixels_torch(pasted),
            mask[:, 0].float().cpu().numpy(),
        )  # fmt: skip


__all__ = ["GRID_ROWS", "ValidationGrid", "validate"]
