"""The result files ``bench report`` reads, typed: the fields each of its sections uses, checked by
:mod:`pocketswap.core.jsonio`'s schema, so a result file that lies is one line naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError
from pocketswap.core.jsonio import Obj, check_schema

PIPELINE_STAGES = ("detect_ms", "landmarks_ms", "align_ms", "swap_ms", "paste_ms")
_LATENCY = Obj({"artifact": str, "runtime": str, "threads": int, "median_ms": float, "precision": (str, None),
                "preset": (str, None)}, required=("artifact", "runtime", "threads", "median_ms"))  # fmt: skip
_PIPELINE = Obj({"model": str, "threads": int, **dict.fromkeys(PIPELINE_STAGES, float)},
                required=("model", "threads", *PIPELINE_STAGES))  # fmt: skip
_ROOFLINE = Obj({"preset": str, "precision": str, "phone": str, "gmac": float, "mbytes_moved": float,
                 "estimate_ms": float}, required=("preset", "precision", "phone", "estimate_ms"))  # fmt: skip
_QUALITY = Obj({"metrics": Obj(values=dict), "notes": dict}, required=("metrics",))
SCHEMAS = {
    **{kind: Obj({"records": [record]}, required=("records",))
       for kind, record in (("latency", _LATENCY), ("pipeline", _PIPELINE), ("roofline", _ROOFLINE), ("device", dict))},
    "eval": _QUALITY,
    "quality": _QUALITY,
    "demo": Obj({"stage_ms": Obj(values=(float, None))}, required=("stage_ms",)),
    "quality_photos": Obj({"summary": Obj(values=dict), "judges": Obj(values={"training_loss": bool}),
                           "photos": int, "people": [str], "folder": (str, None), "video": (dict, None),
                           "worst": Obj(values=[str])}, required=("summary", "judges", "photos", "people")),
}  # fmt: skip


def check_result(data: dict[str, Any], kind: Any, path: Path) -> str:
    """``kind`` when ``data`` (the result file ``path``) has the types its section reads; manifests and dataset
    manifests go through their own one check. PocketswapError naming the field otherwise."""
    if kind == "manifest":
        from pocketswap.core.manifest import Manifest

        Manifest.from_dict(data, str(path))
    elif kind == "dataset":
        from pocketswap.core.dataset import DatasetManifest

        DatasetManifest.from_dict(data, str(path))
    elif not isinstance(kind, str):
        return "json"
    elif kind in SCHEMAS:
        check_schema(data, SCHEMAS[kind], f"{kind} result {path}", error=PocketswapError)
    return kind
