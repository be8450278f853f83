"""`pocketswap demo`: live face swap from a webcam, a video file or an image, windowed or headless.

Keys in the window: q quit, space pause, s snapshot, m show the mask, n next identity, d toggle the swap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pocketswap.core.checkpoint import checkpoint_identity, is_checkpoint_path, read_metadata, resolve_checkpoint
from pocketswap.core.errors import PocketswapError
from pocketswap.core.imageio import IMAGE_SUFFIXES, write_image
from pocketswap.demo.pipeline import STAGES, FrameResult, LiveSwapper
from pocketswap.demo.settings import PipelineConfig
from pocketswap.demo.source import ImageSource, VideoSource, is_still, open_source
from pocketswap.demo.swap_model import SwapModel, load_swap_model
from pocketswap.faces.align import align_face
from pocketswap.faces.samples import SAMPLE_PREFIX

log = logging.getLogger(__name__)

LABEL = "SYNTHETIC"


@dataclass
class DemoOptions:
    model: Path
    identity: Path | None
    source: str = "0"
    output: Path | None = None
    headless: bool = False
    label: bool = True
    threads: int = 1
    max_frames: int | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass
class DemoSummary:
    frames: int
    frames_with_face: int
    seconds: float
    mean_fps: float
    stage_ms: dict[str, float]
    dropped_frames: int
    temporal_ratio: float | None = None
    identity_cosine_mean: float | None = None
    identity_cosine_var: float | None = None
    output: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"frames: {self.frames} ({self.frames_with_face} with a face, {self.dropped_frames} dropped)",
            f"mean FPS: {self.mean_fps:.1f} over {self.seconds:.2f} s",
            "per-stage ms (mean per frame): " + ", ".join(f"{k} {v:.2f}" for k, v in self.stage_ms.items()),
        ]
        if self.temporal_ratio is not None:
            out.append(
                f"temporal stability: swapped-face frame-to-frame change / input's = {self.temporal_ratio:.3f} "
                "(1 = as stable as the input)"
            )
        if self.identity_cosine_mean is not None:
            out.append(
                f"identity cosine to the identity: mean {self.identity_cosine_mean:.3f}, "
                f"variance {self.identity_cosine_var:.5f}"
            )
        if self.output:
            out.append(f"output: {self.output}")
        return out


def identity_files(spec: Path | None) -> list[Path]:
    """One identity image/.npy or ``sample:NAME``, or every image/.npy in a folder (cycled with the n key)."""
    if spec is None:
        return []
    if str(spec).startswith(SAMPLE_PREFIX):
        return [spec]
    if spec.is_dir():
        files = sorted(p for p in spec.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
        if not files:
            raise PocketswapError(f"{spec}: no identity images or .npy embeddings in this folder")
        return files
    if not spec.exists():
        raise PocketswapError(f"{spec}: no such identity file")
    return [spec]


class IdentityModels:
    """Swap models per identity: checkpoints are baked for each identity; a baked artifact serves its own."""

    def __init__(self, model_path: Path, identities: list[Path], threads: int) -> None:
        self.model_path, self.identities, self.threads = model_path, identities, threads
        self.is_checkpoint = is_checkpoint_path(model_path)
        self.index = 0
        self._cache: dict[int, SwapModel] = {}
        self.embeddings: dict[int, np.ndarray] = {}
        if self.is_checkpoint and not identities:  # a personalised run carries whose it is
            own = checkpoint_identity(read_metadata(resolve_checkpoint(model_path))["extra"])
            if own is None:
                raise PocketswapError("a checkpoint model needs --identity (an image or an .npy embedding)")
            log.info("swapping in the run's own identity: %s (%s)", own.name, own.source)
            self.identities, self.embeddings[0] = [Path(own.source)], own.embedding
        self.encoder = "dlib"
        if not self.is_checkpoint and identities:
            self._check_baked_identity()

    def _check_baked_identity(self) -> None:
        """Refuse an --identity of another person than the one baked into the artifact (whose embedding
        its manifest records); without that record, say that it cannot be checked."""
        from pocketswap.core.manifest import ManifestError, read_manifest
        from pocketswap.core.metrics import cosine_distance, same_person
        from pocketswap.faces.identity import same_person_threshold

        try:
            baked = read_manifest(self.model_path).identity()
        except ManifestError:
            baked = None
        if baked is None:
            log.warning("%s: its manifest does not record the baked identity; cannot check that --identity %s "
                        "is the same person", self.model_path, self.identities[0])  # fmt: skip
            return
        self.encoder = baked.encoder or "dlib"
        distance = cosine_distance(self.embedding(0), baked.embedding)
        threshold = same_person_threshold(self.encoder)
        if not same_person(distance, threshold):
            raise PocketswapError(
                f"{self.model_path} is baked for {baked.name}; --identity "
                f"{self.identities[0]} is another person (distance {distance:.3f} >= {threshold}): drop --identity "
                "to swap the baked face, or export the model for this one"
            )

    def embedding(self, index: int) -> np.ndarray | None:
        if not self.identities:
            return None
        if index not in self.embeddings:
            from pocketswap.faces.identity import read_identity

            self.embeddings[index] = read_identity(self.identities[index], encoder=self.encoder).embedding
        return self.embeddings[index]

    def current(self) -> SwapModel:
        if self.index not in self._cache:
            embedding = self.embedding(self.index) if self.is_checkpoint else None
            self._cache[self.index] = load_swap_model(self.model_path, embedding, self.threads)
        return self._cache[self.index]

    def next(self) -> SwapModel:
        if self.is_checkpoint and len(self.identities) > 1:
            self.index = (self.index + 1) % len(self.identities)
        elif not self.is_checkpoint:
            log.info("a baked artifact holds one identity; pass a checkpoint to cycle identities with n")
        return self.current()


def draw_stats(frame: np.ndarray, fps: float, timings: dict[str, float]) -> np.ndarray:
    """FPS and per-stage milliseconds (window only; recordings stay clean)."""
    out = frame.copy()
    text = f"{fps:5.1f} FPS  " + " ".join(f"{k} {v:.1f}" for k, v in timings.items()) + " ms"
    cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_label(frame: np.ndarray) -> np.ndarray:
    """The visible 'SYNTHETIC' label, bottom left (on by default, in the window and in recordings)."""
    out = frame.copy()
    h = out.shape[0]
    cv2.putText(out, LABEL, (8, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(out, LABEL, (8, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 80, 80), 2, cv2.LINE_AA)
    return out


def mask_view(frame: np.ndarray, result: FrameResult, model_size: int, template: str) -> np.ndarray:
    """The frame with each face's predicted blending mask shown in red."""
    from pocketswap.faces.align import invert_affine

    out = frame.copy()
    for face, (_, mask) in zip(result.faces, result.crops, strict=False):
        matrix = align_face(frame, face.keypoints, model_size, template).matrix
        alpha = cv2.warpAffine(mask, invert_affine(matrix), (frame.shape[1], frame.shape[0]))[..., None]
        out = (out * (1 - 0.6 * alpha) + np.array([255, 0, 0]) * 0.6 * alpha).astype(np.uint8)
    return out


class StabilityMeter:
    """Frame-to-frame change of the swapped face relative to the input face's, on aligned crops."""

    def __init__(self) -> None:
        self.previous: tuple[np.ndarray, np.ndarray] | None = None
        self.output_change: list[float] = []
        self.input_change: list[float] = []
        self.swapped_crops: list[np.ndarray] = []

    def add(self, result: FrameResult) -> None:
        if not result.crops:
            self.previous = None
            return
        crop_in = result.inputs[0].astype(np.float32)
        crop_out = result.crops[0][0].astype(np.float32)
        if self.previous is not None:
            self.input_change.append(float(np.abs(crop_in - self.previous[0]).mean()))
            self.output_change.append(float(np.abs(crop_out - self.previous[1]).mean()))
        self.previous = (crop_in, crop_out)
        self.swapped_crops.append(result.crops[0][0])

    def ratio(self) -> float | None:
        if not self.input_change:
            return None
        return float(np.sum(self.output_change) / max(np.sum(self.input_change), 1e-6))


def identity_consistency(crops: list[np.ndarray], embedding: np.ndarray | None, template: str, size: int):
    """Mean and variance of the dlib identity cosine between swapped crops (up to 32) and the identity."""
    if embedding is None or not crops or embedding.shape[0] != 128:
        return None, None
    from pocketswap.faces.align import similarity_transform, template_points
    from pocketswap.faces.dlib_resnet import DlibEncoder

    matrix = similarity_transform(template_points(size, template), template_points(150, "dlib"))
    picks = np.linspace(0, len(crops) - 1, min(32, len(crops))).round().astype(int)
    chips = np.stack([cv2.warpAffine(crops[i], matrix, (150, 150), flags=cv2.INTER_LINEAR) for i in picks])
    cosines = DlibEncoder().embed_chips(chips) @ (embedding / np.linalg.norm(embedding))
    return float(cosines.mean()), float(cosines.var())


def run_demo(options: DemoOptions) -> DemoSummary:
    """Run the demo until the source ends, q is pressed or `max_frames` is reached."""
    from pocketswap.core.files import check_output, refuse_overwriting_input
    from pocketswap.demo.video import VIDEO_SUFFIXES, VideoWriter
    from pocketswap.faces.analyzer import FaceAnalyzer

    if options.output is not None:  # before any model loads: a bad path is one line, not a lost run
        check_output(options.output, IMAGE_SUFFIXES if is_still(str(options.source)) else VIDEO_SUFFIXES, "--out")
        refuse_overwriting_input(options.output, str(options.source), "--out")
    models = IdentityModels(options.model, identity_files(options.identity), options.threads)
    swapper = LiveSwapper(
        models.current(), FaceAnalyzer(detector="auto", num_threads=options.threads), options.pipeline
    )
    source = open_source(options.source, interactive=not options.headless)
    still = isinstance(source, ImageSource)
    writer = None
    if options.output is not None and not still:
        audio = Path(str(options.source)) if isinstance(source, VideoSource) else None
        writer = VideoWriter(options.output, source.fps, audio_from=audio)
    meter = StabilityMeter()
    frames = with_face = 0
    paused, show_mask, last = False, False, None
    snapshot_index = 0
    start = time.perf_counter()
    fps = 0.0
    progress = None
    if options.headless and isinstance(source, VideoSource):  # a file swapped without a window: say how far
        from tqdm import tqdm

        progress = tqdm(total=source.frame_count or None, desc="demo", unit="frame", disable=None)
    try:
        for frame in source:
            frame_start = time.perf_counter()
            if not paused or last is None:
                # A video file's own clock (frame count / its frame rate) smooths the landmarks, so the same
                # file gives the same output on every run; a camera's is the wall clock.
                clock = frames / source.fps if isinstance(source, VideoSource) else frame_start
                result = swapper.process(frame, clock)
                last = (frame, result)
            frame, result = last
            frames += 1
            if progress is not None:
                progress.update()
            with_face += bool(result.faces)
            meter.add(result)
            swapping = swapper.config.swap and bool(result.faces)
            recorded = draw_label(result.frame) if options.label and swapping else result.frame
            if writer is not None:
                writer.write(recorded)
            if still and options.output is not None and frames == 1:
                write_image(options.output, recorded)
            if not options.headless:
                fps = 0.9 * fps + 0.1 / max(time.perf_counter() - frame_start, 1e-6) if frames > 1 else 0.0
                shown = mask_view(frame, result, swapper.model.size, swapper.model.template) if show_mask else recorded
                cv2.imshow("pocketswap", cv2.cvtColor(draw_stats(shown, fps, result.timings_ms), cv2.COLOR_RGB2BGR))
                key = cv2.waitKey(1) & 0xFF
                if key == ord("q"):
                    break
                if key == ord(" "):
                    paused = not paused
                elif key == ord("s"):
                    snapshot_index += 1
                    path = write_image(f"snapshot-{snapshot_index:03d}.png", recorded)
                    log.info("snapshot -> %s", path)
                elif key == ord("m"):
                    show_mask = not show_mask
                elif key == ord("n"):
                    swapper.set_model(models.next())
                elif key == ord("d"):
                    swapper.config.swap = not swapper.config.swap
            if options.max_frames and frames >= options.max_frames:
                break
    except BaseException:
        if writer is not None:
            writer.abort()
            writer = None
        raise
    finally:
        source.close()
        if progress is not None:
            progress.close()
        if not options.headless:
            cv2.destroyAllWindows()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - start
    stage_ms = {
        stage: round(swapper.totals_ms[stage] / max(frames, 1), 3) for stage in STAGES if stage in swapper.totals_ms
    }
    stage_ms["total"] = round(sum(stage_ms.values()), 3)
    cos_mean, cos_var = (None, None)
    if not still:
        cos_mean, cos_var = identity_consistency(
            meter.swapped_crops, models.embedding(models.index), swapper.model.template, swapper.model.size
        )
    return DemoSummary(
        frames=frames,
        frames_with_face=with_face,
        seconds=round(seconds, 3),
        mean_fps=round(frames / max(seconds, 1e-6), 2),
        stage_ms=stage_ms,
        dropped_frames=getattr(source, "dropped", 0),
        temporal_ratio=None if still else meter.ratio(),
        identity_cosine_mean=cos_mean,
        identity_cosine_var=cos_var,
        output=str(options.output) if options.output else None,
    )
