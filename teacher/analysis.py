"""Face analysis for generation: each image -> an aligned record (crop, landmarks, embedding) or
the reason it was skipped, cached under ``OUT/.cache/``; the attribute pool and the fixed identity."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError, ImageReadError, NoFaceError
from pocketswap.core.files import atomic_write_bytes
from pocketswap.core.imageio import IMAGE_SUFFIXES
from pocketswap.teacher.base import AlignedRecord
from pocketswap.teacher.config import CACHE_VERSION, SAMPLES, GenerateConfig
from pocketswap.teacher.workers import limit_threads, pool_context, single_thread_torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """An image the pool leaves out, and why (listed in the dataset manifest)."""

    reason: str
    no_face: bool = False


Analysis = AlignedRecord | Skipped  # what FaceAnalysis returns for one image


@dataclass(frozen=True)
class Source:
    """One input image: `name` is its path relative to the faces folder, or the sample name."""

    name: str
    path: Path | None = None


def list_sources(faces: str) -> list[Source]:
    """Images under a folder (recursively, by extension, sorted), or the bundled samples."""
    if faces == SAMPLES:
        from pocketswap.faces import samples

        return [Source(name) for name in samples.names()]
    root = Path(faces)
    if not root.is_dir():
        raise ConfigError(f"--faces {faces}: not a folder (give a folder of images or 'samples')")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--faces {faces}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    # A name that is not valid UTF-8 (an old archive's Latin-1 file name) is recorded with U+FFFD in its
    # place, so the dataset's manifest and shards stay UTF-8; the file itself is still read by its path.
    return [Source(_printable(p.relative_to(root).as_posix()), p) for p in files]


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def yaw_proxy(landmarks: np.ndarray) -> float:
    """0 for a frontal face, about 1 for a profile: the nose tip's offset between the cheek extremes."""
    x = landmarks[:, 0]
    nose, right, left = float(x[1]), float(x[234]), float(x[454])
    return abs((nose - right) - (left - nose)) / max(abs(left - right), 1e-6)


class FaceAnalysis:
    """Detect, align and embed one image (a per-process object: models load once)."""

    def __init__(self, cfg: GenerateConfig) -> None:
        from pocketswap.faces.analyzer import FaceAnalyzer
        from pocketswap.faces.identity import load_encoder

        self.cfg = cfg
        self.analyzer = FaceAnalyzer(detector=cfg.detector, min_score=cfg.min_face_score)
        self.encoder = load_encoder(cfg.encoder)

    def __call__(self, source: Source, single: bool = False) -> Analysis:
        """Analysis of one image. ``single``: a second confident face of comparable size (>= 1/4 of the
        main face's area) is an error (ConfigError), as when the image names whose face to learn."""
        from pocketswap.core.imageio import read_image
        from pocketswap.faces.align import align_face
        from pocketswap.faces.analyzer import MAIN_FACE_SCORE_MARGIN
        from pocketswap.faces.identity import embed_faces
        from pocketswap.faces.samples import load

        try:
            image = read_image(source.path) if source.path is not None else load(source.name)
            faces = self.analyzer.detect(image, all_faces=single, source=source.name)
            if not faces:
                raise NoFaceError(f"no face found in {source.name}")
            face = faces[0]
        except ImageReadError as exc:
            return Skipped(f"unreadable: {exc}")
        except NoFaceError:
            return Skipped("no face found", no_face=True)
        if single:
            similar = sum(f.area >= 0.25 * face.area and f.score >= face.score - MAIN_FACE_SCORE_MARGIN for f in faces)
            if similar > 1:
                raise ConfigError(
                    f"{source.name} shows {similar} faces of similar size; give a photo of the one person to learn"
                )
        yaw = yaw_proxy(face.landmarks)
        if yaw > self.cfg.max_yaw:
            return Skipped(f"profile face (yaw proxy {yaw:.2f} > max_yaw {self.cfg.max_yaw})")
        aligned = align_face(image, face.keypoints, self.cfg.size, "arcface")
        with single_thread_torch():
            embedding = embed_faces(image, [face], self.encoder)[0]
        landmarks = aligned.landmarks_in_crop(face.landmarks)
        return AlignedRecord(aligned.crop, landmarks, embedding.astype(np.float32), source.name)


def _cache_path(cache_dir: Path, source: Source, cfg: GenerateConfig) -> Path:
    parts: list[Any] = [
        CACHE_VERSION,
        source.name,
        cfg.size,
        cfg.detector,
        cfg.min_face_score,
        cfg.max_yaw,
        cfg.encoder,
    ]
    if source.path is not None:
        stat = source.path.stat()
        parts += [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:24]
    return cache_dir / f"{key}.npz"


def _save_analysis(path: Path, result: Analysis) -> None:
    buffer = io.BytesIO()
    if isinstance(result, Skipped):
        np.savez(buffer, reason=np.array(result.reason), no_face=np.array(result.no_face))
    else:
        np.savez(buffer, crop=result.image, landmarks=result.landmarks, embedding=result.embedding)
    atomic_write_bytes(path, buffer.getvalue())


def _load_analysis(path: Path, name: str) -> Analysis | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "reason" in data.files:
                return Skipped(str(data["reason"].item()), bool(data["no_face"].item()))
            return AlignedRecord(data["crop"], data["landmarks"], data["embedding"], name)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable analysis cache entry (%s); redoing it", path, exc)
        return None


_ANALYSIS: FaceAnalysis | None = None


def _analysis_init(cfg: GenerateConfig) -> None:
    global _ANALYSIS
    limit_threads()
    _ANALYSIS = FaceAnalysis(cfg)


def _analysis_task(source: Source) -> Analysis:
    assert _ANALYSIS is not None
    return _ANALYSIS(source)


@dataclass
class FacePool:
    """The analysed faces: records sorted by name, skipped images with reasons, embedding size."""

    records: list[AlignedRecord]
    skipped: list[dict[str, str]]
    embedding_dim: int


def analyze_faces(cfg: GenerateConfig, out: Path, workers: int = 0, progress: bool = True) -> FacePool:
    """Analyse every source image, using and filling the cache in ``OUT/.cache/analysis``."""
    from tqdm import tqdm

    sources = list_sources(cfg.faces)
    cache_dir = out / ".cache" / "analysis"
    results: dict[str, Analysis] = {}
    todo = []
    for source in sources:
        path = _cache_path(cache_dir, source, cfg)
        cached = _load_analysis(path, source.name) if path.is_file() else None
        if cached is not None:
            results[source.name] = cached
        else:
            todo.append((source, path))
    if todo:
        log.info("analysing %d image(s) (%d cached)", len(todo), len(sources) - len(todo))
        bar = tqdm(total=len(todo), desc="analyse faces", unit="img", disable=not progress)
        if workers > 1:
            with pool_context().Pool(min(workers, len(todo)), _analysis_init, (cfg,)) as pool:
                stream: Iterator[Analysis] = pool.imap(_analysis_task, [s for s, _ in todo])
                for (source, path), result in zip(todo, stream, strict=True):
                    _save_analysis(path, result)
                    results[source.name] = result
                    bar.update()
        else:
            analysis = FaceAnalysis(cfg)
            for source, path in todo:
                result = analysis(source)
                _save_analysis(path, result)
                results[source.name] = result
                bar.update()
        bar.close()
    records, skipped = [], []
    for source in sources:
        result = results[source.name]
        if isinstance(result, Skipped):
            skipped.append({"file": source.name, "reason": result.reason})
        else:
            records.append(result)
    dims = {int(r.embedding.shape[0]) for r in records}
    return FacePool(records, skipped, dims.pop() if len(dims) == 1 else 0)


def analyze_identity(cfg: GenerateConfig) -> AlignedRecord:
    """The aligned, embedded record of ``cfg.identity`` (a photo or ``sample:NAME`` showing one person)."""
    from pocketswap.faces.samples import SAMPLE_PREFIX

    spec = cfg.identity
    source = (
        Source(spec[len(SAMPLE_PREFIX) :]) if spec.startswith(SAMPLE_PREFIX) else Source(Path(spec).name, Path(spec))
    )
    if source.path is not None and not source.path.is_file():
        raise ImageReadError(f"identity photo {spec}: no such file")
    result = FaceAnalysis(cfg)(source, single=True)
    if isinstance(result, Skipped):
        error = NoFaceError if result.no_face or result.reason.startswith("profile") else ImageReadError
        raise error(f"identity photo {spec}: {result.reason}")
    return dataclasses.replace(result, name=f"identity:{source.name}")
