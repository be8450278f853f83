"""Student artifacts per format: ONNX (fp32/fp16/int8), TFLite through onnx2tf (with its patch map
and LiteRT benchmark), CoreML .mlpackage; each converted, parity-checked and given its manifest."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pocketswap.core.manifest import IMAGE_INPUT
from pocketswap.core.runners import TFLiteRunner
from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.export.common import FORMAT_TABLE, ExportError, UnsupportedError, needs_onnx
from pocketswap.export.job import (
    Artifact,
    Job,
    artifact_parity,
    calibration_feeds,
    example_inputs,
    finish,
    io_tensors,
)

log = logging.getLogger(__name__)


def export_formats(
    job: Job, formats, precisions, image_input, compress, benchmark, finished: list[Artifact] | None = None
) -> list[Artifact]:
    """Every requested artifact, each checked for parity; ``finished`` collects them as they are done (an
    interrupted export keeps those)."""
    onnx_path = job.work / f"{job.name}.onnx"
    steps: list[tuple[str, Callable[[], list[Artifact]]]] = []
    if needs_onnx(formats):
        steps.append((f"{job.name} onnx graph", lambda: _onnx_base(job, onnx_path, "tflite" in formats)))
    if "onnx" in formats:
        steps.append((f"{job.name} onnx", lambda: _onnx_artifacts(job, onnx_path, precisions)))
    if "tflite" in formats:
        steps.append((f"{job.name} tflite", lambda: _tflite_artifacts(job, onnx_path, precisions, benchmark)))
    if "coreml" in formats:
        for precision in precisions:
            steps.append(
                (
                    f"{job.name} coreml {precision}",
                    lambda p=precision: [_coreml_artifact(job, p, image_input, compress)],
                )
            )
    artifacts: list[Artifact] = finished if finished is not None else []
    for label, step in tqdm(steps, desc="export", unit="step", leave=False, disable=None):
        started = time.perf_counter()
        made = step()
        log.info("export: %s done in %.1f s%s", label, time.perf_counter() - started,
                 "".join(f"; {a.path.name}" for a in made))  # fmt: skip
        artifacts += made
    return artifacts


def _onnx_base(job: Job, path: Path, lint_tflite: bool) -> list[Artifact]:
    from pocketswap.export import onnx_export

    onnx_export.export_onnx(job.module, example_inputs(job), path, job.input_names, job.output_names)
    if job.is_student:  # the phone-side model: only ops the target runtime delegates
        onnx_export.lint_onnx(path, "tflite" if lint_tflite else "onnx")
    return []


def _onnx_artifacts(job: Job, base: Path, precisions: list[str]) -> list[Artifact]:
    from pocketswap.export import onnx_export

    fmt = FORMAT_TABLE["onnx"]
    out = []
    for precision in precisions:
        path = fmt.path(job.stage, job.name, precision)
        if precision == "fp32":
            shutil.copyfile(base, path)
        elif precision == "fp16":
            onnx_export.convert_onnx_fp16(base, path)
        else:
            onnx_export.quantize_onnx_int8(base, path, calibration_feeds(job, layout=fmt.layout))

        def run(feeds, p=path):
            return dict(zip(job.output_names, onnx_export.run_onnx(p, feeds), strict=True))

        record = artifact_parity(job, run, precision, path.name)
        out.append(finish(job, path, fmt.name, precision, fmt.layout, parity=record, ops=onnx_export.onnx_ops(path)))
    return out


# -- TFLite --------------------------------------------------------------------------------------


def _tflite_artifacts(job: Job, onnx_path: Path, precisions: list[str], benchmark: bool) -> list[Artifact]:
    from pocketswap.export import tflite

    fmt = FORMAT_TABLE["tflite"]
    calib = None
    if "int8" in precisions:
        feeds = calibration_feeds(job, layout=fmt.layout)
        calib = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    crops = np.stack([c for _, c in export_data.sample_crops(job.origin.config.size, job.origin.config.template)])
    raw = tflite.convert_onnx(
        onnx_path,
        job.work / f"tflite-{job.name}",
        precisions,
        crops,
        calib,
        flat_inputs=[t.name for t in job.inputs if len(t.shape) != 4],
    )
    out = []
    for precision in precisions:
        path = fmt.path(job.stage, job.name, precision)
        shutil.copyfile(raw[precision], path)
        _name_tflite_io(job, path)
        runner = TFLiteRunner(path)
        record = artifact_parity(job, runner, precision, path.name)
        fields = {"parity": record, "ops": tflite.list_ops(path), "delegation": tflite.delegation(path)}
        inputs, outputs = tflite.io_details(path)
        _check_io(job, path, inputs, outputs)
        if job.is_student and job.origin.mode == "baked" and precision in ("fp32", "fp16"):
            fields["patch"] = _patch_record(job, path, "tflite")
        if benchmark:
            fields["extra"] = {"benchmark_host": _bench(path)}
        out.append(finish(job, path, fmt.name, precision, fmt.layout, **fields))
    return out


def _name_tflite_io(job: Job, path: Path) -> None:
    """Give the converted model our I/O names and a serving_default signature (outputs matched by value)."""
    from pocketswap.export import tflite

    inputs, outputs = tflite.io_details(path)
    in_pos = {}
    for name in job.input_names:
        hits = [i for i, d in enumerate(inputs) if name in d["name"]]
        if not hits and len(inputs) == 1 == len(job.inputs):
            hits = [0]  # one input whatever the converter called it
        if len(hits) != 1:
            raise ExportError(f"{path.name}: cannot find input {name!r} among {[d['name'] for d in inputs]}")
        in_pos[name] = hits[0]
    feeds = job.checks.cases[0][1]
    ref = job.checks.reference(feeds)
    raw = TFLiteRunner(path)({inputs[in_pos[k]]["name"]: v for k, v in feeds.items()})
    names = [d["name"] for d in outputs]
    out_pos = {}
    for name, value in ref.items():
        scored = [
            (float(np.abs(raw[n] - value).mean()), i)
            for i, n in enumerate(names)
            if raw[n].shape == value.shape and i not in out_pos.values()
        ]
        if not scored:
            raise ExportError(f"{path.name}: no output with the shape of {name!r} {list(value.shape)} (NCHW)")
        out_pos[name] = min(scored)[1]
    tflite.finalize(path, in_pos, out_pos)


def _check_io(job: Job, path: Path, inputs: list[dict], outputs: list[dict]) -> None:
    expected_in, expected_out = io_tensors(job, FORMAT_TABLE["tflite"].layout)
    got = [(d["name"], d["shape"]) for d in inputs], [(d["name"], d["shape"]) for d in outputs]
    want = [(t.name, t.shape) for t in expected_in], [(t.name, t.shape) for t in expected_out]
    if sorted(got[0]) != sorted(want[0]) or sorted(got[1]) != sorted(want[1]):
        raise ExportError(f"{path.name}: converted I/O {got} differs from the expected {want}")


def _bench(path: Path) -> dict:
    from pocketswap.export import tflite

    result = tflite.benchmark(path, num_threads=1)
    return {"num_threads": 1, "fully_accelerated": result.get("fully_accelerated"), **result.get("latency", {})}


def _patch_record(job: Job, path: Path, kind: str) -> dict | None:
    from pocketswap.export import patch

    if not job.origin.identity_names:
        return None
    tensors = patch.baked_identity_tensors(
        job.origin.net, torch.from_numpy(job.origin.embedding), job.origin.identity_names
    )
    try:
        record = patch.map_tflite(path, tensors) if kind == "tflite" else patch.map_coreml(path, tensors)
    except UnsupportedError as exc:
        log.warning("%s: identity patching unavailable: %s", path.name, exc)
        return None
    log.info("%s: %d identity tensors mapped for patching", path.name, len(record["tensors"]))
    return record


# -- CoreML --------------------------------------------------------------------------------------


def _coreml_artifact(job: Job, precision: str, image_input: bool, compress: str) -> Artifact:
    from pocketswap.export import coreml

    fmt = FORMAT_TABLE["coreml"]
    effective = "int8" if precision == "int8" and compress == "none" else compress
    tag = ("_image" if image_input else "") + (f"_{compress}" if compress != "none" else "")
    path = fmt.path(job.stage, job.name, precision, tag)
    specs = [
        coreml.InputSpec(t.name, tuple(t.shape), is_image=job.is_student and t.name == IMAGE_INPUT) for t in job.inputs
    ]
    if job.is_student:
        description = f"pocketswap {job.origin.config.name} face-swap student ({job.origin.mode} identity). Outputs are synthetic media."
        metadata = {"preset": job.origin.config.name, "identity_mode": job.origin.mode, "crop_size": job.origin.config.size,
                    "template": job.origin.config.template}  # fmt: skip
    else:
        description, metadata = f"pocketswap {job.name} ({job.kind})", None
    coreml.convert(
        job.module,
        example_inputs(job),
        specs,
        job.output_names,
        path,
        precision=precision,
        image_input=image_input,
        compress=effective,
        description=description,
        metadata=metadata,
    )
    info = coreml.inspect(path)
    _check_coreml_io(job, path, info, image_input)
    # Linux: the artifact's own weights (decompressed) in PyTorch; macOS: CoreML itself as well.
    clone, replaced, missing = coreml.with_artifact_weights(job.module, path)
    if missing:
        log.warning("%s: %d torch tensors not found in the artifact (%s...)", path.name, len(missing), missing[0])

    @torch.no_grad()
    def run_weights(feeds):
        return _named(job, clone(*[torch.from_numpy(feeds[n]) for n in job.input_names]))

    if effective == "none":
        tolerance = parity.TOLERANCES["fp32" if precision == "fp32" else "fp16"]
    else:
        tolerance = {"min_psnr_db": parity.COMPRESSION_MIN_PSNR[effective]}
    method = "weights round-trip: pytorch-fp32 vs pytorch with the artifact's weights" + (
        "" if coreml.can_predict() else " (not a CoreML prediction: predict() needs macOS)"
    )
    record = artifact_parity(job, run_weights, precision, path.name, method, tolerance)
    record["weights_replaced"] = replaced
    record["weights_missing"] = missing
    fields = {"parity": record, "ops": info["ops"], "extra": {}}
    if job.is_student and precision != "fp32":  # FLOAT16 compute, emulated on the CPU: weights, half activations
        half = copy.deepcopy(clone).half()

        @torch.no_grad()
        def run_half(feeds):
            return _named(job, half(*[torch.from_numpy(feeds[n]).half() for n in job.input_names]))

        reference = "pytorch-fp32 vs pytorch float16 with the artifact's weights (CPU emulation of FLOAT16 compute)"
        compute_tolerance = parity.TOLERANCES["fp16-compute"] if effective == "none" else tolerance
        fields["extra"]["fp16_compute_emulation"] = artifact_parity(
            job, run_half, precision, f"{path.name} (fp16 compute emulation)", reference, compute_tolerance
        )
    if job.is_student and coreml.can_predict():
        device = artifact_parity(
            job, lambda f: coreml.predict(path, f, image_input), precision, path.name, "pytorch-fp32 vs CoreML predict"
        )
        fields["extra"]["coreml_predict_parity"] = device
    elif job.is_student:
        fields["extra"]["coreml_predict_parity"] = "not run: CoreML predict() needs macOS"
    fields["extra"]["compression"] = effective
    fields["extra"]["compute_precision"] = "FLOAT32" if precision == "fp32" else "FLOAT16"
    fields["extra"]["minimum_deployment_target"] = "iOS16"
    if job.is_student and job.origin.mode == "baked" and effective == "none":
        fields["patch"] = _patch_record(job, path, "coreml")
    io = io_tensors(job, fmt.layout, "image (RGB, scale 1/127.5, bias -1)" if image_input else None)
    if image_input:
        io[0][0].range = [0.0, 255.0]
        io[0][0].description = "aligned face crop as an RGB image (CVPixelBuffer); mapped to [-1, 1] inside the model"
    return finish(job, path, fmt.name, precision, fmt.layout, io=io, **fields)


def _named(job: Job, outputs) -> dict[str, np.ndarray]:
    """A module's output tensor(s) as ``{output name: float32 array}``."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return {k: v.float().numpy() for k, v in zip(job.output_names, outputs, strict=True)}


def _check_coreml_io(job: Job, path: Path, info: dict, image_input: bool) -> None:
    names_in = [f["name"] for f in info["inputs"]]
    names_out = [f["name"] for f in info["outputs"]]
    if names_in != job.input_names or names_out != job.output_names or not info["is_ml_program"]:
        raise ExportError(
            f"{path.name}: CoreML I/O {names_in} -> {names_out}, expected {job.input_names} -> {job.output_names}"
        )
    image = info["inputs"][0]
    if (image["type"] == "image") != image_input:
        raise ExportError(f"{path.name}: input 'image' has type {image['type']}")
