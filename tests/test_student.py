"""Student network: baked/dynamic equivalence on real faces, gradients, budgets, config and checkpoints."""

from __future__ import annotations

import argparse
import json
from functools import cache

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pocketswap.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_metadata, resolve_checkpoint
from pocketswap.core.errors import CheckpointError, ConfigError
from pocketswap.core.spec import PIXELS, Normalization
from pocketswap.faces import samples
from pocketswap.student import (
    PRESETS,
    BakedStudent,
    DynamicIdentityStudent,
    StudentConfig,
    StudentNet,
    get_preset,
)
from pocketswap.student.checkpoint import load_checkpoint, save_checkpoint
from pocketswap.student.layers import Upsample2x
from pocketswap.student.summary import count_macs, peak_activation_bytes, summarize

# Square boxes (x0, y0, side) around the faces of the two sample portraits.
FACE_BOXES = {"astronaut": (140, 30, 170), "grace_hopper": (145, 100, 240)}
TOL = 1e-5


@cache
def face_batch(size: int) -> torch.Tensor:
    """[2,3,size,size] in [-1,1] RGB: the central face areas of two sample photos."""
    crops = []
    for name, (x0, y0, side) in FACE_BOXES.items():
        crop = samples.load(name)[y0 : y0 + side, x0 : x0 + side]
        crops.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def randomized(config: StudentConfig, seed: int = 0) -> StudentNet:
    """A student in eval mode with random BN statistics/affines, so folding is actually exercised."""
    torch.manual_seed(seed)
    net = StudentNet(config)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.fixture(scope="module")
def nano() -> StudentNet:
    return randomized(PRESETS["nano"])


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, PRESETS["nano"].embed_dim)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"


@pytest.mark.parametrize(("preset", "identities", "faces"), [("nano", 2, 2), ("base", 1, 1)])
def test_bake_and_dynamic_match_hypernetwork_model(preset, identities, faces):
    net = randomized(PRESETS[preset])
    images = face_batch(net.config.size)[:faces]
    torch.manual_seed(2)
    embs = torch.randn(identities, net.config.embed_dim)
    dynamic = net.dynamic()
    assert isinstance(dynamic, DynamicIdentityStudent)
    outputs = []
    with torch.no_grad():
        for emb in embs:
            ref_image, ref_mask = net(images, emb[None])
            baked = net.bake(emb)
            assert isinstance(baked, BakedStudent)
            image, mask = baked(images)
            assert_close(image, ref_image)
            assert_close(mask, ref_mask)
            params = net.identity_params(emb)
            assert params.shape == (1, net.num_identity_params)
            for i in range(len(images)):  # exported graphs take batch 1
                dyn_image, dyn_mask = dynamic(images[i : i + 1], params)
                assert_close(dyn_image, ref_image[i : i + 1])
                assert_close(dyn_mask, ref_mask[i : i + 1])
            outputs.append(ref_image)
    # Non-trivial: outputs vary over the image and the identity changes them.
    assert outputs[0].std() > 0.01
    if identities > 1:
        assert (outputs[0] - outputs[1]).abs().mean() > 1e-3


def test_baked_model_is_static(nano, embeddings):
    baked = nano.bake(embeddings[0])
    allowed = (BakedStudent, nn.ModuleList, nn.Sequential, nn.Conv2d, nn.ReLU, nn.ReLU6, Upsample2x)
    kinds = {type(m).__name__ for m in baked.modules() if not isinstance(m, allowed)}
    assert not kinds, f"unexpected modules in baked model: {kinds}"
    assert not any(p.requires_grad for p in baked.parameters())
    # Baked kernels are the (BN-scaled) hypernetwork kernels in the documented flat layout.
    params = nano.identity_params(embeddings[0])[0]
    slot = nano.param_layout()[0]
    dw = params[slot.offset : slot.offset + slot.numel].view(slot.shape).permute(2, 0, 1)
    torch.testing.assert_close(baked.decoder[0][0].weight[:, 0], dw)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_traced_graphs_have_static_shapes(nano, embeddings):
    """No shape arithmetic in traced graphs: converters then see constant slices/pads (export-findings.md)."""
    image = face_batch(nano.config.size)[:1]
    for model, inputs in (
        (nano.bake(embeddings[0]), (image,)),
        (nano.dynamic(), (image, nano.identity_params(embeddings[0]))),
    ):
        graph = str(torch.jit.trace(model, inputs, check_trace=False).inlined_graph)
        for op in (
            "aten::size",
            "aten::Int",
            "aten::group_norm",
            "aten::layer_norm",
            "upsample_nearest",
            "index_select",
        ):
            assert op not in graph, f"{type(model).__name__} traces to {op}"


def test_param_layout_is_contiguous(nano):
    layout = nano.param_layout()
    offset = 0
    for slot in layout:
        assert slot.offset == offset
        offset += slot.numel
    assert offset == nano.num_identity_params
    assert len({s.name for s in layout}) == len(layout)
    assert len(layout) == 3 * len(nano.config.dec_channels)


def test_batch_of_identities_matches_one_by_one(nano, embeddings):
    images = face_batch(nano.config.size)
    with torch.no_grad():
        image, mask = nano(images, embeddings)
        for i in range(2):
            one_image, one_mask = nano(images[i : i + 1], embeddings[i : i + 1])
            assert_close(image[i : i + 1], one_image)
            assert_close(mask[i : i + 1], one_mask)


def test_outputs_in_range_and_shapes(nano, embeddings):
    images = face_batch(nano.config.size)
    with torch.no_grad():
        image, mask = nano(images * 50, embeddings)  # saturate on purpose
    size = nano.config.size
    assert image.shape == (2, 3, size, size) and mask.shape == (2, 1, size, size)
    assert image.min() >= -1 and image.max() <= 1
    assert mask.min() >= 0 and mask.max() <= 1


def test_gradients_reach_hypernetwork():
    net = randomized(PRESETS["nano"]).train()
    images = face_batch(net.config.size)
    emb = torch.randn(2, net.config.embed_dim, requires_grad=True)
    image, mask = net(images, emb)
    loss = (image - images.flip(0)).abs().mean() + (mask - 0.5).abs().mean()
    loss.backward()
    for name, p in net.hypernet.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for hypernet.{name}"
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_wrong_embedding_size_names_field(nano):
    with pytest.raises(ConfigError, match="embed_dim"):
        nano.bake(torch.randn(1, 512))


@pytest.mark.parametrize(
    ("preset", "max_params", "max_macs"),
    [("base", 550_000, 0.35e9), ("nano", 150_000, 0.05e9), ("nano256", 200_000, 0.05e9), ("large", 1_500_000, 1.0e9)],
)
def test_presets_within_budget(preset, max_params, max_macs):
    s = summarize(PRESETS[preset])
    assert s.student_params <= max_params
    assert s.macs <= max_macs
    assert 0 < s.peak_activation_bytes < 64 * 2**20


def test_mac_count_matches_conv_hooks(nano, embeddings):
    baked = nano.bake(embeddings[0])
    image = face_batch(nano.config.size)[:1]
    macs = count_macs(baked, image)
    hooked = []

    def hook(m: nn.Conv2d, inputs, out) -> None:
        hooked.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    for m in baked.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    baked(image)
    assert sum(hooked) == macs == summarize(nano.config).macs


def test_peak_activation_counts_live_tensors():
    class TwoConvs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 1)
            self.b = nn.Conv2d(4, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    x = torch.zeros(1, 1, 16, 16)  # 1 KiB; a(x) is 4 KiB; peak = x + a(x) + b(a(x))
    assert peak_activation_bytes(TwoConvs(), x) == 1024 + 4096 + 1024


# -- config --------------------------------------------------------------------------------------


def test_config_roundtrip_dict_and_yaml(tmp_path):
    for config in PRESETS.values():
        assert StudentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        path = tmp_path / f"{config.name}.yaml"
        config.to_yaml(path)
        assert StudentConfig.from_yaml(path) == config
    (tmp_path / "arc.yaml").write_text("preset: base\nembed_dim: 512\n")
    arc = StudentConfig.from_yaml(tmp_path / "arc.yaml")
    assert arc.embed_dim == 512 and arc.enc_channels == PRESETS["base"].enc_channels
    net = StudentNet(get_preset("nano", embed_dim=512)).eval()
    assert net.bake(torch.randn(512))(torch.zeros(1, 3, 128, 128))[0].shape == (1, 3, 128, 128)


COMPOSING = {"identity_encoder": True, "identity_warp": True, "compose": True}


@pytest.mark.parametrize("core_scale", [1, 2])
def test_composing_student_bakes_to_the_same_function(core_scale):
    net = randomized(get_preset("nano", size=128 * core_scale, core_scale=core_scale, **COMPOSING))
    with torch.no_grad():
        nn.init.normal_(net.head.composer.take.weight, std=0.2)  # zero at init: make it compose something
    images = face_batch(net.config.size)
    warped = images.flip(0)  # the other face stands in for the warped identity
    emb = torch.randn(1, net.config.embed_dim)
    with torch.no_grad():
        ref_image, ref_mask = net(images, emb, warped)
        baked = net.bake(emb)
        for i in range(len(images)):
            image, mask = baked(images[i : i + 1], warped[i : i + 1])
            assert_close(image, ref_image[i : i + 1])
            assert_close(mask, ref_mask[i : i + 1])
    assert ref_image.shape == ref_mask.shape[:1] + (3, net.config.size, net.config.size)
    assert (ref_image - images).abs().mean() > 0.01  # it moved the attribute towards the identity


@pytest.mark.parametrize(("take", "source"), [(30.0, "warped"), (-30.0, "attribute")])
def test_composing_student_passes_its_inputs_pixels_through(take, source):
    """Taken fully (or not at all), the swap is the warped identity (or the attribute) to the pixel, at
    the crop's full 256 px although the UNet runs at 128: the detail is the inputs' own."""
    net = randomized(get_preset("nano", size=256, core_scale=2, **COMPOSING))
    with torch.no_grad():
        net.head.composer.take.bias.copy_(torch.tensor([take, 0.0, 0.0, 0.0]))
        net.head.image.weight.zero_()
        net.head.image.bias.zero_()
    images = face_batch(256)
    warped = images.flip(0)
    with torch.no_grad():
        image, _ = net(images, torch.randn(1, net.config.embed_dim), warped)
    expected = warped if source == "warped" else images
    assert_close(image, expected)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"size": 100}, "size"),
        ({"dec_channels": [8, 8]}, "dec_channels"),
        ({"act": "hardswish"}, "act"),
        ({"norm": "group"}, "norm"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"enc_channels": [16, "x", 8]}, "enc_channels"),
        ({"head_image_skip": "yes"}, "head_image_skip"),
        ({"colour": 1}, "colour"),
        ({"compose": True}, "compose"),
        ({"core_scale": 2, "size": 256}, "core_scale"),
        ({"identity_encoder": True, "identity_warp": True, "compose": True, "compose_smooth": 3}, "compose_smooth"),
        ({"identity_shape": 1.5}, "identity_shape"),
        ({"identity_shape": "half"}, "identity_shape"),
    ],
)
def test_config_validation_names_field(changes, field):
    data = {**PRESETS["nano"].to_dict(), **changes}
    with pytest.raises(ConfigError, match=f"'{field}'"):
        StudentConfig.from_dict(data)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        get_preset("huge")


# -- checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_roundtrip(tmp_path, nano, embeddings):
    directory = save_checkpoint(tmp_path / "ckpt", nano, nano.config, extra={"step": 1234})
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    meta = read_metadata(directory)
    assert meta["preset"] == "nano" and meta["embed_dim"] == 128 and meta["crop_size"] == 128
    assert meta["template"] == "arcface" and meta["normalization"]["layout"] == "NCHW"
    assert Normalization.from_dict(meta["normalization"]) == PIXELS  # the one normalisation, as data
    for path in (directory, directory / WEIGHTS_NAME, directory / CONFIG_NAME):
        model, config, extra = load_checkpoint(path, expected_config="nano")
        assert config == nano.config and extra == {"step": 1234} and not model.training
    images = face_batch(128)
    with torch.no_grad():
        torch.testing.assert_close(model(images, embeddings), nano(images, embeddings), rtol=0, atol=0)


def test_checkpoint_mismatch_names_field(tmp_path, nano):
    directory = save_checkpoint(tmp_path / "ckpt", nano)
    with pytest.raises(CheckpointError, match="field 'name' is 'nano' but expected 'base'"):
        load_checkpoint(directory, expected_config=PRESETS["base"])
    with pytest.raises(CheckpointError, match="'embed_dim'"):
        load_checkpoint(directory, expected_config={"embed_dim": 512})
    # Config edited to another width: the weights no longer fit and the tensor is named.
    meta = json.loads((directory / CONFIG_NAME).read_text())
    meta["student"]["hyper_hidden"] = 64
    (directory / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor 'hypernet\.trunk\.0\.\w+' has shape"):
        load_checkpoint(directory)


def test_checkpoint_missing_or_mixed_files(tmp_path, nano):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    directory = save_checkpoint(tmp_path / "a", nano)
    other = save_checkpoint(tmp_path / "b", nano)
    (other / CONFIG_NAME).replace(directory / CONFIG_NAME)
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(directory)
    (directory / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "c", nano, extra={"bad": object()})


def test_a_damaged_best_checkpoint_is_named_not_skipped(tmp_path, nano):
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step-000010", nano)
    best = save_checkpoint(run / "best", nano)
    assert resolve_checkpoint(run) == best.resolve()
    (best / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=rf"damaged checkpoint \(no {WEIGHTS_NAME}\).*--resume"):
        resolve_checkpoint(run)


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_summary_json(tmp_path, capsys):
    from pocketswap.student.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["student", "summary", "--preset", "nano", "--json", str(tmp_path / "s.json")])
    assert args.handler(args) == 0
    assert "nano" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "s.json").read_text())
    assert row["preset"] == "nano" and row["identity_params"] == StudentNet(PRESETS["nano"]).num_identity_params
    assert row["gmac"] <= 0.05
