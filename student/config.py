"""Student configuration: a validated dataclass, a registry of presets, dict/YAML round-trips.

Every field is plain data so a config can live in a checkpoint's JSON or a YAML file. Invalid
values raise :class:`pocketswap.core.errors.ConfigError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketswap.core.config import Config, check_range, coerce_fields, load_yaml
from pocketswap.core.errors import ConfigError

NORMS = ("bn", "none")
IDENTITY_MAPS = ("none", "skips", "head", "both")
ACTIVATIONS = ("relu", "relu6")


@dataclass(frozen=True)
class StudentConfig(Config):
    """Shape of a student UNet and its identity hypernetwork.

    The encoder has ``len(enc_channels)`` stride-2 blocks (depthwise 4x4 + pointwise), so ``size``
    must be divisible by ``2 ** len(enc_channels)``. The decoder has one block per skip connection
    (``len(enc_channels) - 1``), each doubling the resolution; the heads run at full resolution.
    """

    name: str = "custom"
    size: int = 224  # square crop side, pixels
    embed_dim: int = 128  # identity embedding length (dlib 128, ArcFace 512)
    enc_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    dec_channels: tuple[int, ...] = (256, 128, 64, 32)
    head_image_skip: bool = True  # concatenate the input crop before the heads
    # Learned constant maps for a personalised (one-identity) student: "skips" adds one to every skip
    # but the full-resolution one, "head" adds one to the image/mask logits, "both" does both. They are
    # constants in the baked artifact (an Add each) and zero at init, so they change nothing until trained.
    identity_maps: str = "none"
    # Spatial identity: a depthwise encoder of the aligned identity crop adds feature maps to the same
    # skips and to the logits (a constant of the baked artifact, so free at run time; baked export only).
    identity_encoder: bool = False
    # Warped identity: the spatial encoder reads the identity crop mesh-warped onto each frame's landmarks
    # (`faces.warp.warp_identity`) instead of the fixed crop, so the identity's texture arrives where the
    # attribute's features are. The maps then change per frame: the baked artifact takes that warped crop
    # as a second input ("identity_warped") and runs the encoder. Needs identity_encoder.
    identity_warp: bool = False
    # How far the warped identity's inner features move to the identity's own face shape on the way
    # (`faces.shape.transfer_shape`: 0 the frame's landmarks; match the teacher's `shape_transfer`, whose
    # swaps carry that shape). The pipeline reads it from the artifact's manifest.
    identity_shape: float = 0.0
    # Compositing head (`student.compose`): the swap is the warped identity's own pixels, colour-corrected
    # by smooth maps, over the attribute's, so it is as sharp as its inputs. Needs identity_warp.
    compose: bool = False
    compose_smooth: int = 8  # the colour maps are constant over cells this many core pixels wide
    # The UNet runs on the crop average-pooled by this factor (its maps are upsampled to the crop before
    # the composite): a `size` px swap for the cost of a size/core_scale px UNet. >1 needs compose.
    core_scale: int = 1
    hyper_hidden: int = 256  # hypernetwork MLP width
    hyper_layers: int = 2  # hypernetwork MLP depth (>= 1)
    normalize_embedding: bool = True  # L2-normalise the embedding inside the hypernetwork
    norm: str = "bn"  # "bn" (folded at bake time) or "none"
    act: str = "relu"  # "relu" or "relu6"
    template: str = "arcface"  # name of the alignment template the crops are made with
    demod_eps: float = 1e-8

    def __post_init__(self) -> None:
        coerce_fields(self)  # types (lists from JSON/YAML become tuples); the checks below are ranges and rules
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if not self.name:
            raise ConfigError("config field 'name' must be a non-empty string")
        for name in ("size", "embed_dim", "hyper_hidden", "hyper_layers", "compose_smooth", "core_scale"):
            _check_positive(name, getattr(self, name))
        for name in ("enc_channels", "dec_channels"):
            if not getattr(self, name):
                raise ConfigError(f"config field '{name}' must be a non-empty list of ints")
            for v in getattr(self, name):
                _check_positive(name, v)
        if len(self.enc_channels) < 2:
            raise ConfigError("config field 'enc_channels' needs at least 2 stages")
        if len(self.dec_channels) != len(self.enc_channels) - 1:
            raise ConfigError(
                f"config field 'dec_channels' must have len(enc_channels) - 1 = {len(self.enc_channels) - 1} "
                f"entries (one per skip connection), got {len(self.dec_channels)}"
            )
        stride = 2 ** len(self.enc_channels) * self.core_scale
        if self.size % stride:
            raise ConfigError(
                f"config field 'size' ({self.size}) must be divisible by core_scale * 2**len(enc_channels) = {stride}"
            )
        if self.identity_warp and not self.identity_encoder:
            raise ConfigError(
                "config field 'identity_warp' needs 'identity_encoder': true (the encoder reads the warp)"
            )
        if self.compose and not self.identity_warp:
            raise ConfigError("config field 'compose' needs 'identity_warp': true (it composes the warped identity)")
        if self.core_scale > 1 and not self.compose:
            raise ConfigError("config field 'core_scale' > 1 needs 'compose': true (a plain head would only upsample)")
        if self.core_size % self.compose_smooth:
            raise ConfigError(
                f"config field 'compose_smooth' ({self.compose_smooth}) must divide the core size {self.core_size}"
            )
        check_range("identity_shape", self.identity_shape, 0.0, 1.0)
        _check_choice("identity_maps", self.identity_maps, IDENTITY_MAPS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("act", self.act, ACTIVATIONS)
        if not self.template:
            raise ConfigError("config field 'template' must be a non-empty string")
        if self.demod_eps <= 0:
            raise ConfigError(f"config field 'demod_eps' must be a positive float, got {self.demod_eps!r}")

    @property
    def core_size(self) -> int:
        """Side of the crop the UNet itself runs on (``size / core_scale``)."""
        return self.size // self.core_scale

    @property
    def warp_shape(self) -> float | None:
        """The shape amount of the warped-identity input (``identity_shape``), or None for students without one."""
        return float(self.identity_shape) if self.identity_warp else None

    def map_levels(self) -> list[tuple[int, int, int]]:
        """(decoder block, channels, side) of the skips that identity maps are added to: every skip
        but the full-resolution one (side <= core size/4), which keeps the baked constants small."""
        core = self.core_size
        skips = list(reversed(self.enc_channels[:-1]))
        sides = [core // 2 ** (len(self.enc_channels) - 1 - i) for i in range(len(skips))]
        return [(i, c, s) for i, (c, s) in enumerate(zip(skips, sides, strict=True)) if s <= core // 4]

    def skip_maps(self) -> list[tuple[int, int, int]]:
        """(decoder block, channels, side) of the learned constant skip maps (``identity_maps``)."""
        return self.map_levels() if self.identity_maps in ("skips", "both") else []

    @property
    def head_map(self) -> bool:
        """Whether a learned constant map is added to the image/mask logits."""
        return self.identity_maps in ("head", "both")

    def decoder_in_channels(self) -> list[int]:
        """Input channels of each decoder block (upsampled features + skip)."""
        prev = [self.enc_channels[-1], *self.dec_channels[:-1]]
        skips = list(reversed(self.enc_channels[:-1]))
        return [p + s for p, s in zip(prev, skips, strict=True)]

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text; also written to ``path`` when given."""
        text = super().to_yaml()
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudentConfig:
        """Load a YAML file. A top-level ``preset: NAME`` key starts from that preset."""
        data = load_yaml(path)
        if "preset" in data:
            return get_preset(data.pop("preset"), **data)
        return cls.from_dict(data)


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"config field '{name}' must be a positive int, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config field '{name}' must be one of {', '.join(choices)}; got {value!r}")


_NANO = StudentConfig(
    name="nano",
    size=128,
    enc_channels=(16, 32, 64, 128, 256),
    dec_channels=(128, 64, 32, 16),
    hyper_hidden=128,
)

PRESETS: dict[str, StudentConfig] = {
    # MobileFaceSwap-sized: 224 px, channels 3->32->...->512 (budget <= 0.55M params, <= 0.35 GMAC).
    "base": StudentConfig(name="base", size=224),
    # Live demo on a laptop CPU: 128 px, quarter width (budget <= 0.05 GMAC).
    "nano": _NANO,
    # Sharp swaps on large faces: a 256 px crop composed from the two crops' own pixels by the nano UNet
    # run at 128 px (core_scale 2), reading the warped identity.
    "nano256": _NANO.replace(
        name="nano256",
        size=256,
        identity_encoder=True,
        identity_warp=True,
        compose=True,
        core_scale=2,
        identity_shape=0.5,  # the built-in teacher's shape_transfer
    ),
    # 256 px, 1.5x width (FaceShifter-resolution teachers).
    "large": StudentConfig(
        name="large",
        size=256,
        enc_channels=(48, 96, 192, 384, 768),
        dec_channels=(384, 192, 96, 48),
        hyper_hidden=384,
    ),
}


def get_preset(name: str, **overrides: Any) -> StudentConfig:
    """A preset by name, optionally with fields changed (``get_preset("base", embed_dim=512)``)."""
    if name not in PRESETS:
        raise ConfigError(f"config field 'preset': unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]
    return config.replace(**overrides) if overrides else config


__all__ = ["PRESETS", "StudentConfig", "get_preset"]
