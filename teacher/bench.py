"""Throughput of the teacher and of paired-data generation (`pocketswap teacher bench`)."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GenerationBench:
    """Swaps/s of the teacher alone (one process) and pairs/s of a whole `generate` run."""

    teacher: str
    swaps_per_second: float
    pairs: int
    seconds: float
    pairs_per_second: float
    startup_seconds: float
    steady_pairs_per_second: float


def bench_generation(
    faces: str = "samples",
    pairs: int = 200,
    workers: int = 2,
    size: int = 224,
    teacher: str = "geometric",
    identity_encoder: str | None = None,
    cache: str | None = None,
) -> GenerationBench:
    """Time the teacher on 20 swaps, then `generate` of ``pairs`` pairs into a temporary folder
    (face analysis excluded; ``cache`` keeps it between runs)."""
    from pocketswap.teacher.analysis import analyze_faces
    from pocketswap.teacher.generate import GenerateConfig, generate
    from pocketswap.teacher.pairs import PairMaker, build_teacher

    work = Path(tempfile.mkdtemp(prefix="pocketswap-bench-"))
    try:
        out = work / "dataset"
        if cache:  # reuse a persistent analysis cache
            out.mkdir(parents=True, exist_ok=True)
            Path(cache).mkdir(parents=True, exist_ok=True)
            (out / ".cache").symlink_to(Path(cache).resolve(), target_is_directory=True)
        cfg = GenerateConfig(out=str(out), faces=faces, pairs=pairs, workers=workers, size=size, teacher=teacher,
                             identity_encoder=identity_encoder, shard_size=max(1, pairs // 4))  # fmt: skip
        pool = analyze_faces(cfg, out, workers, progress=True)
        model = build_teacher(cfg)
        PairMaker(cfg, pool.records, model).make(0)  # warm-up
        records = pool.records
        count = min(20, len(records) * (len(records) - 1))
        start = time.perf_counter()
        for k in range(count):
            model.swap(records[k % len(records)], records[(k + 1) % len(records)])
        swap_rate = count / (time.perf_counter() - start)
        result = generate(cfg, progress=True)
        return GenerationBench(model.name, swap_rate, result.pairs_written, result.seconds, result.pairs_per_second,
                               result.startup_seconds, result.steady_pairs_per_second)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
