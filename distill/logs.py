"""Training logs: ``metrics.jsonl`` (plot curves without TensorBoard), TensorBoard scalars and image grids."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.core.files import atomic_write_bytes
from pocketswap.core.jsonio import Obj, read_jsonl

log = logging.getLogger(__name__)

GRID_COLUMNS = ("identity", "attribute", "teacher", "student", "mask")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


METRICS_ROW = Obj({"step": int, "kind": str}, required=("step", "kind"))  # every line of metrics.jsonl


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``: ``{"step", "kind", ...values}``."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.is_file():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (they belong to the run being resumed past)."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]  # a last line cut by the kill is skipped
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        record = {"step": step, "kind": kind, **{k: _clean(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (optionally of one kind: train, val, event); a last line cut off by a kill is
    skipped with a warning, a bad line elsewhere is one error naming it."""
    records = read_jsonl(path, "training log", schema=METRICS_ROW)
    return [r for r in records if kind is None or r.get("kind") == kind]


def image_grid(*columns: np.ndarray) -> np.ndarray:
    """Side-by-side columns of B images each, e.g. identity | attribute | teacher | student | mask:
    uint8 [B,S,S,3] images or float [B,S,S] masks in [0, 1] -> one uint8 RGB image with 2 px gaps."""
    images = [
        c if c.ndim == 4 else np.repeat((np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
        for c in columns
    ]
    b, s = images[0].shape[:2]
    gap = 2
    grid = np.full((b * (s + gap) - gap, len(images) * (s + gap) - gap, 3), 255, np.uint8)
    for r in range(b):
        for c, column in enumerate(images):
            grid[r * (s + gap) : r * (s + gap) + s, c * (s + gap) : c * (s + gap) + s] = column[r]
    return grid


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if ok:
        atomic_write_bytes(path, data.tobytes())


class TensorBoard:
    """A `SummaryWriter` that degrades to a no-op (with one warning) if tensorboard is missing."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - tensorboard is in the train extra
            log.warning("TensorBoard logging off (%s); install pocketswap[train]", exc)
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image_rgb: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_rgb, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


__all__ = ["GRID_COLUMNS", "MetricsLog", "TensorBoard", "image_grid", "read_metrics", "write_png"]
