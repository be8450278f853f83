"""Latency of artifacts the way a phone app runs them, one fresh process per measurement.

- ``.tflite``: LiteRT's own benchmark tool (`ai_edge_litert.tools.benchmark_litert_model`) on
  the CPU accelerator (XNNPACK); it also says whether XNNPACK took every op.
- ``.onnx``: ONNX Runtime's CPU provider with `intra_op_num_threads`.
- PyTorch eager: a checkpoint (identity baked) or a reference network, timed in-process.

Every measurement runs in its own child process, so init time is a cold start and peak memory
(the child's max RSS from `wait4`) is attributable to that artifact alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketswap.core.checkpoint import is_checkpoint_path
from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import read_json
from pocketswap.core.metrics import percentile


@dataclass
class LatencyRecord:
    """One (artifact, runtime, threads) measurement. Times in milliseconds."""

    artifact: str
    runtime: str
    threads: int
    runs: int
    median_ms: float
    p5_ms: float
    p95_ms: float
    init_ms: float
    size_mb: float
    peak_memory_mb: float
    fully_delegated: bool | None = None
    precision: str | None = None
    preset: str | None = None
    device: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def device_name() -> str:
    """A short description of this CPU (model name and core count)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


def _artifact_metadata(path: Path) -> dict:
    """Precision and preset from the artifact's manifest (``<artifact>.json``), when it has one; a manifest that
    is there but unreadable or lying is one ManifestError (the record would carry its figures)."""
    from pocketswap.core.manifest import manifest_path, read_manifest

    if not manifest_path(path).exists():
        return {}
    manifest = read_manifest(path)
    return {"precision": manifest.precision, "preset": manifest.preset}


def bench_tflite(path: Path, threads: int, runs: int) -> LatencyRecord:
    with tempfile.TemporaryDirectory() as tmp:
        result_json = Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "pocketswap.benchmarks.worker", "tflite", str(path),
            "--threads", str(threads), "--runs", str(runs), "--result-json", str(result_json),
        ]  # fmt: skip
        stdout = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if stdout.returncode != 0 or not result_json.exists():
            tail = (stdout.stderr or stdout.stdout).strip().splitlines()[-3:]
            raise PocketswapError(f"LiteRT benchmark of {path} failed: {' | '.join(tail)}")
        result = read_json(result_json, "LiteRT benchmark result", error=PocketswapError)
    latency = result["latency"]
    return LatencyRecord(
        artifact=str(path),
        runtime="litert-xnnpack",
        threads=threads,
        runs=latency["num_runs"],
        median_ms=latency["median_ms"],
        p5_ms=latency["p5_ms"],
        p95_ms=latency["p95_ms"],
        init_ms=latency["init_ms"],
        size_mb=round(path.stat().st_size / 2**20, 3),
        peak_memory_mb=result["peak_memory_mb"],
        fully_delegated=bool(result.get("fully_accelerated")),
        device=device_name(),
        **_artifact_metadata(path),
    )


def bench_in_worker(kind: str, target: str, threads: int, runs: int, runtime: str) -> LatencyRecord:
    """Time an ONNX model, a checkpoint or a reference network in a fresh worker process."""
    cmd = [
        sys.executable, "-m", "pocketswap.benchmarks.worker", kind, target,
        "--threads", str(threads), "--runs", str(runs),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PocketswapError(f"{runtime} benchmark of {target} failed: {' | '.join(tail)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    path = Path(target)
    metadata = _artifact_metadata(path) if path.exists() else {}
    return LatencyRecord(
        artifact=target,
        runtime=runtime,
        threads=threads,
        runs=runs,
        device=device_name(),
        **{**metadata, **result},
    )


def check_model_file(path: Path) -> None:
    """Open a .tflite / .onnx once in this process, so a corrupt, truncated or foreign file is one
    clear line before any benchmark runs (LiteRT's tool would only print log lines)."""
    from pocketswap.core.runners import onnx_session, tflite_interpreter

    if path.suffix == ".tflite":
        tflite_interpreter(path)
    else:
        onnx_session(path, what=f"{path.suffix} model", quiet=True)


def target_kind(target: str | Path) -> tuple[str, str]:
    """The worker kind and its argument for a target: ``("preset", "nano:onnx")``, ``("onnx", PATH)``..."""
    target = str(target)
    if target.startswith(("ref:", "preset:")):
        kind, _, name = target.partition(":")
        return {"ref": "reference", "preset": "preset"}[kind], name
    path = Path(target)
    if not path.exists():
        raise PocketswapError(f"{path}: no such artifact")
    if path.suffix in (".tflite", ".onnx"):
        return path.suffix[1:], target
    if is_checkpoint_path(path):
        return "checkpoint", target
    raise PocketswapError(f"{path}: unsupported artifact type (expected .tflite, .onnx or a checkpoint)")


def bench_artifact(path: str | Path, threads: int, runs: int = 100) -> LatencyRecord:
    """Benchmark one artifact on `threads` threads. Besides files: ``ref:simswap`` / ``ref:mobilefaceswap``
    (reference networks) and ``preset:nano`` / ``preset:nano:onnx`` (random-weight baked students)."""
    kind, name = target_kind(path)
    if kind in ("tflite", "onnx"):
        check_model_file(Path(name))
        _artifact_metadata(Path(name))  # a lying manifest is one line before any timing
    if kind == "tflite":
        return bench_tflite(Path(name), threads, runs)
    runtime = "onnxruntime" if kind == "onnx" or name.endswith(":onnx") else "torch-eager"
    record = bench_in_worker(kind, name, threads, runs, runtime)
    record.artifact = str(path)
    return record


def bench_interleaved(targets: list[str], threads: int = 1, runs: int = 20, rounds: int = 15) -> dict[str, dict]:
    """Time `targets` in one worker, taking turns: `rounds` rounds of `runs` calls each.

    Returns ``{target: {"p10_ms", "median_ms", "runs"}}`` over all calls. Taking turns spreads a slow
    spell of a shared machine over every target, so ratios between targets stay put where separate
    timings drift by 1.5x (measured on a 2-core VM); the pooled 10th percentile ignores the calls a
    neighbour slowed down.
    """
    for target in targets:
        kind, name = target_kind(target)  # a clear error for a missing or unsupported target, before the worker starts
        if kind in ("tflite", "onnx"):
            check_model_file(Path(name))
    cmd = [
        sys.executable, "-m", "pocketswap.benchmarks.worker", "interleaved", *targets,
        "--threads", str(threads), "--runs", str(runs), "--rounds", str(rounds),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PocketswapError(f"interleaved benchmark of {', '.join(targets)} failed: {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(times_ms: np.ndarray) -> dict:
    return {"median_ms": percentile(times_ms, 50), "p5_ms": percentile(times_ms, 5), "p95_ms": percentile(times_ms, 95)}


def time_callable(fn, runs: int, warmup: int = 5) -> np.ndarray:
    """Per-call wall time in ms of `fn()` over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1e3
    return times
