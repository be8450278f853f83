"""Image similarity, the one definition every stage uses: PSNR and SSIM of numpy images, optionally
weighted by a mask (soft weights in [0, 1]). The training loss's torch SSIM (:mod:`pocketswap.distill.losses`)
uses the same window."""

from __future__ import annotations

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


__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "psnr", "ssim", "ssim_map"]
