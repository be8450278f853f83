"""Run a swap model on aligned crops, whatever its format: one interface for the demo and benchmarks.

`load_swap_model(path)` accepts a baked ``.tflite`` (LiteRT with XNNPACK), ``.onnx`` (ONNX Runtime),
``.mlpackage`` (CoreML, macOS only) or a student checkpoint (PyTorch; needs an identity embedding).
Every model maps an aligned SxSx3 uint8 RGB crop to (swapped crop uint8, mask float32 SxS in [0,1]);
models that read the warped identity (``needs_landmarks``) also take the face's 468 landmarks in crop
pixels and warp the identity texture their manifest carries onto them.
Artifacts are opened through their manifest (the contract): tensors are fed and read by the names it
records, in NCHW (the TFLite runner transposes its NHWC tensors), int8 tensors quantised with their
own scales. `TFLiteRunner` and `OnnxRunner` are the one way every stage (export parity, demo,
benchmarks) runs an artifact.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketswap.errors import ModelSignatureError, PocketswapError
from pocketswap.faces.warp import warp_identity
from pocketswap.manifest import PIXEL_OFFSET, PIXEL_SCALE, WARPED_IDENTITY_INPUT

log = logging.getLogger(__name__)


class SwapModel(Protocol):
    size: int
    template: str
    name: str
    needs_landmarks: bool

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def to_unit_range(crop: np.ndarray) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 HxWx3 in [-1, 1]."""
    return crop.astype(np.float32) * np.float32(PIXEL_SCALE) + np.float32(PIXEL_OFFSET)


def from_unit_range(image: np.ndarray) -> np.ndarray:
    """float HxWx3 in [-1, 1] -> uint8 RGB."""
    return np.clip((image - PIXEL_OFFSET) * (1.0 / PIXEL_SCALE) + 0.5, 0, 255).astype(np.uint8)


def _where(path: str | Path | bytes) -> str:
    return "model bytes" if isinstance(path, bytes | bytearray) else str(path)


class TFLiteRunner:
    """Runs a .tflite with LiteRT's interpreter (XNNPACK), tensors by name. Feeds and results use PyTorch
    layouts (NCHW images, flat vectors); 4-D tensors are transposed to and from NHWC; int8 tensors are
    quantised and dequantised with their own scales."""

    def __init__(self, path: str | Path | bytes, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            if isinstance(path, bytes | bytearray):
                self.interpreter = Interpreter(model_content=bytes(path), num_threads=num_threads)
            else:
                self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelSignatureError(f"{_where(path)}: not a loadable .tflite model ({exc})") from exc
        self.inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
        self.outputs = {d["name"]: d for d in self.interpreter.get_output_details()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            if name not in self.inputs:
                raise ModelSignatureError(f"TFLite model has no input {name!r} (it has {', '.join(self.inputs)})")
            d = self.inputs[name]
            value = np.asarray(value, np.float32)
            if value.ndim == 4:
                value = value.transpose(0, 2, 3, 1)
            self.interpreter.set_tensor(d["index"], _quantize(value, d))
        self.interpreter.invoke()
        out = {}
        for name, d in self.outputs.items():
            value = _dequantize(self.interpreter.get_tensor(d["index"]), d)
            out[name] = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
        return out


def _quantize(value: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(value / scale + zero), info.min, info.max).astype(detail["dtype"])
    return value.astype(detail["dtype"])


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (value.astype(np.float32) - zero) * scale
    return value.astype(np.float32)


class OnnxRunner:
    """Runs a .onnx with ONNX Runtime's CPU provider, tensors by name (NCHW, as exported); float16
    inputs are cast from float32 feeds and every result is float32."""

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelSignatureError(f"{path}: not a loadable ONNX model ({exc})") from exc
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(feeds) - set(self.inputs))
        if missing:
            raise ModelSignatureError(f"ONNX model has no input {missing[0]!r} (it has {', '.join(self.inputs)})")
        typed = {
            name: np.asarray(v, np.float16 if "float16" in self.inputs[name].type else np.float32)
            for name, v in feeds.items()
        }
        return {name: v.astype(np.float32) for name, v in zip(self.outputs, self.session.run(None, typed), strict=True)}


class ArtifactSwapModel:
    """A baked student artifact (``.tflite`` or ``.onnx``) opened through its manifest: the image input
    and the swapped/mask outputs are found by the names the manifest records (the contract every
    pocketswap artifact follows); crop size and template come from it too."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from pocketswap.manifest import (
            IMAGE_INPUT,
            IMAGE_OUTPUT,
            MASK_OUTPUT,
            ManifestError,
            decode_texture,
            read_manifest,
        )

        self.name = path.name
        self.runner = TFLiteRunner(path, num_threads) if path.suffix == ".tflite" else OnnxRunner(path, num_threads)
        try:
            manifest = read_manifest(path)
        except ManifestError as exc:
            raise ModelSignatureError(f"{exc}; export the model with `pocketswap export` to get one") from exc
        if manifest.kind != "student" or manifest.identity_mode != "baked":
            raise ModelSignatureError(
                f"{path}: a {manifest.kind} model ({manifest.identity_mode} identity), not a baked student; "
                "dynamic-identity students need their `identity` vector (see README: Integrating the artifacts)"
            )
        names = {t.name for t in manifest.inputs} | {t.name for t in manifest.outputs}
        for wanted in (IMAGE_INPUT, IMAGE_OUTPUT, MASK_OUTPUT):
            if wanted not in names:
                raise ModelSignatureError(f"{path}: its manifest names no tensor {wanted!r}")
        self.input, self.image, self.mask = IMAGE_INPUT, IMAGE_OUTPUT, MASK_OUTPUT
        self.size, self.template = self._checked_size(path, manifest.crop_size), manifest.template or "arcface"
        self.texture = None
        if WARPED_IDENTITY_INPUT in {t.name for t in manifest.inputs}:
            if manifest.identity_texture is None:
                raise ModelSignatureError(
                    f"{path}: it reads {WARPED_IDENTITY_INPUT!r} but its manifest has no identity_texture"
                )
            try:
                self.texture = decode_texture(manifest.identity_texture, str(path))
            except ManifestError as exc:
                raise ModelSignatureError(str(exc)) from exc
            if self.texture.crop.shape[0] != self.size:
                raise ModelSignatureError(
                    f"{path}: field 'identity_texture' is {self.texture.crop.shape[0]} px, the crop {self.size} px"
                )

    def _checked_size(self, path: Path, crop_size: Any) -> int:
        """The manifest's ``crop_size``, which must be the model's own image-input size."""
        detail = self.runner.inputs.get(self.input)
        if detail is None:
            raise ModelSignatureError(f"{path}: the model has no input {self.input!r} that its manifest names")
        shape = detail["shape"] if isinstance(detail, dict) else detail.shape
        actual = int(shape[1]) if isinstance(detail, dict) else shape[2]  # NHWC (LiteRT) | NCHW (ONNX)
        if not isinstance(actual, int):  # a dynamic ONNX dimension: nothing to check against
            actual = crop_size
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size != actual:
            raise ModelSignatureError(
                f"{path}: manifest field 'crop_size' is {crop_size!r}, the model's input is {actual} px"
            )
        return crop_size

    @property
    def needs_landmarks(self) -> bool:
        """Whether the model reads the warped identity (call it with the face's landmarks in crop pixels)."""
        return self.texture is not None

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.input: to_unit_range(crop).transpose(2, 0, 1)[None]}
        if self.texture is not None:
            if landmarks is None:
                raise ModelSignatureError(f"{self.name} reads the warped identity: pass the face's landmarks too")
            t = self.texture
            warped = warp_identity(t.crop, t.landmarks, landmarks, t.triangles, t.shape)
            feeds[WARPED_IDENTITY_INPUT] = to_unit_range(warped).transpose(2, 0, 1)[None]
        out = self.runner(feeds)
        return _to_crop(out[self.image], out[self.mask])


def _to_crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NCHW model outputs -> (uint8 HxWx3 crop, float32 HxW mask in [0, 1])."""
    return from_unit_range(image[0].transpose(1, 2, 0)), np.clip(mask[0, 0].astype(np.float32), 0.0, 1.0)


class TorchSwapModel:
    """A student checkpoint with one identity baked in, run in PyTorch (eager)."""

    def __init__(self, path: Path, embedding: np.ndarray, num_threads: int = 1) -> None:
        import torch

        from pocketswap.checkpoint import load_checkpoint, locked_identity, resolve_checkpoint
        from pocketswap.faces.identity import same_person_threshold

        torch.set_num_threads(num_threads)
        model, config, extra = load_checkpoint(resolve_checkpoint(path))
        embedding = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if embedding.shape[1] != config.embed_dim:
            raise ModelSignatureError(
                f"{path}: the student expects a {config.embed_dim}-d identity embedding, got {embedding.shape[1]}-d"
            )
        if config.identity_encoder:
            raise ModelSignatureError(f"{path}: a spatial-identity student needs the identity photo: export it first")
        embedding = locked_identity(extra, embedding, "the given identity", same_person_threshold()).reshape(1, -1)
        self.model = model.bake(torch.from_numpy(embedding)).eval()
        self.name = Path(path).name
        self.size, self.template = config.size, config.template
        self.needs_landmarks = False
        self._torch = torch

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = self._torch.from_numpy(to_unit_range(crop).transpose(2, 0, 1)[None].copy())
        with self._torch.inference_mode():
            image, mask = self.model(x)
        return _to_crop(image.numpy(), mask.numpy())


def unavailable_here(path: str | Path) -> str:
    """Why this machine cannot swap with the artifact at ``path`` ('' when it can)."""
    if Path(path).suffix != ".mlpackage":
        return ""
    if platform.system() != "Darwin":
        return "CoreML models run only on macOS; use the .tflite or .onnx export here"
    return "CoreML inference in the demo is not implemented yet; use .tflite or .onnx"


def load_swap_model(path: str | Path, embedding: np.ndarray | None = None, num_threads: int = 1) -> SwapModel:
    """Open a baked artifact or a checkpoint (which needs `embedding`) as a `SwapModel`."""
    path = Path(path)
    if not path.exists():
        raise PocketswapError(f"{path}: no such model file")
    if path.suffix in (".tflite", ".onnx"):
        return ArtifactSwapModel(path, num_threads)
    if unavailable_here(path):
        raise PocketswapError(f"{path}: {unavailable_here(path)}")
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        if embedding is None:
            raise PocketswapError(f"{path}: a checkpoint needs an identity embedding to bake")
        return TorchSwapModel(path, embedding, num_threads)
    raise PocketswapError(f"{path}: unsupported model type (expected .tflite, .onnx, .mlpackage or a checkpoint)")
