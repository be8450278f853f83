"""What every exported artifact shares: the export job (module, parity cases, manifest fields),
its named tensors, parity against PyTorch and the manifest written next to each file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketswap.core.files import file_sha256
from pocketswap.core.manifest import (
    IDENTITY_INPUT,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MASK_OUTPUT,
    WARPED_IDENTITY_INPUT,
    Manifest,
    TensorInfo,
    artifact_size,
    write_manifest,
)
from pocketswap.export import data as export_data
from pocketswap.export import parity

log = logging.getLogger(__name__)

NUM_RANDOM_CASES = 2
CALIBRATION_LIMIT = 32


@dataclass
class Artifact:
    """One exported file (or .mlpackage folder) and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        from pocketswap.core.manifest import manifest_path

        return manifest_path(self.path)


@dataclass
class StudentOrigin:
    """The student an export comes from: its network and config, identity mode, the identity it bakes, the
    names of its identity-dependent tensors (``export patch``), int8 calibration and, for warped-identity
    students, the identity texture [1,3,S,S] (their calibration's second input)."""

    net: torch.nn.Module
    config: Any
    mode: str
    embedding: np.ndarray
    identity_names: list[str]
    calibration: export_data.CalibrationSet | None
    identity_texture: np.ndarray | None = None


@dataclass
class ParityCases:
    """What every format of a job is checked against: named feed cases, the PyTorch reference run on them,
    each output's peak (the PSNR scale), and whether a failure stops the export (``strict``)."""

    cases: list[tuple[str, dict[str, np.ndarray]]]
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    peaks: dict[str, float]
    strict: bool


@dataclass
class Job:
    """One model to export (the spec every format converts): the module and its named tensors (canonical
    NCHW/NC forms), the parity cases, the manifest fields all its artifacts carry, the student it comes from (``origin``),
    and where it works (``stage``: the staging folder; ``work``: scratch). Student and enrollment models
    (:mod:`pocketswap.export.enroll_export`) are both Jobs."""

    name: str
    kind: str
    module: torch.nn.Module
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    checks: ParityCases
    manifest_fields: dict
    origin: StudentOrigin
    stage: Path
    work: Path

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def is_student(self) -> bool:
        return self.kind == "student"


def random_embedding(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def student_tensors(net: torch.nn.Module, size: int, mode: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The student's named inputs and outputs in their canonical (NCHW / NC) form."""
    inputs = [TensorInfo(IMAGE_INPUT, [1, 3, size, size], "float32", "NCHW", [-1.0, 1.0], "aligned face crop (target)")]
    if mode == "dynamic":
        p = int(net.num_identity_params)
        inputs.append(
            TensorInfo(IDENTITY_INPUT, [1, p], "float32", "NC", None, "flat identity vector from the hypernetwork")
        )
    if net.config.identity_warp:
        inputs.append(
            TensorInfo(
                WARPED_IDENTITY_INPUT,
                [1, 3, size, size],
                "float32",
                "NCHW",
                [-1.0, 1.0],
                "the manifest's identity_texture mesh-warped onto this frame's landmarks (crop pixels)",
            )  # fmt: skip
        )
    outputs = [
        TensorInfo(IMAGE_OUTPUT, [1, 3, size, size], "float32", "NCHW", [-1.0, 1.0], "swapped face crop"),
        TensorInfo(MASK_OUTPUT, [1, 1, size, size], "float32", "NCHW", [0.0, 1.0], "blend mask"),
    ]
    return inputs, outputs


def io_tensors(job: Job, layout: str, image_dtype: str | None = None) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """``job``'s tensors as a format stores them: 4-D ones in ``layout``; ``image_dtype`` replaces the
    student image input's dtype (CoreML image inputs)."""

    def placed(t: TensorInfo) -> TensorInfo:
        if len(t.shape) != 4 or t.layout == layout:
            return TensorInfo(**t.to_dict())
        return TensorInfo(**{**t.to_dict(), "shape": layout_shape(t.shape, layout), "layout": layout})

    inputs, outputs = [placed(t) for t in job.inputs], [placed(t) for t in job.outputs]
    if image_dtype is not None:
        inputs[0].dtype = image_dtype
    return inputs, outputs


def example_inputs(job: Job) -> tuple[torch.Tensor, ...]:
    feeds = job.checks.cases[0][1]
    return tuple(torch.from_numpy(feeds[name]) for name in job.input_names)


def artifact_parity(
    job: Job, run: Callable, precision: str, artifact: str, reference: str = "pytorch-fp32", tolerance=None
) -> dict:
    results = parity.evaluate(job.checks.cases, job.checks.reference, run, job.checks.peaks)
    record = parity.summarize(results, precision, reference, tolerance, depth=parity.depth(job.module))
    used = f", {record['bound_used']:.0%} of the bound" if "bound_used" in record else ""
    log.info(
        "%s parity [%s]: max abs %.3g, mean abs %.3g, min PSNR %.1f dB (%s%s)",
        artifact, reference, record["max_abs"], record["mean_abs"], record["min_psnr_db"],
        "ok" if record["passed"] else "FAILED", used,
    )  # fmt: skip
    if job.checks.strict:
        parity.check(record, artifact)
    return record


def finish(job: Job, path: Path, runtime: str, precision: str, layout: str, **fields) -> Artifact:
    inputs, outputs = fields.pop("io", None) or io_tensors(job, layout)
    base = {k: v for k, v in job.manifest_fields.items() if k != "extra"}
    extra = {**job.manifest_fields.get("extra", {}), **fields.pop("extra", {})}
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
    assert job.origin.calibration is not None
    crops = job.origin.calibration.crops
    images = export_data.to_model_input(crops)
    feeds = []
    params = calibration_params(job, len(crops)) if job.origin.mode == "dynamic" else None
    for i in range(len(crops)):
        image = images[i : i + 1]
        feed = {IMAGE_INPUT: image.transpose(0, 2, 3, 1) if layout == "NHWC" else image}
        if params is not None:
            feed[IDENTITY_INPUT] = params[i : i + 1]
        if job.origin.identity_texture is not None:  # the unwarped texture: the same pixel statistics
            texture = job.origin.identity_texture
            feed[WARPED_IDENTITY_INPUT] = texture.transpose(0, 2, 3, 1) if layout == "NHWC" else texture
        feeds.append(feed)
    return feeds


def calibration_params(job: Job, n: int) -> np.ndarray:
    """Identity vectors for calibrating a dynamic student: the dataset's embeddings, else the export identity
    plus random unit embeddings."""
    embs = job.origin.calibration.embeddings if job.origin.calibration is not None else None
    if embs is None or len(embs) == 0:
        embs = np.stack(
            [job.origin.embedding] + [random_embedding(job.origin.config.embed_dim, 200 + i) for i in range(n - 1)]
        )
    embs = np.resize(embs, (n, embs.shape[1])).astype(np.float32)
    with torch.no_grad():
        return np.concatenate(
            [job.origin.net.identity_params(torch.from_numpy(e).reshape(1, -1)).numpy() for e in embs]
        )


def layout_shape(shape: list[int], layout: str) -> list[int]:
    """An NCHW shape in ``layout`` (NHWC moves channels last; other shapes are kept)."""
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 and layout == "NHWC" else list(shape)
