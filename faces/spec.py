"""The swap's pre- and post-processing as data: what an artifact's manifest records in ``swap_spec`` so that
a client written without pocketswap (Swift, Kotlin, JavaScript) crops, feeds and pastes exactly as
``pocketswap demo`` does. Every number comes from the constant the code itself uses."""

from __future__ import annotations

from typing import Any

import numpy as np

from pocketswap.core.manifest import WARPED_IDENTITY_INPUT
from pocketswap.core.spec import PIXELS, SwapSpec
from pocketswap.faces import align, analyzer, blazeface, facemesh, smoothing
from pocketswap.faces.raster import EDGE_REACH
from pocketswap.faces.shape import RIGID_FEATURES
from pocketswap.faces.types import INNER_LIP, KEYPOINT_GROUPS, MOUTH_CORNERS


def _detector_spec(name: str) -> dict[str, Any]:
    model = blazeface.MODELS[name]
    anchors = model.anchors
    return {
        "model": model.filename, "input_size": anchors.input_size, "input": "p * 2 / 255 - 1 (RGB)",
        "letterbox": "scale = input_size / max(w, h); the image resized (bilinear) to round(w * scale) x "
                     "round(h * scale) at offset ((input_size - new_w) // 2, (input_size - new_h) // 2) on zeros",
        "anchors": {"strides": list(anchors.strides), "anchor_offset": anchors.anchor_offset,
                    "per_cell": "1 per aspect ratio (+1 when interpolated_scale_aspect_ratio > 0) for each layer "
                                "of a run of equal strides; cells row-major, a cell's anchors together",
                    "aspect_ratios": list(anchors.aspect_ratios),
                    "interpolated_scale_aspect_ratio": anchors.interpolated_scale_aspect_ratio,
                    "centre": "((col + anchor_offset) / side, (row + anchor_offset) / side), side = ceil(input_size "
                              "/ stride)"},
        "outputs": {"boxes": "(1, anchors, 16): centre dx, dy, w, h, then 6 keypoints (dx, dy), input pixels; "
                             "/ input_size + anchor centre", "scores": "(1, anchors, 1) logits",
                    "score": "sigmoid(clip(logit, -score_clipping, score_clipping))",
                    "score_clipping": model.score_clipping},
        "min_score": analyzer.MIN_SCORE,
        "nms": {"algorithm": "weighted: best score first, the boxes with IoU > iou form a cluster, output their "
                             "score-weighted mean box and keypoints with the best score", "iou": model.min_suppression_iou},
        "to_image": "(letterbox coordinates * input_size - offset) * (w / new_w, h / new_h) - 0.5 (pixel centres)",
        "keypoints": list(blazeface.KEYPOINT_NAMES),
    }  # fmt: skip


def front_end_spec() -> dict[str, Any]:
    """How the 468 landmarks are found (MediaPipe's face_landmark_front_cpu recipe, LiteRT models), as data."""
    return {
        "detectors": [_detector_spec("short"), _detector_spec("full")],
        "detector_order": "short range; the full range one when the short range one gives no face",
        "main_face": {"score_margin": analyzer.MAIN_FACE_SCORE_MARGIN,
                      "rule": "detections within score_margin of the best score, largest box area first, then the "
                              "rest by area; the first whose landmarks are present is the face"},
        "landmarks": {"model": facemesh.MODEL_FILE, "input_size": facemesh.INPUT_SIZE, "input_range": [0.0, 1.0],
                      "roi": {"centre": "the box centre (tracking: the landmarks' bounding box)",
                              "side": "max(box w, box h) * roi_scale", "roi_scale": facemesh.ROI_SCALE,
                              "angle": "atan2 of the eye line, keypoint 0 -> 1 (tracking: landmark a -> b)",
                              "tracking_eye_line": [facemesh.TRACK_ROTATION_START, facemesh.TRACK_ROTATION_END]},
                      "image_to_input": "k = input_size / side; x_in = R(-angle) (p - centre) * k + (input_size - 1) "
                                        "/ 2, warped bilinear, replicated border",
                      "output_to_image": "p = R(angle) (q - input_size / 2) * side / input_size + centre; z * side / "
                                         "input_size",
                      "outputs": {"landmarks": "1404 values: 468 (x, y, z) input pixels",
                                  "presence": "sigmoid(clip(logit, -80, 80))"},
                      "min_presence": analyzer.MIN_PRESENCE},
        "pixel_centres": "pixel i is centred on coordinate i (OpenCV)",
    }  # fmt: skip


def crop_spec(size: int, template: str) -> dict[str, Any]:
    """Landmarks -> 5 keypoints -> similarity -> the model's crop."""
    return {
        "keypoints": [list(group) for group in KEYPOINT_GROUPS],  # each keypoint: the mean of its landmarks
        "fit": "least-squares similarity (Umeyama, no reflection) of the keypoints onto template_points",
        "template_points": np.round(align.template_points(size, template), 4).tolist(),
        "resample": "bicubic",
        "border": "reflect",  # OpenCV BORDER_REFLECT: fedcba|abcdefgh|hgfedcb
    }


def paste_spec() -> dict[str, Any]:
    """The swapped crop back into the frame (:func:`pocketswap.faces.align.paste_back`)."""
    return {
        "alpha": "the 'mask' output times an edge ramp: min(ramp(x), ramp(y)), ramp(i) = min(1, (i + 0.5) / "
        "(edge_ramp * size), (size - 0.5 - i) / (edge_ramp * size))",
        "edge_ramp": align.EDGE_RAMP,
        "frame_kept": {
            "contour": list(INNER_LIP), "corners": list(MOUTH_CORNERS),
            "grow": align.MOUTH_KEPT["grow"], "feather": align.MOUTH_KEPT["feather"],
            "formula": "alpha *= 1 - clip(0.5 + (d + grow * w) / max(feather * w, 1), 0, 1): d the signed distance "
            "(pixels, positive inside) of crop pixel (x, y) to the contour of the frame's landmarks in the crop, w the "
            "distance between the corners; applied before the colour transfer. The frame's mouth opening (teeth, "
            "tongue) stays the frame's: every swap keeps the mouth in place (rigid_pieces' moves false)",
        },
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


def identity_warp_spec() -> dict[str, Any]:
    """The ``identity_warped`` input of students that read it (:func:`pocketswap.faces.warp.warp_identity`)."""
    return {
        "input": WARPED_IDENTITY_INPUT,
        "texture": "the manifest's identity_texture: crop (PNG), its 468 landmarks (crop pixels), fixed triangles",
        "landmarks": "the frame's 468 landmarks taken into the crop by the crop's similarity",
        "shape_transfer": {
            "amount": "identity_texture.shape (0: skip)",
            "fit": "least-squares similarity (no reflection) of the texture's landmarks onto the frame's: target",
            "rigid_pieces": [{"contour": list(contour), "corners": list(corners), "grow": grow, "moves": moves}
                             for contour, corners, grow, moves in RIGID_FEATURES],
            "piece": "the frame's landmarks inside the contour polygon or at most grow * |corner 0 - corner 1| "
                     "outside it; their target is the frame's moved by the similarity that takes the frame's two "
                     "corners onto the target's, or the frame's own place where moves is false (later pieces "
                     "overwrite earlier ones)",
            "fixed": "landmarks on the convex hull of the frame's landmarks keep their place",
            "result": "frame + amount * (target - frame)",
        },
        "raster": {"rule": "the texture's triangles drawn at the moved landmarks: a pixel whose centre is inside a "
                           "triangle or on its edge samples the texture at the barycentric mix of the triangle's "
                           "texture landmarks (later triangles overwrite earlier ones); a pixel no triangle holds but "
                           "within edge_reach px of one takes that triangle's mix, extrapolated",
                   "edge_reach": EDGE_REACH,
                   "outside_mesh": "the texture's own pixel (identity map)"},
        "resample": "bicubic",
        "border": "reflect101",  # OpenCV BORDER_REFLECT_101: dcb|abcd|cba
        "normalization": "as the image input",
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


def swap_spec(size: int, template: str) -> SwapSpec:
    """The manifest's ``swap_spec``: crop, tensor normalisation, front end, paste, identity warp, video."""
    rules = {"front_end": front_end_spec(), "crop": crop_spec(size, template), "paste": paste_spec(),
             "identity_warp": identity_warp_spec(), "video": video_spec()}  # fmt: skip
    return SwapSpec(size, template, PIXELS, rules)


__all__ = ["crop_spec", "front_end_spec", "identity_warp_spec", "paste_spec", "swap_spec", "video_spec"]
