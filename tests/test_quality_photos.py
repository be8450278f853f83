"""The real-photo quality harness on bundled colour photos: each artefact measure ranks its own defect
worse on real photos, gaze follows the pupils, `bench quality --people` scores every axis for student,
teacher and input (and a clip), the report shows it, and the quality gate passes the frozen student and
fails a figure that got worse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketswap.benchmarks.degrade import DEFECTS, OWN_MEASURE, check_measures
from pocketswap.faces import samples
from pocketswap.faces.analyzer import FaceAnalyzer


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(detector="auto")


def test_each_artefact_measure_ranks_its_own_defect_worse_on_real_photos(analyzer):
    photos = [(name, samples.load(name)) for name in ("astronaut", "grace_hopper")]
    report = check_measures(photos, analyzer)
    assert report["photos"] == ["astronaut", "grace_hopper"]
    untouched = report["defects"]["none"]
    assert untouched["sharpness"]["median"] == 1.0 and untouched["colour_mismatch"]["max"] == 0.0
    for defect in DEFECTS:
        assert report["defects"][defect]["ranked_worse"] == 1.0, (defect, report["defects"][defect])
    # and each defect moves its own measure well beyond what the other defects do to it
    for defect, (measure, larger) in OWN_MEASURE.items():
        own = report["defects"][defect][measure]["median"]
        others = [report["defects"][d][measure]["median"] for d in DEFECTS if d != defect]
        assert (own > max(others)) if larger else (own < min(others)), (defect, measure, own, others)


def test_teeth_kept_reads_teeth_smeared_over_and_skips_a_mouth_without_teeth(analyzer):
    """She smiles with her teeth: the photo keeps all of them (1.0), a swap whose mouth is painted over with the
    lips' colour keeps none (smeared), and a mouth drawn closed is not measured (NaN)."""
    import cv2

    from pocketswap.distill.artefacts import TEETH_KEPT_MIN, teeth_kept
    from pocketswap.faces.types import INNER_LIP

    photo = samples.load("astronaut")
    landmarks = analyzer.detect_one(photo).landmarks[:, :2].copy()
    lips = list(INNER_LIP)
    assert teeth_kept(photo, landmarks, photo, landmarks) == 1.0
    smeared = photo.copy()
    cv2.fillPoly(smeared, [np.round(landmarks[lips]).astype(np.int32)], (150, 80, 80))
    assert teeth_kept(smeared, landmarks, photo, landmarks) < TEETH_KEPT_MIN
    assert teeth_kept(smeared, None, photo, landmarks) == 0.0  # no face found in the swap: nothing kept
    closed = landmarks.copy()  # the inner lips drawn together
    centre = closed[lips].mean(axis=0)
    closed[lips] = centre + (closed[lips] - centre) * [1.0, 0.05]
    assert np.isnan(teeth_kept(photo, closed, photo, closed))


def test_gaze_follows_the_pupils_and_mirrors_with_the_face(analyzer):
    from pocketswap.faces.iris import IrisModel, gaze_offsets

    photo = samples.load("astronaut")
    iris = IrisModel()
    face = analyzer.detect_one(photo)
    pupils = iris.pupils(photo, face.landmarks)
    for pupil, (outer, inner) in zip(pupils, ((33, 133), (362, 263)), strict=True):
        corners = face.landmarks[[outer, inner], :2]
        assert corners[:, 0].min() < pupil[0] < corners[:, 0].max()  # between the eye's corners
        assert abs(pupil[1] - corners[:, 1].mean()) < 0.3 * np.ptp(corners[:, 0])
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    face_m = analyzer.detect_one(mirrored)
    pupils_m = iris.pupils(mirrored, face_m.landmarks)
    flipped = np.stack([photo.shape[1] - 1 - pupils_m[:, 0], pupils_m[:, 1]], axis=1)
    assert np.abs(np.sort(flipped, axis=0) - np.sort(pupils, axis=0)).max() < 2.5  # the same pupils, mirrored
    assert np.abs(gaze_offsets(pupils, face.landmarks)).max() < 0.25  # she looks at the camera


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """`bench quality --people` on the frozen bundled eval set, a random-weight nano student and the clip."""
    from test_identity import _arcface_model

    from pocketswap.benchmarks.quality_gate import write_eval_set
    from pocketswap.cli import main
    from pocketswap.student import StudentNet, get_preset
    from pocketswap.student.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("harness")
    _arcface_model(root / "judge.onnx")  # a second (tiny, random) ArcFace-style recogniser
    torch.manual_seed(0)
    student = save_checkpoint(root / "nano", StudentNet(get_preset("nano")).eval())
    write_eval_set(root / "people")
    argv = ["bench", "quality", str(student), "--people", str(root / "people"), "--out", str(root / "out"),
            "--video", "clip", "--html", str(root / "quality.html"), "--judge", str(root / "judge.onnx")]  # fmt: skip
    assert main(argv) == 0
    return root, json.loads((root / "out" / "quality_photos.json").read_text())


@pytest.mark.slow
def test_photo_harness_scores_every_axis_for_student_teacher_and_input(harness):
    from pocketswap.benchmarks.photos import METHODS, summary_rows

    root, report = harness
    assert report["people"] == ["astronaut", "grace_hopper"] and report["photos"] == 6
    for _, _, key in summary_rows(report):
        for method in METHODS:
            assert report["summary"][method].get(key) is not None, (method, key)
    unchanged = report["summary"]["input"]
    assert unchanged["sharpness"] == unchanged["seam"] == unchanged["chroma_noise"] == 1.0
    assert unchanged["colour_mismatch"] == unchanged["pose_error"] == unchanged["gaze_error"] == 0.0
    assert unchanged["dlib_same"] == 0.0  # the other person's photo is not the identity
    again = report["summary"]["recaptured"]  # the same frames captured once more: the measures' own noise
    assert again["sharpness"] < 1.0 and again["dlib_same"] == 0.0
    assert 0.0 < again["expression_state_error"] < 0.05 and again["pose_error"] > 0.0
    teacher = report["summary"]["teacher"]
    assert teacher["dlib_same"] > unchanged["dlib_same"] and teacher["dlib_distance"] < unchanged["dlib_distance"]
    if importlib.util.find_spec("dlib"):  # the second expression judge (dev extra): the photo reads as itself
        assert unchanged["expression_dlib68_error"] == 0.0 < teacher["expression_dlib68_error"]
    judge = str(root / "judge.onnx")
    assert report["judges"]["dlib"]["training_loss"] is True and report["judges"][judge]["training_loss"] is False
    assert all(report["summary"][m][f"{judge}_distance"] is not None for m in METHODS)
    assert {r["identity"] for r in report["rows"]} == {"astronaut", "grace_hopper"}
    assert all(r["identity"] != r["owner"] for r in report["rows"])  # never judged on the photo's own person
    for images in report["worst"].values():
        assert images and all((root / "out" / name).is_file() for name in images)
    video = report["video"]
    assert video["frames"] == 48 and video["input"]["flicker"] == 1.0 and video["input"]["landmark_jitter"] == 0.0
    assert video["teacher"]["identity_distance_mean"] < video["input"]["identity_distance_mean"]
    page = (root / "quality.html").read_text()
    assert "Quality on real photos" in page and "worst dlib distance" in page and page.count("<img") >= 6


@pytest.mark.slow
def test_quality_gate_passes_the_frozen_student_and_fails_a_worse_figure():
    from pocketswap.benchmarks.quality_gate import HERE, QUALITY_BASELINE, compare, measure

    frozen = json.loads(QUALITY_BASELINE.read_text())
    now, digest = measure(HERE / frozen["student"], threads=1)
    assert digest == frozen["eval_set_sha256"]
    rows, passed = compare(frozen, now)
    assert passed, [r for r in rows if not r["passed"]]
    assert {r["figure"] for r in rows} >= {"student.dlib_same", "teacher.seam", "student.gaze_error"}
    raised = json.loads(json.dumps(frozen))  # a baseline that the student no longer reaches on one figure
    raised["figures"]["teacher.dlib_distance"]["value"] -= 0.01
    rows, passed = compare(raised, now)
    assert not passed and [r["figure"] for r in rows if not r["passed"]] == ["teacher.dlib_distance"]


def test_dlib_68_point_judge_reads_an_open_mouth_and_a_closed_one():
    pytest.importorskip("dlib")
    from pocketswap.benchmarks.photos import Dlib68Expression, recapture
    from pocketswap.faces.analyzer import shared_analyzer

    judge, analyzer = Dlib68Expression.load(), shared_analyzer()
    states = {}
    for name in ("astronaut", "grace_hopper"):  # a smile with the lips apart; closed lips
        image = samples.load(name)
        again = recapture(image)
        states[name] = judge.state(image, analyzer.detect_one(image))
        assert abs(judge.state(again, analyzer.detect_one(again))[0] - states[name][0]) < 0.01, name
        assert np.all((states[name][1:] > 0.1) & (states[name][1:] < 0.6)), name  # open eyes, under their width
    assert states["astronaut"][0] > 0.1 > 0.03 > states["grace_hopper"][0]


@pytest.fixture(scope="module")
def panel(harness, tmp_path_factory):
    """`bench panel` on the harness's quality run, with the teacher's swaps given once more as an --extra method."""
    import shutil

    from pocketswap.cli import main

    root, _ = harness
    extra = tmp_path_factory.mktemp("extra")
    for path in (root / "out" / "swaps" / "teacher").glob("*.jpg"):
        shutil.copy(path, extra / path.name)
    out = root / "panel"
    argv = ["bench", "panel", str(root / "out"), "--out", str(out), "--extra", f"theirs={extra}",
            "--people", str(root / "people")]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "key.json").read_text())


@pytest.mark.slow
def test_panel_shows_each_photo_once_under_neutral_names_and_keeps_the_key_apart(panel):
    out, key = panel
    items = key["items"]
    assert {i["source"] for i in items} == {"photo", "student", "teacher", "theirs"}
    assert len({i["photo"] for i in items}) == len(items) == 6  # every photo once, never beside its own swap
    rate = sorted(p.name for p in (out / "rate").iterdir())
    assert rate == sorted(["index.html", *(i["image"] for i in items)])
    page = (out / "rate" / "index.html").read_text()
    for secret in ("teacher", "student", "theirs", "grace_hopper", "astronaut", "_as_"):
        assert secret not in page and all(secret not in name for name in rate)
    assert not (out / "rate" / "key.json").exists()
    theirs = [i for i in items if i["source"] == "theirs"]  # --extra swaps judged like the run's own
    teacher_rows = {(i["photo"], i["identity"]): i["judged_identity"] for i in items if i["source"] == "teacher"}
    assert all(isinstance(i["judged_identity"], bool) and i["identity_distance"] is not None for i in theirs)
    assert all(teacher_rows.get((i["photo"], i["identity"]), v) == v for i in theirs for v in [i["judged_identity"]])
    from pocketswap.core.imageio import read_image

    crops = [read_image(out / "rate" / i["image"]) for i in items]
    assert all(c.shape == (320, 320, 3) and c.std() > 10 for c in crops)


@pytest.mark.slow
def test_panel_page_rates_with_keys_in_headless_chromium_from_file_url(panel, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from pocketswap.benchmarks.app import chromium_path
    from pocketswap.benchmarks.panel import score_panel
    from pocketswap.core.errors import PocketswapError

    try:
        executable = chromium_path()
    except PocketswapError as exc:
        pytest.skip(str(exc))
    out, key = panel
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((out / "rate" / "index.html").as_uri())
        page.fill("#rater", "tester")
        page.click("#start")
        for number in range(len(key["items"])):
            page.wait_for_function("document.getElementById('face').naturalWidth === 320")
            assert page.text_content("#progress").startswith(f"face {number + 1} of {len(key['items'])}")
            page.keyboard.press("Enter")  # not rated yet: stays on this face
            assert page.text_content("#progress").startswith(f"face {number + 1} ")
            page.keyboard.press(str(number % 5 + 1))
            if number == 0:
                page.fill("#reason", "teeth look grey")
            page.keyboard.press("Enter")
        assert page.is_visible("#save")
        answers = json.loads(page.evaluate("window.panelAnswers()"))
        with page.expect_download() as download:
            page.click("#save")
        saved = json.loads(Path(download.value.path()).read_text())
        browser.close()
    assert not errors and saved == answers
    assert answers["rater"] == "tester" and [a["score"] for a in answers["answers"]] == [n % 5 + 1 for n in range(6)]
    assert answers["answers"][0]["reason"] == "teeth look grey"
    (tmp_path / "a.json").write_text(json.dumps(answers))
    scores = score_panel(out / "key.json", [tmp_path / "a.json"])
    assert sum(s["n"] for s in scores["sources"].values()) == 6


def test_panel_scores_merge_raters_with_intervals_joint_share_and_grouped_reasons(tmp_path):
    from pocketswap.benchmarks.panel import format_scores, score_panel, wilson_interval
    from pocketswap.cli import main
    from pocketswap.core.errors import ConfigError

    items = [{"image": f"face_{n:03d}.png", "source": s, "judged_identity": j}
             for n, (s, j) in enumerate([("photo", None)] * 4 + [("teacher", True)] * 3 + [("teacher", False)])]  # fmt: skip
    (tmp_path / "key.json").write_text(json.dumps({"kind": "panel_key", "panel": "panel-x", "items": items}))
    first = [5, 4, 4, 2, 5, 4, 1, 5]  # photos: 3 of 4 real; teacher: 004, 005, 007 real, 004 and 005 judged
    second = [4, 3, 5, 5, 2, 2, 2, 4]  # photos 3 of 4; teacher: face_007 real but not judged the identity
    reasons = {4: "Teeth are grey and the mouth smeared", 6: "halo along the jaw; skin tone differs", 7: ""}
    for name, scores in (("a", first), ("b", second)):
        answers = [
            {"image": f"face_{n:03d}.png", "score": s, "reason": reasons.get(n, "")} for n, s in enumerate(scores)
        ]
        (tmp_path / f"{name}.json").write_text(json.dumps({"panel": "panel-x", "rater": name, "answers": answers}))
    result = score_panel(tmp_path / "key.json", [tmp_path / "a.json", tmp_path / "b.json"])
    photo, teacher = result["sources"]["photo"], result["sources"]["teacher"]
    assert result["raters"] == 2 and photo["n"] == 8 and teacher["n"] == 8
    assert photo["rated_real"] == 6 and "passing" not in photo
    assert teacher["rated_real"] == 4 and teacher["passing"] == 2 and teacher["judged_identity_share"] == 0.75
    assert teacher["rated_real_ci95"] == pytest.approx((0.2152, 0.7848), abs=1e-4)  # Wilson, 4 of 8
    assert wilson_interval(0, 12)[0] == 0.0 and 0.24 < wilson_interval(0, 12)[1] < 0.25
    assert teacher["mean_score"] == pytest.approx(25 / 8)
    assert teacher["reasons"] == {"mouth, teeth, lips": 2, "skin texture": 4, "seam, edge, halo": 2,
                                  "tone, colour, light": 2}  # fmt: skip
    text = format_scores(result)
    assert "teacher" in text and "4/8 50% [22%-78%]" in text and "2/8 25%" in text
    assert main(["bench", "panel", "--score", str(tmp_path / "a.json"), "--key", str(tmp_path / "key.json"),
                 "--json", str(tmp_path / "s.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "s.json").read_text())["sources"]["teacher"]["n"] == 4
    (tmp_path / "bad.json").write_text(
        json.dumps({"panel": "panel-x", "answers": [{"image": "face_000.png", "score": 7}]})
    )
    (tmp_path / "other.json").write_text(json.dumps({"panel": "panel-y", "answers": []}))
    for bad in ("bad.json", "other.json", "missing.json"):
        with pytest.raises(ConfigError):
            score_panel(tmp_path / "key.json", [tmp_path / bad])
        assert main(["bench", "panel", "--score", str(tmp_path / bad), "--key", str(tmp_path / "key.json")]) == 2


@pytest.mark.parametrize(
    "report", [b"", b"\xff\xfe", b"[" * 100_000, b'{"rows": 5}', b'{"rows": [{"method": "teacher"}]}', b'{"rows": []}']
)
def test_panel_on_a_broken_quality_report_is_one_line(tmp_path, capsys, report):
    """A cut, garbled, deep or foreign quality_photos.json (or one with no swaps) is one error line, exit 2."""
    from pocketswap.cli import main

    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "quality_photos.json").write_bytes(report)
    assert main(["bench", "panel", str(tmp_path / "q"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pocketswap: error:") and "\n" not in err and "Traceback" not in err, err
