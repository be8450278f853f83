"""Enrollment artifacts (the modules of :mod:`pocketswap.export.enroll`): the identity encoder, the
hypernetwork and the baked-weights model, converted per format with parity and manifests."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketswap.export import data as export_data
from pocketswap.export import parity
from pocketswap.export.common import FORMAT_TABLE, needs_onnx
from pocketswap.export.job import Artifact, Job, converter_versions, layout_shape, random_embedding
from pocketswap.files import file_sha256
from pocketswap.manifest import IDENTITY_INPUT, Manifest, TensorInfo, artifact_size, write_manifest
from pocketswap.runtime import TFLiteRunner

log = logging.getLogger(__name__)

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


def export_enrollment(job: Job, formats: list[str], precisions: list[str], students: list[Artifact]) -> list[Artifact]:
    """The identity encoder, the hypernetwork and (baked TFLite) the baked-weights model, fp32/fp16, per format."""
    float_precisions = [p for p in precisions if p != "int8"] or ["fp32"]
    if "int8" in precisions:
        log.info("enrollment models are exported in %s only (they run once per identity)", ", ".join(float_precisions))
    out = []
    for spec in _enroll_specs(job, students):
        out += _export_enroll_spec(job, spec, formats, float_precisions)
    return out


def _enroll_specs(job: Job, students: list[Artifact]) -> list[_EnrollSpec]:
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
    embs = [(f"random-{i}", random_embedding(d, 300 + i)[None]) for i in range(2)]
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
            {"template": "dlib", "crop_size": 150, "template_points": _template_points(150, "dlib")},
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


def _template_points(size: int, template: str) -> list[list[float]]:
    from pocketswap.faces.align import template_points

    return np.round(template_points(size, template), 3).tolist()


def _export_enroll_spec(job: Job, spec: _EnrollSpec, formats: list[str], precisions: list[str]) -> list[Artifact]:
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
        layout = FORMAT_TABLE[runtime].layout
        if len(in_info.shape) == 4 and in_info.layout != layout:
            in_info = TensorInfo(
                **{**in_info.to_dict(), "shape": layout_shape(in_info.shape, layout), "layout": layout}
            )
        manifest = Manifest(
            artifact=path.name, kind=spec.kind, runtime=runtime, precision=precision, inputs=[in_info],
            outputs=[spec.out_info], parity=record, ops=ops, file_size_bytes=artifact_size(path),
            sha256=file_sha256(path), converters=converter_versions(runtime), source=job.base_manifest.get("source", {}),
            **spec.fields, **more,
        )  # fmt: skip
        write_manifest(path, manifest)
        return Artifact(path, manifest)

    example = (torch.from_numpy(spec.cases[0][1]),)
    onnx_path = job.work / f"{spec.stem}.onnx"
    artifacts = []
    if needs_onnx(formats):
        onnx_export.export_onnx(module, example, onnx_path, [in_name], [out_name])
    if "onnx" in formats:
        for precision in precisions:
            path = FORMAT_TABLE["onnx"].path(job.stage, spec.stem, precision)
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
            path = FORMAT_TABLE["tflite"].path(job.stage, spec.stem, precision)
            shutil.copyfile(raw[precision], path)
            tflite.finalize(path, {in_name: 0}, {out_name: 0})
            record = checked(TFLiteRunner(path), precision, path.name)
            ops = tflite.list_ops(path)
            artifacts.append(finish(path, "tflite", precision, record, ops, delegation=tflite.delegation(path)))
    if "coreml" in formats:
        for precision in precisions:
            path = FORMAT_TABLE["coreml"].path(job.stage, spec.stem, precision)
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
