"""`TrainConfig`: every knob of a distillation run, loaded from YAML and CLI overrides.

Validation raises :class:`pocketswap.core.errors.ConfigError` naming the offending field. Values given
as strings on the command line (``lr=2e-3``, ``--batch-size 16``) are parsed as YAML scalars first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pocketswap.core.config import Config, coerce_fields, config_field
from pocketswap.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SPLIT_BY = ("identity", "attribute")


FREEZABLE = ("encoder", "decoder", "head", "hypernet", "spatial")


_f = config_field


@dataclass(frozen=True)
class TrainConfig(Config):
    """Distillation settings. Field help texts are shown by ``pocketswap distill train --help``."""

    # student
    preset: str = _f("nano", "student preset: nano, base or large")
    student: dict = _f({}, "student config fields overriding the preset (e.g. {size: 128})")
    init_from: str = _f("", "checkpoint or run folder whose weights start this run (fine-tuning, personalisation)")
    # schedule and optimiser
    steps: int = _f(2000, "optimiser steps in total (the LR schedule spans them)")
    batch_size: int = _f(16, "samples per step per process")
    lr: float = _f(2e-3, "peak AdamW learning rate")
    min_lr_ratio: float = _f(0.05, "final LR of the cosine schedule, as a fraction of lr")
    warmup_steps: int = _f(100, "linear LR warmup steps")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    hyper_lr_mult: float = _f(1.0, "learning-rate multiplier of the identity hypernetwork")
    map_lr_mult: float = _f(1.0, "learning-rate multiplier of the learned identity maps (personalised students)")
    freeze: tuple[str, ...] = _f(
        (), "student parts whose weights stay fixed: encoder, decoder, head, hypernet, spatial"
    )
    betas: tuple[float, float] = _f((0.9, 0.99), "AdamW betas")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _f(0.999, "EMA decay of the evaluated/exported weights (warmed up as (1+t)/(10+t))")
    # losses (weights; 0 turns a term off)
    w_l1: float = _f(1.0, "L1 to the teacher output")
    w_ssim: float = _f(0.5, "1 - SSIM to the teacher output")
    inside_weight: float = _f(3.0, "extra pixel weight inside the teacher mask for L1/SSIM (1: uniform)")
    w_outside: float = _f(0.5, "L1 to the attribute crop outside the teacher mask")
    w_id: float = _f(0.1, "1 - cosine of the dlib embedding of the output to the identity's")
    id_samples: int = _f(
        0, "score the identity term on the first N samples of each batch (0: all; it is the costliest term)"
    )
    w_mask: float = _f(1.0, "BCE of the student mask to the teacher mask")
    w_rec: float = _f(1.0, "L1 to the attribute on same-identity (reconstruction) pairs")
    # What the live pipeline shows is the output pasted by the student's own mask: without these two
    # terms at 1.0 the mask stays soft (distill eval's mask_coverage 0.51) and ghosts the attribute's face back.
    w_paste: float = _f(1.0, "L1 of the output blended over the attribute by the student mask, to the teacher output")
    w_feat: float = _f(0.0, "feature distillation from a PyTorch teacher (needs feature_teacher)")
    feature_teacher: str = _f("", "PyTorch teacher for w_feat: 'module:factory' or 'file.py:factory'")
    feature_layers: tuple[str, ...] = _f((), "feature pairs 'teacher_module=student_module'")
    w_adv: float = _f(0.0, "PatchGAN hinge adversarial term (0: off)")
    adv_start: int = _f(0, "first step of the adversarial term")
    d_lr: float = _f(2e-4, "discriminator learning rate")
    d_channels: int = _f(32, "discriminator width")
    # data
    val_fraction: float = _f(0.1, "share of the dataset's identities held out for validation")
    val_strict: bool = _f(False, "val pairs also need a held-out attribute face (fewer val pairs)")
    holdout: tuple[str, ...] = _f((), "faces always held out for validation (e.g. the photo a demo swaps into)")
    split_by: str = _f("identity", "what validation holds out: identity faces, or attribute faces (one-identity data)")
    split_seed: int = _f(0, "salt of the identity hash that picks the held-out identities")
    val_samples: int = _f(256, "held-out pairs scored at each checkpoint (0: skip validation)")
    shuffle_buffer: int = _f(256, "samples in the streaming shuffle buffer")
    num_workers: int = _f(1, "DataLoader worker processes per training process (0: in-process)")
    # run hygiene
    seed: int = _f(0, "seed of weights, data order and everything random")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms (CPU; warn-only on CUDA)")
    device: str = _f("auto", "auto, cpu or cuda")
    amp: str = _f("auto", "autocast on CUDA: auto (bf16 if supported, else fp16), off, bf16, fp16")
    threads: int = _f(0, "torch CPU threads per process (0: auto, the CPU cores per process minus num_workers)")
    log_every: int = _f(20, "steps between scalar logs (TensorBoard, metrics.jsonl)")
    image_every: int = _f(250, "steps between image grids")
    checkpoint_every: int = _f(500, "steps between checkpoints (each is validated)")
    keep_last: int = _f(3, "step checkpoints kept (the best is kept separately in RUN_DIR/best)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        coerce_fields(self)
        from pocketswap.student.config import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"config field 'preset' must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        self.student_config()  # names a bad 'student.<field>'
        for name in ("steps", "batch_size"):
            _at_least(name, getattr(self, name), 1)
        for name in (
            "warmup_steps",
            "adv_start",
            "id_samples",
            "val_samples",
            "num_workers",
            "threads",
            "split_seed",
            "seed",
        ):
            _at_least(name, getattr(self, name), 0)
        for name in ("log_every", "image_every", "checkpoint_every", "keep_last", "shuffle_buffer", "d_channels"):
            _at_least(name, getattr(self, name), 1)
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            raise ConfigError(f"config field 'freeze': unknown part {unknown[0]!r}; choose from {', '.join(FREEZABLE)}")
        for name in ("lr", "d_lr", "hyper_lr_mult", "map_lr_mult"):
            if getattr(self, name) <= 0.0:
                raise ConfigError(f"config field '{name}' must be a positive number, got {getattr(self, name)!r}")
        weights = ("w_l1", "w_ssim", "w_outside", "w_id", "w_mask", "w_rec", "w_paste", "w_feat", "w_adv")
        for name in (*weights, "weight_decay"):
            _at_least(name, getattr(self, name), 0.0)
        _at_least("grad_clip", self.grad_clip, 0.0)
        _at_least("inside_weight", self.inside_weight, 1.0)
        _between("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _between("ema_decay", self.ema_decay, 0.0, 1.0)
        _between("val_fraction", self.val_fraction, 0.0, 0.9)
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"config field 'betas[{i}]' must be in [0, 1), got {beta!r}")
        if self.split_by not in SPLIT_BY:
            raise ConfigError(f"config field 'split_by' must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"config field 'device' must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"config field 'amp' must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.w_feat > 0 and not self.feature_teacher:
            raise ConfigError("config field 'feature_teacher' is required when w_feat > 0 ('module:factory')")
        if self.w_feat > 0 and not self.feature_layers:
            raise ConfigError("config field 'feature_layers' needs at least one 'teacher_module=student_module'")
        for item in self.feature_layers:
            if item.count("=") != 1 or not all(item.split("=")):
                raise ConfigError(
                    f"config field 'feature_layers' entries look like 'teacher.layer=student.layer', got {item!r}"
                )

    def student_config(self, embed_dim: int | None = None) -> Any:
        """The `StudentConfig`: the preset with `student` overrides (and the dataset's embedding size)."""
        from pocketswap.student.config import get_preset

        overrides = dict(self.student)
        if embed_dim is not None:
            overrides.setdefault("embed_dim", embed_dim)
        try:
            return get_preset(self.preset, **overrides)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("field '", "field 'student.", 1)) from exc


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"config field '{name}' must be >= {low}, got {value!r}")


def _between(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config field '{name}' must be in [{low}, {high}], got {value!r}")


__all__ = ["TrainConfig"]
