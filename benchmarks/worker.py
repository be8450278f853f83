"""Child process for `pocketswap.benchmarks.latency`: time one model, print one JSON line.

Run as ``python -m pocketswap.benchmarks.worker KIND TARGET --threads N --runs R``; KIND is
``tflite`` (LiteRT's benchmark tool, in-process), ``onnx``, ``checkpoint`` or ``reference``.
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import sys
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB


def _tflite(target: str, threads: int, runs: int, result_json: str) -> None:
    argv = sys.argv
    sys.argv = [
        "benchmark_litert_model", "--model", target, "--num_threads", str(threads),
        "--num_runs", str(runs), "--result_json", result_json,
    ]  # fmt: skip
    try:
        runpy.run_module("ai_edge_litert.tools.benchmark_litert_model", run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = argv
    result = json.loads(Path(result_json).read_text())
    result["peak_memory_mb"] = _peak_rss_mb()
    Path(result_json).write_text(json.dumps(result))


def _timed(fn, init_ms: float, runs: int, size_mb: float, extra: dict | None = None) -> dict:
    from pocketswap.benchmarks.latency import summarise, time_callable

    times = time_callable(fn, runs)
    return {**summarise(times), "init_ms": round(init_ms, 2), "size_mb": size_mb, **(extra or {})}


def _onnx(target: str, threads: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    start = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(target, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(
            np.float16 if "float16" in i.type else np.float32
        )
        for i in session.get_inputs()
    }
    init_ms = (time.perf_counter() - start) * 1e3
    size_mb = round(Path(target).stat().st_size / 2**20, 3)
    return _timed(lambda: session.run(None, feeds), init_ms, runs, size_mb)


def _torch(model, inputs, init_ms: float, threads: int, runs: int, extra: dict | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    size_mb = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 3)

    def run() -> None:
        with torch.inference_mode():
            model(*inputs)

    return _timed(run, init_ms, runs, size_mb, extra)


def _checkpoint(target: str, threads: int, runs: int) -> dict:
    import torch

    from pocketswap.checkpoint import load_checkpoint

    start = time.perf_counter()
    model, config, _ = load_checkpoint(target)
    embedding = torch.nn.functional.normalize(torch.randn(1, config.embed_dim), dim=1)
    baked = model.bake(embedding).eval()
    image = torch.rand(1, 3, config.size, config.size) * 2 - 1
    init_ms = (time.perf_counter() - start) * 1e3
    return _torch(baked, (image,), init_ms, threads, runs, {"preset": config.name, "precision": "fp32"})


def _preset(target: str, threads: int, runs: int) -> dict:
    """A random-weight student of a preset (seed 0), identity baked: ``nano`` (PyTorch) or ``nano:onnx``."""
    import tempfile

    import torch

    from pocketswap.student import StudentNet, get_preset

    name, _, runtime = target.partition(":")
    start = time.perf_counter()
    config = get_preset(name)
    torch.manual_seed(0)
    embedding = torch.nn.functional.normalize(torch.randn(1, config.embed_dim), dim=1)
    baked = StudentNet(config).eval().bake(embedding).eval()
    image = torch.rand(1, 3, config.size, config.size) * 2 - 1
    extra = {"preset": name, "precision": "fp32"}
    if runtime == "onnx":
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/{name}.onnx"
            torch.onnx.export(baked, (image,), path, input_names=["image"], dynamo=False)
            return {**_onnx(path, threads, runs), **extra}
    init_ms = (time.perf_counter() - start) * 1e3
    return _torch(baked, (image,), init_ms, threads, runs, extra)


def _reference(target: str, threads: int, runs: int) -> dict:
    """A reference network with random weights: ``mobilefaceswap`` (PyTorch) or ``mobilefaceswap:onnx``."""
    import tempfile

    import torch

    from pocketswap.benchmarks import references

    name, _, runtime = target.partition(":")
    builders = {"simswap": references.simswap_size_generator, "mobilefaceswap": references.mobilefaceswap_student}
    if name not in builders:
        raise SystemExit(f"unknown reference '{name}'; choose one of {sorted(builders)}")
    start = time.perf_counter()
    model, inputs = builders[name]()
    extra = {"precision": "fp32", "preset": name}
    if runtime == "onnx":
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/{name}.onnx"
            torch.onnx.export(model, inputs, path, dynamo=False)
            return {**_onnx(path, threads, runs), **extra}
    init_ms = (time.perf_counter() - start) * 1e3
    return _torch(model, inputs, init_ms, threads, runs, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["tflite", "onnx", "checkpoint", "reference", "preset"])
    parser.add_argument("target")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--result-json")
    args = parser.parse_args()
    if args.kind == "tflite":
        _tflite(args.target, args.threads, args.runs, args.result_json)
        return
    run = {"onnx": _onnx, "checkpoint": _checkpoint, "reference": _reference, "preset": _preset}[args.kind]
    result = run(args.target, args.threads, args.runs)
    result["peak_memory_mb"] = _peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
