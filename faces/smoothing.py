"""One-Euro filter (Casiez et al., CHI 2012) for landmark jitter: smooth when still, responsive when moving."""

from __future__ import annotations

import math

import numpy as np

# The live pipeline's video defaults (the artifact manifest's ``swap_spec.video`` records them): detect every
# DETECT_EVERY frames and track the landmarks (FaceMesh from the previous landmarks' ROI) in between, then
# smooth the 468 landmarks with a One-Euro filter on the frame's time.
DETECT_EVERY = 5
MIN_CUTOFF = 1.5  # Hz
BETA = 0.02
DERIVATIVE_CUTOFF = 1.0  # Hz


def _alpha(cutoff_hz: float, dt: float) -> float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters an array signal (e.g. 468x3 landmarks) sample by sample, vectorised over elements.

    min_cutoff: Hz, lower = smoother at rest. beta: speed coefficient, higher = less lag when
    moving. Both are per the paper; positions are in pixels and time in seconds."""

    def __init__(
        self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, derivative_cutoff: float = DERIVATIVE_CUTOFF
    ) -> None:
        self.min_cutoff, self.beta, self.derivative_cutoff = min_cutoff, beta, derivative_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self._x is None or self._t is None or t <= self._t or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(self.derivative_cutoff, dt)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        tau = 1.0 / (2.0 * np.pi * cutoff)
        a = 1.0 / (1.0 + tau / dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = t
        return self._x.copy()
