"""The one definition of every measure the stages share: PSNR and SSIM (numpy, optionally weighted by a
mask of soft weights in [0, 1]; torch, differentiable, for training and validation), the identity
decision (cosine distance, same person strictly under an encoder's threshold) and timing percentiles."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

import cv2
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _weights(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], np.float64)
    mask = np.asarray(mask, np.float64)
    if mask.shape != shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape[:2]}")
    return mask


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255.0) -> float:
    """PSNR (dB) between two arrays of one shape (inf if equal); with ``mask`` (HxW weights in [0, 1]) the
    squared error of HxW(x3) images is weighted per pixel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = (a - b) ** 2
    if mask is None:
        mse = float(err.mean())
    else:
        w = _weights(mask, a.shape)
        mse = float((w * (err.mean(axis=-1) if a.ndim == 3 else err)).sum() / max(w.sum(), 1e-12))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM (HxW, mean over channels), Gaussian window 11 / sigma 1.5, reflect-101 borders."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT_101)

    mu_a, mu_b = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return value.mean(axis=-1) if value.ndim == 3 else value


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two uint8 images, weighted by ``mask`` (1.0 for identical images)."""
    w = _weights(mask, np.shape(a))
    return float((w * ssim_map(a, b)).sum() / max(w.sum(), 1e-12))


# -- timings --------------------------------------------------------------------------------------
def percentile(values: Any, q: float, digits: int = 4) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation between the closest ranks, numpy's
    default), rounded to ``digits``: the one summary every timing uses (median = ``q`` 50)."""
    return round(float(np.percentile(np.asarray(values, np.float64), q)), digits)


# -- torch, on [-1, 1] image batches [B,3,H,W] -----------------------------------------------------
@lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable SSIM-window Gaussian blur per channel, reflect padding (OpenCV's BORDER_REFLECT_101)."""
    import torch.nn.functional as F

    c, g, pad = x.shape[1], _gauss_1d(SSIM_WINDOW, SSIM_SIGMA).to(x), SSIM_WINDOW // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, SSIM_WINDOW).expand(c, 1, 1, SSIM_WINDOW), groups=c)
    return F.conv2d(x, g.view(1, 1, SSIM_WINDOW, 1).expand(c, 1, SSIM_WINDOW, 1), groups=c)


def ssim_map_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM [B,1,H,W] (mean over channels) of images in [-1, 1], computed on [0, 1] values (SSIM
    is not shift-invariant) so it matches :func:`ssim_map` on uint8 images. Identical images give 1."""
    c1, c2 = 0.01**2, 0.03**2
    x, y = (x.float() + 1.0) * 0.5, (y.float() + 1.0) * 0.5
    mu_x, mu_y = _blur(x), _blur(y)
    sxx, syy, sxy = _blur(x * x) - mu_x**2, _blur(y * y) - mu_y**2, _blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=1, keepdim=True)


def psnr_torch(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the PSNR (8-bit scale, as :func:`psnr`) inside ``mask`` [B,1,S,S] of [-1, 1]
    images."""
    import torch

    err = ((image - target) * 127.5).pow(2).mean(1, keepdim=True)
    mse = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1e-6)
    return (10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).mean()


# -- identity ------------------------------------------------------------------------------------
def cosine_similarity(a: Any, b: Any) -> Any:
    """Cosine similarity of embeddings along the last axis, rows broadcast ((D,) and (N, D) alike); a float
    for two vectors, else an array."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    value = (a * b).sum(-1)
    return float(value) if np.ndim(value) == 0 else value


def cosine_distance(a: Any, b: Any) -> Any:
    """1 - :func:`cosine_similarity`: the distance every identity figure and decision uses."""
    return 1.0 - cosine_similarity(a, b)


def same_person(distance: Any, threshold: float) -> Any:
    """The one same-person decision: cosine ``distance`` (a number or an array) strictly under ``threshold``
    (an encoder's, see :func:`pocketswap.faces.identity.same_person_threshold`). A bool, or a bool array."""
    verdict = np.asarray(distance) < threshold
    return bool(verdict) if verdict.ndim == 0 else verdict


__all__ = [
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "cosine_distance",
    "cosine_similarity",
    "percentile",
    "psnr",
    "psnr_torch",
    "same_person",
    "ssim",
    "ssim_map",
    "ssim_map_torch",
]
