"""Shard bookkeeping of generation: per-shard records, recovery, the settings fingerprint and the
dataset manifest."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pocketswap import __version__
from pocketswap.core.dataset import DatasetManifest
from pocketswap.core.errors import ConfigError, PocketswapError
from pocketswap.core.files import atomic_write_json, file_sha256
from pocketswap.core.jsonio import Obj, parse_json, read_json
from pocketswap.core.shards import MEMBERS, ShardInfo, iter_shard_members, shard_name
from pocketswap.teacher.analysis import FacePool
from pocketswap.teacher.base import Teacher
from pocketswap.teacher.config import GenerateConfig
from pocketswap.teacher.pairs import sample_key

log = logging.getLogger(__name__)


def record_path(out: Path, shard: int) -> Path:
    return out / ".shards" / f"{shard_name(shard)}.json"


# A shard's record (pocketswap.core.jsonio's schema): ShardInfo's fields and the sample counts by kind.
RECORD_SCHEMA = Obj(
    {"name": str, "samples": int, "bytes": int, "sha256": str, "counts": Obj(values=int)},
    required=("name", "samples", "bytes", "sha256"),
)


def read_record(out: Path, shard: int) -> dict[str, Any] | None:
    path = record_path(out, shard)
    try:
        return read_json(path, "shard record", schema=RECORD_SCHEMA)
    except PocketswapError:  # missing, cut or foreign: the shard is checked again or regenerated
        return None


def _recover_record(cfg: GenerateConfig, out: Path, shard: int) -> dict[str, Any] | None:
    """Record of a shard file that exists but was not recorded (crash between rename and record):
    accepted when it holds exactly the expected complete samples."""
    path = out / shard_name(shard)
    expected = [sample_key(i) for i in cfg.shard_pairs(shard)]
    keys, counts = [], Counter()
    try:
        for key, members in iter_shard_members(path):
            if not all(s in members for s in MEMBERS):
                return None
            keys.append(key)
            meta = parse_json(members["json"], f"{path.name}:{key}.json")
            counts.update(
                count_keys(
                    {
                        "pair": meta["pair"],
                        "pseudo": meta["pseudo_identity"],
                        "occluded": bool(meta["augment"].get("occluders")),
                    }
                )
            )
    except Exception:  # any decoding problem means the shard is not usable
        return None
    if keys != expected:
        return None
    info = ShardInfo(path.name, len(keys), path.stat().st_size, file_sha256(path))
    return {**info.to_dict(), "counts": dict(sorted(counts.items()))}


def count_keys(stats: dict[str, Any]) -> list[str]:
    keys = [stats["pair"]]
    if stats["pseudo"]:
        keys.append("pseudo_identity")
    if stats["occluded"]:
        keys.append("occluded")
    return keys


def shard_complete(cfg: GenerateConfig, out: Path, shard: int) -> bool:
    """True when the shard file exists and matches its record (recovering a missing record)."""
    path = out / shard_name(shard)
    if not path.is_file():
        return False
    record = read_record(out, shard)
    if record is None:
        record = _recover_record(cfg, out, shard)
        if record is None:
            log.warning("%s: incomplete or corrupt shard; regenerating it", path.name)
            return False
        atomic_write_json(record_path(out, shard), record)
        return True
    expected = len(cfg.shard_pairs(shard))
    if record.get("samples") != expected or path.stat().st_size != record.get("bytes"):
        log.warning("%s: size differs from its record; regenerating it", path.name)
        return False
    if file_sha256(path) != record.get("sha256"):
        log.warning("%s: checksum differs from its record (corrupt); regenerating it", path.name)
        return False
    return True


def check_fingerprint(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / ".generation.json"
    if path.is_file():
        try:
            previous = read_json(path, "generation settings", schema=dict)
        except PocketswapError:
            previous = None
        if previous is not None and previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(
                f"{out} already holds a dataset generated with different settings ({', '.join(changed)} differ); "
                "use a new --out folder or delete this one"
            )
        if previous is not None:
            return
    atomic_write_json(path, fingerprint)


def build_manifest(
    cfg: GenerateConfig, pool: FacePool, teacher: Teacher, records: list[dict[str, Any]]
) -> DatasetManifest:
    """The manifest of a finished dataset from its shard records."""
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(record.get("counts", {}))
    return DatasetManifest(
        size=cfg.size,
        seed=cfg.seed,
        num_samples=sum(r["samples"] for r in records),
        counts={"pairs": cfg.pairs, **dict(sorted(counts.items()))},
        teacher={"name": teacher.name, "config": teacher.config(), "config_hash": teacher.config_hash()},
        embedding={"encoder": cfg.encoder, "dim": pool.embedding_dim},
        shards=[ShardInfo(r["name"], r["samples"], r["bytes"], r["sha256"]) for r in records],
        identities=[r.name for r in pool.records],
        skipped=pool.skipped,
        extra={
            "pocketswap_version": __version__,
            "pairs_per_shard": cfg.shard_size,
            "num_identities": len(pool.records),
            "num_skipped": len(pool.skipped),
            "config": cfg.fingerprint(),
        },
    )
