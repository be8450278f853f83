"""The swap's pre- and post-processing as data: what an artifact's manifest records in ``swap_spec`` so that
a client written without pocketswap (Swift, Kotlin, JavaScript) crops, feeds and pastes exactly as
``pocketswap demo`` does. Every number comes from the constant the code itself uses."""

from __future__ import annotations

from typing import Any

import numpy as np

from pocketswap.faces import align, analyzer, facemesh, smoothing
from pocketswap.faces.types import KEYPOINT_GROUPS
from pocketswap.manifest import PIXEL_OFFSET, PIXEL_SCALE


def front_end_spec() -> dict[str, Any]:
    """How the 468 landmarks are found (MediaPipe's face_landmark_front_cpu recipe, LiteRT models)."""
    return {
        "detector": {"models": ["face_detection_short_range.tflite", "face_detection_full_range.tflite"],
                     "order": "short range first; full range when it finds no face", "min_score": analyzer.MIN_SCORE},
        "landmarks": {"model": facemesh.MODEL_FILE, "input_size": facemesh.INPUT_SIZE, "input_range": [0.0, 1.0],
                      "resample": "bilinear", "border": "replicate", "roi_scale": facemesh.ROI_SCALE,
                      "roi": "detection box (tracking: the previous landmarks' box), square on its long side",
                      "roi_rotation": [[0, 1], [facemesh.TRACK_ROTATION_START, facemesh.TRACK_ROTATION_END]],
                      "min_presence": analyzer.MIN_PRESENCE},
        "pixel_centres": "pixel i is centred on coordinate i (OpenCV)",
    }  # fmt: skip


def crop_spec(size: int, template: str) -> dict[str, Any]:
    """Landmarks -> 5 keypoints -> similarity -> the model's crop."""
    return {
        "keypoints": [list(group) for group in KEYPOINT_GROUPS],  # each keypoint: the mean of its landmarks
        "fit": "least-squares similarity (Umeyama, no reflection) of the keypoints onto template_points",
        "template_points": np.round(align.template_points(size, template), 4).tolist(),
        "size": size,
        "resample": "bicubic",
        "border": "reflect",  # OpenCV BORDER_REFLECT: fedcba|abcdefgh|hgfedcb
    }


def paste_spec() -> dict[str, Any]:
    """The swapped crop back into the frame (:func:`pocketswap.faces.align.paste_back`)."""
    return {
        "alpha": "the 'mask' output times an edge ramp: min(ramp(x), ramp(y)), ramp(i) = min(1, (i + 0.5) / "
        "(edge_ramp * size), (size - 0.5 - i) / (edge_ramp * size))",
        "edge_ramp": align.EDGE_RAMP,
        "colour_transfer": {
            "space": "CIELAB, 8-bit OpenCV scaling (L * 255 / 100, a + 128, b + 128)",
            "formula": "per channel x' = (x - mean_s) * g + mean_t, g = (std_t + eps) / (std_s + eps)",
            "source": "the swapped crop",
            "target": "the frame warped to the crop (bilinear, black border)",
            "region_above": align.COLOUR_REGION,  # the statistics' pixels: alpha above this
            "eps": align.COLOUR_EPS,
            "min_pixels": align.COLOUR_MIN_PIXELS,
        },
        "to_frame": {"resample": "bicubic", "border": "replicate",
                     "shrink_prefilter": "Gaussian blur, sigma = 0.5 * sqrt(1 / s^2 - 1), when the crop-to-frame "
                                         "scale s is under 1", "alpha_resample": "bilinear"},
        "fine_detail": "on a face larger than the crop: + (grey - grey taken to the crop and back, both bicubic with "
        "replicated borders), the same in R, G and B (BT.601 grey of the frame's face rectangle)",
        "blend": "frame = swapped * alpha + frame * (1 - alpha)",
    }  # fmt: skip


def video_spec() -> dict[str, Any]:
    """Tracking and landmark smoothing on video (:class:`pocketswap.demo.pipeline.LiveSwapper`)."""
    return {
        "detect_every": smoothing.DETECT_EVERY,  # frames; in between, track (landmarks from the last ones' ROI)
        "redetect": "when tracking loses a face (presence under min_presence)",
        "one_euro": {"min_cutoff_hz": smoothing.MIN_CUTOFF, "beta": smoothing.BETA,
                     "derivative_cutoff_hz": smoothing.DERIVATIVE_CUTOFF, "applies_to": "the 468 landmarks (pixels)"},
        "clock": "video files: frame index / frame rate (reproducible); cameras: seconds of the wall clock",
    }  # fmt: skip


def swap_spec(size: int, template: str) -> dict[str, Any]:
    """The manifest's ``swap_spec``: front end, crop, tensor normalisation, paste, video."""
    return {
        "front_end": front_end_spec(),
        "crop": crop_spec(size, template),
        "normalization": {"scale": PIXEL_SCALE, "offset": PIXEL_OFFSET, "channels": "RGB",
                          "output": "pixels = (y - offset) / scale, rounded and clipped to [0, 255]"},
        "paste": paste_spec(),
        "video": video_spec(),
    }  # fmt: skip


__all__ = ["crop_spec", "front_end_spec", "paste_spec", "swap_spec", "video_spec"]
