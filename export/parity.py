"""Parity of an artifact against PyTorch: max/mean abs error and PSNR per output, per-precision tolerances.

onnx2tf's own check can pass when outputs are wrong (it feeds all-ones to non-image inputs), so every
export is compared here on random inputs and on real aligned faces (the bundled samples, :mod:`.data`).

fp16 bounds follow what fp16 can represent. fp16 keeps 11 significant bits: every weight (and, under fp16
compute, every activation) is stored with a relative error of at most u = 2^-11 = 4.9e-4. An output's error
sums n such roundings on its way through the network: n = depth (its weighted layers, :func:`depth`) for
fp16 weights computed in fp32 (the fp16 TFLite, ONNX and CoreML-weight artifacts) and 2 x depth for fp16
compute (CoreML FLOAT16, emulated on the CPU). At the output's scale S (its largest |value| on the parity
cases), per output and per case, random inputs and faces alike:

    mean abs <= sqrt(n) * u * S    (independent roundings add like a random walk)
    max abs  <= 4 * n * u * S      (the worst pixel: every rounding aligned, amplified by the layers after)

For the baked nano (depth 21) that is mean abs 2.2e-3 and max abs 0.040 on the swapped crop (S ~ 1), and
the mask's in proportion to its own peak. The manifest's parity record keeps the bounds as numbers per
output (``tolerance.per_output``) with the depth and ``bound_used``: the largest share of a bound any case
used. The fixed bounds this replaced (max abs 1e-2 for fp16 weights, 2e-2 for fp16 compute, whatever the
network) left 1.8x and 1.5x over the worst healthy figures below, so a student a little less lucky failed
them, while a fault that spreads thinly passed (one weight tensor of the head 1% off: max abs 9.8e-3).

Measured (baked with sample:grace_hopper; fp16 weights: the TFLite, ONNX and CoreML-weight artifacts, which
agree to 3 significant digits with PyTorch run on fp16-rounded weights; worst case over 2 noise inputs and
3 faces; share of the bound used):

    student (depth)                              fp16 weights: max abs, mean abs   fp16 compute
    nano fitted 40 steps, the tests' (21)        1.7e-3, 1.8e-4   4%              2.8e-3, 2.4e-4   6%
    nano distilled 300 steps, seed 0 (21)        5.7e-3, 2.3e-4  19%              1.4e-2, 3.5e-4  23%
    nano distilled 200 steps, seed 2 (21)        3.4e-3, 1.9e-4   9%              5.8e-3, 3.1e-4  10%
    compositing nano, 200 steps, seed 3 (34)     4.9e-3, 2.1e-4   8%              8.2e-3, 2.8e-4   8%
    compositing nano, quickstart 800 steps (34)  2.7e-3, 1.2e-4   4%              2.9e-3, 1.7e-4   4%

Broken conversions (fp16 weights plus one fault; fp16's own rounding moves every weight by up to 0.05%),
share of the bound on the 300-step / 200-step nano: one weight tensor 1% off fails in 6 of 6 / 5 of 6
layers tried (1.1-3.3x), 2% off in every one (1.6-7x); the largest weight of a layer sign-flipped 1.7-123x
(one 1x1 conv: 0.94x on the 200-step nano); a zeroed bias 26-130x; bilinear upsampling as align_corners
or nearest 41-57x; the mask's sigmoid as a hard sigmoid 21-22x; ReLU as ReLU6 32-39x. The compositing
nanos copy most of their output from their inputs, so weight faults move them less (a 2% tensor: 0.2-2.1x,
failing in 3 of 12 layers tried), while their wrong ops and zeroed biases still fail (2.2-109x).
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

U16 = 2.0**-11  # fp16's unit roundoff: a value v is stored as v(1 + d), |d| <= 2^-11 (11-bit significand)

# Per precision: fp32 bounds the max abs error of every output; int8 bounds the PSNR (dB) of every output
# against fp32 PyTorch (value range of the output as peak). Compressed CoreML weights use the "int8" rule with
# their own floors (see COMPRESSION_MIN_PSNR).
# int8 is judged on real aligned faces only (the calibration distribution): uniform-noise images saturate
# the calibrated activation ranges (measured on a fitted nano: 20-22 dB on noise, 34-44 dB on faces), so
# noise cases are recorded but not gated.
# fp16 ("fp16": fp16 weights; "fp16-compute": CoreML's FLOAT16 compute as emulated on the CPU, every
# activation in half precision too) follows what fp16 can represent at each output's range: see
# :func:`fp16_tolerance`. Random inputs and real faces are both gated.
TOLERANCES: dict[str, dict] = {
    "fp32": {"max_abs": 1e-4},
    "fp16": {
        "unit_roundoff": U16,
        "roundings_per_layer": 1,
        "mean_abs_per_sqrt_rounding": 1.0,
        "max_abs_per_rounding": 4.0,
    },
    "fp16-compute": {
        "unit_roundoff": U16,
        "roundings_per_layer": 2,
        "mean_abs_per_sqrt_rounding": 1.0,
        "max_abs_per_rounding": 4.0,
    },
    "int8": {"min_psnr_db": 30.0, "applies_to": "real faces"},
}
PEAKS = {IMAGE_OUTPUT: 2.0, MASK_OUTPUT: 1.0}  # value range of each student output (PSNR peak)
REAL_CASE_PREFIXES = ("face:", "centre:")
COMPRESSION_MIN_PSNR = {"int8": 30.0, "palettize6": 30.0, "palettize4": 20.0}
WEIGHTED_LAYERS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Linear")  # what depth() counts


@dataclass
class ParityCase:
    """One input case and one output: errors of the artifact against the reference, and ``scale``: the
    largest magnitude the reference output takes (what fp16's roundings are relative to)."""

    case: str
    output: str
    max_abs: float
    mean_abs: float
    psnr_db: float
    scale: float = math.nan

    def to_dict(self) -> dict[str, float | str]:
        d = asdict(self)
        for k in ("max_abs", "mean_abs", "scale"):
            d[k] = float(f"{d[k]:.4g}")
        d["psnr_db"] = round(d["psnr_db"], 2) if math.isfinite(d["psnr_db"]) else 999.0
        return d


def compare(case: str, output: str, reference: np.ndarray, candidate: np.ndarray, peak: float) -> ParityCase:
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate, np.float32)
    if reference.shape != candidate.shape:
        raise ParityError(f"{case}: output '{output}' has shape {candidate.shape}, PyTorch gives {reference.shape}")
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = np.abs(reference.astype(np.float64) - candidate)
    if not np.isfinite(candidate).all():
        return ParityCase(case, output, math.inf, math.inf, -math.inf, scale)
    return ParityCase(
        case, output, float(diff.max()), float(diff.mean()), psnr(reference, candidate, data_range=peak), scale
    )


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


def depth(module: torch.nn.Module) -> int:
    """The number of weighted layers (convolutions, linear layers) of ``module``: the rounding steps its
    fp16 error accumulates over (an upper bound on the longest path through it). A dynamic-identity
    student's depthwise convolutions take their kernels as an input and are not modules: 17 of its 21."""
    return max(1, sum(type(m).__name__ in WEIGHTED_LAYERS for m in module.modules()))


def fp16_tolerance(rule: dict, depth: int, scales: dict[str, float]) -> dict:
    """``rule`` (``TOLERANCES["fp16"]`` or ``["fp16-compute"]``) as absolute bounds per output.

    fp16 stores each weight (and, under fp16 compute, each activation as well) with a relative error of at
    most u = 2^-11. An output's error is the sum of the roundings on its way through the network: n =
    ``roundings_per_layer`` x ``depth`` of them (1 per weighted layer for fp16 weights, 2 for fp16 compute),
    each at most u times the magnitude it acts on. At the scale of the output, S = the largest |value| it
    takes on the parity cases (1 for a face's swapped crop in [-1, 1], the mask's peak for the mask):

    - mean abs error <= a * sqrt(n) * u * S: independent roundings add like a random walk (the spread of n of
      them is sqrt(n) times one); a = ``mean_abs_per_sqrt_rounding``;
    - max abs error <= b * n * u * S: the worst pixel, all n roundings aligned, each amplified by the layers
      after it; b = ``max_abs_per_rounding`` (> 1, from measurement: see the module docstring).

    A healthy conversion sits well inside both; a broken one (a wrong op, a lost bias, a weight tensor a few
    percent off) leaves the mean bound, a local break (a border, one channel, one weight) the max bound.
    """
    u, n = rule["unit_roundoff"], rule["roundings_per_layer"] * depth
    per_output = {
        name: {
            "scale": float(f"{r:.4g}"),
            "mean_abs": float(f"{rule['mean_abs_per_sqrt_rounding'] * math.sqrt(n) * u * r:.4g}"),
            "max_abs": float(f"{rule['max_abs_per_rounding'] * n * u * r:.4g}"),
        }
        for name, r in scales.items()
    }
    return {**rule, "depth": int(depth), "roundings": int(n), "per_output": per_output}


def summarize(
    results: Sequence[ParityCase],
    precision: str,
    reference: str,
    tolerance: dict | None = None,
    depth: int | None = None,
) -> dict:
    """The manifest's ``parity`` record: worst figures, tolerance, pass/fail, every case. An fp16 rule
    (``unit_roundoff`` in the tolerance) needs the network's ``depth`` (:func:`depth`) and is recorded as
    absolute bounds per output; ``bound_used`` is then the largest share of a bound any case used."""
    tolerance = dict(tolerance if tolerance is not None else TOLERANCES[precision])
    if "unit_roundoff" in tolerance and "per_output" not in tolerance:
        if depth is None:
            raise ValueError(f"the {precision} parity rule scales with the network's depth: pass depth=")
        scales: dict[str, float] = {}
        for r in results:
            scales[r.output] = max(scales.get(r.output, 0.0), r.scale if math.isfinite(r.scale) else 0.0)
        tolerance = fp16_tolerance(tolerance, depth, scales)
    worst_max = max((r.max_abs for r in results), default=0.0)
    worst_psnr = min((r.psnr_db for r in results), default=math.inf)
    real_psnr = min((r.psnr_db for r in results if r.case.startswith(REAL_CASE_PREFIXES)), default=math.inf)
    passed = _passes(results, tolerance)
    record = {
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
    if "per_output" in tolerance:
        used = max((_bound_used(r, tolerance) for r in results), default=0.0)
        record["bound_used"] = float(f"{used:.3g}") if math.isfinite(used) else 999.0
    return record


def _passes(results: Sequence[ParityCase], tolerance: dict) -> bool:
    return all(_case_ok(r, tolerance) for r in results)


def _bound_used(r: ParityCase, tolerance: dict) -> float:
    """The largest share of its output's fp16 bounds (mean abs, max abs) that case ``r`` used (> 1: failed)."""
    bound = tolerance["per_output"].get(r.output)
    if bound is None:
        return math.inf
    return max(_share(r.mean_abs, bound["mean_abs"]), _share(r.max_abs, bound["max_abs"]))


def _share(error: float, bound: float) -> float:
    """``error / bound``; an output that is 0 everywhere (bound 0) is represented exactly, so any error fails."""
    return error / bound if bound > 0 else (0.0 if error == 0 else math.inf)


def _case_ok(r: ParityCase, tolerance: dict) -> bool:
    if tolerance.get("applies_to") == "real faces" and not r.case.startswith(REAL_CASE_PREFIXES):
        return True
    if "per_output" in tolerance:
        return _bound_used(r, tolerance) <= 1.0
    if "max_abs" in tolerance and not r.max_abs <= tolerance["max_abs"]:
        return False
    return not ("min_psnr_db" in tolerance and not r.psnr_db >= tolerance["min_psnr_db"])


def check(record: dict, artifact: str) -> None:
    """Raise ParityError naming the worst case when ``record`` (from :func:`summarize`) failed."""
    if record["passed"]:
        return
    tolerance = record["tolerance"]
    bad = [ParityCase(**c) for c in record["cases"] if not _case_ok(ParityCase(**c), tolerance)]
    if "per_output" in tolerance:
        worst = max(bad, key=lambda c: _bound_used(c, tolerance))
        bound = tolerance["per_output"].get(worst.output, {})
        n = tolerance["roundings"]
        rule = (
            f"tolerance for '{worst.output}' (scale {bound.get('scale', math.nan):.3g}, {n} roundings of u = 2^-11 "
            f"over {tolerance['depth']} layers): mean abs {bound.get('mean_abs', math.nan):.3g} = "
            f"{tolerance['mean_abs_per_sqrt_rounding']:g}*sqrt({n})*u*scale, max abs "
            f"{bound.get('max_abs', math.nan):.3g} = {tolerance['max_abs_per_rounding']:g}*{n}*u*scale"
        )
    else:
        worst = max(bad, key=lambda c: c.max_abs) if "max_abs" in tolerance else min(bad, key=lambda c: c.psnr_db)
        rule = "tolerance: " + ", ".join(f"{k} {v}" for k, v in tolerance.items() if k != "applies_to")
        if "applies_to" in tolerance:
            rule += f" on {tolerance['applies_to']}"
    raise ParityError(
        f"{artifact}: {record['precision']} parity against {record['reference']} failed on {worst.case} "
        f"output '{worst.output}': max abs {worst.max_abs:.3g}, mean abs {worst.mean_abs:.3g}, "
        f"PSNR {worst.psnr_db:.1f} dB ({rule})"
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
