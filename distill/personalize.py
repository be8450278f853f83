"""Per-identity personalisation: fine-tune a distilled student for one face.

``personalize(RUN_DIR, PHOTO, OUT)``:

1. the teacher swaps PHOTO's face onto every face of an attribute pool (the bundled faces or a
   user's folder, e.g. frames of the video to swap into) with the generator's augmentations; the
   pairs go to ``OUT/data`` (a normal, resumable paired dataset whose manifest names the identity);
2. the student in RUN_DIR is fine-tuned on them (every weight moves, plus learned constant maps on
   its skips and logits, see ``StudentConfig.identity_maps``) with a validation split of attribute
   faces it never trains on; OUT is a normal run directory (``pocketswap export OUT --identity
   PHOTO`` and ``export patch`` read it) whose checkpoints record whose they are;
3. :func:`compare` scores personalised | universal | teacher | the unchanged input on those
   held-out faces (``OUT/eval.json``, identity metrics of :mod:`pocketswap.distill.evaluate`) and
   draws them side by side (``OUT/compare.png``).

Every step resumes: dataset shards and training checkpoints that exist are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketswap.core.errors import ConfigError
from pocketswap.teacher.geometric import GeometricConfig

if TYPE_CHECKING:
    from pocketswap.distill.config import TrainConfig

log = logging.getLogger(__name__)

# Fine-tuning settings that differ from `TrainConfig`'s defaults (FIELD=VALUE overrides win; student.*
# overrides are merged into the starting checkpoint's student config): a step count that fits a 2-core CPU's
# minutes, a lower LR than training from scratch, in-process data (both cores train). How each value was
# chosen, with its figures: results/personalisation.md.
DEFAULTS: dict[str, Any] = {
    "steps": 800,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup_steps": 50,
    "w_id": 0.3,
    "map_lr_mult": 20.0,  # the identity maps start at zero and are plain constants: they learn at 20x the LR
    "split_by": "attribute",
    "val_fraction": 0.1,
    "val_samples": 64,
    "checkpoint_every": 250,
    "image_every": 250,
    "log_every": 20,
    "num_workers": 0,
}
# The personalised student's identity inputs: learned constant maps, and the spatial encoder reading the
# identity crop mesh-warped onto each frame's landmarks, moved as far to the identity's face shape as the
# built-in teacher moves its swaps (so student and teacher agree on the shape it learns).
STUDENT_FIELDS: dict[str, Any] = {
    "identity_maps": "both", "identity_encoder": True, "identity_warp": True,
    "identity_shape": GeometricConfig.shape_transfer,
}  # fmt: skip

DATA_DIR = "data"


def personal_augment() -> Any:
    """The generator's augmentations for one fixed person: the attribute faces vary as in training, the
    identity stays the person's real face (a mirrored or recoloured identity is another texture for the
    same target, which the student can only average: soft, half-mirrored swaps)."""
    from pocketswap.teacher.augment import AugmentConfig, ColorConfig, FlipConfig

    return AugmentConfig(flip=FlipConfig(identity=0.0), color=ColorConfig(identity_prob=0.0))


@dataclass
class PersonalizeResult:
    """Where things went and what was measured."""

    out: str
    identity: str
    steps: int
    train_seconds: float
    wall_seconds: float
    pairs: int
    held_out_faces: int
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def personalize_config(
    source: Path, overrides: dict[str, Any] | None = None, *, steps: int | None = None, seed: int = 0
) -> TrainConfig:
    """The fine-tuning config for the student checkpoint ``source``: :data:`DEFAULTS`, the checkpoint's
    student config with :data:`STUDENT_FIELDS`, then ``overrides`` (``student`` merges into the student config)."""
    from pocketswap.distill.config import TrainConfig
    from pocketswap.student.checkpoint import load_checkpoint
    from pocketswap.student.config import PRESETS

    _, scfg, _ = load_checkpoint(source)
    overrides = dict(overrides or {})
    student = {k: v for k, v in scfg.to_dict().items() if k != "name"} | STUDENT_FIELDS
    extra_fields = overrides.pop("student", {})
    if not isinstance(extra_fields, dict):
        raise ConfigError("config field 'student' must be a mapping, e.g. student.identity_maps=none")
    student |= extra_fields
    fields = {**DEFAULTS, "preset": scfg.name if scfg.name in PRESETS else "nano", "student": student,
              "init_from": str(source), "seed": seed, **overrides}  # fmt: skip
    if steps is not None:
        fields["steps"] = steps
    return TrainConfig.from_dict(fields)


def personalize(
    run: str | Path,
    identity: str,
    out: str | Path,
    *,
    faces: str = "samples",
    pairs: int = 1024,
    steps: int | None = None,
    resume: bool = False,
    workers: int = 2,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    evaluate_pairs: int = 64,
    progress: bool = True,
) -> PersonalizeResult:
    """Personalise the student of ``run`` (run folder or checkpoint) for the face in ``identity``
    (photo or ``sample:NAME``) into the run folder ``out``. Raises PocketswapError subclasses on bad
    input (not a run, no or several faces in the photo, an ``out`` that holds another identity)."""
    from pocketswap.core.checkpoint import checkpoint_encoder, resolve_checkpoint
    from pocketswap.core.files import atomic_write_json
    from pocketswap.distill.state import read_run_file
    from pocketswap.distill.train import train
    from pocketswap.student.checkpoint import load_checkpoint
    from pocketswap.teacher.generate import GenerateConfig, generate

    started = time.perf_counter()
    out = Path(out)
    source = resolve_checkpoint(run)
    _, scfg, extra = load_checkpoint(source)
    if (out / "checkpoints").is_dir() and not resume:
        raise ConfigError(
            f"{out} already holds a personalisation run; pass --resume to continue it or choose a new --out"
        )

    data = out / DATA_DIR
    gen = GenerateConfig(
        out=str(data), faces=faces, pairs=pairs, size=scfg.size, seed=seed, workers=workers,
        same_identity_share=0.05, identity=identity, encoder=checkpoint_encoder(extra, scfg.embed_dim) or "dlib",
        augment=personal_augment(),
    )  # fmt: skip
    log.info("[1/3] teacher pairs of %s against the faces of %s -> %s", identity, faces, data)
    generate(gen, rank=0, world_size=1, progress=progress)

    config = personalize_config(source, overrides, steps=steps, seed=seed)
    log.info(
        "[2/3] fine-tune %s (%d steps, identity maps: %s)", source, config.steps, config.student_config().identity_maps
    )
    summary = train(config, data, out, resume=resume and (out / "checkpoints").is_dir(), progress=progress)

    log.info("[3/3] identity metrics on attribute faces held out of the fine-tuning")
    report = compare(out, source, evaluate_pairs, progress=progress)
    held = read_run_file(out)["split"]["val_names"]
    result = PersonalizeResult(
        out=str(out), identity=identity, steps=summary.step, train_seconds=round(summary.train_seconds, 1),
        wall_seconds=round(time.perf_counter() - started, 1), pairs=pairs, held_out_faces=len(held),
        metrics=report["metrics"],
    )  # fmt: skip
    atomic_write_json(out / "personalize.json", result.to_dict())
    return result


def compare(out: Path, universal: str | Path, max_samples: int = 64, grid_rows: int = 6, progress: bool = True) -> dict:
    """Score the personalised student in ``out`` beside the ``universal`` one it started from, the
    teacher and the unchanged input, on the attribute faces held out of the fine-tuning. Writes
    ``out/eval.json`` (columns personalised | universal | teacher | attribute) and ``out/compare.png``
    (rows of identity | attribute | teacher | universal | personalised; the students' crops as the
    pipeline pastes them, blended over the attribute by their own masks)."""
    import torch

    from pocketswap.core.checkpoint import resolve_checkpoint
    from pocketswap.core.files import atomic_write_json
    from pocketswap.core.spec import PIXELS
    from pocketswap.distill.data import Split, identity_input, iter_batches, iter_split
    from pocketswap.distill.evaluate import evaluate
    from pocketswap.distill.logs import image_grid, write_png
    from pocketswap.distill.state import read_run_file
    from pocketswap.student.checkpoint import load_checkpoint
    from pocketswap.student.network import composite

    data = out / DATA_DIR
    mine = evaluate(out, data, split="val", max_samples=max_samples, landmarks=False, progress=progress)
    theirs = evaluate(universal, data, split="val", split_from=out, max_samples=max_samples, landmarks=False,
                      progress=progress)  # fmt: skip
    metrics = mine["metrics"]
    report = {
        **mine,
        "kind": "eval",
        "student": f"{mine['student']} personalised (vs universal)",
        "metrics": {
            "personalised": metrics["student"],
            "universal": theirs["metrics"]["student"],
            "teacher": metrics["teacher"],
            "attribute": metrics["attribute"],
        },  # fmt: skip
        "universal_checkpoint": theirs["checkpoint"],
    }
    report["notes"] = {**mine["notes"], "columns": "personalised student | the universal student it started "
                       "from | teacher | unchanged input, on attribute faces held out of the fine-tuning"}  # fmt: skip
    atomic_write_json(out / "eval.json", report)

    split = Split.from_dict(read_run_file(out)["split"])
    personal, personal_config, _ = load_checkpoint(resolve_checkpoint(out))
    rows = iter_split(data, split, "val", limit=grid_rows)
    batch = next(iter_batches(rows, grid_rows, personal_config.warp_shape), None)
    if batch is not None:
        general = load_checkpoint(resolve_checkpoint(universal))[0]
        with torch.no_grad():
            attribute = PIXELS.to_model_torch(batch["attribute"])
            inputs = attribute, batch["embedding"], identity_input(batch)
            columns = [PIXELS.to_pixels_torch(composite(*net(*inputs), attribute)) for net in (general, personal)]
        grid = image_grid(
            batch["identity_image"].numpy(), batch["attribute"].numpy(), batch["output"].numpy(), *columns
        )
        write_png(out / "compare.png", grid)
    return report


__all__ = ["DEFAULTS", "PersonalizeResult", "compare", "personalize"]
