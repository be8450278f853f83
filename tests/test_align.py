"""Similarity alignment, templates and paste-back (pure geometry: no detector needed)."""

import cv2
import numpy as np
import pytest

from pocketswap.faces import samples
from pocketswap.faces.align import (
    ARCFACE_112,
    align_face,
    color_transfer,
    hull_mask,
    paste_back,
    similarity_transform,
    template_points,
    transform_points,
)


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(17.0), 1.7, np.array([12.0, -30.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_112.astype(np.float64)
    dst = src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-4)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-3)
    np.testing.assert_allclose(transform_points(src, matrix), dst, atol=1e-3)


@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_arcface_template_scales_like_insightface(size):
    points = template_points(size)
    if size % 112 == 0:
        np.testing.assert_allclose(points, ARCFACE_112 * size / 112, rtol=1e-6)
    else:
        np.testing.assert_allclose(points, (ARCFACE_112 + [8, 0]) * size / 128, rtol=1e-6)
    assert (points > 0).all() and (points < size).all()


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="unknown alignment template 'ffhq'"):
        template_points(224, "ffhq")


def test_align_puts_keypoints_on_the_template():
    image = samples.load("astronaut")
    target = template_points(224)
    # Keypoints of a synthetic face: the template mapped into the image by a rotation+scale.
    theta = np.deg2rad(-12)
    back = 1.3 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    keypoints = target @ back.T + [120, 40]
    aligned = align_face(image, keypoints, 224)
    assert aligned.crop.shape == (224, 224, 3)
    np.testing.assert_allclose(transform_points(keypoints, aligned.matrix), target, atol=1e-3)


def test_paste_back_changes_only_the_masked_face_region():
    frame = samples.load("grace_hopper")
    keypoints = template_points(224) * 0.9 + [150, 180]
    aligned = align_face(frame, keypoints, 224)
    crop = np.zeros_like(aligned.crop)  # paint the face black so every changed pixel is visible
    mask = hull_mask(template_points(224), 224, feather=0.0)
    out = paste_back(frame, crop, aligned.matrix, mask=mask)
    changed = np.abs(out.astype(int) - frame.astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    face_in_frame = transform_points(template_points(224), cv2.invertAffineTransform(aligned.matrix))
    assert changed.sum() > 1000
    assert xs.min() >= face_in_frame[:, 0].min() - 3 and xs.max() <= face_in_frame[:, 0].max() + 3
    assert ys.min() >= face_in_frame[:, 1].min() - 3 and ys.max() <= face_in_frame[:, 1].max() + 3
    assert out[ys, xs].mean() < frame[ys, xs].mean()
    assert frame is not out and not np.shares_memory(frame, out)


def test_paste_back_of_the_aligned_crop_is_nearly_lossless():
    frame = samples.load("astronaut")
    aligned = align_face(frame, template_points(224) * 0.7 + [130, 60], 224)
    out = paste_back(frame, aligned.crop, aligned.matrix, mask=np.ones((224, 224), np.float32))
    assert np.abs(out.astype(int) - frame.astype(int)).mean() < 2.0


def _face_detail(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).var())


def test_a_crop_at_the_faces_own_scale_round_trips_with_its_detail():
    """Out of the frame and back at about 1:1 (a 128 px crop of a ~110 px face, as the live pipeline
    does), the face keeps most of its fine detail: bicubic resampling, not a bilinear blur."""
    frame = samples.load("astronaut")
    aligned = align_face(frame, template_points(128) * 1.1 + [165, 75], 128)
    out = paste_back(frame, aligned.crop, aligned.matrix, mask=np.ones((128, 128), np.float32))
    inverse = cv2.invertAffineTransform(aligned.matrix)
    x0, y0 = transform_points(np.array([[24, 24]], np.float32), inverse)[0].astype(int)
    x1, y1 = transform_points(np.array([[104, 104]], np.float32), inverse)[0].astype(int)
    assert _face_detail(out[y0:y1, x0:x1]) > 0.7 * _face_detail(frame[y0:y1, x0:x1])


def test_a_paste_that_shrinks_its_crop_is_low_passed_first():
    """A 256 px crop pasted on a ~100 px face: filtered like an area resize, not point-sampled into alias."""
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # all detail, no structure
    frame = np.full((300, 300, 3), 128, np.uint8)
    matrix = similarity_transform(template_points(100) + 100, template_points(256))  # frame -> crop: 2.56x
    out = paste_back(frame, crop, matrix, mask=np.ones((256, 256), np.float32))
    inner = out[130:170, 130:170].astype(np.float32)
    area = cv2.resize(crop, (100, 100), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert inner.std() < 1.5 * area.std()  # point-sampling keeps the noise's full spread (~74)
    assert inner.std() < 0.4 * crop.std()


def test_a_face_larger_than_the_crop_keeps_the_frames_fine_detail():
    """A 128 px crop of a ~330 px face pasted back: soft on its own; with ``keep_detail`` the frame's
    luminance detail the crop cannot hold comes back (and the colour stays the crop's)."""
    frame = cv2.resize(samples.load("astronaut"), None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    aligned = align_face(frame, template_points(128) * 2.6 + [210, 90], 128)
    whole = np.ones((128, 128), np.float32)
    soft = paste_back(frame, aligned.crop, aligned.matrix, mask=whole)
    sharp = paste_back(frame, aligned.crop, aligned.matrix, mask=whole, keep_detail=True)
    inverse = cv2.invertAffineTransform(aligned.matrix)
    (x0, y0), (x1, y1) = transform_points(np.array([[24, 24], [104, 104]], np.float32), inverse).astype(int)
    face = (slice(y0, y1), slice(x0, x1))
    assert _face_detail(soft[face]) < 0.6 * _face_detail(frame[face])
    assert 0.9 * _face_detail(frame[face]) < _face_detail(sharp[face]) < 1.1 * _face_detail(frame[face])
    assert np.abs(sharp[face].astype(int) - frame[face].astype(int)).mean() < 1.5
    # a face no larger than the crop: nothing to add back
    small = align_face(frame, template_points(128) * 0.9 + [300, 200], 128)
    assert np.array_equal(
        paste_back(frame, small.crop, small.matrix, mask=whole),
        paste_back(frame, small.crop, small.matrix, mask=whole, keep_detail=True),
    )


def test_hull_mask_is_feathered():
    mask = hull_mask(template_points(224) * 1.0, 224, feather=0.05)
    assert mask.max() == pytest.approx(1.0, abs=1e-3)
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 0  # a soft edge exists
    assert mask[0, 0] == 0.0


def test_color_transfer_matches_lab_statistics():
    source = samples.load("astronaut")
    target = np.clip(source.astype(int) + [40, 10, -30], 0, 255).astype(np.uint8)
    mask = np.ones(source.shape[:2], np.float32)
    moved = color_transfer(source, target, mask)
    moved_lab = cv2.cvtColor(moved, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
    target_lab = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
    source_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)
    # Clipping to uint8 leaves a small residue; the shift itself must be mostly removed.
    assert np.abs(moved_lab - target_lab).max() < 0.25 * np.abs(source_lab - target_lab).max()
