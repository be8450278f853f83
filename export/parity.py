"""Parity of an artifact against PyTorch: max/mean abs error and PSNR per output, per-precision tolerances.

onnx2tf's own check can pass when outputs are wrong (it feeds all-ones to non-image inputs), so every
export is compared here on random inputs and on real aligned faces.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from pocketswap.core.manifest import IMAGE_INPUT, IMAGE_OUTPUT, MASK_OUTPUT, STUDENT_OUTPUTS
from pocketswap.core.metrics import psnr
from pocketswap.export.common import ParityError

log = logging.getLogger(__name__)

# Per precision: fp32/fp16 bound the max abs error of every output; int8 bounds the PSNR (dB) of every
# output against fp32 PyTorch (value range of the output as peak). Compressed CoreML weights use the
# "int8" rule with their own floors (see COMPRESSION_MIN_PSNR).
# int8 is judged on real aligned faces only (the calibration distribution): uniform-noise images saturate
# the calibrated activation ranges (measured on a fitted nano: 20-22 dB on noise, 34-44 dB on faces), so
# noise cases are recorded but not gated.
# "fp16-compute" bounds CoreML's FLOAT16 compute as emulated on the CPU (every activation in half precision,
# not only the weights): a trained compositing nano read max abs 0.0114 there (1.5 grey levels on one pixel,
# mean 0.00017, 75 dB) where its fp16-weight ONNX/TFLite artifacts read 0.008.
TOLERANCES: dict[str, dict] = {
    "fp32": {"max_abs": 1e-4},
    "fp16": {"max_abs": 1e-2},
    "fp16-compute": {"max_abs": 2e-2},
    "int8": {"min_psnr_db": 30.0, "applies_to": "real faces"},
}
PEAKS = {IMAGE_OUTPUT: 2.0, MASK_OUTPUT: 1.0}  # value range of each student output (PSNR peak)
REAL_CASE_PREFIXES = ("face:", "centre:")
COMPRESSION_MIN_PSNR = {"int8": 30.0, "palettize6": 30.0, "palettize4": 20.0}


@dataclass
class ParityCase:
    """One input case and one output: errors of the artifact against the reference."""

    case: str
    output: str
    max_abs: float
    mean_abs: float
    psnr_db: float

    def to_dict(self) -> dict[str, float | str]:
        d = asdict(self)
        for k in ("max_abs", "mean_abs"):
            d[k] = float(f"{d[k]:.4g}")
        d["psnr_db"] = round(d["psnr_db"], 2) if math.isfinite(d["psnr_db"]) else 999.0
        return d


def compare(case: str, output: str, reference: np.ndarray, candidate: np.ndarray, peak: float) -> ParityCase:
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate, np.float32)
    if reference.shape != candidate.shape:
        raise ParityError(f"{case}: output '{output}' has shape {candidate.shape}, PyTorch gives {reference.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate)
    if not np.isfinite(candidate).all():
        return ParityCase(case, output, math.inf, math.inf, -math.inf)
    return ParityCase(case, output, float(diff.max()), float(diff.mean()), psnr(reference, candidate, data_range=peak))


def evaluate(
    cases: Sequence[tuple[str, dict[str, np.ndarray]]],
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    candidate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    peaks: dict[str, float],
) -> list[ParityCase]:
    """Run reference and candidate on every case; outputs are matched by name."""
    results = []
    for name, feeds in cases:
        ref = reference(feeds)
        got = candidate(feeds)
        for output, value in ref.items():
            results.append(compare(name, output, value, got[output], peaks.get(output, 1.0)))
    return results


def summarize(results: Sequence[ParityCase], precision: str, reference: str, tolerance: dict | None = None) -> dict:
    """The manifest's ``parity`` record: worst figures, tolerance, pass/fail, every case."""
    tolerance = dict(tolerance if tolerance is not None else TOLERANCES[precision])
    worst_max = max((r.max_abs for r in results), default=0.0)
    worst_psnr = min((r.psnr_db for r in results), default=math.inf)
    real_psnr = min((r.psnr_db for r in results if r.case.startswith(REAL_CASE_PREFIXES)), default=math.inf)
    passed = _passes(results, tolerance)
    return {
        "reference": reference,
        "precision": precision,
        "tolerance": tolerance,
        "passed": passed,
        "max_abs": float(f"{worst_max:.4g}"),
        "mean_abs": float(f"{max((r.mean_abs for r in results), default=0.0):.4g}"),
        "min_psnr_db": round(worst_psnr, 2) if math.isfinite(worst_psnr) else 999.0,
        "min_psnr_db_real_faces": round(real_psnr, 2) if math.isfinite(real_psnr) else 999.0,
        "cases": [r.to_dict() for r in results],
    }


def _passes(results: Sequence[ParityCase], tolerance: dict) -> bool:
    return all(_case_ok(r, tolerance) for r in results)


def _case_ok(r: ParityCase, tolerance: dict) -> bool:
    if tolerance.get("applies_to") == "real faces" and not r.case.startswith(REAL_CASE_PREFIXES):
        return True
    if "max_abs" in tolerance and not r.max_abs <= tolerance["max_abs"]:
        return False
    return not ("min_psnr_db" in tolerance and not r.psnr_db >= tolerance["min_psnr_db"])


def check(record: dict, artifact: str) -> None:
    """Raise ParityError naming the worst case when ``record`` (from :func:`summarize`) failed."""
    if record["passed"]:
        return
    tolerance = record["tolerance"]
    bad = [c for c in record["cases"] if not _case_ok(ParityCase(**c), tolerance)]
    worst = max(bad, key=lambda c: c["max_abs"]) if "max_abs" in tolerance else min(bad, key=lambda c: c["psnr_db"])
    rule = ", ".join(f"{k} {v}" for k, v in tolerance.items() if k != "applies_to")
    if "applies_to" in tolerance:
        rule += f" on {tolerance['applies_to']}"
    raise ParityError(
        f"{artifact}: {record['precision']} parity against {record['reference']} failed on {worst['case']} "
        f"output '{worst['output']}': max abs {worst['max_abs']:.3g}, mean abs {worst['mean_abs']:.3g}, "
        f"PSNR {worst['psnr_db']:.1f} dB (tolerance: {rule})"
    )


def torch_runner(module: torch.nn.Module) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """feeds {IMAGE_INPUT: NCHW array} -> the named student outputs of a PyTorch module."""
    import torch

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(torch.from_numpy(feeds[IMAGE_INPUT])), strict=True)
        }

    return run
