"""Paired-data generation: face images -> aligned records -> sampled pairs -> teacher -> tar shards.

Reliability and scale:

- per-image analysis (aligned crop, landmarks in crop pixels, embedding, or the reason the image
  was skipped) is cached under ``OUT/.cache/`` so reruns do not redo it;
- pair ``i`` is a pure function of (seed, i) and shard ``s`` holds pairs ``[s*shard_size, ...)``,
  so output is identical whatever the number of workers or ranks;
- each shard is written to a temporary file and renamed when complete, then recorded in
  ``OUT/.shards/NAME.json``; a rerun skips shards whose file matches its record;
- under ``torchrun`` (``RANK``/``WORLD_SIZE``) rank ``r`` writes the shards ``s`` with
  ``s % world_size == r``; whichever rank finds every shard recorded writes ``manifest.json``;
- unreadable and face-less images are skipped, counted and listed in the manifest.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pocketswap.core.config import distributed_rank
from pocketswap.core.dataset import DatasetManifest, write_dataset_manifest
from pocketswap.core.errors import ConfigError, NoFaceError
from pocketswap.core.files import atomic_write_json, temp_glob
from pocketswap.core.identity import Identity
from pocketswap.core.shards import ShardWriter, shard_name
from pocketswap.faces.samples import SAMPLE_PREFIX
from pocketswap.teacher.analysis import analyze_faces, analyze_identity
from pocketswap.teacher.config import CHUNK, GenerateConfig
from pocketswap.teacher.pairs import build_teacher, make_pairs
from pocketswap.teacher.shards import (
    build_manifest,
    check_fingerprint,
    count_keys,
    read_record,
    record_path,
    shard_complete,
)

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What one process did: pairs written now, wall time of the pair loop, the manifest if written."""

    rank: int
    world_size: int
    shards_written: int
    shards_skipped: int
    pairs_written: int
    seconds: float
    skipped: list[dict[str, str]]
    manifest: DatasetManifest | None
    startup_seconds: float = 0.0  # until the first chunk of pairs arrived (worker start, model loads)
    first_chunk: int = 0  # pairs in that first chunk

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_pairs_per_second(self) -> float:
        """Throughput after start-up (what a long run approaches)."""
        busy = self.seconds - self.startup_seconds
        return (self.pairs_written - self.first_chunk) / busy if busy > 0 else self.pairs_per_second


def generate(
    cfg: GenerateConfig,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Generate (or resume) this rank's shards; write the manifest once every shard exists."""
    from tqdm import tqdm

    if not cfg.out:
        raise ConfigError("config field 'out' (the dataset folder) is required")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    out = Path(cfg.out)
    teacher = build_teacher(cfg)  # a bad teacher fails before anything is written or pinned in `out`
    out.mkdir(parents=True, exist_ok=True)
    pool = analyze_faces(cfg, out, cfg.workers, progress and rank == 0)
    for item in pool.skipped:
        log.info("skipped %s: %s", item["file"], item["reason"])
    if not pool.records:
        raise NoFaceError(f"no usable face in {cfg.faces} ({len(pool.skipped)} image(s) skipped)")
    if len(pool.records) < 2 and cfg.same_identity_share < 1.0:
        log.warning("only one usable face: every pair will be a same-identity reconstruction pair")
    fixed = None
    if cfg.identity:
        fixed = analyze_identity(cfg)
        same_photo = [r.name for r in pool.records if float(r.embedding @ fixed.embedding) > 0.999]
        pool.records = [r for r in pool.records if r.name not in same_photo]
        if same_photo:
            log.info("left the identity's own photo out of the attribute pool: %s", ", ".join(same_photo))
        if not pool.records:
            raise NoFaceError(f"no attribute face in {cfg.faces} besides the identity photo")
    fingerprint = {**cfg.fingerprint(), "identities": [r.name for r in pool.records]}
    check_fingerprint(out, fingerprint)

    mine = [s for s in range(cfg.num_shards()) if s % world_size == rank]
    for shard in mine:  # temporary files of interrupted runs
        for stale in out.glob(temp_glob(shard_name(shard))):
            stale.unlink(missing_ok=True)
    todo = [s for s in mine if not shard_complete(cfg, out, s)]
    log.info(
        "rank %d/%d: %d shard(s) to write, %d already complete (%d pairs in %d shards in total)",
        rank,
        world_size,
        len(todo),
        len(mine) - len(todo),
        cfg.pairs,
        cfg.num_shards(),
    )
    total_pairs = sum(len(cfg.shard_pairs(s)) for s in todo)
    bar = tqdm(
        total=total_pairs,
        desc="pairs" if world_size == 1 else f"pairs (rank {rank})",
        unit="pair",
        disable=not progress,
        smoothing=0.1,
    )
    start = time.perf_counter()
    written = 0
    chunks = [
        (s, (i, min(i + CHUNK, cfg.shard_pairs(s).stop)))
        for s in todo
        for i in range(cfg.shard_pairs(s).start, cfg.shard_pairs(s).stop, CHUNK)
    ]

    writer: ShardWriter | None = None
    current, counts = -1, Counter()
    startup, first_chunk = 0.0, 0
    try:
        for shard, items in make_pairs(cfg, pool.records, teacher, fixed, chunks):
            if not startup:
                startup, first_chunk = time.perf_counter() - start, len(items)
            if shard != current:
                current, counts = shard, Counter()
                writer = ShardWriter(out / shard_name(shard))
            assert writer is not None
            for members, stats in items:
                writer.write_encoded(members)
                counts.update(count_keys(stats))
                written += 1
                bar.update()
            if writer.count == len(cfg.shard_pairs(shard)):
                info = writer.close()
                writer = None
                atomic_write_json(record_path(out, shard), {**info.to_dict(), "counts": dict(sorted(counts.items()))})
    finally:
        if writer is not None:
            writer.abort()
        bar.close()
    seconds = time.perf_counter() - start

    manifest = None
    records = [read_record(out, s) for s in range(cfg.num_shards())]
    if all(r is not None for r in records):
        manifest = build_manifest(cfg, pool, teacher, records)  # type: ignore[arg-type]
        if fixed is not None:
            source = cfg.identity if cfg.identity.startswith(SAMPLE_PREFIX) else str(Path(cfg.identity).resolve())
            manifest.identity = Identity(fixed.name, source, fixed.embedding, cfg.encoder, fixed.image,
                                         fixed.landmarks, manifest.template).to_record()  # fmt: skip
        write_dataset_manifest(out, manifest)
        log.info("wrote %s (%d samples in %d shards)", out / "manifest.json", manifest.num_samples, len(records))
    else:
        missing = sum(r is None for r in records)
        log.info(
            "rank %d done; %d shard(s) still being written by other ranks (the last rank writes the manifest)",
            rank,
            missing,
        )
    return GenerateResult(
        rank,
        world_size,
        len(todo),
        len(mine) - len(todo),
        written,
        seconds,
        pool.skipped,
        manifest,
        startup,
        first_chunk,
    )
