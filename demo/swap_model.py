"""Run a swap model on aligned crops, whatever its format: one interface for the demo and benchmarks.

`load_swap_model(path)` accepts a baked ``.tflite`` (LiteRT with XNNPACK), ``.onnx`` (ONNX Runtime),
``.mlpackage`` (CoreML, macOS only) or a student checkpoint (PyTorch; needs an identity embedding).
Every model maps an aligned SxSx3 uint8 RGB crop to (swapped crop uint8, mask float32 SxS in [0,1]);
models that read the warped identity (``needs_landmarks``) also take the face's 468 landmarks in crop
pixels and warp the identity texture their manifest carries onto them.
Artifacts are opened through their manifest (the contract): tensors are fed and read by the names it
records, in the model's own layout (one transpose for an NCHW model, none for LiteRT's NHWC), with the
normalisation of its ``swap_spec``; :mod:`pocketswap.core.runners` runs them.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pocketswap.core.checkpoint import is_checkpoint_path
from pocketswap.core.errors import ModelSignatureError, PocketswapError
from pocketswap.core.manifest import WARPED_IDENTITY_INPUT
from pocketswap.core.runners import open_runner
from pocketswap.core.spec import PIXELS
from pocketswap.faces.warp import warp_identity

log = logging.getLogger(__name__)


class SwapModel(Protocol):
    size: int
    template: str
    name: str
    needs_landmarks: bool

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class ArtifactSwapModel:
    """A baked student artifact (``.tflite`` or ``.onnx``) opened through its manifest: the image input
    and the swapped/mask outputs are found by the names the manifest records (the contract every
    pocketswap artifact follows); crop size and template come from it too."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from pocketswap.core.manifest import (
            IMAGE_INPUT,
            IMAGE_OUTPUT,
            MASK_OUTPUT,
            ManifestError,
            decode_texture,
            read_manifest,
        )

        self.name = path.name
        self.runner = open_runner(path, num_threads)
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
        self.pixels = manifest.swap_spec.normalization if manifest.swap_spec is not None else PIXELS
        self.channels_last = self.runner.layout == "NHWC"
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

    def _feed(self, crop: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 crop as the model's image tensor, in its own layout (one transpose for NCHW)."""
        x = self.pixels.to_model(crop)[None]
        return x if self.channels_last else x.transpose(0, 3, 1, 2)

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.input: self._feed(crop)}
        if self.texture is not None:
            if landmarks is None:
                raise ModelSignatureError(f"{self.name} reads the warped identity: pass the face's landmarks too")
            t = self.texture
            feeds[WARPED_IDENTITY_INPUT] = self._feed(
                warp_identity(t.crop, t.landmarks, landmarks, t.triangles, t.shape)
            )
        out = self.runner(feeds, native=True)
        image, mask = out[self.image][0], out[self.mask][0]
        if not self.channels_last:
            image, mask = image.transpose(1, 2, 0), mask[0]
        return self.pixels.to_pixels(image), np.clip(mask.reshape(mask.shape[:2]), 0.0, 1.0)


class TorchSwapModel:
    """A student checkpoint with one identity baked in, run in PyTorch (eager)."""

    def __init__(self, path: Path, embedding: np.ndarray, num_threads: int = 1) -> None:
        import torch

        from pocketswap.core.checkpoint import locked_identity, resolve_checkpoint
        from pocketswap.faces.identity import same_person_threshold
        from pocketswap.student.checkpoint import load_checkpoint

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
        x = self._torch.from_numpy(PIXELS.to_model(crop).transpose(2, 0, 1)[None].copy())
        with self._torch.inference_mode():
            image, mask = self.model(x)
        return PIXELS.to_pixels(image[0].numpy().transpose(1, 2, 0)), np.clip(mask[0, 0].numpy(), 0.0, 1.0)


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
    if is_checkpoint_path(path):
        if embedding is None:
            raise PocketswapError(f"{path}: a checkpoint needs an identity embedding to bake")
        return TorchSwapModel(path, embedding, num_threads)
    raise PocketswapError(f"{path}: unsupported model type (expected .tflite, .onnx, .mlpackage or a checkpoint)")
