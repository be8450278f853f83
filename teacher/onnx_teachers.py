"""Adapters for face-swap ONNX models that users download themselves.

Each style has a documented convention (all images RGB, NCHW, aligned with the ArcFace 5-point
template scaled to the model's input size):

- ``inswapper`` (insightface inswapper_128): inputs ``target`` 1x3x128x128 in [0, 1] and
  ``source`` 1x512 = normalise(normalise(arcface) @ emap), where ``emap`` (512x512) is the graph's
  last initializer; output 1x3x128x128 in [0, 1].
- ``simswap`` (SimSwap 224/256): an image input 1x3xSxS normalised with ImageNet mean/std and a
  1x512 L2-normalised ArcFace latent; output 1x3xSxS in [0, 1].
- ``ghost`` (GHOST / AEI-Net 256): an image input 1x3x256x256 in [-1, 1] and a 1x512 ArcFace
  embedding; output 1x3x256x256 in [-1, 1].

Embeddings are L2-normalised first (``normalize_embedding: false`` passes them raw, for exports
that expect unnormalised ArcFace features). Image inputs are told apart from embedding inputs by
rank; inswapper also requires the input names ``target`` and ``source``. A 256 px model fits both
SimSwap and GHOST, so name the style: ``simswap:PATH.onnx`` or ``ghost:PATH.onnx``.

All of them condition on a 512-d ArcFace embedding, so an ``identity_encoder`` (e.g.
``pocketswap.faces.arcface_onnx.ArcFaceOnnxEncoder(path)``, any object with ``embed_chips``) is
required. The model's output is warped back into the dataset crop and blended inside the
feathered hull of the attribute's landmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pocketswap.core.config import Config, check_range, to_dict
from pocketswap.core.errors import ConfigError, ModelSignatureError
from pocketswap.faces.align import invert_affine, similarity_transform, template_points
from pocketswap.teacher.base import AlignedRecord, Teacher, TeacherOutput, face_mask

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
EMBED_DIM = 512


@dataclass(frozen=True)
class Convention:
    """What a style expects: input sizes, pixel ranges and how the embedding is prepared."""

    style: str
    sizes: tuple[int, ...]
    input_range: str  # "unit" [0,1], "imagenet" (mean/std), "signed" [-1,1]
    output_range: str  # "unit" or "signed"
    embedding: str  # "emap" or "normalize"
    input_names: tuple[str, str] | None = None  # (image, embedding) names when the style fixes them

    def describe(self) -> str:
        names = self.input_names or ("<image>", "<embedding>")
        sizes = "|".join(str(s) for s in self.sizes)
        text = f"inputs {names[0]}: [1, 3, {sizes}, {sizes}] float32, {names[1]}: [1, {EMBED_DIM}] float32; "
        text += f"one output [1, 3, {sizes}, {sizes}]"
        if self.embedding == "emap":
            text += f"; last initializer: the {EMBED_DIM}x{EMBED_DIM} emap matrix"
        return text


STYLES: dict[str, Convention] = {
    "inswapper": Convention("inswapper", (128,), "unit", "unit", "emap", ("target", "source")),
    "simswap": Convention("simswap", (224, 256), "imagenet", "unit", "normalize"),
    "ghost": Convention("ghost", (256,), "signed", "signed", "normalize"),
}


@dataclass(frozen=True)
class OnnxTeacherConfig(Config):
    """Options of the ONNX adapters."""

    template: str = "arcface"  # alignment template of the model's input crop
    feather: float = 0.05  # soft edge of the paste-back mask (fraction of the crop)
    num_threads: int = 0  # onnxruntime intra-op threads (0: its default)
    normalize_embedding: bool = True  # L2-normalise the ArcFace embedding before use

    def __post_init__(self) -> None:
        check_range("feather", self.feather, 0.0, 0.3)
        check_range("num_threads", self.num_threads, 0, 256)


def _shape(value_info: Any) -> list[Any]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim
    ]


def _describe_io(values: Sequence[Any]) -> str:
    return ", ".join(f"{v.name}: {_shape(v)}" for v in values) or "none"


def _dim_ok(actual: Any, expected: int) -> bool:
    return not isinstance(actual, int) or actual in (0, expected)  # symbolic/unknown dims are accepted


@dataclass(frozen=True)
class Signature:
    """The parts of a model graph the adapters check."""

    inputs: list[tuple[str, list[Any]]]
    outputs: list[tuple[str, list[Any]]]
    found: str
    last_initializer: np.ndarray | None


def read_signature(path: str | Path) -> Signature:
    """Inputs, outputs and last initializer of an ONNX model (external weights are not loaded)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"teacher model {path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelSignatureError(f"{path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in init_names]
    last = None
    if graph.initializer:
        tensor = graph.initializer[-1]
        if not tensor.HasField("data_location") or tensor.data_location == onnx.TensorProto.DEFAULT:
            last = numpy_helper.to_array(tensor)
    found = f"inputs {_describe_io(inputs)}; outputs {_describe_io(graph.output)}"
    return Signature(
        inputs=[(v.name, _shape(v)) for v in inputs],
        outputs=[(v.name, _shape(v)) for v in graph.output],
        found=found,
        last_initializer=last,
    )


def _match(signature: Signature, convention: Convention) -> tuple[str, str, int] | str:
    """(image input name, embedding input name, size) or the reason the signature does not match."""
    if len(signature.inputs) != 2 or len(signature.outputs) != 1:
        return "expected exactly 2 inputs and 1 output"
    by_rank = {len(shape): (name, shape) for name, shape in signature.inputs}
    if set(by_rank) != {2, 4}:
        return "expected one 4-D image input and one 2-D embedding input"
    (image_name, image_shape), (embed_name, embed_shape) = by_rank[4], by_rank[2]
    if convention.input_names and (image_name, embed_name) != convention.input_names:
        return (
            f"expected inputs named {convention.input_names[0]!r} (image) and {convention.input_names[1]!r} (embedding)"
        )
    if not _dim_ok(embed_shape[1], EMBED_DIM):
        return f"embedding input {embed_name!r} must have {EMBED_DIM} values"
    if not _dim_ok(image_shape[1], 3):
        return f"image input {image_name!r} must have 3 channels (NCHW)"
    size = image_shape[2] if isinstance(image_shape[2], int) and image_shape[2] > 0 else convention.sizes[0]
    if size not in convention.sizes or not _dim_ok(image_shape[3], size):
        return f"image input {image_name!r} must be square with side {' or '.join(map(str, convention.sizes))}"
    out_shape = signature.outputs[0][1]
    if (
        len(out_shape) != 4
        or not _dim_ok(out_shape[1], 3)
        or not _dim_ok(out_shape[2], size)
        or not _dim_ok(out_shape[3], size)
    ):
        return f"output must be [1, 3, {size}, {size}]"
    if convention.embedding == "emap":
        emap = signature.last_initializer
        if emap is None or emap.shape != (EMBED_DIM, EMBED_DIM):
            shape = None if emap is None else list(emap.shape)
            return f"last initializer must be the {EMBED_DIM}x{EMBED_DIM} emap matrix (found {shape})"
    return image_name, embed_name, int(size)


def detect_style(signature: Signature, path: str | Path) -> str:
    """The one style whose convention the signature matches; ModelSignatureError otherwise."""
    matches = [name for name, conv in STYLES.items() if not isinstance(_match(signature, conv), str)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        expected = "; or ".join(f"{name}: {conv.describe()}" for name, conv in STYLES.items())
        raise ModelSignatureError(f"{path}: not a known face-swap model. Expected {expected}. Found {signature.found}")
    raise ModelSignatureError(
        f"{path}: the signature fits several styles ({', '.join(matches)}); name one, e.g. {matches[0]}:{path}"
    )


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OnnxTeacher(Teacher):
    """A face-swap ONNX model run with onnxruntime under one of the documented `STYLES`."""

    def __init__(
        self,
        path: str | Path,
        style: str,
        size: int = 224,
        identity_encoder: Any = None,
        config: OnnxTeacherConfig | None = None,
    ) -> None:
        super().__init__(size)
        if style not in STYLES:
            raise ConfigError(f"unknown ONNX teacher style {style!r}; choose one of {', '.join(STYLES)}")
        if identity_encoder is None or not hasattr(identity_encoder, "embed_chips"):
            raise ConfigError(
                f"the {style} teacher needs an ArcFace identity encoder (an object with embed_chips, e.g. "
                "pocketswap.faces.arcface_onnx.ArcFaceOnnxEncoder(path); CLI: --identity-encoder ARCFACE.onnx): "
                f"the model is conditioned on a {EMBED_DIM}-d ArcFace embedding"
            )
        self.path = Path(path)
        self.style = style
        self.name = style
        self.convention = STYLES[style]
        self.cfg = config or OnnxTeacherConfig()
        self.encoder = identity_encoder
        signature = read_signature(self.path)
        matched = _match(signature, self.convention)
        if isinstance(matched, str):
            raise ModelSignatureError(
                f"{self.path}: not a {style}-style model ({matched}). Expected {self.convention.describe()}. "
                f"Found {signature.found}"
            )
        self.image_input, self.embed_input, self.model_size = matched
        self.emap = signature.last_initializer.astype(np.float32) if self.convention.embedding == "emap" else None
        batch_dims = [shape[0] for _, shape in signature.inputs]
        self.batched = all(not isinstance(d, int) or d == 0 for d in batch_dims)
        self._session = self._make_session()
        self._template = template_points(self.model_size, self.cfg.template)

    def _make_session(self):
        from pocketswap.core.runners import onnx_session

        return onnx_session(self.path, self.cfg.num_threads or 0, "ONNX teacher model")

    def config(self) -> dict[str, Any]:
        stat = self.path.stat()
        return {
            "name": self.name,
            "size": self.size,
            "model": self.path.name,
            "model_bytes": stat.st_size,
            "encoder": type(self.encoder).__name__,
            **to_dict(self.cfg),
        }

    def mask(self, attribute: AlignedRecord) -> np.ndarray:
        return face_mask(attribute.landmarks, self.size, self.cfg.feather)

    # -- conventions -------------------------------------------------------------------------
    def embedding_input(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, 512) ArcFace embeddings -> the model's embedding input."""
        e = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
        if e.shape[1] != EMBED_DIM:
            raise ModelSignatureError(
                f"{self.path}: the identity encoder gives {e.shape[1]}-d embeddings; a {self.style} model needs "
                f"{EMBED_DIM}-d ArcFace embeddings"
            )
        if self.cfg.normalize_embedding:
            e = normalize(e)
        if self.emap is not None:
            e = normalize(e @ self.emap)
        return e

    def image_input_tensor(self, crops: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB -> the model's (B, 3, S, S) float32 image input."""
        x = crops.astype(np.float32) / 255.0
        if self.convention.input_range == "imagenet":
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
        elif self.convention.input_range == "signed":
            x = x * 2.0 - 1.0
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def output_images(self, y: np.ndarray) -> np.ndarray:
        """Model output (B, 3, S, S) -> (B, S, S, 3) uint8 RGB."""
        y = np.asarray(y, np.float32).transpose(0, 2, 3, 1)
        if self.convention.output_range == "signed":
            y = (y + 1.0) * 0.5
        return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def identity_embeddings(self, identities: Sequence[AlignedRecord]) -> np.ndarray:
        size = int(getattr(self.encoder, "chip_size", 112))
        template = getattr(self.encoder, "template", "arcface")
        dst = template_points(size, template)
        chips = np.stack(
            [
                cv2.warpAffine(r.image, similarity_transform(r.keypoints, dst), (size, size), flags=cv2.INTER_LINEAR)
                for r in identities
            ]
        )
        return np.asarray(self.encoder.embed_chips(chips), np.float32)

    def prepare_inputs(
        self, identities: Sequence[AlignedRecord], attributes: Sequence[AlignedRecord]
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The model's input feed and the crop->model-input matrices of the attributes."""
        matrices = [similarity_transform(a.keypoints, self._template) for a in attributes]
        s = self.model_size
        crops = np.stack(
            [
                cv2.warpAffine(a.image, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                for a, m in zip(attributes, matrices, strict=True)
            ]
        )
        feed = {
            self.image_input: self.image_input_tensor(crops),
            self.embed_input: self.embedding_input(self.identity_embeddings(identities)),
        }
        return feed, matrices

    # -- swapping ----------------------------------------------------------------------------
    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.batched:
            return self._session.run(None, feed)[0]
        n = len(next(iter(feed.values())))
        return np.concatenate(
            [self._session.run(None, {k: v[i : i + 1] for k, v in feed.items()})[0] for i in range(n)]
        )

    def swap_batch(
        self, identities: Sequence[AlignedRecord], attributes: Sequence[AlignedRecord]
    ) -> list[TeacherOutput]:
        if len(identities) != len(attributes):
            raise ValueError(f"swap_batch: {len(identities)} identities but {len(attributes)} attributes")
        for i, a in zip(identities, attributes, strict=True):
            self.check_record(i, "identity")
            self.check_record(a, "attribute")
        feed, matrices = self.prepare_inputs(identities, attributes)
        images = self.output_images(self._run(feed))
        outputs = []
        s, size = self.model_size, self.size
        ones = np.ones((s, s), np.float32)
        for image, matrix, attribute in zip(images, matrices, attributes, strict=True):
            inverse = invert_affine(matrix)
            back = cv2.warpAffine(image, inverse, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            valid = cv2.warpAffine(ones, inverse, (size, size), flags=cv2.INTER_LINEAR)
            valid = cv2.erode(valid, np.ones((5, 5), np.uint8))
            mask = (face_mask(attribute.landmarks, size, self.cfg.feather) * valid).astype(np.float32)
            alpha = mask[..., None]
            out = back.astype(np.float32) * alpha + attribute.image.astype(np.float32) * (1.0 - alpha)
            outputs.append(TeacherOutput(np.clip(out + 0.5, 0, 255).astype(np.uint8), mask))
        return outputs

    def swap(self, identity: AlignedRecord, attribute: AlignedRecord) -> TeacherOutput:
        return self.swap_batch([identity], [attribute])[0]


def load_onnx_teacher(
    path: str | Path,
    size: int = 224,
    identity_encoder: Any = None,
    style: str | None = None,
    options: dict[str, Any] | None = None,
) -> OnnxTeacher:
    """An `OnnxTeacher` for `path`; the style is detected from the signature when not given."""
    config = OnnxTeacherConfig.from_dict(options or {})
    if style is None:
        style = detect_style(read_signature(path), path)
        log.info("%s: detected a %s-style model", path, style)
    return OnnxTeacher(path, style, size=size, identity_encoder=identity_encoder, config=config)
