"""Face detection + 468 landmarks on the bundled sample faces (BlazeFace + FaceMesh via LiteRT)."""

from __future__ import annotations

import zipfile
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pocketswap.core.errors import ConfigError, ModelSignatureError, NoFaceError
from pocketswap.faces import samples
from pocketswap.faces.analyzer import FaceAnalyzer, main_face_order
from pocketswap.faces.blazeface import MODELS, BlazeFace, Detection, generate_anchors, weighted_nms
from pocketswap.faces.facemesh import Roi, roi_from_detection
from pocketswap.faces.mediapipe_tasks import TasksFaceLandmarker
from pocketswap.faces.types import Face


@pytest.fixture(scope="module")
def short() -> FaceAnalyzer:
    return FaceAnalyzer("short")


@pytest.fixture(scope="module")
def full() -> FaceAnalyzer:
    return FaceAnalyzer("full")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return samples.load("astronaut")


@pytest.fixture(scope="module")
def grace() -> np.ndarray:
    return samples.load("grace_hopper")


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def assert_sane_face(face: Face) -> None:
    """Eyes above nose above mouth, left/right in order, eye distance a sensible fraction of the box."""
    assert face.landmarks.shape == (468, 3) and face.landmarks.dtype == np.float32
    assert face.box.shape == (4,) and face.box.dtype == np.float32
    assert 0.5 <= face.score <= 1.0
    left_eye, right_eye, nose, mouth_left, mouth_right = face.keypoints
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    eyes_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (mouth_left[1] + mouth_right[1]) / 2
    assert eyes_y < nose[1] < mouth_y
    width = face.box[2] - face.box[0]
    assert 0.25 < np.linalg.norm(right_eye - left_eye) / width < 0.6
    # Landmarks inside the box (the box is their extent) and the face roughly square.
    xy = face.landmarks[:, :2]
    assert np.all(xy >= face.box[:2] - 0.5) and np.all(xy <= face.box[2:] + 0.5)
    assert 0.7 < (face.box[3] - face.box[1]) / width < 1.5


def test_anchors_match_mediapipe_layout() -> None:
    short_anchors = generate_anchors(MODELS["short"].anchors)
    full_anchors = generate_anchors(MODELS["full"].anchors)
    assert short_anchors.shape == (896, 2) and full_anchors.shape == (2304, 2)
    # 16x16 cells with 2 anchors each, then 8x8 cells with 6 anchors each; centres at cell middles.
    np.testing.assert_allclose(short_anchors[:3], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])
    np.testing.assert_allclose(short_anchors[512:519], [[0.5 / 8, 0.5 / 8]] * 6 + [[1.5 / 8, 0.5 / 8]])
    np.testing.assert_allclose(
        full_anchors[[0, 1, 48]], [[0.5 / 48, 0.5 / 48], [1.5 / 48, 0.5 / 48], [0.5 / 48, 1.5 / 48]]
    )


def test_weighted_nms_blends_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    keypoints = np.zeros((3, 6, 2), np.float32)
    keypoints[1] = 3.0
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    out_boxes, out_keypoints, out_scores = weighted_nms(boxes, keypoints, scores, 0.3)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])
    np.testing.assert_allclose(out_boxes[0], [0.6, 0, 10.6, 10], atol=1e-5)  # (0.6 * b0 + 0.9 * b1) / 1.5
    np.testing.assert_allclose(out_keypoints[0], 1.8, atol=1e-5)
    np.testing.assert_allclose(out_boxes[1], boxes[2])


def test_roi_warp_and_projection_are_inverse() -> None:
    roi = Roi(cx=200.0, cy=150.0, size=120.0, angle=0.4)
    points = np.array([[10.0, 20.0, 5.0], [96.0, 96.0, -3.0], [180.0, 40.0, 0.0]], np.float32)
    image_xy = roi.crop_to_image(points)
    back = image_xy[:, :2] @ roi.image_to_crop()[:, :2].T + roi.image_to_crop()[:, 2]
    np.testing.assert_allclose(back + 0.5, points[:, :2], atol=1e-3)  # continuous vs pixel-centre crop coordinates
    np.testing.assert_allclose(image_xy[:, 2], points[:, 2] * 120.0 / 192.0, rtol=1e-5)  # z scaled like x


def test_astronaut_one_face(short: FaceAnalyzer, astronaut: np.ndarray) -> None:
    faces = short.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert 155 < x0 < 200 and 250 < x1 < 290 and 50 < y0 < 95 and 150 < y1 < 195, face.box
    assert face.score > 0.8
    assert_sane_face(face)
    # Landmarks agree with the BlazeFace detection and its keypoints.
    (detection,) = short.detections(astronaut)
    grown = detection.box + np.array([-0.25, -0.25, 0.25, 0.25]) * (detection.box[2] - detection.box[0])
    xy = face.landmarks[:, :2]
    assert np.all((xy >= grown[:2]) & (xy <= grown[2:]))
    assert np.linalg.norm(face.keypoints[0] - detection.keypoints[0]) < 10  # image-left eye
    assert np.linalg.norm(face.keypoints[1] - detection.keypoints[1]) < 10  # image-right eye


def test_grace_hopper_one_face(short: FaceAnalyzer, grace: np.ndarray) -> None:
    faces = short.detect(grace)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 140 < x0 < 200 and 330 < x1 < 390 and 100 < y0 < 160 and 300 < y1 < 360, faces[0].box
    assert_sane_face(faces[0])


def test_all_faces_largest_first(full: FaceAnalyzer, astronaut: np.ndarray, grace: np.ndarray) -> None:
    canvas = np.full((600, 1024, 3), 200, np.uint8)
    canvas[:512, :512] = astronaut
    canvas[75:525, 600:984] = cv2.resize(grace, (384, 450), interpolation=cv2.INTER_AREA)
    faces = full.detect(canvas, all_faces=True)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] > 600 and faces[1].box[2] < 512  # Grace (bigger) first, then the astronaut
    for face in faces:
        assert_sane_face(face)
    (largest,) = full.detect(canvas)
    np.testing.assert_array_equal(largest.box, faces[0].box)


def test_a_large_false_positive_does_not_win_over_a_confident_face(astronaut: np.ndarray) -> None:
    """A press photo's building detected at 0.71, larger than the speaker's face at 0.96, must not be
    the face every stage follows (a synthetic false positive beside the real detections)."""
    analyzer = FaceAnalyzer(detector="short")
    real = analyzer._detectors["short"]
    (true_face,) = real(astronaut)
    building = Detection(np.array([250, 150, 510, 510], np.float32), 0.71, np.tile([[380.0, 330.0]], (6, 1)))
    assert building.area > true_face.area and true_face.score > 0.85
    assert main_face_order([building, true_face])[0] is true_face
    analyzer._detectors["short"] = lambda image: [building, *real(image)]
    for face in (analyzer.detect(astronaut)[0], analyzer.detect(astronaut, all_faces=True)[0]):
        assert box_iou(face.box, true_face.box) > 0.3  # the astronaut, not the building


def test_auto_finds_the_small_faces_of_a_group_photo() -> None:
    """A synthetic group photo: 32 bundled faces of 60-130 px in 1280x720. Both models see the frame
    downscaled to 128/192 px and find none; "auto" with all faces adds overlapping full-range tiles."""
    rng = np.random.default_rng(0)
    canvas = np.full((720, 1280, 3), 90, np.uint8)
    for k, name in enumerate(samples.names()[:32]):
        image = samples.load(name)
        pad = int(image.shape[0] * 0.4)
        side = int(rng.integers(60, 130))
        face = cv2.resize(cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE), (side, side))
        y, x = 40 + (k // 8) * 170 + int(rng.integers(0, 40)), 20 + (k % 8) * 155 + int(rng.integers(0, 30))
        canvas[y : y + side, x : x + side] = face
    found = {
        name: len(FaceAnalyzer(detector=name).detect(canvas, all_faces=True, tiled=True)) for name in ("short", "auto")
    }
    assert found["short"] <= 3 and found["auto"] >= 20, found  # measured: 0 and 26 of 32


def test_all_faces_single_face_image(short: FaceAnalyzer, astronaut: np.ndarray) -> None:
    faces = short.detect(astronaut, all_faces=True)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, short.detect(astronaut)[0].box)


@pytest.mark.parametrize("variant", ["gray_uint8", "gray_float", "rgba", "uint16"])
def test_other_image_formats(short: FaceAnalyzer, astronaut: np.ndarray, variant: str) -> None:
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    image = {
        "gray_uint8": gray,
        "gray_float": gray.astype(np.float32) / 255.0,
        "rgba": np.dstack([astronaut, np.full(gray.shape, 255, np.uint8)]),
        "uint16": astronaut.astype(np.uint16) * 257,
    }[variant]
    faces = short.detect(image)
    assert len(faces) == 1
    assert box_iou(faces[0].box, short.detect(astronaut)[0].box) > 0.85
    assert_sane_face(faces[0])


def _no_face_images() -> dict[str, np.ndarray]:
    from skimage.data import lfw_subset

    rng = np.random.default_rng(0)
    non_face = cv2.resize(lfw_subset()[150], (200, 200), interpolation=cv2.INTER_CUBIC)  # 100..199 are non-faces
    return {
        "grey": np.full((480, 640, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "lfw_non_face": non_face,
    }


@pytest.mark.parametrize("name", ["grey", "noise", "lfw_non_face"])
def test_no_face(short: FaceAnalyzer, full: FaceAnalyzer, name: str) -> None:
    image = _no_face_images()[name]
    assert short.detect(image, all_faces=True) == []
    assert full.detect(image, all_faces=True) == []
    with pytest.raises(NoFaceError, match=f"no face found in {name}.png"):
        short.detect_one(image, source=f"{name}.png")


def test_full_range_finds_small_face(astronaut: np.ndarray) -> None:
    canvas = np.full((960, 1280, 3), 90, np.uint8)
    canvas[10:490, 790:1270] = cv2.resize(astronaut, (480, 480), interpolation=cv2.INTER_AREA)  # face ~85 px
    assert FaceAnalyzer("short").detect(canvas) == []
    for detector in ("full", "auto"):
        faces = FaceAnalyzer(detector).detect(canvas)
        assert len(faces) == 1, detector
        x0, y0, x1, y1 = faces[0].box
        assert 900 < x0 < 980 and 1000 < x1 < 1080 and 50 < y0 < 110 and 140 < y1 < 200, faces[0].box
        assert_sane_face(faces[0])


def test_track_follows_shift(short: FaceAnalyzer, astronaut: np.ndarray) -> None:
    face = short.detect_one(astronaut)
    shift = np.array([9.0, -6.0])
    moved = cv2.warpAffine(astronaut, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (512, 512),
                           borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    tracked = short.track(moved, face)
    assert tracked is not None
    motion = tracked.landmarks[:, :2] - face.landmarks[:, :2]
    np.testing.assert_allclose(np.median(motion, axis=0), shift, atol=1.5)
    assert np.percentile(np.linalg.norm(motion - shift, axis=1), 90) < 4.0
    assert_sane_face(tracked)
    # Track again from the tracked face (frame-to-frame chaining) and lose it on an empty frame.
    assert short.track(moved, tracked) is not None
    assert short.track(np.full_like(astronaut, 128), face) is None


def test_rotated_face_landmarks_follow_rotation(short: FaceAnalyzer, astronaut: np.ndarray) -> None:
    face = short.detect_one(astronaut)
    matrix = cv2.getRotationMatrix2D((255.5, 255.5), 35, 1.0)
    rotated = cv2.warpAffine(astronaut, matrix, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    (turned,) = short.detect(rotated)
    expected = face.landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    assert np.median(np.linalg.norm(turned.landmarks[:, :2] - expected, axis=1)) < 3.0
    roi = roi_from_detection(short.detections(rotated)[0])
    assert abs(np.degrees(roi.angle) + 35) < 10  # counter-clockwise image rotation -> negative ROI angle


def test_invalid_configuration() -> None:
    with pytest.raises(ConfigError, match="detector"):
        FaceAnalyzer("medium")
    with pytest.raises(ConfigError, match="min_score"):
        FaceAnalyzer(min_score=1.5)
    with pytest.raises(ValueError):
        BlazeFace("medium")


def test_task_file_missing(tmp_path) -> None:
    with pytest.raises(ModelSignatureError, match="no such file"):
        FaceAnalyzer(task_file=tmp_path / "face_landmarker.task")


def test_task_file_garbage(tmp_path) -> None:
    garbage = tmp_path / "face_landmarker.task"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelSignatureError, match="not a MediaPipe .task bundle"):
        FaceAnalyzer(task_file=garbage)
    no_models = tmp_path / "empty_bundle.task"
    with zipfile.ZipFile(no_models, "w") as bundle:
        bundle.writestr("readme.txt", "nothing here")
    with pytest.raises(ModelSignatureError, match="holds no .tflite"):
        FaceAnalyzer(task_file=no_models)


def test_task_file_with_invalid_models(tmp_path) -> None:
    """A zip that looks like a bundle but holds broken models is rejected by MediaPipe itself."""
    bundle_path = tmp_path / "broken.task"
    with zipfile.ZipFile(bundle_path, "w") as bundle:
        bundle.writestr("face_detector.tflite", b"\0" * 1000)
        bundle.writestr("face_landmarks_detector.tflite", b"\0" * 1000)
    with pytest.raises(ModelSignatureError, match="MediaPipe cannot load"):
        FaceAnalyzer(task_file=bundle_path)


def test_tasks_result_conversion(astronaut: np.ndarray) -> None:
    """The Tasks backend's result -> `Face` conversion (478 normalised points -> 468 in pixels)."""
    rng = np.random.default_rng(2)
    normalised = rng.uniform(0.3, 0.6, (478, 3)).astype(np.float32)
    points = [SimpleNamespace(x=float(x), y=float(y), z=float(z)) for x, y, z in normalised]
    fake = SimpleNamespace(detect=lambda image: SimpleNamespace(face_landmarks=[points]))
    backend = TasksFaceLandmarker.__new__(TasksFaceLandmarker)
    backend.path, backend._landmarker = "fake.task", fake
    image = astronaut[:400]  # 512 wide, 400 high
    (face,) = backend.detect(image)
    np.testing.assert_allclose(face.landmarks[:, 0], normalised[:468, 0] * 512 - 0.5, rtol=1e-5)
    np.testing.assert_allclose(face.landmarks[:, 1], normalised[:468, 1] * 400 - 0.5, rtol=1e-5)
    np.testing.assert_allclose(face.landmarks[:, 2], normalised[:468, 2] * 512, rtol=1e-5)
    np.testing.assert_allclose(face.box[:2], face.landmarks[:, :2].min(axis=0))
    np.testing.assert_allclose(face.box[2:], face.landmarks[:, :2].max(axis=0))
