"""Optional feature-level distillation from a teacher that is a PyTorch module (off by default).

This is a hook for users who distil from their own PyTorch swapper: ``feature_teacher`` names a
factory (``"package.module:make_teacher"`` or ``"path/to/file.py:make_teacher"``) returning an
``nn.Module`` called as ``teacher(attribute [B,3,S,S] in [-1,1], embedding [B,D])``;
``feature_layers`` pairs its submodules with the student's (``"encoder.3=decoder.0"``). Each pair
gets a trainable 1x1 adapter from the student's channels to the teacher's; the loss is the MSE
between adapted student features (resized to the teacher's resolution) and the teacher's,
normalised by the teacher feature's variance.

The built-in geometric teacher is not a network (it warps and blends pixels), so it has no
features and this term does not apply to it; nor does it to ONNX teachers (no autograd graph).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pocketswap.core.errors import ConfigError

log = logging.getLogger(__name__)


def load_teacher_module(spec: str) -> nn.Module:
    """Import ``module:factory`` or ``file.py:factory`` and call the factory (or take the module)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"config field 'feature_teacher' must look like 'module:factory', got {spec!r}")
    try:
        if target.endswith(".py"):
            path = Path(target)
            module_spec = importlib.util.spec_from_file_location(f"pocketswap_feature_teacher_{path.stem}", path)
            if module_spec is None or module_spec.loader is None or not path.is_file():
                raise ConfigError(f"config field 'feature_teacher': no such file {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise ConfigError(f"config field 'feature_teacher': cannot import {target!r} ({exc})") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(f"config field 'feature_teacher': {target!r} has no attribute {attr!r}")
    teacher = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"config field 'feature_teacher': {spec} did not give a torch.nn.Module")
    teacher.eval().requires_grad_(False)
    return teacher


class _Capture:
    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[assignment]


def _submodule(root: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"config field 'feature_layers': the {role} has no submodule {name!r}") from exc


class FeatureDistiller(nn.Module):
    """Forward hooks on paired teacher/student submodules plus 1x1 adapters (the trainable part).

    The teacher is held outside the module tree, so it is neither trained nor saved."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, layers: tuple[str, ...], probe: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        super().__init__()
        self.__dict__["teacher"] = teacher
        pairs = [tuple(item.split("=", 1)) for item in layers]
        self._teacher_caps = [_Capture() for _ in pairs]
        self._student_caps = [_Capture() for _ in pairs]
        for (t_name, s_name), t_cap, s_cap in zip(pairs, self._teacher_caps, self._student_caps, strict=True):
            _submodule(teacher, t_name, "feature teacher").register_forward_hook(t_cap)
            _submodule(student, s_name, "student").register_forward_hook(s_cap)
        with torch.no_grad():
            was_training = student.training
            student.eval()
            student(*probe)
            student.train(was_training)
            teacher(*probe)
        self.adapters = nn.ModuleList()
        for (t_name, s_name), t_cap, s_cap in zip(pairs, self._teacher_caps, self._student_caps, strict=True):
            if t_cap.value is None or s_cap.value is None or t_cap.value.ndim != 4 or s_cap.value.ndim != 4:
                raise ConfigError(f"config field 'feature_layers': {t_name}={s_name} must both give [B,C,H,W] tensors")
            self.adapters.append(nn.Conv2d(s_cap.value.shape[1], t_cap.value.shape[1], 1))
            log.info(
                "feature pair %s %s <- %s %s", t_name, list(t_cap.value.shape[1:]), s_name, list(s_cap.value.shape[1:])
            )

    @torch.no_grad()
    def teacher_features(self, attribute: torch.Tensor, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Run the teacher and return the hooked features (detached)."""
        self.teacher(attribute, embedding)
        return [cap.value.detach().float() for cap in self._teacher_caps]  # type: ignore[union-attr]

    def loss(self, teacher_features: list[torch.Tensor]) -> torch.Tensor:
        """Feature loss against the student's features from its latest forward."""
        total = torch.zeros((), device=teacher_features[0].device)
        for adapter, cap, target in zip(self.adapters, self._student_caps, teacher_features, strict=True):
            feat = adapter(cap.value.float())  # type: ignore[union-attr]
            if feat.shape[-2:] != target.shape[-2:]:
                feat = F.interpolate(feat, size=target.shape[-2:], mode="bilinear", align_corners=False)
            total = total + F.mse_loss(feat, target) / (target.var() + 1e-6)
        return total / len(self.adapters)


class Trainee(nn.Module):
    """What the optimiser trains (and DDP wraps): the student plus, optionally, feature adapters.

    ``forward(image, embedding, teacher_features=None) -> (image, mask, feature_loss)``."""

    def __init__(self, student: nn.Module, distiller: FeatureDistiller | None = None) -> None:
        super().__init__()
        self.student = student
        self.distiller = distiller

    def forward(
        self,
        image: torch.Tensor,
        embedding: torch.Tensor,
        teacher_features: list[torch.Tensor] | None = None,
        identity_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, mask = self.student(image, embedding, identity_image)
        if self.distiller is not None and teacher_features is not None:
            return out, mask, self.distiller.loss(teacher_features)
        return out, mask, out.new_zeros(())


__all__ = ["FeatureDistiller", "Trainee", "load_teacher_module"]
