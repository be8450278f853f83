"""Real on-device latency where hardware is attached; otherwise a skip record saying why.

- Android: pushes a `.tflite` and the user's LiteRT `benchmark_model` binary over adb and runs it
  with XNNPACK on the requested threads (we do not ship Android binaries).
- iOS/macOS: runs an `.mlpackage` with coremltools `predict` on a Mac (CoreML cannot run on Linux).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketswap.core.metrics import percentile


@dataclass
class DeviceRecord:
    target: str
    artifact: str
    status: str  # "measured" | "skipped"
    reason: str = ""
    device: str = ""
    threads: int = 1
    latency_ms: float | None = None
    statistic: str = ""  # "mean" (benchmark_model) or "median"

    def to_dict(self) -> dict:
        return asdict(self)


def android_benchmark(artifact: Path, binary: Path | None, threads: int = 1, runs: int = 50) -> DeviceRecord:
    """LiteRT's benchmark_model over adb; skipped when adb, a device or the binary is missing."""
    record = DeviceRecord(target="android", artifact=str(artifact), status="skipped", threads=threads)
    adb = shutil.which("adb")
    if adb is None:
        record.reason = "adb not found on PATH"
        return record
    devices = [
        line.split()[0]
        for line in subprocess.run([adb, "devices"], capture_output=True, text=True).stdout.splitlines()[1:]
        if line.strip().endswith("device")
    ]
    if not devices:
        record.reason = "no Android device attached (adb devices lists none)"
        return record
    if binary is None or not binary.is_file():
        record.reason = "pass --android-benchmark-binary PATH (LiteRT's benchmark_model for the device's ABI)"
        return record
    remote = "/data/local/tmp"
    subprocess.run([adb, "push", str(binary), f"{remote}/benchmark_model"], check=True, capture_output=True)
    subprocess.run([adb, "push", str(artifact), f"{remote}/{artifact.name}"], check=True, capture_output=True)
    subprocess.run([adb, "shell", "chmod", "+x", f"{remote}/benchmark_model"], check=True)
    out = subprocess.run(
        [adb, "shell", f"{remote}/benchmark_model", f"--graph={remote}/{artifact.name}",
         f"--num_threads={threads}", "--use_xnnpack=true", f"--num_runs={runs}"],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    model = subprocess.run([adb, "shell", "getprop", "ro.product.model"], capture_output=True, text=True).stdout
    match = re.search(r"avg=([\d.]+)", out.split("Inference timings in us:")[-1])
    if not match:
        record.reason = "benchmark_model printed no inference timings"
        return record
    record.status, record.device = "measured", model.strip()
    record.latency_ms, record.statistic = round(float(match.group(1)) / 1e3, 3), "mean"  # reported in us
    return record


def coreml_benchmark(artifact: Path, runs: int = 50) -> DeviceRecord:
    """coremltools `predict` on macOS; skipped elsewhere."""
    record = DeviceRecord(target="coreml", artifact=str(artifact), status="skipped")
    if platform.system() != "Darwin":
        record.reason = f"CoreML runs only on macOS/iOS (this is {platform.system()})"
        return record
    import coremltools as ct

    model = ct.models.MLModel(str(artifact))
    spec = model.get_spec()
    feeds = {}
    for feature in spec.description.input:
        shape = list(feature.type.multiArrayType.shape) or [1, 3, 224, 224]
        feeds[feature.name] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(5):
        model.predict(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    record.status, record.device = "measured", platform.machine()
    record.latency_ms, record.statistic = percentile(times, 50, 3), "median"
    return record
