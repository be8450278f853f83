"""`pocketswap bench quality --people DIR`: student | teacher | the unchanged photo, on real photos.

``DIR`` holds one folder of photos per person. Each person's identity is given by **one** photo (the
first, sorted by name) and judged against their **other** photos, never the one given. Every photo of
the other people becomes an attribute photo, swapped with the next person round-robin, full frame,
through the live pipeline (detect, align, swap, paste; as ``pocketswap demo`` shows it):

- **student**: the target (a universal run, exported once per person as a baked ONNX artifact, or
  one baked artifact with ``--person NAME``);
- **teacher**: the teacher swapping the same crops, pasted the same way;
- **recaptured**: the attribute photo captured once more (:func:`recapture`): every measure's own noise. A
  swap whose expression, gaze or artefact figure is within the recaptured one's distance of the input's is
  as close to the attribute as a second capture of the same frame would be;
- **input**: the attribute photo itself (what doing nothing scores).

Axes (one function each, defined in :mod:`pocketswap.distill.metrics`, :mod:`pocketswap.distill.artefacts`
and :mod:`pocketswap.faces.iris`): identity under every judge (dlib, plus ``--judge ARCFACE.onnx``;
which one the student's identity loss used is reported), head pose, landmark expression and gaze
against the attribute photo, and the artefact measures against it, plus a face-feature Fréchet
distance to the real photos. Per-swap rows, summaries and the worst swaps go to ``OUT``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError, NoFaceError
from pocketswap.core.imageio import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

METHODS = ("student", "teacher", "recaptured", "input")
RECAPTURE_SCALE = 0.85  # the photo shrunk to this and back...
RECAPTURE_QUALITY = 85  # ... and JPEG-encoded at this quality
TEACHER_SIZE = 256
WORST = 4  # swaps shown per axis


@dataclass
class Person:
    name: str
    photos: list[Path]

    @property
    def identity_photo(self) -> Path:
        return self.photos[0]


def swap_stem(owner: str, photo: str | Path, identity: str) -> str:
    """The file stem of ``photo`` (of person ``owner``) swapped to ``identity``: ``OWNER_PHOTO_as_IDENTITY``."""
    return f"{owner}_{Path(photo).stem}_as_{identity}"


def people_folders(root: str | Path) -> list[Person]:
    """One :class:`Person` per sub-folder of ``root`` holding photos (at least two people, each with at
    least two photos: one gives the identity, the others judge it)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--people {root}: not a folder (give a folder with one sub-folder of photos per person)")
    people = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 2:
            people.append(Person(folder.name, photos))
        elif photos:
            log.warning("%s: one photo only; a person needs two (one gives the identity, one judges it)", folder)
    if len(people) < 2:
        raise ConfigError(f"--people {root}: needs two or more sub-folders with two or more photos each")
    return people


def pad_tight(image: np.ndarray) -> np.ndarray:
    """A tight face chip padded to twice its size (edge pixels repeated: a mirror would add faces), so the
    detector sees a whole head."""
    import cv2

    h, w = image.shape[:2]
    if min(h, w) >= 256:
        return image
    return cv2.copyMakeBorder(image, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_REPLICATE)


class TeacherSwapModel:
    """The teacher as a live-pipeline model: swaps one identity onto each aligned crop it is given."""

    needs_landmarks = True
    template = "arcface"

    def __init__(self, teacher: Any, identity: Any) -> None:
        self.teacher, self.identity = teacher, identity
        self.matches_colour = teacher.matches_colour  # a relit swap needs no colour match at the paste
        self.size, self.name = teacher.size, f"teacher:{teacher.name}"

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        from pocketswap.teacher.base import AlignedRecord

        out = self.teacher.swap(self.identity, AlignedRecord(crop, np.asarray(landmarks, np.float32)))
        return out.image, out.mask


def aligned_record(image: np.ndarray, face: Any, size: int) -> Any:
    """The teacher's record of ``face`` in ``image``: ArcFace-aligned crop and its landmarks."""
    from pocketswap.faces.align import align_face
    from pocketswap.teacher.base import AlignedRecord

    aligned = align_face(image, face.keypoints, size, "arcface")
    return AlignedRecord(aligned.crop, aligned.landmarks_in_crop(face.landmarks))


class Judges:
    """Identity judges (dlib and any ArcFace-style ONNX the user gives) and each person's judge photos."""

    def __init__(self, people: list[Person], analyzer: Any, photos: dict[Path, np.ndarray], extra: list[str]) -> None:
        from pocketswap.faces.identity import load_encoder, same_person_threshold

        self.names = ["dlib", *extra]
        self.encoders = {name: load_encoder(name) for name in self.names}
        self.thresholds = {name: same_person_threshold(name) for name in self.names}
        self.analyzer = analyzer
        self.gallery: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.names}
        for person in people:
            judged = [self.embed(photos[p]) for p in person.photos[1:]]
            for name in self.names:
                rows = [e[name] for e in judged if e is not None]
                if not rows:
                    raise NoFaceError(f"no face found in any judge photo of {person.name}")
                self.gallery[name][person.name] = np.stack(rows)

    def embed(self, image: np.ndarray, face: Any = None) -> dict[str, np.ndarray] | None:
        from pocketswap.faces.identity import embed_faces

        if face is None:
            faces = self.analyzer.detect(image)
            if not faces:
                return None
            face = faces[0]
        return {name: embed_faces(image, [face], enc)[0] for name, enc in self.encoders.items()}

    def distance(self, embedding: np.ndarray, judge: str, person: str) -> float:
        """Mean cosine distance from ``embedding`` to the person's judge photos."""
        gallery = self.gallery[judge][person]
        return float(np.mean(1.0 - gallery @ embedding / (np.linalg.norm(gallery, axis=1) * np.linalg.norm(embedding))))

    def verdicts(self, embeddings: dict[str, np.ndarray] | None, person: str, before: dict[str, float]) -> dict:
        """Per judge: distance to the person, same person, moved closer than the photo, retrieved first."""
        from pocketswap.core.metrics import same_person

        out: dict[str, Any] = {}
        for judge in self.names:
            if embeddings is None:  # no face found in the swap: it is nobody
                out |= {f"{judge}_distance": None, f"{judge}_same": False, f"{judge}_closer": False,
                        f"{judge}_retrieved": False}  # fmt: skip
                continue
            distances = {p: self.distance(embeddings[judge], judge, p) for p in self.gallery[judge]}
            d = distances[person]
            out |= {f"{judge}_distance": d, f"{judge}_same": same_person(d, self.thresholds[judge]),
                    f"{judge}_closer": bool(d < before.get(judge, np.inf)),
                    f"{judge}_retrieved": min(distances, key=distances.get) == person}  # fmt: skip
        return out


class Dlib68Expression:
    """A second expression judge, independent of FaceMesh (which also places the teacher's and the students'
    geometry): dlib's 68-point shape predictor, read as mouth opening / mouth width and each eye's opening /
    its width. Used when ``dlib`` is installed (the dev extra); its model file ships with face-recognition-models
    (its training data forbids commercial use: a measuring aid, never part of a swap)."""

    MODEL_FILE = "shape_predictor_68_face_landmarks.dat"

    def __init__(self, predictor: Any, rectangle: Any) -> None:
        self.predictor, self.rectangle = predictor, rectangle

    @classmethod
    def load(cls) -> Dlib68Expression | None:
        """The judge, or None (logged) when dlib or its model file is missing."""
        from pocketswap.core.errors import PocketswapError
        from pocketswap.faces.dlib_resnet import default_model_path

        try:
            import dlib

            path = default_model_path().parent / cls.MODEL_FILE
        except (ImportError, PocketswapError) as error:
            log.info("no dlib 68-point expression judge (%s)", error)
            return None
        if not path.is_file():
            log.info("no dlib 68-point expression judge (%s missing)", path)
            return None
        return cls(dlib.shape_predictor(str(path)), dlib.rectangle)

    def state(self, image: np.ndarray, face: Any) -> np.ndarray:
        """(3,) mouth opening / width, right and left eye opening / width of ``face`` (its box) in ``image``."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in face.box)
        shape = self.predictor(np.ascontiguousarray(image), self.rectangle(x0, y0, x1, y1))
        p = np.array([(part.x, part.y) for part in shape.parts()], np.float64)

        def ratio(tops: list[int], bottoms: list[int], a: int, b: int) -> float:
            opening = np.linalg.norm(p[tops] - p[bottoms], axis=1).mean()
            return float(opening / max(np.linalg.norm(p[a] - p[b]), 1e-6))

        return np.array(
            [ratio([62], [66], 48, 54), ratio([37, 38], [41, 40], 36, 39), ratio([43, 44], [47, 46], 42, 45)]
        )

    def error(self, out: np.ndarray, out_face: Any, photo: np.ndarray, photo_face: Any) -> float:
        """Mean absolute difference of :meth:`state` between the swap's face and the attribute photo's."""
        return float(np.abs(self.state(out, out_face) - self.state(photo, photo_face)).mean())


def attribute_errors(
    out_face: Any, photo_face: Any, out: np.ndarray, photo: np.ndarray, iris: Any, second: Dlib68Expression | None
) -> dict:
    """Head pose (degrees), landmark expression (inter-ocular units; the face's shape too), expression state
    (mouth/eye opening and smile ratios; also under the ``second`` judge when there is one) and gaze (eye widths)
    of the swap's face against the attribute photo's."""
    from pocketswap.distill.metrics import expression_error, expression_state_error, head_pose, pose_error
    from pocketswap.faces.iris import gaze_offsets

    size = max(photo.shape[:2])
    pose_a, pose_b = head_pose(out_face.landmarks, size), head_pose(photo_face.landmarks, size)
    gaze_a = gaze_offsets(iris.pupils(out, out_face.landmarks), out_face.landmarks)
    gaze_b = gaze_offsets(iris.pupils(photo, photo_face.landmarks), photo_face.landmarks)
    errors = {
        "pose_error": None if pose_a is None or pose_b is None else pose_error(pose_a, pose_b),
        "expression_error": expression_error(out_face.landmarks, photo_face.landmarks),
        "expression_state_error": expression_state_error(out_face.landmarks, photo_face.landmarks),
        "gaze_error": float(np.linalg.norm(gaze_a - gaze_b, axis=1).mean()),
    }
    if second is not None:
        errors["expression_dlib68_error"] = second.error(out, out_face, photo, photo_face)
    return errors


def recapture(image: np.ndarray) -> np.ndarray:
    """The same frame as a second, slightly softer capture would give it: shrunk to ``RECAPTURE_SCALE``
    (area-averaged) and back (bicubic), then JPEG-encoded at ``RECAPTURE_QUALITY``."""
    import cv2

    height, width = image.shape[:2]
    small = (max(round(width * RECAPTURE_SCALE), 1), max(round(height * RECAPTURE_SCALE), 1))
    again = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (width, height),
                       interpolation=cv2.INTER_CUBIC)  # fmt: skip
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(again, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, RECAPTURE_QUALITY]
    )
    if not ok:
        raise ValueError("cannot JPEG-encode the frame")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def face_chip(image: np.ndarray, face: Any) -> np.ndarray:
    """The dlib network's 150 px chip of ``face`` (for the Fréchet distance)."""
    from pocketswap.faces.align import align_face
    from pocketswap.faces.dlib_resnet import CHIP_SIZE

    return align_face(image, face.keypoints, CHIP_SIZE, "dlib").crop


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: the share of True for verdicts, the mean of every other number (None/NaN left out)."""
    summary: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        stats: dict[str, Any] = {"swaps": len(mine)}
        for key in sorted({k for r in mine for k in r} - {"method", "photo", "identity", "owner", "box"}):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values and isinstance(values[0], bool):
                stats[key] = round(float(np.mean(values)), 4)
            elif values:
                finite = [float(v) for v in values if np.isfinite(v)]
                stats[key] = round(float(np.mean(finite)), 4) if finite else None
        summary[method] = stats
    return summary


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(axis, label, summary key) of every figure a report shows, in order."""
    rows = []
    for judge, info in report["judges"].items():
        axis = f"identity ({Path(judge).name}{', also the training loss' if info['training_loss'] else ''})"
        rows += [(axis, "same person", f"{judge}_same"), (axis, "moved closer", f"{judge}_closer"),
                 (axis, "retrieved first", f"{judge}_retrieved"), (axis, "cosine distance", f"{judge}_distance")]  # fmt: skip
    rows += [("attributes", "head pose error (deg)", "pose_error"),
             ("attributes", "landmark shape error (inter-ocular)", "expression_error"),
             ("attributes", "expression error (opening, smile)", "expression_state_error"),
             ("attributes", "expression error (dlib 68-point)", "expression_dlib68_error"),
             ("attributes", "gaze error (eye widths)", "gaze_error")]  # fmt: skip
    if not any("expression_dlib68_error" in figures for figures in report["summary"].values()):
        rows = [row for row in rows if row[2] != "expression_dlib68_error"]  # measured without dlib installed
    rows += [("artefacts", "sharpness (x photo)", "sharpness"), ("artefacts", "seam (x photo)", "seam"),
             ("artefacts", "chroma noise (x photo)", "chroma_noise"),
             ("artefacts", "colour mismatch (CIELAB)", "colour_mismatch"),
             ("artefacts", "teeth kept (x photo)", "teeth_kept"),
             ("artefacts", "teeth smeared over (share)", "mouth_smeared"),
             ("artefacts", "Fréchet face distance", "frechet_face")]  # fmt: skip
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """The summary as a plain-text table: one row per figure, one column per method."""
    lines = [f"{report['photos']} swaps of real photos, {len(report['people'])} people; identity given by one photo, "
             "judged against the person's other photos", f"{'axis':<44} {'figure':<36}" +
             "".join(f"{m:>11}" for m in METHODS)]  # fmt: skip
    for axis, label, key in summary_rows(report):
        cells = []
        for method in METHODS:
            value = report["summary"][method].get(key)
            cells.append(f"{'-' if value is None else f'{value:.3f}':>11}")
        lines.append(f"{axis:<44} {label:<36}" + "".join(cells))
    video = report.get("video")
    if video:
        lines.append(f"video: {video['source']}, {video['frames']} frames, identity {video['identity']}")
        for key in ("flicker", "landmark_jitter", "identity_distance_mean", "identity_distance_std"):
            cells = "".join(f"{'-' if video[m].get(key) is None else f'{video[m][key]:.3f}':>11}" for m in METHODS)
            lines.append(f"{'video':<44} {key.replace('_', ' '):<36}" + cells)
    return "\n".join(lines)


__all__ = [
    "METHODS",
    "format_summary",
    "summary_rows",
    "Judges",
    "Person",
    "TeacherSwapModel",
    "aligned_record",
    "Dlib68Expression",
    "attribute_errors",
    "face_chip",
    "pad_tight",
    "people_folders",
    "recapture",
    "summarise",
]
