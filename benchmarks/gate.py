"""CI latency gate: is each target slower than its frozen baseline artifact, timed side by side now?

`--update` freezes every target as a file beside the baseline JSON (``.onnx``/``.tflite`` files are
copied; ``preset:NAME:onnx`` and ``ref:NAME:onnx`` are exported as they are built today). The gate then
loads the current targets and their frozen copies into one worker process and times them taking turns,
in short rounds, and compares each target with its own frozen copy. A slow spell on a shared machine
lands on both alike, whatever kind of slow it is: ratios against a different calibration network
drifted by 1.25x between quiet and busy spells on a 2-core VM, because small memory-bound students
and a larger network do not slow down alike. Each time is the 10th percentile of all its calls (a
busy neighbour only ever adds time).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pocketswap.benchmarks.latency import bench_interleaved, device_name, target_kind
from pocketswap.core.errors import ConfigError
from pocketswap.core.files import atomic_write_json, file_sha256
from pocketswap.core.jsonio import Obj, read_json

log = logging.getLogger(__name__)

DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")
ESTIMATOR = "p10 of interleaved rounds, against the frozen artifact"


@dataclass
class GateRow:
    target: str
    baseline_ms: float
    current_ms: float

    @property
    def slowdown(self) -> float:
        return self.current_ms / self.baseline_ms

    def regressed(self, max_ratio: float) -> bool:
        return self.slowdown > max_ratio


def frozen_dir(baseline_path: str | Path) -> Path:
    """Where a baseline keeps its frozen artifacts: ``baseline.json`` -> ``baseline/``."""
    path = Path(baseline_path)
    return path.with_name(path.stem)


def _frozen_name(target: str) -> str:
    kind, name = target_kind(target)
    if kind in ("onnx", "tflite"):
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(name).stem)}.{kind}"
    if not name.endswith(":onnx"):
        raise ConfigError(
            f"'{target}': the gate times ONNX and TFLite artifacts (PyTorch eager cannot be frozen as a file); "
            f"use '{target}:onnx'"
        )
    return f"{kind}_{name.removesuffix(':onnx')}.onnx"


def freeze(target: str, dest: Path) -> None:
    """Write `target` as it is now to `dest` (a copy of a file, or the ONNX export of a preset/reference)."""
    kind, name = target_kind(target)
    if kind in ("onnx", "tflite"):
        shutil.copyfile(name, dest)
        return
    from pocketswap.benchmarks.worker import export_onnx, torch_module

    model, inputs, _ = torch_module(kind, name)
    export_onnx(model, inputs, dest)


def baseline_targets(path: str | Path) -> list[str]:
    """The targets a baseline lists (however it was measured: `--update` re-measures them)."""
    return list(_read_baseline(path)["targets"])


def load_baseline(path: str | Path) -> dict:
    """A baseline measured the way this gate measures, with its frozen artifacts intact."""
    baseline = _read_baseline(path)
    redo = f"re-measure it with `pocketswap bench gate --update --baseline {path}`"
    if baseline.get("estimator") != ESTIMATOR:
        raise ConfigError(f"{path}: baseline was measured another way ({baseline.get('estimator')!r}); {redo}")
    for target, entry in baseline["targets"].items():
        frozen = frozen_dir(path) / entry.get("frozen", "")
        if not frozen.is_file() or file_sha256(frozen) != entry.get("sha256"):
            raise ConfigError(f"{path}: the frozen artifact of '{target}' ({frozen}) is missing or changed; {redo}")
    return baseline


def _read_baseline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no baseline; create one with `pocketswap bench gate --update --baseline {path}`")
    entry = Obj({"frozen": str, "sha256": str, "p10_ms": float}, required=("frozen", "sha256"))
    schema = Obj({"targets": Obj(values=entry), "threads": int, "estimator": str}, required=("targets", "threads"))
    return read_json(path, "latency baseline", error=ConfigError, schema=schema)


def update_baseline(path: str | Path, targets: list[str], threads: int = 1, runs: int = 20, rounds: int = 15) -> dict:
    """Freeze `targets` beside the baseline JSON at `path`, time them, and write the baseline."""
    path = Path(path)
    folder = frozen_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    names = {target: _frozen_name(target) for target in targets}
    if len(set(names.values())) < len(names):
        raise ConfigError(f"two targets would be frozen under one file name: {sorted(names.values())}")
    for stale in folder.iterdir():
        if stale.name not in names.values() and stale.suffix in (".onnx", ".tflite"):
            stale.unlink()
    for target, name in names.items():
        freeze(target, folder / name)
        log.info("froze %s -> %s", target, folder / name)
    times = bench_interleaved([str(folder / name) for name in names.values()], threads, runs, rounds)
    result = {
        "device": device_name(),
        "threads": threads,
        "estimator": ESTIMATOR,
        "targets": {
            target: {
                "frozen": name,
                "sha256": file_sha256(folder / name),
                "p10_ms": times[str(folder / name)]["p10_ms"],
            }
            for target, name in names.items()
        },
    }
    atomic_write_json(path, result)
    return result


def run_gate(
    baseline_path: str | Path,
    max_ratio: float = 1.2,
    targets: list[str] | None = None,
    runs: int = 20,
    rounds: int = 15,
) -> tuple[list[GateRow], dict]:
    """Time the baseline's targets (or `targets`, which must all be in it) beside their frozen copies."""
    baseline = load_baseline(baseline_path)
    targets = targets or list(baseline["targets"])
    missing = [t for t in targets if t not in baseline["targets"]]
    if missing:
        raise ConfigError(f"targets not in the baseline {baseline_path}: {', '.join(missing)} (run with --update)")
    frozen = {t: str(frozen_dir(baseline_path) / baseline["targets"][t]["frozen"]) for t in targets}
    times = bench_interleaved([x for t in targets for x in (frozen[t], t)], baseline["threads"], runs, rounds)
    rows = [GateRow(t, times[frozen[t]]["p10_ms"], times[t]["p10_ms"]) for t in targets]
    return rows, times


def format_table(rows: list[GateRow], max_ratio: float) -> str:
    lines = [f"{'target':<40} {'baseline ms':>11} {'now ms':>9} {'slowdown':>9}  verdict (p10, side by side)"]
    for row in rows:
        verdict = "REGRESSED" if row.regressed(max_ratio) else "ok"
        lines.append(
            f"{row.target:<40} {row.baseline_ms:>11.3f} {row.current_ms:>9.3f} {row.slowdown:>8.2f}x  {verdict}"
        )
    return "\n".join(lines)
