"""`pocketswap bench panel`: a blind realism study, the measure people see.

**Build.** From a real-photo quality run (``bench quality TARGET --people DIR``: full-frame swaps of every
photo by the student and the teacher, and the photos themselves) and any folders of other methods' swaps
(``--extra NAME=FOLDER``: e.g. a personalised student's ``swaps/student``, or a user's inswapper results,
named ``OWNER_PHOTO_as_IDENTITY.jpg`` like the run's own), the panel is made of **face crops**: the same
square around the photo's face for the photo and each of its swaps. Each attribute photo appears **once**
in a panel, under one source (the sources take the photos in turns), so a rater never compares a photo with
its own swap. The crops are shuffled under neutral names (``face_007.png``) into ``OUT/rate/`` with a static
rating page (``index.html``: one image at a time, keys 1-5, an optional reason, progress, answers saved as
JSON; it works from ``file://`` and from any static server). The key (which crop is which source, whose
identity, and whether the identity judge called the swap that person) goes to ``OUT/key.json``,
**outside** ``rate/``: give raters ``rate/`` only.

**Score.** ``--score ANSWERS...`` merges any number of raters' answer files and gives per source: the share
rated real (4-5) with a 95% Wilson interval, the share both rated real **and** judged the identity (a swap
that does not swap is not realism), the mean score, the raters' reasons grouped by what they name, and how many
of the source's open mouths the harness found smeared (``mouth_smeared``: under half the photo's teeth kept,
``distill.artefacts.teeth_kept``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import ConfigError
from pocketswap.core.jsonio import read_json

log = logging.getLogger(__name__)

PHOTO = "photo"  # the source name of the unedited photos (the control)
CROP_SIZE = 320  # px: every crop is shown at this size
CROP_PAD = 0.35  # of the face box's longer side, added around it
REAL = 4  # a score at or above this is "rated real"
HTML = Path(__file__).with_name("panel.html")
# What the raters' reasons name: group -> words that put a reason in it (a reason may name several).
REASON_GROUPS = {
    "mouth, teeth, lips": ("mouth", "teeth", "tooth", "lip", "tongue", "smile"),
    "tone, colour, light": ("tone", "colour", "color", "tint", "hue", "pale", "light", "shading", "exposure",
                            "contrast", "orange", "red", "pink", "yellow"),
    "seam, edge, halo": ("seam", "edge", "halo", "boundary", "border", "jaw", "chin", "outline", "blend", "cut"),
    "facial hair": ("beard", "mustache", "moustache", "stubble", "goatee"),
    "age, wrinkles, folds": ("wrinkle", "fold", "age", "old", "crease", "line"),
    "eyes, brows": ("eye", "iris", "pupil", "gaze", "brow", "lid"),
    "skin texture": ("blotch", "smooth", "plastic", "wax", "blur", "grey", "gray", "smudge", "texture", "soft",
                     "noise", "patch", "skin", "airbrush", "pore"),
    "ghosting, doubled features": ("ghost", "double", "transparent", "second", "overlay", "faint"),
    "geometry, proportions": ("shape", "proportion", "warp", "distort", "asymmetr", "stretch", "nose", "size"),
}  # fmt: skip


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of the share ``hits / n`` (sound at small n and at 0 or n hits)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def reason_groups(reason: str) -> list[str]:
    """The groups a rater's reason names (by word stems); ``["other"]`` when it names none."""
    words = re.findall(r"[a-z]+", reason.lower())
    found = [g for g, stems in REASON_GROUPS.items() if any(w.startswith(s) for w in words for s in stems)]
    return found or ["other"]


def face_crop(image: np.ndarray, box: list[float], size: int = CROP_SIZE) -> np.ndarray:
    """The square around ``box`` (x0, y0, x1, y1) padded by ``CROP_PAD``, moved (or shrunk) to lie inside the
    photo, resized to ``size``: the one crop a photo and each of its swaps are shown through."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = image.shape[:2]
    side = min(max(x1 - x0, y1 - y0) * (1 + 2 * CROP_PAD), width, height)  # inside the photo: no made-up border
    left = float(np.clip((x0 + x1 - side) / 2, 0, width - side))
    top = float(np.clip((y0 + y1 - side) / 2, 0, height - side))
    square = image[int(round(top)) : int(round(top + side)), int(round(left)) : int(round(left + side))]
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


def _stem_parts(stem: str) -> tuple[str, str]:
    """``OWNER_PHOTO_as_IDENTITY`` -> (``OWNER_PHOTO``, ``IDENTITY``)."""
    scene, sep, who = stem.rpartition("_as_")
    if not sep or not scene or not who:
        raise ConfigError(f"{stem}: a swap's file name must be OWNER_PHOTO_as_IDENTITY (as bench quality names them)")
    return scene, who


def _quality_items(quality: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], str | None]:
    """(scene -> source -> item: full-frame image path, face box, identity, judged the identity; the people folder
    it was run on) of a quality run."""
    from pocketswap.benchmarks.photos import swap_stem

    report_path = quality / "quality_photos.json"
    if not report_path.is_file():
        raise ConfigError(f"{quality}: no quality_photos.json (give a `bench quality --people` output folder)")
    scenes: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        report = read_json(report_path, "quality report", error=ConfigError)
        for row in report["rows"]:
            if row["method"] not in ("student", "teacher", "input"):
                continue
            stem = swap_stem(row["owner"], row["photo"], row["identity"])
            scene, _ = _stem_parts(stem)
            source = PHOTO if row["method"] == "input" else row["method"]
            image = quality / "swaps" / row["method"] / f"{stem}.jpg"
            if not image.is_file():
                continue
            swap = source != PHOTO
            scenes.setdefault(scene, {})[source] = {
                "image": image, "box": [float(v) for v in row["box"]][:4], "identity": row["identity"] if swap else None,
                "owner": row["owner"], "photo": row["photo"], "judged_identity": bool(row.get("dlib_same")) if swap else None,
                "identity_distance": row.get("dlib_distance") if swap else None,
                "mouth_smeared": row.get("mouth_smeared") if swap else None,
            }  # fmt: skip
        folder = report.get("folder")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigError(f"{report_path}: not a readable quality report ({type(exc).__name__}: {exc})") from exc
    if not scenes:
        raise ConfigError(f"{quality}: the quality run holds no swaps (its swaps/ folder is empty)")
    return scenes, folder if isinstance(folder, str) else None


def _add_extra(scenes: dict, name: str, folder: Path, judge: Any) -> int:
    """Add the swaps of ``folder`` (``OWNER_PHOTO_as_IDENTITY.*``) as source ``name``, judged by ``judge``."""
    from pocketswap.core.imageio import IMAGE_SUFFIXES, read_image

    if not folder.is_dir():
        raise ConfigError(f"--extra {name}={folder}: not a folder")
    added = 0
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        scene, who = _stem_parts(path.stem)
        if scene not in scenes or PHOTO not in scenes[scene]:
            log.warning("--extra %s: %s matches no photo of the quality run; skipped", name, path.name)
            continue
        photo = scenes[scene][PHOTO]
        same, distance = judge(read_image(path), who) if judge else (None, None)
        scenes[scene][name] = {"image": path, "box": photo["box"], "identity": who, "owner": photo["owner"],
                               "photo": photo["photo"], "judged_identity": same, "identity_distance": distance}  # fmt: skip
        added += 1
    if not added:
        raise ConfigError(
            f"--extra {name}={folder}: no swap named like a photo of the quality run (OWNER_PHOTO_as_WHO)"
        )
    return added


def identity_judge(people_dir: Path, threads: int = 1):
    """A function (swap image, person) -> (judged that person by dlib, distance), against the person's photos."""
    from pocketswap.benchmarks.photos import Judges, pad_tight, people_folders
    from pocketswap.core.imageio import read_image
    from pocketswap.core.metrics import same_person
    from pocketswap.faces.analyzer import FaceAnalyzer

    people = people_folders(people_dir)
    analyzer = FaceAnalyzer(detector="auto", num_threads=threads)
    judges = Judges(people, analyzer, {p: pad_tight(read_image(p)) for person in people for p in person.photos}, [])

    def judge(image: np.ndarray, person: str) -> tuple[bool, float | None]:
        if person not in judges.gallery["dlib"]:
            raise ConfigError(f"identity {person!r} is no person of {people_dir}")
        embedding = judges.embed(pad_tight(image))
        if embedding is None:
            return False, None
        distance = judges.distance(embedding["dlib"], "dlib", person)
        return same_person(distance, judges.thresholds["dlib"]), round(distance, 4)

    return judge


def build_panel(
    quality: str | Path,
    out: str | Path,
    extras: dict[str, str | Path] | None = None,
    per_source: int | None = None,
    seed: int = 0,
    people: str | Path | None = None,
) -> dict[str, Any]:
    """Write a blind panel into ``out`` (``rate/`` for raters, ``key.json`` kept apart); returns the key."""
    from pocketswap.core.files import atomic_write_bytes, atomic_write_json, check_output_dir
    from pocketswap.core.imageio import read_image, write_image

    quality, out = Path(quality), Path(out)
    scenes, run_people = _quality_items(quality)
    if extras:
        folder = people or run_people
        judge = identity_judge(Path(folder)) if folder else None
        for name, path in extras.items():
            if name in (PHOTO, "teacher", "student"):
                raise ConfigError(f"--extra {name}=...: that name is taken by the quality run's own sources")
            log.info("--extra %s: %d swaps", name, _add_extra(scenes, name, Path(path), judge))
    check_output_dir(out, "--out")
    rate = check_output_dir(out / "rate", "--out")
    for old in rate.glob("face_*.png"):  # a rebuilt panel never mixes with an earlier one's crops
        old.unlink()
    sources = sorted({s for scene in scenes.values() for s in scene}, key=lambda s: (s != PHOTO, s))
    rng = random.Random(seed)
    order = sorted(scenes)
    rng.shuffle(order)
    chosen: list[tuple[str, str]] = []  # (scene, source): each photo once, the sources taking turns
    counts = Counter()
    for index, scene in enumerate(order):
        available = [s for s in sources if s in scenes[scene] and (per_source is None or counts[s] < per_source)]
        if not available:
            continue
        # the source whose turn it is, else the least used one this photo has
        turn = sources[index % len(sources)]
        source = turn if turn in available else min(available, key=lambda s: (counts[s], sources.index(s)))
        counts[source] += 1
        chosen.append((scene, source))
    rng.shuffle(chosen)
    items = []
    for number, (scene, source) in enumerate(chosen, start=1):
        item = scenes[scene][source]
        name = f"face_{number:03d}.png"  # lossless: every source alike
        crop = face_crop(read_image(item["image"]), item["box"])
        write_image(rate / name, crop)
        items.append({"image": name, "source": source} | {k: v for k, v in item.items() if k not in ("image", "box")}
                     | {"file": str(item["image"])})  # fmt: skip
    digest = hashlib.sha256("\n".join(f"{i['image']} {i['file']}" for i in items).encode()).hexdigest()
    panel_id = f"panel-{digest[:12]}"
    page = HTML.read_text().replace("__PANEL__", json.dumps({"panel": panel_id, "images": [i["image"] for i in items]}))
    atomic_write_bytes(rate / "index.html", page.encode())
    key = {"kind": "panel_key", "panel": panel_id, "quality_run": str(quality), "seed": seed,
           "sources": {s: counts[s] for s in sources}, "items": items}  # fmt: skip
    atomic_write_json(out / "key.json", key)
    log.info("panel of %d faces (%s) -> %s; key -> %s", len(items),
             ", ".join(f"{s} {counts[s]}" for s in sources), rate / "index.html", out / "key.json")  # fmt: skip
    return key


def read_answers(path: str | Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """One rater's answers (``{"panel", "rater", "answers": [{"image", "score", "reason"}]}``), checked against
    the key: the same panel, known images, scores 1-5."""
    path = Path(path)
    try:
        data = read_json(path, "panel answers", error=ConfigError)
        panel, answers = data["panel"], data["answers"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a panel answer file ({exc})") from exc
    if panel != key["panel"]:
        raise ConfigError(f"{path}: answers for panel {panel!r}, but the key is for {key['panel']!r}")
    known = {item["image"] for item in key["items"]}
    if not isinstance(answers, list):
        raise ConfigError(f"{path}: 'answers' must be a list")
    checked = []
    for number, answer in enumerate(answers):
        if not isinstance(answer, dict) or answer.get("image") not in known:
            raise ConfigError(f"{path}: answer {number} names no image of this panel")
        score = answer.get("score")
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise ConfigError(
                f"{path}: answer {number} ({answer['image']}): score must be an integer 1-5, got {score!r}"
            )
        reason = answer.get("reason") or ""
        if not isinstance(reason, str):
            raise ConfigError(f"{path}: answer {number} ({answer['image']}): reason must be text")
        checked.append({"image": answer["image"], "score": score, "reason": reason.strip()[:300]})
    return checked


def score_panel(key_path: str | Path, answer_paths: list[str | Path]) -> dict[str, Any]:
    """Merge raters' answers against the key: per source n, rated real with a 95% interval, rated real and
    judged the identity, mean score and the reasons grouped."""
    key_path = Path(key_path)
    try:
        key = read_json(key_path, "panel key", error=ConfigError)
        items = {item["image"]: item for item in key["items"]}
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{key_path}: not a panel key ({exc})") from exc
    if not answer_paths:
        raise ConfigError("--score needs one or more answer files")
    ratings: dict[str, list[dict[str, Any]]] = {}
    for path in answer_paths:
        for answer in read_answers(path, key):
            item = items[answer["image"]]
            ratings.setdefault(item["source"], []).append(answer | {"judged_identity": item["judged_identity"]})
    smeared = Counter(i["source"] for i in items.values() if i.get("mouth_smeared"))
    opened = Counter(i["source"] for i in items.values() if i.get("mouth_smeared") is not None)
    sources = {}
    for source in sorted(ratings, key=lambda s: (s != PHOTO, s)):
        rows = ratings[source]
        n = len(rows)
        real = sum(r["score"] >= REAL for r in rows)
        entry: dict[str, Any] = {"n": n, "rated_real": real, "rated_real_share": real / n,
                                 "rated_real_ci95": wilson_interval(real, n),
                                 "mean_score": float(np.mean([r["score"] for r in rows]))}  # fmt: skip
        if source != PHOTO:
            both = sum(r["score"] >= REAL and bool(r["judged_identity"]) for r in rows)
            judged = sum(bool(r["judged_identity"]) for r in rows)
            entry |= {"passing": both, "passing_share": both / n, "passing_ci95": wilson_interval(both, n),
                      "judged_identity_share": judged / n,
                      "mouths_smeared": f"{smeared[source]}/{opened[source]}"}  # fmt: skip
        groups = Counter(g for r in rows if r["reason"] for g in reason_groups(r["reason"]))
        entry["reasons"] = dict(groups.most_common())
        entry["reason_examples"] = [r["reason"] for r in rows if r["reason"]][:8]
        sources[source] = entry
    return {"kind": "panel_scores", "panel": key["panel"], "raters": len(answer_paths), "sources": sources}


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a plain-text table, one source a line, then the reasons per source."""
    lines = [f"panel {scores['panel']}: {scores['raters']} rater(s)",
             f"{'source':<22} {'n':>4} {'rated real (4-5)':>24} {'real + identity':>24} {'mean':>5} "
             f"{'mouths smeared':>15}"]  # fmt: skip
    for source, e in scores["sources"].items():
        low, high = e["rated_real_ci95"]
        real = f"{e['rated_real']}/{e['n']} {e['rated_real_share']:.0%} [{low:.0%}-{high:.0%}]"
        if "passing" in e:
            low, high = e["passing_ci95"]
            both = f"{e['passing']}/{e['n']} {e['passing_share']:.0%} [{low:.0%}-{high:.0%}]"
        else:
            both = "-"
        smeared = e.get("mouths_smeared", "-")
        lines.append(f"{source:<22} {e['n']:>4} {real:>24} {both:>24} {e['mean_score']:>5.2f} {smeared:>15}")
    for source, e in scores["sources"].items():
        if e["reasons"]:
            lines.append(f"{source} reasons: " + "; ".join(f"{g} {c}" for g, c in e["reasons"].items()))
    return "\n".join(lines)


def score_rows(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per source: n, rated real with its interval, rated real and judged the identity, mean."""
    rows = []
    for source, e in scores["sources"].items():
        low, high = e["rated_real_ci95"]
        row = {"source": source, "n": e["n"], "rated real (4-5)": f"{e['rated_real_share']:.0%} [{low:.0%}-{high:.0%}]"}
        if "passing" in e:
            low, high = e["passing_ci95"]
            row["real and the identity"] = f"{e['passing_share']:.0%} [{low:.0%}-{high:.0%}]"
        else:
            row["real and the identity"] = "-"
        row["mean score"] = round(e["mean_score"], 2)
        row["open mouths smeared"] = e.get("mouths_smeared", "-")
        row["reasons"] = "; ".join(f"{g} {c}" for g, c in e["reasons"].items()) or "-"
        rows.append(row)
    return rows


def report_section(data: dict[str, Any], path: Path, base: Path | None) -> tuple[str, str]:
    """(title, HTML) of a panel key (a link to its rating page) or of panel scores (their table)."""
    import html
    import os

    from pocketswap.benchmarks.report import table

    if data.get("kind") == "panel_scores":
        note = (f"<p class=muted>{data['raters']} blind rater(s), 1-5 (5 = certainly an unedited photo); 95% Wilson "
                "intervals. A swap passes only when it is rated real <b>and</b> the identity judge (dlib) calls it the "
                "person.</p>")  # fmt: skip
        return "Blind realism panel: scores", note + table(score_rows(data))
    page = path.parent / "rate" / "index.html"
    link = os.path.relpath(page, base) if base else page.resolve().as_uri()
    counts = ", ".join(f"{s} {n}" for s, n in data["sources"].items())
    body = (f"<p>{len(data['items'])} face crops ({html.escape(counts)}), shuffled under neutral names. "
            f"<a href=\"{html.escape(link)}\">Open the rating page</a>: one face at a time, keys 1-5, a minute or two. "
            "Give other raters the <code>rate/</code> folder only (the key stays beside it), then score their answer "
            f"files:</p><pre>pocketswap bench panel --score answers-*.json --key {html.escape(str(path))}</pre>")  # fmt: skip
    return "Blind realism panel: rate it yourself", body
