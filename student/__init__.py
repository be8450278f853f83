"""Student stage: the depthwise-separable UNet, its identity hypernetwork, presets and cost summary.

Public API (torch-heavy names are imported lazily so ``import pocketswap.student`` stays cheap)::

    StudentConfig, PRESETS, get_preset              # config.py
    StudentNet, ParamSlot                           # network.py
    BakedStudent, DynamicIdentityStudent            # folded.py
    HyperNet                                        # hypernet.py
    StudentSummary, summarize, count_macs, measure_latency        # summary.py
"""

from __future__ import annotations

import importlib
from typing import Any

from pocketswap.student.config import PRESETS, StudentConfig, get_preset

_LAZY = {
    "StudentNet": "network",
    "BakedStudent": "folded",
    "DynamicIdentityStudent": "folded",
    "ParamSlot": "network",
    "HyperNet": "hypernet",
    "StudentSummary": "summary",
    "summarize": "summary",
    "count_macs": "summary",
    "measure_latency": "summary",
    "peak_activation_bytes": "summary",
}

__all__ = ["PRESETS", "StudentConfig", "get_preset", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"pocketswap.student.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pocketswap.student' has no attribute {name!r}")
