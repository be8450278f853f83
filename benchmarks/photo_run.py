"""The real-photo quality run behind ``pocketswap bench quality --people DIR`` (see
:mod:`pocketswap.benchmarks.photos` for what is measured and why)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.benchmarks.photos import (
    METHODS,
    TEACHER_SIZE,
    WORST,
    Dlib68Expression,
    Judges,
    Person,
    TeacherSwapModel,
    aligned_record,
    attribute_errors,
    face_chip,
    pad_tight,
    people_folders,
    recapture,
    summarise,
    swap_stem,
)
from pocketswap.core.errors import ConfigError, NoFaceError

log = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = (".tflite", ".onnx")
# Which way is worse, per axis shown as worst swaps: (field, worst first is the largest value?)
WORST_AXES = (("dlib_distance", True), ("sharpness", False), ("seam", True), ("colour_mismatch", True),
              ("gaze_error", True), ("expression_error", True))  # fmt: skip


def student_models(target: Path, people: list[Person], identities: dict[str, Path], out: Path, person: str | None):
    """Per person, the baked artifact that swaps them in: exported from a universal run into
    ``out/artifacts/PERSON`` (kept for a re-run), or the one artifact given with ``--person``."""
    if target.suffix in ARTIFACT_SUFFIXES:
        if person is None:
            raise ConfigError(f"{target} carries one face: say whose it is with --person NAME (a folder of --people)")
        return {person: target}
    from pocketswap.export.pipeline import export_model

    models = {}
    for p in people:
        folder = out / "artifacts" / p.name
        found = sorted(folder.glob("*_fp32.onnx")) if folder.is_dir() else []
        if not found:
            log.info("exporting the student for %s", p.name)
            found = [a.path for a in export_model(target, folder, identity=str(identities[p.name]), formats="onnx")]
        models[p.name] = found[0]
    return models


def swap_with(model: Any, image: np.ndarray, analyzer: Any) -> np.ndarray:
    """``image`` swapped by ``model`` through the live pipeline (detect every frame: a still)."""
    from pocketswap.demo.pipeline import LiveSwapper
    from pocketswap.demo.settings import PipelineConfig

    return LiveSwapper(model, analyzer, PipelineConfig(detect_every=1)).process(image).frame


def bench_photos(
    target: str | Path,
    people_dir: str | Path,
    out: str | Path,
    judges: list[str] | None = None,
    teacher: str = "geometric",
    person: str | None = None,
    threads: int = 1,
    video: str | None = None,
    teacher_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score student | teacher | input on every photo of ``people_dir`` (see the module docstring);
    ``teacher_config``: settings of the teacher (its config fields)."""
    from tqdm import tqdm

    from pocketswap.core.files import atomic_write_json, check_output_dir
    from pocketswap.core.imageio import read_image, write_image
    from pocketswap.demo.swap_model import load_swap_model
    from pocketswap.distill.artefacts import TEETH_KEPT_MIN, artefact_scores, frechet_distance, teeth_kept
    from pocketswap.faces.analyzer import FaceAnalyzer
    from pocketswap.faces.dlib_resnet import DlibEncoder
    from pocketswap.faces.iris import IrisModel
    from pocketswap.teacher.base import load_teacher

    target, out = Path(target), Path(out)
    check_output_dir(out, "--out")
    people = people_folders(people_dir)
    names = [p.name for p in people]
    if person is not None and person not in names:
        raise ConfigError(f"--person {person}: no such folder in {people_dir} (people: {', '.join(names)})")
    photos = {path: pad_tight(read_image(path)) for p in people for path in p.photos}
    identities = {p.name: write_image(out / "identities" / f"{p.name}.png", photos[p.identity_photo]) for p in people}
    analyzer = FaceAnalyzer(detector="auto", num_threads=threads)
    judge = Judges(people, analyzer, photos, list(judges or []))
    iris, dlib, second = IrisModel(threads), DlibEncoder(), Dlib68Expression.load()
    swapper = load_teacher(teacher, TEACHER_SIZE, config=teacher_config)  # a bad teacher setting fails here, first
    students = {name: load_swap_model(path, num_threads=threads) for name, path in
                student_models(target, people, identities, out, person).items()}  # fmt: skip
    teachers = {}
    for p in people:
        image = photos[p.identity_photo]
        teachers[p.name] = TeacherSwapModel(swapper, aligned_record(image, analyzer.detect_one(image), TEACHER_SIZE))

    jobs, turn = [], 0
    for owner in people:
        for path in owner.photos:
            if person is not None:
                if owner.name != person:
                    jobs.append((path, owner.name, person))
                continue
            others = [n for n in names if n != owner.name]
            jobs.append((path, owner.name, others[turn % len(others)]))
            turn += 1
    rows, chips, real_chips, skipped = [], {m: [] for m in METHODS}, [], []
    for path, owner, who in tqdm(jobs, desc="quality", unit="photo", disable=None):
        image = photos[path]
        faces = analyzer.detect(image)
        if not faces:
            skipped.append(str(path))
            continue
        face = faces[0]
        real_chips.append(face_chip(image, face))
        start = judge.embed(image, face)
        before = {j: judge.distance(start[j], j, who) for j in judge.names}
        outputs = {"student": swap_with(students[who], image, analyzer), "teacher": swap_with(teachers[who], image, analyzer),
                   "recaptured": recapture(image), "input": image}  # fmt: skip
        stem = swap_stem(owner, path, who)
        for method, swapped in outputs.items():
            row: dict[str, Any] = {"photo": f"{owner}/{path.name}", "owner": owner, "identity": who, "method": method,
                                   "box": [round(float(v)) for v in face.box]}  # fmt: skip
            found = analyzer.detect(swapped)
            row |= judge.verdicts(judge.embed(swapped, found[0]) if found else None, who, before)
            if found:
                row |= attribute_errors(found[0], face, swapped, image, iris, second)
                chips[method].append(face_chip(swapped, found[0]))
            row |= artefact_scores(swapped, image, face.landmarks)
            kept = teeth_kept(swapped, found[0].landmarks if found else None, image, face.landmarks)
            row["teeth_kept"] = kept  # the photo shows teeth: were they kept, or smeared over?
            row["mouth_smeared"] = bool(kept < TEETH_KEPT_MIN) if np.isfinite(kept) else None
            rows.append(row)
            if method in ("student", "teacher"):
                write_image(out / "swaps" / method / f"{stem}.jpg", swapped)
        write_image(out / "swaps" / "input" / f"{stem}.jpg", image)
    if not rows:
        raise NoFaceError(f"no face found in any photo of {people_dir}")
    summary = summarise(rows)
    reference = dlib.penultimate(np.stack(real_chips))
    for method in METHODS:
        if chips[method]:
            distance = frechet_distance(dlib.penultimate(np.stack(chips[method])), reference)
            summary[method]["frechet_face"] = round(max(distance, 0.0), 3) + 0.0  # never "-0" for the floor
    clip = None
    if video:  # "clip": the bundled synthetic clip of the astronaut; else a video file
        from pocketswap.demo.clip import synthetic_frames
        from pocketswap.demo.source import VideoSource

        if video == "clip":
            frames, fps = list(synthetic_frames("astronaut", frames=48, empty_every=0)), 30.0
        else:
            source = VideoSource(Path(video))
            frames, fps = [f for _, f in zip(range(VIDEO_FRAMES), source, strict=False)], source.fps
            source.close()
        who = person or _least_like(frames, judge, names)
        clip = {"source": video} | bench_video(frames, fps, {"student": students[who], "teacher": teachers[who]},
                                                who, judge, analyzer)  # fmt: skip
    report = {
        "kind": "quality_photos",
        "target": str(target),
        "people": names,
        "folder": str(people_dir),
        "photos": len(jobs) - len(skipped),
        "skipped_no_face": skipped,
        "judges": {j: {"threshold": judge.thresholds[j], "training_loss": j == "dlib"} for j in judge.names},
        "teacher": teacher,
        "teacher_config": swapper.config(),
        "summary": summary,
        "worst": worst_swaps(rows, out),
        "video": clip,
        "rows": rows,
    }
    atomic_write_json(out / "quality_photos.json", report)
    return report


def _least_like(frames: list[np.ndarray], judge: Judges, names: list[str]) -> str:
    """The person least like the clip's first face (a swap onto someone who already is the person shows nothing)."""
    for frame in frames:
        embedding = judge.embed(frame)
        if embedding is not None:
            return max(names, key=lambda n: judge.distance(embedding["dlib"], "dlib", n))
    raise NoFaceError("no face found in the video")


def worst_swaps(rows: list[dict[str, Any]], out: Path) -> dict[str, list[str]]:
    """Strips (input | teacher | student) of the student's worst swaps per axis, as PNGs under ``out/worst``,
    at the photos' own resolution (up to ``STRIP_MAX`` px high)."""
    import cv2

    from pocketswap.core.imageio import read_image, write_image

    student = [r for r in rows if r["method"] == "student"]
    shown: dict[str, list[str]] = {}
    for field, largest in WORST_AXES:
        scored = [r for r in student if r.get(field) is not None and np.isfinite(r[field])]
        scored.sort(key=lambda r: r[field], reverse=largest)
        shown[field] = []
        for rank, row in enumerate(scored[:WORST]):
            stem = swap_stem(row["owner"], row["photo"], row["identity"])
            x0, y0, x1, y1 = row["box"]  # the face and some context around it, not the whole frame
            pad = round(0.35 * max(x1 - x0, y1 - y0))
            strip = [read_image(out / "swaps" / m / f"{stem}.jpg") for m in ("input", "teacher", "student")]
            strip = [s[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] for s in strip]
            height = min(strip[0].shape[0], STRIP_MAX)  # the photos' own pixels: a soft swap shows as soft
            strip = [cv2.resize(s, (round(s.shape[1] * height / s.shape[0]), height), interpolation=cv2.INTER_AREA)
                     for s in strip]  # fmt: skip
            path = write_image(out / "worst" / f"{field}-{rank}.png", np.concatenate(strip, axis=1))
            shown[field].append(str(path.relative_to(out)))
    return shown


STRIP_MAX = 512  # px: taller strips of the worst swaps are shrunk to this
VIDEO_FRAMES = 150  # frames of a user's video that are scored (5 s at 30 FPS)
VIDEO_CROP = 128  # the face region compared frame to frame, aligned by the input frame's own face


def bench_video(frames: list[np.ndarray], fps: float, models: dict[str, Any], who: str, judge: Judges,
                analyzer: Any) -> dict[str, Any]:  # fmt: skip
    """Per method, over a clip through the live pipeline (tracking and smoothing on, the clip's own clock):
    **flicker** (frame-to-frame change of the face region, swap / input), **landmark jitter** (the swap's
    landmark motion that is not the input's, inter-ocular units per frame) and **identity stability**
    (mean and spread of the per-frame dlib distance to the person)."""
    from pocketswap.demo.pipeline import LiveSwapper
    from pocketswap.demo.settings import PipelineConfig
    from pocketswap.faces.align import align_face
    from pocketswap.faces.types import inter_ocular

    inputs = [(frame, (analyzer.detect(frame) or [None])[0]) for frame in frames]
    outputs = {"input": [frame for frame, _ in inputs], "recaptured": [recapture(frame) for frame, _ in inputs]}
    for method, model in models.items():
        swapper = LiveSwapper(model, analyzer, PipelineConfig())
        outputs[method] = [swapper.process(frame, i / fps).frame for i, (frame, _) in enumerate(inputs)]
    report: dict[str, Any] = {"frames": len(frames), "identity": who}
    for method, swapped in outputs.items():
        change, base, jitter, distances, previous = [], [], [], [], None
        for (frame, face), out in zip(inputs, swapped, strict=True):
            if face is None:
                previous = None
                continue
            crop_in = align_face(frame, face.keypoints, VIDEO_CROP, "arcface").crop.astype(np.float32)
            crop_out = align_face(out, face.keypoints, VIDEO_CROP, "arcface").crop.astype(np.float32)
            found = analyzer.detect(out)
            landmarks = found[0].landmarks[:, :2] if found else None
            embedding = judge.embed(out, found[0]) if found else None
            if embedding is not None:
                distances.append(judge.distance(embedding["dlib"], "dlib", who))
            if previous is not None:
                base.append(float(np.abs(crop_in - previous[0]).mean()))
                change.append(float(np.abs(crop_out - previous[1]).mean()))
                if landmarks is not None and previous[2] is not None:
                    moved = (landmarks - previous[2]) - (face.landmarks[:, :2] - previous[3])
                    jitter.append(float(np.linalg.norm(moved, axis=1).mean() / max(inter_ocular(face.landmarks), 1e-6)))
            previous = (crop_in, crop_out, landmarks, face.landmarks[:, :2])
        report[method] = {
            "flicker": round(float(np.sum(change) / max(np.sum(base), 1e-6)), 4) if base else None,
            "landmark_jitter": round(float(np.mean(jitter)), 4) if jitter else None,
            "identity_distance_mean": round(float(np.mean(distances)), 4) if distances else None,
            "identity_distance_std": round(float(np.std(distances)), 4) if distances else None,
            "frames_with_face": len(distances),
        }
    return report
