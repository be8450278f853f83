"""The live pipeline's switches as data: :class:`PipelineConfig` (what the demo's flags, the app's Live tab
and the benchmarks set) and one app tab's :class:`LiveSettings`, whose switches the page builds from
:func:`settings_schema`. Import-light (no models, no OpenCV): the CLI builds its flags from these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pocketswap.core.config import Config, check_range, coerce_fields, config_field, to_dict
from pocketswap.core.errors import ConfigError
from pocketswap.faces.smoothing import BETA, DETECT_EVERY, MIN_CUTOFF

VIEWS = ("swap", "split", "mask")  # swapped frame, before | after, mask overlay

MAX_DETECT_EVERY = 300


@dataclass
class PipelineConfig(Config):
    """The live pipeline's switches, the one definition the demo's flags, the app's Live tab (its settings
    schema, :func:`settings_schema`) and the benchmarks set."""

    detect_every: int = config_field(DETECT_EVERY, "detect every N frames, tracking landmarks in between")
    min_cutoff: float = config_field(MIN_CUTOFF, "One-Euro landmark smoothing: minimum cutoff (Hz)")
    beta: float = config_field(BETA, "One-Euro landmark smoothing: speed coefficient")
    color_transfer: bool = config_field(True, "colour transfer (CIELAB) at paste-back")
    keep_detail: bool = config_field(True, "add back the frame's detail finer than the crop on large faces")
    keep_mouth: bool = config_field(True, "the frame's mouth opening (teeth, tongue) stays the frame's at paste-back")
    all_faces: bool = config_field(False, "swap every face, not only the largest")
    swap: bool = config_field(True, "swap faces (off: frames pass through, timed)")

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_range("detect_every", self.detect_every, 1, MAX_DETECT_EVERY)
        check_range("min_cutoff", self.min_cutoff, 1e-6, None)
        check_range("beta", self.beta, 0.0, None)


LIVE_SWITCHES = ("swap", "color_transfer", "all_faces", "detect_every")  # the Live tab's share of PipelineConfig


@dataclass
class LiveSettings(Config):
    """One tab's switches, sent by the page as JSON: its own (view, label, identity, virtual camera) and its
    share of the :class:`PipelineConfig` (``pipeline``, which the tab's swapper runs with). Unknown keys are
    ignored, bad values refused before any is applied."""

    view: str = config_field("swap", "view", VIEWS)
    label: bool = config_field(True, "SYNTHETIC label")
    virtual_camera: bool = config_field(False, "virtual camera (video calls)")
    identity: int = config_field(0, "identity (index)")
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.view not in VIEWS:
            raise ConfigError(f"config field 'view' must be one of {', '.join(VIEWS)}, got {self.view!r:.40}")
        check_range("identity", self.identity, 0, 10_000)

    def update(self, data: dict[str, Any]) -> None:
        """Apply the known keys of ``data``, all checked before any is applied (a bad one names itself)."""
        own = {k: data[k] for k in ("view", "label", "virtual_camera", "identity") if k in data}
        switches = {k: data[k] for k in LIVE_SWITCHES if k in data}
        pipeline = self.pipeline.replace(**switches)
        checked = self.replace(**own, pipeline=pipeline)
        for name in own:
            setattr(self, name, getattr(checked, name))
        for name in switches:  # in place: the tab's swapper holds this object
            setattr(self.pipeline, name, getattr(pipeline, name))


# The Live tab's controls in order, with their short labels (the fields' help texts become tooltips).
PAGE_LABELS = {"swap": "swap", "view": "View", "label": "SYNTHETIC label", "color_transfer": "colour transfer",
               "all_faces": "all faces", "virtual_camera": "virtual camera (video calls)",
               "detect_every": "Detect every N frames"}  # fmt: skip


def settings_schema() -> list[dict[str, Any]]:
    """The Live tab's switches as data (name, label, type, default, choices or bounds), in the page's order:
    the page builds its controls from this, and :meth:`LiveSettings.update` checks what it sends."""
    import typing

    fields = {f.name: f for f in dataclasses.fields(LiveSettings)} | {
        f.name: f for f in dataclasses.fields(PipelineConfig) if f.name in LIVE_SWITCHES
    }
    defaults = {**to_dict(LiveSettings()), **to_dict(PipelineConfig())}
    hints = typing.get_type_hints(LiveSettings) | typing.get_type_hints(PipelineConfig)
    schema = []
    for name, label in PAGE_LABELS.items():
        meta, hint = fields[name].metadata, hints[name]
        entry = {"name": name, "label": label, "help": meta["help"], "default": defaults[name]}
        if meta.get("choices"):
            entry |= {"type": "choice", "choices": list(meta["choices"])}
        elif hint is bool:
            entry["type"] = "bool"
        else:
            entry |= {"type": "int", "min": 1, "max": MAX_DETECT_EVERY}
        schema.append(entry)
    return schema
