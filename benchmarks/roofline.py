"""Roofline latency ESTIMATES for named phones from counted MACs and bytes moved (not measurements).

For every leaf layer of the baked student we count MACs (torch's FLOP counter) and the bytes it
moves (input + output activations + weights, at the precision's element size). A layer takes
max(compute time, memory time) on one big core at the profile's peak; the model estimate is the
sum. Real latency is higher (kernels reach a fraction of peak), so read these as lower bounds and
for ratios between phones, presets and precisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from pocketswap.core.errors import ConfigError

PROFILES = Path(__file__).with_name("phones.yaml")
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class LayerCost:
    name: str
    macs: int
    bytes: dict[str, int]


@dataclass
class RooflineEstimate:
    phone: str
    preset: str
    precision: str
    gmac: float
    mbytes_moved: float
    estimate_ms: float
    compute_bound_layers: int
    memory_bound_layers: int
    label: str = "estimate (roofline lower bound, one big core)"

    def to_dict(self) -> dict:
        return asdict(self)


def load_profiles(path: Path = PROFILES) -> list[dict]:
    profiles = yaml.safe_load(path.read_text())["profiles"]
    for profile in profiles:
        for key in ("name", "cpu_ghz", "fp32_flop_per_cycle", "dram_gbps", "sources"):
            if key not in profile:
                raise ConfigError(f"{path}: profile {profile.get('name', '?')} lacks field '{key}'")
    return profiles


def layer_costs(model: nn.Module, example: torch.Tensor) -> list[LayerCost]:
    """MACs and bytes moved per leaf module for one forward of `model(example)`.

    Only convolutions are counted (out_elements x in_channels/groups x kernel area MACs): activations
    fuse into them in XNNPACK and the baked student has no norms left. Functional ops (upsampling,
    concatenation) are not hooked, so their traffic is missing: another reason these are lower bounds."""
    costs: list[LayerCost] = []

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        activations = sum(t.numel() for t in (*inputs, *outputs) if isinstance(t, torch.Tensor))
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        kh, kw = module.kernel_size
        macs = outputs[0].numel() * (module.in_channels // module.groups) * kh * kw
        costs.append(
            LayerCost(
                name=module.__class__.__name__,
                macs=macs,
                bytes={p: (activations + weights) * size for p, size in BYTES.items()},
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return costs


def estimate(costs: list[LayerCost], profile: dict, precision: str, preset: str) -> RooflineEstimate:
    if precision not in BYTES:
        raise ConfigError(f"precision '{precision}' not in {sorted(BYTES)}")
    lanes = {"fp32": 1, "fp16": 2, "int8": 4}[precision]  # wider SIMD lanes per FMA at lower precision
    peak_macs_per_s = profile["cpu_ghz"] * 1e9 * profile["fp32_flop_per_cycle"] / 2 * lanes
    bandwidth = profile["dram_gbps"] * 1e9
    total, compute_bound = 0.0, 0
    for cost in costs:
        compute_s, memory_s = cost.macs / peak_macs_per_s, cost.bytes[precision] / bandwidth
        compute_bound += compute_s >= memory_s
        total += max(compute_s, memory_s)
    return RooflineEstimate(
        phone=profile["name"],
        preset=preset,
        precision=precision,
        gmac=round(sum(c.macs for c in costs) / 1e9, 4),
        mbytes_moved=round(sum(c.bytes[precision] for c in costs) / 1e6, 2),
        estimate_ms=round(total * 1e3, 3),
        compute_bound_layers=compute_bound,
        memory_bound_layers=len(costs) - compute_bound,
    )


def estimate_presets(presets: list[str], precisions: list[str]) -> list[RooflineEstimate]:
    """Estimates for each (phone, preset, precision) with a random-weight baked student."""
    from pocketswap.student import StudentNet, get_preset

    results = []
    profiles = load_profiles()
    for preset in presets:
        config = get_preset(preset)
        torch.manual_seed(0)
        embedding = torch.nn.functional.normalize(torch.randn(1, config.embed_dim), dim=1)
        baked = StudentNet(config).eval().bake(embedding).eval()
        costs = layer_costs(baked, torch.zeros(1, 3, config.size, config.size))
        for profile in profiles:
            results.extend(estimate(costs, profile, precision, preset) for precision in precisions)
    return results
