"""`pocketswap bench gate --quality`: fail CI when the real-photo quality of a frozen student drops.

A small reference student (``baseline/quality/student``: a nano checkpoint, frozen) is scored by the
real-photo harness (:func:`pocketswap.benchmarks.photo_run.bench_photos`) on a frozen eval set made
from the bundled colour portraits (each person's own photo, its mirror image, and a smaller re-encoded
copy: deterministic, so its sha256 is recorded). Every figure of the student and the teacher is compared
with ``baseline/quality.json``: a figure may not get worse by more than its measured run-to-run noise
(the spread of ``--update``'s repeated runs, at different thread counts) plus a floor for float
differences between processes and machines (0.001, or 1% of the value where that is more). The gate guards the paste, alignment, teacher, export and metrics code
that every swap goes through; ``--update`` after an intended change.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import Obj, read_json

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
QUALITY_BASELINE = HERE / "baseline" / "quality.json"
REFERENCE_STUDENT = HERE / "baseline" / "quality" / "student"
GATE_PEOPLE = ("astronaut", "grace_hopper")
FLOOR = 1e-3  # allowed change on top of the measured noise: at least this much, ...
RELATIVE_FLOOR = 0.01  # ... or 1% of the value (another process's thread counts moved a pose error by 0.06%)
# Which way is better, per figure of the harness's summary (a figure not listed is reported, not gated).
BETTER = {"_same": "higher", "_closer": "higher", "_retrieved": "higher", "_distance": "lower",
          "pose_error": "lower", "expression_error": "lower", "expression_state_error": "lower", "gaze_error": "lower", "sharpness": "higher",
          "seam": "lower", "chroma_noise": "lower", "colour_mismatch": "lower", "frechet_face": "lower",
          "teeth_kept": "higher", "mouth_smeared": "lower"}  # fmt: skip
GATED = ("student", "teacher")


def write_eval_set(folder: Path) -> str:
    """The frozen eval set under ``folder`` (one sub-folder per bundled portrait); returns its sha256."""
    import cv2

    from pocketswap.core.imageio import write_image
    from pocketswap.faces import samples

    digest = hashlib.sha256()
    for name in GATE_PEOPLE:
        photo = samples.load(name)
        small = cv2.resize(photo, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        variants = {
            "0_photo": photo,
            "1_mirror": photo[:, ::-1],
            "2_small": cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1],
        }
        for stem, image in variants.items():
            path = write_image(folder / name / f"{stem}.png", np.ascontiguousarray(image))
            digest.update(path.read_bytes())
    return digest.hexdigest()


def gated_figures(report: dict[str, Any]) -> dict[str, float]:
    """``method.figure`` -> value for every gated figure of a harness report."""
    figures = {}
    for method in GATED:
        for key, value in report["summary"][method].items():
            if value is not None and direction(key) is not None:
                figures[f"{method}.{key}"] = float(value)
    return figures


def direction(key: str) -> str | None:
    for suffix, better in BETTER.items():
        if key.endswith(suffix):
            return better
    return None


def measure(student: Path, threads: int) -> tuple[dict[str, float], str]:
    """The gated figures of ``student`` on the frozen eval set, and the eval set's sha256."""
    from pocketswap.benchmarks.photo_run import bench_photos

    with tempfile.TemporaryDirectory(prefix="pocketswap-quality-gate-") as tmp:
        people = Path(tmp) / "people"
        digest = write_eval_set(people)
        report = bench_photos(student, people, Path(tmp) / "out", threads=threads)
    return gated_figures(report), digest


def update_quality_baseline(baseline: Path = QUALITY_BASELINE, student: Path = REFERENCE_STUDENT) -> dict[str, Any]:
    """Measure the reference student twice (1 and 2 threads) and freeze the figures with their spread."""
    from pocketswap.core.files import atomic_write_json

    first, digest = measure(student, 1)
    second, _ = measure(student, 2)
    figures = {
        key: {"value": round(value, 6), "noise": round(abs(value - second.get(key, value)), 6), "better": direction(key.split(".", 1)[1])}
        for key, value in first.items()
    }  # fmt: skip
    result = {"student": str(student.relative_to(HERE)), "eval_set_sha256": digest, "floor": FLOOR,
              "relative_floor": RELATIVE_FLOOR, "figures": figures}  # fmt: skip
    atomic_write_json(baseline, result)
    return result


def run_quality_gate(baseline: Path = QUALITY_BASELINE, threads: int = 1) -> tuple[list[dict[str, Any]], bool]:
    """(one row per figure, passed): the reference student measured now against the frozen figures."""
    if not baseline.is_file():
        raise PocketswapError(
            f"{baseline}: no quality baseline; make one with `pocketswap bench gate --quality --update`"
        )
    schema = Obj({"student": str, "eval_set_sha256": str, "figures": Obj(values=Obj({"value": float, "noise": float},
                 required=("value", "noise"))), "floor": float, "relative_floor": float},
                 required=("student", "eval_set_sha256", "figures"))  # fmt: skip
    frozen = read_json(baseline, "quality baseline", error=PocketswapError, schema=schema)
    now, digest = measure(HERE / frozen["student"], threads)
    if digest != frozen["eval_set_sha256"]:
        raise PocketswapError(
            "the frozen eval set changed (bundled samples or their variants); re-freeze with --update"
        )
    return compare(frozen, now)


def compare(frozen: dict[str, Any], now: dict[str, float]) -> tuple[list[dict[str, Any]], bool]:
    """Each frozen figure against its value now: worse by more than its noise plus the floor fails."""
    rows, passed = [], True
    for key, entry in frozen["figures"].items():
        value = now.get(key)
        floor = max(frozen.get("floor", FLOOR), frozen.get("relative_floor", RELATIVE_FLOOR) * abs(entry["value"]))
        allowed = entry["noise"] + floor
        if value is None:
            drop = float("inf")
        else:
            drop = entry["value"] - value if entry["better"] == "higher" else value - entry["value"]
        ok = bool(drop <= allowed)
        passed &= ok
        rows.append({"figure": key, "baseline": entry["value"], "now": value, "noise": entry["noise"],
                     "allowed": round(allowed, 6), "passed": ok})  # fmt: skip
    return rows, passed


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'figure':<34}{'baseline':>10}{'now':>10}{'noise':>9}{'allowed':>9}  verdict"]
    for r in rows:
        now = "-" if r["now"] is None else f"{r['now']:.4f}"
        lines.append(f"{r['figure']:<34}{r['baseline']:>10.4f}{now:>10}{r['noise']:>9.4f}{r['allowed']:>9.4f}  "
                     f"{'ok' if r['passed'] else 'WORSE'}")  # fmt: skip
    return "\n".join(lines)
