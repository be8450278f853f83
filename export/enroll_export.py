"""Enrollment artifacts (the modules of :mod:`pocketswap.export.enroll`): the identity encoder, the
hypernetwork and the baked-weights model, each described as an export :class:`Job` and converted,
parity-checked and given its manifest by the student's own :func:`export_formats`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch

from pocketswap.core.manifest import IDENTITY_INPUT, TensorInfo
from pocketswap.export import data as export_data
from pocketswap.export.formats import export_formats
from pocketswap.export.job import Artifact, Job, ParityCases, random_embedding

log = logging.getLogger(__name__)

# -- enrollment artifacts ------------------------------------------------------------------------


def export_enrollment(job: Job, formats: list[str], precisions: list[str], students: list[Artifact]) -> list[Artifact]:
    """The identity encoder, the hypernetwork and (baked TFLite) the baked-weights model, fp32/fp16, per
    format: each is a :class:`Job` converted by the same :func:`export_formats` as the student."""
    float_precisions = [p for p in precisions if p != "int8"] or ["fp32"]
    if "int8" in precisions:
        log.info("enrollment models are exported in %s only (they run once per identity)", ", ".join(float_precisions))
    out = []
    for enrolled in _enroll_jobs(job, students):
        out += export_formats(enrolled, formats, float_precisions, image_input=False, compress="none", benchmark=False)
    return out


def _enroll_job(
    student: Job, name: str, kind: str, module: torch.nn.Module, reference: Callable[[np.ndarray], np.ndarray],
    cases: list[tuple[str, np.ndarray]], inputs: TensorInfo, outputs: TensorInfo, fields: dict,
) -> Job:  # fmt: skip
    """A one-input, one-output enrollment model as an export Job (manifest: ``kind``, the student's source, ``fields``)."""
    module = module.eval()

    def named_reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {outputs.name: reference(feeds[inputs.name])}

    checks = ParityCases([(case, {inputs.name: value}) for case, value in cases], named_reference,
                         {outputs.name: 2.0}, student.checks.strict)  # fmt: skip
    fields = {"kind": kind, "source": student.manifest_fields.get("source", {}), **fields}
    side = dataclasses.replace(student.origin, identity_names=[], calibration=None)
    return Job(name, kind, module, [inputs], [outputs], checks, fields, side, student.stage, student.work)


def _enroll_jobs(job: Job, students: list[Artifact]) -> list[Job]:
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

    d, p = job.origin.config.embed_dim, int(job.origin.net.num_identity_params)
    embs = [(f"random-{i}", random_embedding(d, 300 + i)[None]) for i in range(2)]
    embs.append(("identity", job.origin.embedding[None].astype(np.float32)))
    emb_info = TensorInfo("embedding", [1, d], "float32", "NC", [-1.0, 1.0], "L2-normalised identity embedding")
    layout = [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in job.origin.net.param_layout()]

    @torch.no_grad()
    def hyper_reference(emb: np.ndarray) -> np.ndarray:
        return job.origin.net.identity_params(torch.from_numpy(emb)).numpy()

    jobs = [
        _enroll_job(
            job, "dlib_encoder", "identity_encoder", encoder, encoder_reference, chips,
            TensorInfo("chip", [1, 3, 150, 150], "float32", "NCHW", [0.0, 255.0], "RGB face chip aligned to the dlib template"),
            TensorInfo("embedding", [1, 128], "float32", "NC", [-1.0, 1.0], "L2-normalised identity embedding"),
            {"template": "dlib", "crop_size": 150, "template_points": _template_points(150, "dlib")},
        ),
        _enroll_job(
            job, f"{job.origin.config.name}_hypernet", "hypernetwork", enroll.HyperParamsModule(job.origin.net), hyper_reference, embs,
            emb_info, TensorInfo(IDENTITY_INPUT, [1, p], "float32", "NC", None, "identity vector of the dynamic student"),
            {"preset": job.origin.config.name, "extra": {"identity_layout": layout}},
        ),
    ]  # fmt: skip
    patched = next((a for a in students if a.manifest.runtime == "tflite" and a.manifest.patch), None)
    if patched is not None:
        entries = patched.manifest.patch["tensors"]
        names = [e["name"] for e in entries]

        def baked_reference(emb: np.ndarray) -> np.ndarray:
            tensors = patch.baked_identity_tensors(job.origin.net, torch.from_numpy(emb), names)
            flat = [np.transpose(tensors[e["name"]], e["permutation"]).reshape(-1) for e in entries]
            return np.concatenate(flat)[None]

        n = sum(int(np.prod(e["torch_shape"])) for e in entries)
        jobs.append(
            _enroll_job(
                job, f"{job.origin.config.name}_baked_weights", "hypernetwork", enroll.BakedWeightsModule(job.origin.net, entries),
                baked_reference, embs, emb_info,
                TensorInfo("weights", [1, n], "float32", "NC", None, "identity tensors of the baked TFLite student, in patch order"),
                {
                    "preset": job.origin.config.name,
                    "extra": {
                        "patches": [a.path.name for a in students if a.manifest.runtime == "tflite" and a.manifest.patch],
                        "patch_order": [{"name": e["name"], "numel": int(np.prod(e["torch_shape"])), "shape": e["shape"]} for e in entries],
                    },
                },
            )
        )  # fmt: skip
    return jobs


def _template_points(size: int, template: str) -> list[list[float]]:
    from pocketswap.faces.align import template_points

    return np.round(template_points(size, template), 3).tolist()
