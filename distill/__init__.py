"""Distill stage: train students from a teacher's paired dataset and evaluate them.

Public API (torch-heavy names are imported lazily so ``import pocketswap.distill`` stays cheap)::

    TrainConfig                                    # config.py (TrainConfig.load: YAML + overrides)
    train, TrainingDivergedError; RunSummary       # train.py; state.py
    evaluate, format_table                         # evaluate.py
    metrics                                        # identity, expression, head pose (PSNR/SSIM: pocketswap.core.metrics)
"""

from __future__ import annotations

import importlib
from typing import Any

from pocketswap.distill.config import TrainConfig

_LAZY = {
    "train": "train",
    "RunSummary": "state",
    "TrainingDivergedError": "train",
    "evaluate": "evaluate",
    "format_table": "evaluate",
}

__all__ = ["TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"pocketswap.distill.{_LAZY[name]}"), name)
    if name == "metrics":
        return importlib.import_module("pocketswap.distill.metrics")
    raise AttributeError(f"module 'pocketswap.distill' has no attribute {name!r}")
