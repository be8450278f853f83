"""Library API of the export stage: ``export_model(...) -> list[Artifact]`` and ``patch_model(...)``.

Everything is built in a temp folder inside ``out_dir`` and moved into place only when every requested
artifact converted and passed parity, so a failure leaves nothing half-written. Each artifact gets a
manifest (:mod:`pocketswap.manifest`) next to it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pocketswap.checkpoint import checkpoint_encoder, locked_identity
from pocketswap.errors import CheckpointError, ConfigError
from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.export.common import (
    COMPRESSIONS,
    FORMATS,
    IDENTITY_INPUT,
    IDENTITY_MODES,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MASK_OUTPUT,
    PRECISIONS,
    STUDENT_OUTPUTS,
    ExportError,
    UnsupportedError,
    parse_list,
)
from pocketswap.faces.identity import embedding_sha256, same_person_threshold
from pocketswap.manifest import Manifest, TensorInfo, artifact_size, file_sha256, read_manifest, write_manifest

log = logging.getLogger(__name__)

PEAKS = {IMAGE_OUTPUT: 2.0, MASK_OUTPUT: 1.0}
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


# -- inputs --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_student(source: str | Path):
    """(StudentNet, StudentConfig, extra, checkpoint dir, sha256 of its safetensors)."""
    from pocketswap.checkpoint import WEIGHTS_NAME, load_checkpoint, resolve_checkpoint

    directory = resolve_checkpoint(source)
    net, config, extra = load_checkpoint(directory)
    return net.eval(), config, extra, directory, _sha256(directory / WEIGHTS_NAME)


# -- the exporter --------------------------------------------------------------------------------


@dataclass
class _Job:
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


def export_model(
    source: str | Path,
    out_dir: str | Path,
    identity: str | Path | None = None,
    formats: str | Sequence[str] = "tflite",
    precisions: str | Sequence[str] = "fp32",
    identity_mode: str = "baked",
    calibration: str | Path | None = None,
    image_input: bool = False,
    compress: str = "none",
    encoder: str | None = None,
    enroll: bool = False,
    check_parity: bool = True,
    benchmark: bool = False,
    name: str | None = None,
) -> list[Artifact]:
    """Export a student checkpoint (or run folder) to ONNX / TFLite / CoreML; returns the artifacts written.

    identity: face photo, ``sample:NAME`` or ``.npy`` embedding (required for ``baked``; for ``dynamic`` it
    is only used for parity). formats / precisions: names or comma lists ("all" allowed). calibration: int8
    crops (dataset folder, image folder, ``.npy``, or ``samples``). compress: CoreML weight compression.
    enroll: also export the identity encoder and the hypernetwork. Raises a PocketswapError subclass on bad
    input or failed parity; nothing is left in ``out_dir`` then.
    """
    formats_l = parse_list(formats, FORMATS, "format")
    precisions_l = parse_list(precisions, PRECISIONS, "precision")
    if identity_mode not in IDENTITY_MODES:
        raise UnsupportedError(f"identity mode {identity_mode!r} is not supported; choose baked or dynamic")
    if compress not in COMPRESSIONS:
        raise UnsupportedError(f"compression {compress!r} is not supported; choose from {', '.join(COMPRESSIONS)}")
    if compress != "none" and "coreml" not in formats_l:
        raise UnsupportedError(f"--compress {compress} applies to CoreML only; add --format coreml")
    if identity_mode == "baked" and identity is None:
        raise ConfigError("baked export needs --identity FACE.jpg|sample:NAME|EMB.npy (or use --identity-mode dynamic)")

    net, config, extra, ckpt_dir, ckpt_sha = load_student(source)
    size = config.size
    calib = None
    if "int8" in precisions_l and ({"tflite", "onnx"} & set(formats_l)):
        calib = export_data.load_calibration(calibration, size, config.template, CALIBRATION_LIMIT)
        log.info("int8 calibration: %d crops from %s", len(calib.crops), calib.source)
    encoder_name = checkpoint_encoder(extra, config.embed_dim, encoder)
    if extra.get("identity") and identity_mode == "dynamic":
        raise UnsupportedError(
            f"this checkpoint was personalised for {extra['identity']['name']}: export it baked (--identity PHOTO); "
            "the dynamic mode is for universal students"
        )
    if config.identity_encoder and (enroll or identity_mode == "dynamic"):
        raise UnsupportedError(
            "this student has a spatial identity encoder ('identity_encoder'): it exports baked, without --enroll "
            "(its identity maps would be a second run-time input)"
        )
    identity_crop = None
    if identity is not None:
        emb, identity_source = export_data.identity_embedding(identity, config.embed_dim, encoder_name)
        emb = locked_identity(extra, emb, str(identity), same_person_threshold(encoder_name))
        if config.identity_encoder:
            identity_crop = export_data.identity_crop(identity, size, config.template)
    else:
        emb = _random_embedding(config.embed_dim, seed=7)
        identity_source = "supplied at run time (parity used a random embedding)"

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pocketswap-export-", dir=out_dir))
    done = False
    try:
        job = _make_job(
            net, config, identity_mode, emb, identity_crop, stage, calib, check_parity,
            name or f"{config.name}_{identity_mode}",
        )  # fmt: skip
        job.base_manifest.update(
            source={
                "checkpoint": str(ckpt_dir),
                "checkpoint_sha256": ckpt_sha,
                "identity": identity_source,
                "embedding_sha256": embedding_sha256(emb) if identity else None,
                "embedding": [round(float(v), 6) for v in emb] if identity else None,
                "encoder": encoder_name,
            }
        )
        artifacts = _export_all(job, formats_l, precisions_l, image_input, compress, benchmark)
        if enroll:
            artifacts += _export_enrollment(job, formats_l, precisions_l, artifacts)
        moved = _move_into_place(artifacts, stage, out_dir)
        done = True
        return moved
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not done and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _random_embedding(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _make_job(net, config, mode, emb, crop, stage, calib, check, name) -> _Job:
    work = stage / "work"
    work.mkdir()
    size = config.size
    emb_t = torch.from_numpy(emb).reshape(1, -1)
    crop_t = None if crop is None else torch.from_numpy(export_data.to_model_input(crop))
    module = net.bake(emb_t, crop_t) if mode == "baked" else net.dynamic()
    params = net.identity_params(emb_t).numpy() if mode == "dynamic" else None
    rng = np.random.default_rng(0)
    cases = []
    for i in range(NUM_RANDOM_CASES):
        feeds = {IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)}
        if mode == "dynamic":
            other = torch.from_numpy(_random_embedding(config.embed_dim, seed=100 + i)).reshape(1, -1)
            feeds[IDENTITY_INPUT] = net.identity_params(other).numpy()
        cases.append((f"random-{i}", feeds))
    for case, crop in export_data.sample_crops(size, config.template):
        feeds = {IMAGE_INPUT: export_data.to_model_input(crop)}
        if mode == "dynamic":
            feeds[IDENTITY_INPUT] = params
        cases.append((case, feeds))

    @torch.no_grad()
    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(feeds[IMAGE_INPUT])]
        if mode == "dynamic":
            args.append(torch.from_numpy(feeds[IDENTITY_INPUT]))
        return {k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(*args), strict=True)}

    from pocketswap.export.patch import identity_dependent_names
    from pocketswap.faces.align import template_points

    with torch.no_grad():  # the exported form against the training network itself, on a real face
        feeds = cases[-1][1]
        want = net(torch.from_numpy(feeds[IMAGE_INPUT]), emb_t, crop_t)
        got = reference(feeds)
    fold_error = max(float(np.abs(w.numpy() - got[k]).max()) for k, w in zip(STUDENT_OUTPUTS, want, strict=True))
    if fold_error > 1e-4:
        raise ExportError(
            f"the {mode} student differs from StudentNet by {fold_error:.3g} (BatchNorm/identity folding)"
        )

    base = {
        "kind": "student",
        "identity_mode": mode,
        "preset": config.name,
        "crop_size": size,
        "template": config.template,
        "template_points": np.round(template_points(size, config.template), 3).tolist(),
        "normalization": {
            IMAGE_INPUT: IMAGE_NORMALIZATION,
            IMAGE_OUTPUT: "range [-1, 1]; pixels = (y + 1) * 127.5",
            MASK_OUTPUT: "range [0, 1]; blend weight of the swapped crop when pasting back",
        },
        "extra": {
            "student_config": config.to_dict(),
            "num_identity_params": int(net.num_identity_params),
            "folded_vs_studentnet_max_abs": float(f"{fold_error:.3g}"),
        },
    }
    if mode == "dynamic":
        base["extra"]["identity_layout"] = [
            {"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in net.param_layout()
        ]
    return _Job(
        net=net,
        config=config,
        module=module,
        mode=mode,
        stage=stage,
        work=work,
        cases=cases,
        reference=reference,
        base_manifest=base,
        embedding=emb,
        # spatial-identity students are re-exported per identity, not patched
        identity_names=identity_dependent_names(net) if mode == "baked" and not config.identity_encoder else [],
        calibration=calib,
        check=check,
        name=name,
    )


def _io(job: _Job, layout: str, image_dtype: str = "float32") -> tuple[list[TensorInfo], list[TensorInfo]]:
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


def _example_inputs(job: _Job) -> tuple[torch.Tensor, ...]:
    feeds = job.cases[0][1]
    args = [torch.from_numpy(feeds[IMAGE_INPUT])]
    if job.mode == "dynamic":
        args.append(torch.from_numpy(feeds[IDENTITY_INPUT]))
    return tuple(args)


def _parity(
    job: _Job, run: Callable, precision: str, artifact: str, reference: str = "pytorch-fp32", tolerance=None
) -> dict:
    results = parity.evaluate(job.cases, job.reference, run, PEAKS)
    record = parity.summarize(results, precision, reference, tolerance)
    log.info(
        "%s parity: max abs %.3g, mean abs %.3g, min PSNR %.1f dB (%s)",
        artifact, record["max_abs"], record["mean_abs"], record["min_psnr_db"], "ok" if record["passed"] else "FAILED",
    )  # fmt: skip
    if job.check:
        parity.check(record, artifact)
    return record


def _finish(job: _Job, path: Path, runtime: str, precision: str, layout: str, **fields) -> Artifact:
    inputs, outputs = fields.pop("io", None) or _io(job, layout)
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
        converters=_versions(runtime),
        extra=extra,
        **base,
        **fields,
    )
    write_manifest(path, manifest)
    return Artifact(path, manifest)


def _versions(runtime: str) -> dict[str, str]:
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


def _export_all(job: _Job, formats, precisions, image_input, compress, benchmark) -> list[Artifact]:
    onnx_path = job.work / f"{job.name}.onnx"
    input_names = [IMAGE_INPUT] + ([IDENTITY_INPUT] if job.mode == "dynamic" else [])
    steps: list[tuple[str, Callable[[], list[Artifact]]]] = []
    if {"onnx", "tflite"} & set(formats):
        steps.append(("onnx export", lambda: _onnx_base(job, onnx_path, input_names, "tflite" in formats)))
    if "onnx" in formats:
        steps.append(("onnx", lambda: _onnx_artifacts(job, onnx_path, precisions)))
    if "tflite" in formats:
        steps.append(("tflite", lambda: _tflite_artifacts(job, onnx_path, precisions, benchmark)))
    if "coreml" in formats:
        for precision in precisions:
            steps.append((f"coreml {precision}", lambda p=precision: [_coreml_artifact(job, p, image_input, compress)]))
    artifacts: list[Artifact] = []
    for label, step in tqdm(steps, desc="export", unit="step", leave=False, disable=None):
        log.info("export: %s", label)
        artifacts += step()
    return artifacts


def _onnx_base(job: _Job, path: Path, input_names: list[str], lint_tflite: bool) -> list[Artifact]:
    from pocketswap.export import onnx_export

    onnx_export.export_onnx(job.module, _example_inputs(job), path, input_names, list(STUDENT_OUTPUTS))
    onnx_export.lint_onnx(path, "tflite" if lint_tflite else "onnx")
    return []


def _onnx_artifacts(job: _Job, base: Path, precisions: list[str]) -> list[Artifact]:
    from pocketswap.export import onnx_export

    out = []
    for precision in precisions:
        path = job.stage / f"{job.name}_{precision}.onnx"
        if precision == "fp32":
            shutil.copyfile(base, path)
        elif precision == "fp16":
            onnx_export.convert_onnx_fp16(base, path)
        else:
            onnx_export.quantize_onnx_int8(base, path, _calibration_feeds(job, layout="NCHW"))

        def run(feeds, p=path):
            return dict(zip(STUDENT_OUTPUTS, onnx_export.run_onnx(p, feeds), strict=True))

        record = _parity(job, run, precision, path.name)
        out.append(_finish(job, path, "onnx", precision, "NCHW", parity=record, ops=onnx_export.onnx_ops(path)))
    return out


def _calibration_feeds(job: _Job, layout: str) -> list[dict[str, np.ndarray]]:
    assert job.calibration is not None
    crops = job.calibration.crops
    images = export_data.to_model_input(crops)
    feeds = []
    params = _calibration_params(job, len(crops)) if job.mode == "dynamic" else None
    for i in range(len(crops)):
        image = images[i : i + 1]
        feed = {IMAGE_INPUT: image.transpose(0, 2, 3, 1) if layout == "NHWC" else image}
        if params is not None:
            feed[IDENTITY_INPUT] = params[i : i + 1]
        feeds.append(feed)
    return feeds


def _calibration_params(job: _Job, n: int) -> np.ndarray:
    """Identity vectors for calibrating a dynamic student: the dataset's embeddings, else the export identity
    plus random unit embeddings."""
    embs = job.calibration.embeddings if job.calibration is not None else None
    if embs is None or len(embs) == 0:
        embs = np.stack([job.embedding] + [_random_embedding(job.config.embed_dim, 200 + i) for i in range(n - 1)])
    embs = np.resize(embs, (n, embs.shape[1])).astype(np.float32)
    with torch.no_grad():
        return np.concatenate([job.net.identity_params(torch.from_numpy(e).reshape(1, -1)).numpy() for e in embs])


# -- TFLite --------------------------------------------------------------------------------------


def _tflite_artifacts(job: _Job, onnx_path: Path, precisions: list[str], benchmark: bool) -> list[Artifact]:
    from pocketswap.export import tflite

    calib = None
    if "int8" in precisions:
        feeds = _calibration_feeds(job, layout="NHWC")
        calib = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    crops = np.stack([c for _, c in export_data.sample_crops(job.config.size, job.config.template)])
    raw = tflite.convert_onnx(
        onnx_path,
        job.work / "tflite",
        precisions,
        crops,
        calib,
        flat_inputs=[IDENTITY_INPUT] if job.mode == "dynamic" else (),
    )
    out = []
    for precision in precisions:
        path = job.stage / f"{job.name}_{precision}.tflite"
        shutil.copyfile(raw[precision], path)
        _name_tflite_io(job, path)
        runner = tflite.TFLiteRunner(path)
        record = _parity(job, runner, precision, path.name)
        fields = {"parity": record, "ops": tflite.list_ops(path), "delegation": tflite.delegation(path)}
        inputs, outputs = tflite.io_details(path)
        _check_io(job, path, inputs, outputs)
        if job.mode == "baked" and precision in ("fp32", "fp16"):
            fields["patch"] = _patch_record(job, path, "tflite")
        if benchmark:
            fields["extra"] = {"benchmark_host": _bench(path)}
        out.append(_finish(job, path, "tflite", precision, "NHWC", **fields))
    return out


def _name_tflite_io(job: _Job, path: Path) -> None:
    """Give the converted model our I/O names and a serving_default signature (outputs matched by value)."""
    from pocketswap.export import tflite

    inputs, outputs = tflite.io_details(path)
    wanted = [IMAGE_INPUT] + ([IDENTITY_INPUT] if job.mode == "dynamic" else [])
    in_pos = {}
    for name in wanted:
        hits = [i for i, d in enumerate(inputs) if name in d["name"]]
        if len(hits) != 1:
            raise ExportError(f"{path.name}: cannot find input {name!r} among {[d['name'] for d in inputs]}")
        in_pos[name] = hits[0]
    feeds = job.cases[0][1]
    ref = job.reference(feeds)
    raw = tflite.TFLiteRunner(path)({inputs[in_pos[k]]["name"]: v for k, v in feeds.items()})
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


def _check_io(job: _Job, path: Path, inputs: list[dict], outputs: list[dict]) -> None:
    expected_in, expected_out = _io(job, "NHWC")
    got = [(d["name"], d["shape"]) for d in inputs], [(d["name"], d["shape"]) for d in outputs]
    want = [(t.name, t.shape) for t in expected_in], [(t.name, t.shape) for t in expected_out]
    if sorted(got[0]) != sorted(want[0]) or sorted(got[1]) != sorted(want[1]):
        raise ExportError(f"{path.name}: converted I/O {got} differs from the expected {want}")


def _bench(path: Path) -> dict:
    from pocketswap.export import tflite

    result = tflite.benchmark(path, num_threads=1)
    return {"num_threads": 1, "fully_accelerated": result.get("fully_accelerated"), **result.get("latency", {})}


def _patch_record(job: _Job, path: Path, kind: str) -> dict | None:
    from pocketswap.export import patch

    if not job.identity_names:
        return None
    tensors = patch.baked_identity_tensors(job.net, torch.from_numpy(job.embedding), job.identity_names)
    try:
        record = patch.map_tflite(path, tensors) if kind == "tflite" else patch.map_coreml(path, tensors)
    except UnsupportedError as exc:
        log.warning("%s: identity patching unavailable: %s", path.name, exc)
        return None
    log.info("%s: %d identity tensors mapped for patching", path.name, len(record["tensors"]))
    return record


# -- CoreML --------------------------------------------------------------------------------------


def _coreml_artifact(job: _Job, precision: str, image_input: bool, compress: str) -> Artifact:
    from pocketswap.export import coreml

    effective = "int8" if precision == "int8" and compress == "none" else compress
    suffix = ("_image" if image_input else "") + (f"_{compress}" if compress != "none" else "")
    path = job.stage / f"{job.name}_{precision}{suffix}.mlpackage"
    s = job.config.size
    specs = [coreml.InputSpec(IMAGE_INPUT, (1, 3, s, s), is_image=True)]
    if job.mode == "dynamic":
        specs.append(coreml.InputSpec(IDENTITY_INPUT, (1, int(job.net.num_identity_params))))
    coreml.convert(
        job.module,
        _example_inputs(job),
        specs,
        STUDENT_OUTPUTS,
        path,
        precision=precision,
        image_input=image_input,
        compress=effective,
        description=f"pocketswap {job.config.name} face-swap student ({job.mode} identity). Outputs are synthetic media.",
        metadata={
            "preset": job.config.name,
            "identity_mode": job.mode,
            "crop_size": s,
            "template": job.config.template,
        },
    )
    info = coreml.inspect(path)
    _check_coreml_io(job, path, info, image_input)
    # Linux: the artifact's own weights (decompressed) in PyTorch; macOS: CoreML itself as well.
    clone, replaced, missing = coreml.with_artifact_weights(job.module, path)
    if missing:
        log.warning("%s: %d torch tensors not found in the artifact (%s...)", path.name, len(missing), missing[0])

    @torch.no_grad()
    def run_weights(feeds):
        args = [torch.from_numpy(feeds[IMAGE_INPUT])]
        if job.mode == "dynamic":
            args.append(torch.from_numpy(feeds[IDENTITY_INPUT]))
        return {k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, clone(*args), strict=True)}

    if effective == "none":
        tolerance = parity.TOLERANCES["fp32" if precision == "fp32" else "fp16"]
    else:
        tolerance = {"min_psnr_db": parity.COMPRESSION_MIN_PSNR[effective]}
    record = _parity(
        job, run_weights, precision, path.name, "pytorch-fp32 vs pytorch with the artifact's weights", tolerance
    )
    record["weights_replaced"] = replaced
    record["weights_missing"] = missing
    fields = {"parity": record, "ops": info["ops"], "extra": {}}
    if precision != "fp32":  # FLOAT16 compute, emulated on the CPU: the artifact's weights, half activations
        half = copy.deepcopy(clone).half()

        @torch.no_grad()
        def run_half(feeds):
            args = [torch.from_numpy(feeds[IMAGE_INPUT]).half()]
            if job.mode == "dynamic":
                args.append(torch.from_numpy(feeds[IDENTITY_INPUT]).half())
            return {k: v.float().numpy() for k, v in zip(STUDENT_OUTPUTS, half(*args), strict=True)}

        reference = "pytorch-fp32 vs pytorch float16 with the artifact's weights (CPU emulation of FLOAT16 compute)"
        fields["extra"]["fp16_compute_emulation"] = _parity(
            job, run_half, precision, f"{path.name} (fp16 compute emulation)", reference, tolerance
        )
    if coreml.can_predict():
        device = _parity(
            job, lambda f: coreml.predict(path, f, image_input), precision, path.name, "pytorch-fp32 vs CoreML predict"
        )
        fields["extra"]["coreml_predict_parity"] = device
    else:
        fields["extra"]["coreml_predict_parity"] = "not run: CoreML predict() needs macOS"
    fields["extra"]["compression"] = effective
    fields["extra"]["compute_precision"] = "FLOAT32" if precision == "fp32" else "FLOAT16"
    fields["extra"]["minimum_deployment_target"] = "iOS16"
    if job.mode == "baked" and effective == "none":
        fields["patch"] = _patch_record(job, path, "coreml")
    image_dtype = "image (RGB, scale 1/127.5, bias -1)" if image_input else "float32"
    io = _io(job, "NCHW", image_dtype)
    if image_input:
        io[0][0].range = [0.0, 255.0]
        io[0][0].description = "aligned face crop as an RGB image (CVPixelBuffer); mapped to [-1, 1] inside the model"
    return _finish(job, path, "coreml", precision, "NCHW", io=io, **fields)


def _check_coreml_io(job: _Job, path: Path, info: dict, image_input: bool) -> None:
    names_in = [f["name"] for f in info["inputs"]]
    names_out = [f["name"] for f in info["outputs"]]
    want_in = [IMAGE_INPUT] + ([IDENTITY_INPUT] if job.mode == "dynamic" else [])
    if names_in != want_in or names_out != list(STUDENT_OUTPUTS) or not info["is_ml_program"]:
        raise ExportError(
            f"{path.name}: CoreML I/O {names_in} -> {names_out}, expected {want_in} -> {list(STUDENT_OUTPUTS)}"
        )
    image = info["inputs"][0]
    if (image["type"] == "image") != image_input:
        raise ExportError(f"{path.name}: input 'image' has type {image['type']}")


# -- enrollment artifacts ------------------------------------------------------------------------


@dataclass
class _EnrollSpec:
    """One enrollment model: wrapper module, PyTorch reference, parity cases and manifest fields."""

    stem: str
    kind: str
    module: torch.nn.Module
    reference: Callable[[np.ndarray], np.ndarray]
    cases: list[tuple[str, np.ndarray]]
    in_info: TensorInfo
    out_info: TensorInfo
    fields: dict


def _export_enrollment(
    job: _Job, formats: list[str], precisions: list[str], students: list[Artifact]
) -> list[Artifact]:
    """The identity encoder, the hypernetwork and (baked TFLite) the baked-weights model, fp32/fp16, per format."""
    float_precisions = [p for p in precisions if p != "int8"] or ["fp32"]
    if "int8" in precisions:
        log.info("enrollment models are exported in %s only (they run once per identity)", ", ".join(float_precisions))
    out = []
    for spec in _enroll_specs(job, students):
        out += _export_enroll_spec(job, spec, formats, float_precisions)
    return out


def _enroll_specs(job: _Job, students: list[Artifact]) -> list[_EnrollSpec]:
    from pocketswap.export import enroll, patch

    rng = np.random.default_rng(3)
    chips = [("random-0", rng.uniform(0, 255, (1, 3, 150, 150)).astype(np.float32))]
    chips += [
        (case, crop.transpose(2, 0, 1)[None].astype(np.float32)) for case, crop in export_data.sample_crops(150, "dlib")
    ]
    encoder = enroll.load_encoder_module()

    @torch.no_grad()
    def encoder_reference(chip: np.ndarray) -> np.ndarray:
        return encoder.resnet(torch.from_numpy(chip), normalize=True).numpy()

    d, p = job.config.embed_dim, int(job.net.num_identity_params)
    embs = [(f"random-{i}", _random_embedding(d, 300 + i)[None]) for i in range(2)]
    embs.append(("identity", job.embedding[None].astype(np.float32)))
    emb_info = TensorInfo("embedding", [1, d], "float32", "NC", [-1.0, 1.0], "L2-normalised identity embedding")
    layout = [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in job.net.param_layout()]

    @torch.no_grad()
    def hyper_reference(emb: np.ndarray) -> np.ndarray:
        return job.net.identity_params(torch.from_numpy(emb)).numpy()

    specs = [
        _EnrollSpec(
            "dlib_encoder", "identity_encoder", encoder, encoder_reference, chips,
            TensorInfo("chip", [1, 3, 150, 150], "float32", "NCHW", [0.0, 255.0], "RGB face chip aligned to the dlib template"),
            TensorInfo("embedding", [1, 128], "float32", "NC", [-1.0, 1.0], "L2-normalised identity embedding"),
            {"template": "dlib", "crop_size": 150, "template_points": _points(150, "dlib")},
        ),
        _EnrollSpec(
            f"{job.config.name}_hypernet", "hypernetwork", enroll.HyperParamsModule(job.net), hyper_reference, embs, emb_info,
            TensorInfo(IDENTITY_INPUT, [1, p], "float32", "NC", None, "identity vector of the dynamic student"),
            {"preset": job.config.name, "extra": {"identity_layout": layout}},
        ),
    ]  # fmt: skip
    patched = next((a for a in students if a.manifest.runtime == "tflite" and a.manifest.patch), None)
    if patched is not None:
        entries = patched.manifest.patch["tensors"]
        names = [e["name"] for e in entries]

        def baked_reference(emb: np.ndarray) -> np.ndarray:
            tensors = patch.baked_identity_tensors(job.net, torch.from_numpy(emb), names)
            flat = [np.transpose(tensors[e["name"]], e["permutation"]).reshape(-1) for e in entries]
            return np.concatenate(flat)[None]

        n = sum(int(np.prod(e["torch_shape"])) for e in entries)
        specs.append(
            _EnrollSpec(
                f"{job.config.name}_baked_weights", "hypernetwork", enroll.BakedWeightsModule(job.net, entries),
                baked_reference, embs, emb_info,
                TensorInfo("weights", [1, n], "float32", "NC", None, "identity tensors of the baked TFLite student, in patch order"),
                {
                    "preset": job.config.name,
                    "extra": {
                        "patches": [a.path.name for a in students if a.manifest.runtime == "tflite" and a.manifest.patch],
                        "patch_order": [{"name": e["name"], "numel": int(np.prod(e["torch_shape"])), "shape": e["shape"]} for e in entries],
                    },
                },
            )
        )  # fmt: skip
    return specs


def _points(size: int, template: str) -> list[list[float]]:
    from pocketswap.faces.align import template_points

    return np.round(template_points(size, template), 3).tolist()


def _export_enroll_spec(job: _Job, spec: _EnrollSpec, formats: list[str], precisions: list[str]) -> list[Artifact]:
    from pocketswap.export import coreml, onnx_export, tflite

    in_name, out_name = spec.in_info.name, spec.out_info.name
    cases = [(name, {in_name: value}) for name, value in spec.cases]
    peaks = {out_name: 2.0}
    module = spec.module.eval()

    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {out_name: spec.reference(feeds[in_name])}

    def checked(run, precision: str, name: str, what: str = "pytorch-fp32") -> dict:
        record = parity.summarize(parity.evaluate(cases, reference, run, peaks), precision, what)
        log.info("%s parity: max abs %.3g (%s)", name, record["max_abs"], "ok" if record["passed"] else "FAILED")
        if job.check:
            parity.check(record, name)
        return record

    def finish(path: Path, runtime: str, precision: str, record: dict, ops: dict, **more) -> Artifact:
        in_info = spec.in_info
        if runtime == "tflite" and len(in_info.shape) == 4:
            in_info = TensorInfo(**{**in_info.to_dict(), "shape": _layout(in_info.shape, "NHWC"), "layout": "NHWC"})
        manifest = Manifest(
            artifact=path.name, kind=spec.kind, runtime=runtime, precision=precision, inputs=[in_info],
            outputs=[spec.out_info], parity=record, ops=ops, file_size_bytes=artifact_size(path),
            sha256=file_sha256(path), converters=_versions(runtime), source=job.base_manifest.get("source", {}),
            **spec.fields, **more,
        )  # fmt: skip
        write_manifest(path, manifest)
        return Artifact(path, manifest)

    example = (torch.from_numpy(spec.cases[0][1]),)
    onnx_path = job.work / f"{spec.stem}.onnx"
    artifacts = []
    if {"onnx", "tflite"} & set(formats):
        onnx_export.export_onnx(module, example, onnx_path, [in_name], [out_name])
    if "onnx" in formats:
        for precision in precisions:
            path = job.stage / f"{spec.stem}_{precision}.onnx"
            if precision == "fp32":
                shutil.copyfile(onnx_path, path)
            else:
                onnx_export.convert_onnx_fp16(onnx_path, path)
            record = checked(lambda f, p=path: {out_name: onnx_export.run_onnx(p, f)[0]}, precision, path.name)
            artifacts.append(finish(path, "onnx", precision, record, onnx_export.onnx_ops(path)))
    if "tflite" in formats:
        crops = np.stack([c for _, c in export_data.sample_crops(job.config.size, job.config.template)])
        flat = [] if len(spec.in_info.shape) == 4 else [in_name]
        raw = tflite.convert_onnx(
            onnx_path, job.work / f"tflite-{spec.stem}", precisions, crops, None, flat_inputs=flat
        )
        for precision in precisions:
            path = job.stage / f"{spec.stem}_{precision}.tflite"
            shutil.copyfile(raw[precision], path)
            tflite.finalize(path, {in_name: 0}, {out_name: 0})
            record = checked(tflite.TFLiteRunner(path), precision, path.name)
            ops = tflite.list_ops(path)
            artifacts.append(finish(path, "tflite", precision, record, ops, delegation=tflite.delegation(path)))
    if "coreml" in formats:
        for precision in precisions:
            path = job.stage / f"{spec.stem}_{precision}.mlpackage"
            shape = tuple(spec.in_info.shape)
            coreml.convert(
                module,
                example,
                [coreml.InputSpec(in_name, shape)],
                [out_name],
                path,
                precision,
                description=f"pocketswap {spec.stem}",
            )
            clone, _, missing = coreml.with_artifact_weights(module, path)

            @torch.no_grad()
            def run(feeds, c=clone):
                return {out_name: c(torch.from_numpy(feeds[in_name])).numpy()}

            record = checked(run, precision, path.name, "pytorch-fp32 vs pytorch with the artifact's weights")
            record["weights_missing"] = missing
            artifacts.append(finish(path, "coreml", precision, record, coreml.inspect(path)["ops"]))
    return artifacts


def _layout(shape: list[int], layout: str) -> list[int]:
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 and layout == "NHWC" else list(shape)


# -- moving into place ---------------------------------------------------------------------------


def _move_into_place(artifacts: list[Artifact], stage: Path, out_dir: Path) -> list[Artifact]:
    """Move artifacts and manifests from the stage folder into ``out_dir`` (manifests last)."""
    moved = []
    for artifact in artifacts:
        target = out_dir / artifact.path.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        artifact.path.rename(target)
        moved.append(Artifact(target, artifact.manifest))
    for artifact, new in zip(artifacts, moved, strict=True):
        artifact.manifest_path.replace(new.manifest_path)
    for a in moved:
        log.info("wrote %s (%.1f KB)", a.path, a.manifest.file_size_bytes / 1024)
    return moved


# -- identity patching ---------------------------------------------------------------------------


@dataclass
class PatchResult:
    """A patched artifact, its manifest, the time spent rewriting bytes and the parity record."""

    path: Path
    manifest: Manifest
    rewrite_seconds: float
    parity: dict


def patch_model(
    model: str | Path,
    identity: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    encoder: str | None = None,
    check_parity: bool = True,
) -> PatchResult:
    """Write ``out``: a baked .tflite / .mlpackage with the identity switched (no re-conversion)."""
    from pocketswap.export import patch as patching

    model = Path(model)
    manifest = read_manifest(model)
    if manifest.kind != "student" or manifest.identity_mode != "baked":
        raise UnsupportedError(
            f"{model.name}: only baked student models can be patched (this is {manifest.kind}/{manifest.identity_mode})"
        )
    if not manifest.patch:
        raise UnsupportedError(
            f"{model.name}: its manifest has no patch map ({manifest.runtime} {manifest.precision}); "
            "patching needs a baked fp32/fp16 .tflite or an uncompressed .mlpackage"
        )
    net, config, extra, ckpt_dir, ckpt_sha = load_student(checkpoint)
    if config.identity_encoder:
        raise UnsupportedError(f"{checkpoint}: spatial-identity students are re-exported per identity, not patched")
    if manifest.source.get("checkpoint_sha256") not in (None, ckpt_sha):
        raise CheckpointError(f"{checkpoint}: not the checkpoint {model.name} was exported from (sha256 differs)")
    encoder_name = checkpoint_encoder(extra, config.embed_dim, encoder or manifest.source.get("encoder"))
    emb, identity_source = export_data.identity_embedding(identity, config.embed_dim, encoder_name)
    emb = locked_identity(extra, emb, str(identity), same_person_threshold(encoder_name))
    names = [e["name"] for e in manifest.patch["tensors"]]
    tensors = patching.baked_identity_tensors(net, torch.from_numpy(emb), names)
    out = Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError("--out must differ from the model being patched")
    seconds = patching.patch_artifact(model, out, manifest.patch, tensors)
    log.info("patched %d tensors of %s in %.1f ms", len(names), model.name, seconds * 1e3)

    record = _patched_parity(net, emb, config, out, manifest, check_parity)
    new = Manifest.from_dict(manifest.to_dict())
    new.artifact = out.name
    new.file_size_bytes = artifact_size(out)
    new.sha256 = file_sha256(out)
    new.source = {
        **manifest.source,
        "identity": identity_source,
        "embedding_sha256": embedding_sha256(emb),
        "embedding": [round(float(v), 6) for v in emb],
        "patched_from": manifest.artifact,
    }
    new.parity = record
    new.extra = {**manifest.extra, "patch_rewrite_ms": round(seconds * 1e3, 3)}
    write_manifest(out, new)
    return PatchResult(out, new, seconds, record)


def _patched_parity(net, emb, config, path: Path, manifest: Manifest, check: bool) -> dict:
    from pocketswap.export import tflite

    module = net.bake(torch.from_numpy(emb).reshape(1, -1))
    rng = np.random.default_rng(0)
    cases = [("random-0", {IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, config.size, config.size)).astype(np.float32)})]
    for case, crop in export_data.sample_crops(config.size, config.template)[:1]:
        cases.append((case, {IMAGE_INPUT: export_data.to_model_input(crop)}))

    @torch.no_grad()
    def reference(feeds):
        return {
            k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(torch.from_numpy(feeds[IMAGE_INPUT])), strict=True)
        }

    if manifest.runtime == "tflite":
        run, name = tflite.TFLiteRunner(path), "pytorch-fp32 (new identity)"
    else:  # Linux cannot run CoreML: check the patched weights inside PyTorch
        from pocketswap.export import coreml

        clone, _, _ = coreml.with_artifact_weights(module, path)
        run, name = _torch_runner(clone), "pytorch-fp32 (new identity) vs pytorch with the patched artifact's weights"
    results = parity.evaluate(cases, reference, run, PEAKS)
    tolerance = parity.TOLERANCES[manifest.precision] if manifest.precision != "int8" else None
    record = parity.summarize(results, manifest.precision, name, tolerance)
    if check:
        parity.check(record, path.name)
    return record


def _torch_runner(module: torch.nn.Module) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            k: v.numpy() for k, v in zip(STUDENT_OUTPUTS, module(torch.from_numpy(feeds[IMAGE_INPUT])), strict=True)
        }

    return run


__all__ = ["Artifact", "PatchResult", "export_model", "load_student", "patch_model"]
