"""Adapter for a user-supplied ArcFace-style ONNX recogniser (e.g. insightface's w600k_r50).

Convention: 112x112 RGB chips aligned to the ArcFace 5-point template, scaled to (x - 127.5) / 127.5,
NCHW float32 in; one (N, 512) embedding out. The signature is checked on load, and a probe run
confirms the output width, so a wrong model fails early with a `ModelSignatureError` that says what
was expected and what was found.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pocketswap.core.errors import ModelSignatureError
from pocketswap.faces.identity import as_chip_batch

logger = logging.getLogger(__name__)

CHIP_SIZE = 112
EMBEDDING_DIM = 512
EXPECTED_SIGNATURE = (
    f"one float input N x 3 x {CHIP_SIZE} x {CHIP_SIZE} (N may be dynamic), one output N x {EMBEDDING_DIM}"
)


def _fmt(shape: object) -> str:
    if not isinstance(shape, (list, tuple)):
        return str(shape)
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class ArcFaceOnnxEncoder:
    """L2-normalised 512-d identity embeddings from 112 px ArcFace-aligned chips, via onnxruntime."""

    embedding_dim = EMBEDDING_DIM
    chip_size = CHIP_SIZE
    template = "arcface"

    def __init__(self, path: str | Path, batch_size: int = 32) -> None:
        from pocketswap.core.runners import onnx_session

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelSignatureError(f"ArcFace ONNX model '{self.path}' not found (expected a .onnx file)")
        self.session = onnx_session(self.path, what="ArcFace ONNX model", quiet=True)
        self.input_name, self.output_name, self.fixed_batch = self._check_signature()
        self.batch_size = self.fixed_batch or batch_size
        self._probe()

    def _error(self, found: str) -> ModelSignatureError:
        return ModelSignatureError(f"ArcFace ONNX model '{self.path}': expected {EXPECTED_SIGNATURE}; found {found}")

    def _check_signature(self) -> tuple[str, str, int | None]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise self._error(f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)})")
        if len(outputs) != 1:
            raise self._error(f"{len(outputs)} outputs ({', '.join(o.name for o in outputs)})")
        inp, out = inputs[0], outputs[0]
        shape = inp.shape
        if inp.type != "tensor(float)":
            raise self._error(f"input '{inp.name}' of type {inp.type}")
        if not isinstance(shape, (list, tuple)) or len(shape) != 4:
            raise self._error(f"input '{inp.name}' of shape {_fmt(shape)}")
        batch, channels, height, width = shape
        spatial_ok = all(isinstance(d, str) or d is None or d == CHIP_SIZE for d in (height, width))
        if channels != 3 or not spatial_ok:
            raise self._error(f"input '{inp.name}' of shape {_fmt(shape)}")
        out_shape = out.shape
        if not isinstance(out_shape, (list, tuple)) or len(out_shape) != 2:
            raise self._error(f"output '{out.name}' of shape {_fmt(out_shape)}")
        if isinstance(out_shape[1], int) and out_shape[1] != EMBEDDING_DIM:
            raise self._error(f"output '{out.name}' of shape {_fmt(out_shape)} ({out_shape[1]}-d embeddings)")
        fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        logger.debug("ArcFace ONNX %s: input %s %s, output %s %s", self.path, inp.name, shape, out.name, out_shape)
        return inp.name, out.name, fixed_batch

    def _probe(self) -> None:
        """Run once on zeros: catches symbolic dims that resolve to the wrong sizes."""
        batch = np.zeros((self.fixed_batch or 1, 3, CHIP_SIZE, CHIP_SIZE), dtype=np.float32)
        try:
            (out,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as exc:
            raise self._error(f"a failing run on a {_fmt(batch.shape)} input ({str(exc).strip()[:200]})") from None
        if out.shape != (batch.shape[0], EMBEDDING_DIM):
            raise self._error(f"output of shape {_fmt(out.shape)} for a {_fmt(batch.shape)} input")

    @staticmethod
    def preprocess(chips: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) uint8 RGB -> (B, 3, 112, 112) float32 in [-1, 1]."""
        return ((chips.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """(B, 112, 112, 3) or (112, 112, 3) uint8 RGB chips -> (B, 512) float32 L2-normalised."""
        chips = as_chip_batch(chips, CHIP_SIZE)
        out = [np.zeros((0, EMBEDDING_DIM), dtype=np.float32)]
        for start in range(0, len(chips), self.batch_size):
            batch = self.preprocess(chips[start : start + self.batch_size])
            count = len(batch)
            if self.fixed_batch and count < self.fixed_batch:  # a fixed-batch model: pad the last chunk
                batch = np.concatenate([batch, np.zeros((self.fixed_batch - count, *batch.shape[1:]), np.float32)])
            (emb,) = self.session.run([self.output_name], {self.input_name: batch})
            out.append(np.asarray(emb, dtype=np.float32)[:count])
        emb = np.concatenate(out)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)


__all__ = ["CHIP_SIZE", "EMBEDDING_DIM", "ArcFaceOnnxEncoder"]
