"""The app's Personalize tab: one background personalisation (teacher pairs -> fine-tune -> ONNX export).

``PersonalizeJob.start`` runs :func:`pocketswap.distill.personalize.personalize`, then
:func:`pocketswap.export.pipeline.export_model`, in a thread; ``status()`` reads progress from the run's own
files (``metrics.jsonl``, ``samples/``), i.e. what a command-line run writes. One job at a time per app; a
run folder that exists is resumed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketswap.errors import PocketswapError

log = logging.getLogger(__name__)


MAX_VIDEO_FRAMES = 64  # frames taken from an uploaded video to personalise against, spread over it


def faces_from_uploads(uploads: list[tuple[str, bytes]], folder: Path) -> int:
    """Write uploaded photos, and up to ``MAX_VIDEO_FRAMES`` frames spread over each uploaded video, into
    ``folder`` as the attribute faces of a personalisation; returns the number of images written."""
    import shutil
    import tempfile

    from pocketswap.demo.source import VideoSource
    from pocketswap.imageio import IMAGE_SUFFIXES, write_image

    shutil.rmtree(folder, ignore_errors=True)  # this upload's faces only, not an earlier one's
    folder.mkdir(parents=True)
    written = 0
    for index, (name, data) in enumerate(uploads):
        suffix = Path(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            (folder / f"upload{index:03d}{suffix}").write_bytes(data)
            written += 1
            continue
        with tempfile.TemporaryDirectory(prefix="pocketswap-faces-") as tmp:
            video_path = Path(tmp) / f"video{suffix}"
            video_path.write_bytes(data)
            video = VideoSource(video_path)
            try:
                every = max(1, video.frame_count // MAX_VIDEO_FRAMES)
                for number, frame in enumerate(video):
                    if number % every == 0 and number // every < MAX_VIDEO_FRAMES:
                        write_image(folder / f"video{index:03d}_{number:05d}.png", frame)
                        written += 1
            finally:
                video.close()
    if written == 0:
        raise PocketswapError("no photo or video frame in the faces to personalise against")
    return written


@dataclass
class JobRequest:
    identity: str  # photo path or sample:NAME
    out: Path
    steps: int
    pairs: int
    faces: str = "samples"


class PersonalizeJob:
    """At most one personalisation at a time, fine-tuned from the universal run ``universal``."""

    def __init__(self, universal: Path | None) -> None:
        self.universal = universal
        self.lock = threading.Lock()
        self.request: JobRequest | None = None
        self.state = "idle"  # idle | running | done | failed
        self.error: str | None = None
        self.artifact: Path | None = None
        self.started = 0.0

    def start(self, request: JobRequest) -> None:
        """Check the request (one clear error) and run it in a background thread."""
        from pocketswap.checkpoint import resolve_checkpoint

        if self.universal is None:
            raise PocketswapError("no universal run to personalise from: start the app with --universal RUN_DIR")
        resolve_checkpoint(self.universal)
        if request.steps < 1 or request.pairs < 8:
            raise PocketswapError(f"steps must be >= 1 and pairs >= 8, got {request.steps} and {request.pairs}")
        with self.lock:
            if self.state == "running":
                raise PocketswapError("a personalisation is already running; wait for it to finish")
            self.request, self.state, self.error, self.artifact = request, "running", None, None
            self.started = time.time()
            threading.Thread(target=self._run, args=(request,), name="personalize", daemon=True).start()

    def _run(self, request: JobRequest) -> None:
        from pocketswap.distill.personalize import personalize
        from pocketswap.export.pipeline import export_model

        try:
            personalize(self.universal, request.identity, request.out, faces=request.faces, pairs=request.pairs,
                        steps=request.steps, resume=(request.out / "checkpoints").is_dir(), workers=1,
                        progress=False)  # fmt: skip
            artifacts = export_model(request.out, request.out / "artifacts", identity=request.identity,
                                     formats="onnx", precisions="fp32")  # fmt: skip
            self.artifact, self.state = artifacts[0].path, "done"
        except Exception as exc:  # shown in the page; the app keeps serving
            log.exception("personalisation failed")
            self.state, self.error = "failed", str(exc)

    def status(self) -> dict[str, Any]:
        """State, phase, step of steps, last training loss, ETA, newest preview grid and the artifact."""
        info: dict[str, Any] = {"state": self.state, "error": self.error, "universal": str(self.universal)}
        request = self.request
        if request is None:
            return info
        info |= {"identity": request.identity, "out": str(request.out), "steps": request.steps}
        info["elapsed_s"] = round(time.time() - self.started)
        rows = _train_rows(request.out / "metrics.jsonl")
        if self.state == "running":
            info["phase"] = "training" if rows else "teacher pairs"
            if (request.out / "summary.json").is_file():
                info["phase"] = "evaluating and exporting"
        if rows:
            last = rows[-1]
            info["step"], info["loss"] = last["step"], round(float(last.get("total", float("nan"))), 4)
            rate = last.get("samples_per_s")
            if rate and self.state == "running":
                info["eta_s"] = round(max(request.steps - last["step"], 0) * _batch_size(request.out) / rate)
        previews = sorted((request.out / "samples").glob("step-*.png"))
        info["preview"] = previews[-1].name if previews else None
        info["artifact"] = str(self.artifact) if self.artifact else None
        report = request.out / "eval.json"
        if self.state == "done" and report.is_file():
            metrics = json.loads(report.read_text()).get("metrics", {})
            info["same_person"] = {name: m.get("same_person") for name, m in metrics.items()}
        return info

    def preview(self) -> Path | None:
        """The newest sample grid (identity | attribute | teacher | student | mask rows) of the running job."""
        if self.request is None:
            return None
        previews = sorted((self.request.out / "samples").glob("step-*.png"))
        return previews[-1] if previews else None


def _batch_size(run: Path) -> int:
    import yaml

    try:
        return int((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("batch_size", 16))
    except (OSError, ValueError, yaml.YAMLError):
        return 16


def _train_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("kind") == "train":
            rows.append(row)
    return rows
