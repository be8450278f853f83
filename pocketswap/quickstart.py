"""`pocketswap quickstart`: the main job on the bundled sample faces (what `make demo` runs).

Each step writes its outputs under one folder and a `.done` marker last, so re-running skips
finished steps and an interrupted step is redone from scratch.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PORTRAITS = ("astronaut", "grace_hopper", "camera")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Path], None]


def analyse_sample_faces(out: Path) -> None:
    """Detect faces and landmarks on the sample portraits; write annotated images, crops and JSON."""
    from pocketswap.faces import samples
    from pocketswap.faces.align import align_face
    from pocketswap.faces.analyzer import FaceAnalyzer
    from pocketswap.faces.draw import annotate
    from pocketswap.files import atomic_write_json
    from pocketswap.imageio import write_image

    analyzer = FaceAnalyzer(detector="auto")
    results = {}
    for name in PORTRAITS:
        image = samples.load(name)
        faces = analyzer.detect(image, all_faces=True)
        write_image(out / f"{name}_annotated.png", annotate(image, faces))
        if faces:
            write_image(out / f"{name}_aligned224.png", align_face(image, faces[0].keypoints, 224).crop)
        results[name] = [face.to_dict() for face in faces]
        log.info("%s: %d face(s)", name, len(faces))
    atomic_write_json(out / "faces.json", results)


STEPS = (Step("faces", analyse_sample_faces),)


def run_quickstart(out: str | Path, force: bool = False) -> Path:
    """Run every step into `out`, skipping steps whose `.done` marker exists (unless `force`)."""
    out = Path(out)
    for index, step in enumerate(STEPS, start=1):
        step_dir = out / step.name
        marker = step_dir / ".done"
        if marker.exists() and not force:
            log.info("[%d/%d] %s: already done, skipping (%s)", index, len(STEPS), step.name, step_dir)
            continue
        log.info("[%d/%d] %s ...", index, len(STEPS), step.name)
        start = time.perf_counter()
        step_dir.mkdir(parents=True, exist_ok=True)
        step.run(step_dir)
        marker.write_text(f"{time.perf_counter() - start:.1f} s\n")
        log.info("[%d/%d] %s done in %.1f s", index, len(STEPS), step.name, time.perf_counter() - start)
    log.info("all outputs in %s", out)
    return out


def _handler(args: argparse.Namespace) -> int:
    run_quickstart(args.out, force=args.force)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="run the main job on the bundled sample faces (make demo)")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--force", action="store_true", help="redo finished steps")
    p.set_defaults(handler=_handler)
