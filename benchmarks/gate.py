"""CI latency gate: compare machine-normalised latencies against a stored baseline.

Every target is timed together with a calibration workload (MobileFaceSwap's published student,
random weights, in ONNX Runtime, 1 thread) in the same run, and the gate compares ``target_ms / calibration_ms``
with the baseline's ratio. A CI runner that is uniformly 1.5x slower than the machine that wrote
the baseline therefore does not fail the gate; a model that got 1.5x slower does. Each figure is
the best of several rounds of medians, which filters out a busy neighbour.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pocketswap.benchmarks.latency import LatencyRecord, bench_artifact, device_name
from pocketswap.errors import ConfigError
from pocketswap.files import atomic_write_json

log = logging.getLogger(__name__)

CALIBRATION = "ref:mobilefaceswap:onnx"
DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")


@dataclass
class GateRow:
    target: str
    baseline_ratio: float
    current_ratio: float
    median_ms: float

    @property
    def slowdown(self) -> float:
        return self.current_ratio / self.baseline_ratio

    def regressed(self, max_ratio: float) -> bool:
        return self.slowdown > max_ratio


def best_median(target: str, threads: int, runs: int, rounds: int) -> LatencyRecord:
    """The round with the lowest median (noise only ever adds time)."""
    return min((bench_artifact(target, threads, runs) for _ in range(rounds)), key=lambda r: r.median_ms)


def measure(targets: list[str], threads: int = 1, runs: int = 50, rounds: int = 3) -> dict:
    """Median latency of each target and of the calibration workload, timed in the same run."""
    calibration_before = best_median(CALIBRATION, threads, runs, rounds).median_ms
    records = {target: best_median(target, threads, runs, rounds) for target in targets}
    calibration_after = best_median(CALIBRATION, threads, runs, rounds).median_ms
    calibration_ms = min(calibration_before, calibration_after)
    return {
        "device": device_name(),
        "threads": threads,
        "calibration": {"target": CALIBRATION, "median_ms": calibration_ms},
        "targets": {
            target: {"median_ms": record.median_ms, "ratio": round(record.median_ms / calibration_ms, 5)}
            for target, record in records.items()
        },
    }


def load_baseline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no baseline; create one with `pocketswap bench gate --update --baseline {path}`")
    try:
        baseline = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    for field in ("targets", "threads"):
        if field not in baseline:
            raise ConfigError(f"{path}: baseline is missing the field '{field}'")
    return baseline


def update_baseline(path: str | Path, targets: list[str], threads: int = 1, runs: int = 50, rounds: int = 3) -> dict:
    """Measure `targets` now and write them as the new baseline."""
    result = measure(targets, threads, runs, rounds)
    atomic_write_json(path, result)
    return result


def run_gate(
    baseline_path: str | Path, max_ratio: float = 1.2, targets: list[str] | None = None, runs: int = 50, rounds: int = 3
) -> tuple[list[GateRow], dict]:
    """Measure the baseline's targets (or `targets`, which must all be in the baseline) and compare."""
    baseline = load_baseline(baseline_path)
    targets = targets or list(baseline["targets"])
    missing = [t for t in targets if t not in baseline["targets"]]
    if missing:
        raise ConfigError(f"targets not in the baseline {baseline_path}: {', '.join(missing)} (run with --update)")
    current = measure(targets, baseline["threads"], runs, rounds)
    rows = [
        GateRow(
            target=target,
            baseline_ratio=baseline["targets"][target]["ratio"],
            current_ratio=current["targets"][target]["ratio"],
            median_ms=current["targets"][target]["median_ms"],
        )
        for target in targets
    ]
    return rows, current


def format_table(rows: list[GateRow], max_ratio: float) -> str:
    lines = [f"{'target':<48} {'ms':>9} {'ratio':>8} {'baseline':>9} {'slowdown':>9}  verdict"]
    for row in rows:
        verdict = "REGRESSED" if row.regressed(max_ratio) else "ok"
        lines.append(
            f"{row.target:<48} {row.median_ms:>9.3f} {row.current_ratio:>8.4f} {row.baseline_ratio:>9.4f} "
            f"{row.slowdown:>8.2f}x  {verdict}"
        )
    return "\n".join(lines)
