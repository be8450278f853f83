"""Child process for `pocketswap.benchmarks.latency`: time models, print one JSON line.

``python -m pocketswap.benchmarks.worker KIND TARGET --threads N --runs R`` times one model; KIND is
``tflite`` (LiteRT's benchmark tool, in-process), ``onnx``, ``checkpoint``, ``reference`` or ``preset``.
``python -m pocketswap.benchmarks.worker interleaved TARGET... --runs R --rounds K`` loads every target
(as named for ``bench latency``) and times them in turn, K rounds of R calls each, so a slow spell on a
shared machine lands on all of them alike; it reports each target's pooled p10 and median.
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pocketswap.core.metrics import percentile


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB


@dataclass
class Loaded:
    """A model ready to time: one call of ``run`` is one inference."""

    run: Callable[[], object]
    init_ms: float
    size_mb: float
    extra: dict = field(default_factory=dict)


def _tflite_tool(target: str, threads: int, runs: int, result_json: str) -> None:
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
    from pocketswap.core.jsonio import read_json

    result = read_json(result_json, "LiteRT benchmark result")
    result["peak_memory_mb"] = _peak_rss_mb()
    Path(result_json).write_text(json.dumps(result))


def _load_tflite(target: str, threads: int) -> Loaded:
    import numpy as np

    from pocketswap.core.runners import tflite_interpreter

    start = time.perf_counter()
    interpreter = tflite_interpreter(target, threads)
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], rng.uniform(-1, 1, detail["shape"]).astype(detail["dtype"]))
    init_ms = (time.perf_counter() - start) * 1e3
    return Loaded(interpreter.invoke, init_ms, round(Path(target).stat().st_size / 2**20, 3))


def _load_onnx(target: str, threads: int) -> Loaded:
    import numpy as np

    from pocketswap.core.runners import onnx_session

    start = time.perf_counter()
    session = onnx_session(target, threads)
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(
            np.float16 if "float16" in i.type else np.float32
        )
        for i in session.get_inputs()
    }
    init_ms = (time.perf_counter() - start) * 1e3
    return Loaded(lambda: session.run(None, feeds), init_ms, round(Path(target).stat().st_size / 2**20, 3))


def torch_module(kind: str, name: str) -> tuple[object, tuple, dict]:
    """(module, example inputs, record fields) of a ``preset`` (random-weight student of a preset, seed 0,
    identity baked) or a ``reference`` network (random weights); ``name`` may end in ``:onnx``."""
    import torch

    from pocketswap.benchmarks import references
    from pocketswap.student import StudentNet, get_preset

    name = name.removesuffix(":onnx")
    if kind == "preset":
        config = get_preset(name)
        torch.manual_seed(0)
        embedding = torch.nn.functional.normalize(torch.randn(1, config.embed_dim), dim=1)
        baked = StudentNet(config).eval().bake(embedding).eval()
        image = torch.rand(1, 3, config.size, config.size) * 2 - 1
        return baked, (image,), {"preset": name, "precision": "fp32"}
    builders = {"simswap": references.simswap_size_generator, "mobilefaceswap": references.mobilefaceswap_student}
    if name not in builders:
        raise SystemExit(f"unknown reference '{name}'; choose one of {sorted(builders)}")
    model, inputs = builders[name]()
    return model, inputs, {"precision": "fp32", "preset": name}


def export_onnx(model, inputs: tuple, path: str | Path) -> None:
    """The ONNX export every ``:onnx`` target is timed as (legacy exporter, as the artifacts use)."""
    import torch

    torch.onnx.export(model, inputs, str(path), dynamo=False)


def _load_torch_target(kind: str, name: str, threads: int) -> Loaded:
    """PyTorch eager, or (``name`` ending in ``:onnx``) the same module in ONNX Runtime."""
    import torch

    start = time.perf_counter()
    model, inputs, extra = torch_module(kind, name)
    if name.endswith(":onnx"):
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, inputs, f"{tmp}/model.onnx")
            return replace(_load_onnx(f"{tmp}/model.onnx", threads), extra=extra)
    torch.set_num_threads(threads)
    size_mb = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 3)

    def run() -> None:
        with torch.inference_mode():
            model(*inputs)

    return Loaded(run, (time.perf_counter() - start) * 1e3, size_mb, extra)


def _load_checkpoint(target: str, threads: int) -> Loaded:
    import torch

    from pocketswap.core.checkpoint import resolve_checkpoint
    from pocketswap.student.checkpoint import load_checkpoint

    start = time.perf_counter()
    model, config, _ = load_checkpoint(resolve_checkpoint(target))
    embedding = torch.nn.functional.normalize(torch.randn(1, config.embed_dim), dim=1)
    image = torch.rand(1, 3, config.size, config.size) * 2 - 1
    # a spatial-identity student also bakes the identity's aligned crop (any crop times the same); a
    # warped-identity student reads one per frame as its second input
    baked = model.bake(embedding, image if config.identity_encoder else None).eval()
    inputs = (image, image) if config.identity_warp else (image,)
    torch.set_num_threads(threads)

    def run() -> None:
        with torch.inference_mode():
            baked(*inputs)

    size_mb = round(sum(p.numel() * p.element_size() for p in baked.parameters()) / 2**20, 3)
    return Loaded(run, (time.perf_counter() - start) * 1e3, size_mb, {"preset": config.name, "precision": "fp32"})


LOADERS = {
    "tflite": _load_tflite,
    "onnx": _load_onnx,
    "checkpoint": _load_checkpoint,
    "reference": lambda name, threads: _load_torch_target("reference", name, threads),
    "preset": lambda name, threads: _load_torch_target("preset", name, threads),
}


def load_target(target: str, threads: int) -> Loaded:
    """Load a target named as for ``bench latency``: a file, a checkpoint, ``ref:NAME[:onnx]``, ``preset:NAME[:onnx]``."""
    from pocketswap.benchmarks.latency import target_kind

    kind, name = target_kind(target)
    return LOADERS[kind](name, threads)


def _single(kind: str, target: str, threads: int, runs: int) -> dict:
    from pocketswap.benchmarks.latency import summarise, time_callable

    loaded = LOADERS[kind](target, threads)
    times = time_callable(loaded.run, runs)
    return {**summarise(times), "init_ms": round(loaded.init_ms, 2), "size_mb": loaded.size_mb, **loaded.extra}


def _interleaved(targets: list[str], threads: int, runs: int, rounds: int) -> dict:
    import numpy as np

    from pocketswap.benchmarks.latency import time_callable

    models = {target: load_target(target, threads) for target in targets}
    times: dict[str, list] = {target: [] for target in targets}
    for round_index in range(rounds):
        for target, loaded in models.items():
            times[target].append(time_callable(loaded.run, runs, warmup=5 if round_index == 0 else 1))
    pooled = {target: np.concatenate(t) for target, t in times.items()}
    return {
        target: {
            "p10_ms": percentile(t, 10),
            "median_ms": percentile(t, 50),
            "runs": int(t.size),
        }
        for target, t in pooled.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=[*LOADERS, "interleaved"])
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved: rounds of --runs calls per target")
    parser.add_argument("--result-json")
    args = parser.parse_args()
    if args.kind == "interleaved":
        result = _interleaved(args.targets, args.threads, args.runs, args.rounds)
    elif args.kind == "tflite":
        _tflite_tool(args.targets[0], args.threads, args.runs, args.result_json)
        return
    else:
        result = _single(args.kind, args.targets[0], args.threads, args.runs)
        result["peak_memory_mb"] = _peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
