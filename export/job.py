"""What every exported artifact shares: the export job (module, parity cases, manifest fields),
its named tensors, parity against PyTorch and the manifest written next to each file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.files import file_sha256
from pocketswap.manifest import (
    IDENTITY_INPUT,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MASK_OUTPUT,
    Manifest,
    TensorInfo,
    artifact_size,
    write_manifest,
)

log = logging.getLogger(__name__)

IMAGE_NORMALIZATION = "RGB uint8 pixels p -> p / 127.5 - 1 (range [-1, 1])"
NUM_RANDOM_CASES = 2
CALIBRATION_LIMIT = 32


@dataclass
class Artifact:
    """One exported file (or .mlpackage folder) and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        from pocketswap.manifest import manifest_path

        return manifest_path(self.path)


@dataclass
class Job:
    """Shared state of one export_model call."""

    net: torch.nn.Module
    config: object
    module: torch.nn.Module
    mode: str
    stage: Path
    work: Path
    cases: list[tuple[str, dict[str, np.ndarray]]]
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    base_manifest: dict
    embedding: np.ndarray
    identity_names: list[str]
    calibration: export_data.CalibrationSet | None
    check: bool
    name: str


def random_embedding(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def io_tensors(job: Job, layout: str, image_dtype: str = "float32") -> tuple[list[TensorInfo], list[TensorInfo]]:
    s = job.config.size
    shape = (lambda c: [1, s, s, c]) if layout == "NHWC" else (lambda c: [1, c, s, s])
    inputs = [TensorInfo(IMAGE_INPUT, shape(3), image_dtype, layout, [-1.0, 1.0], "aligned face crop (target)")]
    if job.mode == "dynamic":
        p = int(job.net.num_identity_params)
        inputs.append(
            TensorInfo(IDENTITY_INPUT, [1, p], "float32", "NC", None, "flat identity vector from the hypernetwork")
        )
    outputs = [
        TensorInfo(IMAGE_OUTPUT, shape(3), "float32", layout, [-1.0, 1.0], "swapped face crop"),
        TensorInfo(MASK_OUTPUT, shape(1), "float32", layout, [0.0, 1.0], "blend mask"),
    ]
    return inputs, outputs


def example_inputs(job: Job) -> tuple[torch.Tensor, ...]:
    feeds = job.cases[0][1]
    args = [torch.from_numpy(feeds[IMAGE_INPUT])]
    if job.mode == "dynamic":
        args.append(torch.from_numpy(feeds[IDENTITY_INPUT]))
    return tuple(args)


def artifact_parity(
    job: Job, run: Callable, precision: str, artifact: str, reference: str = "pytorch-fp32", tolerance=None
) -> dict:
    results = parity.evaluate(job.cases, job.reference, run, parity.PEAKS)
    record = parity.summarize(results, precision, reference, tolerance)
    log.info(
        "%s parity [%s]: max abs %.3g, mean abs %.3g, min PSNR %.1f dB (%s)",
        artifact, reference, record["max_abs"], record["mean_abs"], record["min_psnr_db"],
        "ok" if record["passed"] else "FAILED",
    )  # fmt: skip
    if job.check:
        parity.check(record, artifact)
    return record


def finish(job: Job, path: Path, runtime: str, precision: str, layout: str, **fields) -> Artifact:
    inputs, outputs = fields.pop("io", None) or io_tensors(job, layout)
    base = {k: v for k, v in job.base_manifest.items() if k != "extra"}
    extra = {**job.base_manifest.get("extra", {}), **fields.pop("extra", {})}
    manifest = Manifest(
        artifact=path.name,
        runtime=runtime,
        precision=precision,
        inputs=inputs,
        outputs=outputs,
        file_size_bytes=artifact_size(path),
        sha256=file_sha256(path),
        converters=converter_versions(runtime),
        extra=extra,
        **base,
        **fields,
    )
    write_manifest(path, manifest)
    return Artifact(path, manifest)


def converter_versions(runtime: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {
        "onnx": ["torch", "onnx", "onnxruntime"],
        "tflite": ["torch", "onnx", "onnx2tf", "tensorflow", "ai-edge-litert"],
    }
    out = {}
    for pkg in names.get(runtime, ["torch", "coremltools"]):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def calibration_feeds(job: Job, layout: str) -> list[dict[str, np.ndarray]]:
    assert job.calibration is not None
    crops = job.calibration.crops
    images = export_data.to_model_input(crops)
    feeds = []
    params = calibration_params(job, len(crops)) if job.mode == "dynamic" else None
    for i in range(len(crops)):
        image = images[i : i + 1]
        feed = {IMAGE_INPUT: image.transpose(0, 2, 3, 1) if layout == "NHWC" else image}
        if params is not None:
            feed[IDENTITY_INPUT] = params[i : i + 1]
        feeds.append(feed)
    return feeds


def calibration_params(job: Job, n: int) -> np.ndarray:
    """Identity vectors for calibrating a dynamic student: the dataset's embeddings, else the export identity
    plus random unit embeddings."""
    embs = job.calibration.embeddings if job.calibration is not None else None
    if embs is None or len(embs) == 0:
        embs = np.stack([job.embedding] + [random_embedding(job.config.embed_dim, 200 + i) for i in range(n - 1)])
    embs = np.resize(embs, (n, embs.shape[1])).astype(np.float32)
    with torch.no_grad():
        return np.concatenate([job.net.identity_params(torch.from_numpy(e).reshape(1, -1)).numpy() for e in embs])


def layout_shape(shape: list[int], layout: str) -> list[int]:
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 and layout == "NHWC" else list(shape)
