"""The artifact manifest's ``swap_spec`` is the whole contract: ``examples/client.py``, which imports nothing of
pocketswap and reads only the manifest (numpy, OpenCV, ONNX Runtime, LiteRT and the face models it names),
finds the same landmarks and makes the same swap as ``pocketswap demo`` on real bundled photos."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pocketswap.core.manifest import manifest_path
from pocketswap.demo.pipeline import LiveSwapper
from pocketswap.demo.settings import PipelineConfig
from pocketswap.demo.swap_model import load_swap_model
from pocketswap.faces import samples
from pocketswap.faces.analyzer import FaceAnalyzer
from pocketswap.faces.blazeface import model_dir

CLIENT = Path(__file__).resolve().parents[1] / "examples" / "client.py"


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("reference_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_client_imports_nothing_of_pocketswap():
    tree = ast.parse(CLIENT.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and not any(name.split(".")[0] == "pocketswap" for name in imported), imported


@pytest.fixture(scope="module", params=["nano", "warped"])
def artifact(request, tmp_path_factory):
    """A plain nano and a nano that reads the warped identity (with shape transfer: the live default)."""
    from pocketswap.export.pipeline import export_model
    from pocketswap.student import StudentNet, get_preset
    from pocketswap.student.checkpoint import save_checkpoint

    torch.manual_seed(0)
    overrides = (
        {} if request.param == "nano" else {"identity_encoder": True, "identity_warp": True, "identity_shape": 0.5}
    )
    root = tmp_path_factory.mktemp(request.param)
    net = StudentNet(get_preset("nano", **overrides)).eval()
    with torch.no_grad():  # off the initialisation, whose zeroed branches ignore the warped identity
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    checkpoint = save_checkpoint(root / "student", net)
    (exported,) = export_model(checkpoint, root / "out", identity="sample:grace_hopper", formats="onnx")
    return exported.path


@pytest.mark.parametrize("name", ["astronaut", "lfw_01"])  # a face larger than the crop (detail); a smaller one
def test_a_client_reading_only_the_manifest_swaps_as_the_demo_does(client, artifact, name):
    model = client.SwapModel(artifact)
    if "identity_warped" in model.inputs:  # the warp is part of what is compared: the output depends on it
        crop = np.random.default_rng(0).uniform(-1, 1, (2, 1, 3, 128, 128)).astype(np.float32)
        outputs = [model.session.run(["swapped"], {"image": crop[0], "identity_warped": x})[0] for x in crop]
        assert np.abs(outputs[0] - outputs[1]).mean() > 0.01
    analyzer = FaceAnalyzer(detector="auto")
    frame = samples.load(name)
    face = analyzer.detect_one(frame)
    landmarks = client.Landmarks(model.spec["front_end"], model_dir())(frame)
    assert np.abs(landmarks - face.landmarks).max() < 0.01  # the same front end, from the manifest's recipe
    demo = LiveSwapper(load_swap_model(artifact), analyzer, PipelineConfig(detect_every=1)).process(frame).frame
    swapped = client.swap(frame, landmarks, model)
    x0, y0, x1, y1 = np.round(face.box).astype(int)
    inside = np.abs(swapped[y0:y1, x0:x1].astype(np.float64) - demo[y0:y1, x0:x1]).mean()
    changed = np.abs(demo[y0:y1, x0:x1].astype(np.float64) - frame[y0:y1, x0:x1]).mean()
    assert changed > 3.0, changed  # the swap changed the face ...
    assert inside < 1.0, inside  # ... and the client made the same change
    assert np.abs(swapped.astype(np.float64) - demo).mean() < 0.2  # and nothing else


def test_the_client_runs_from_the_command_line(client, artifact, tmp_path):
    photo, out = tmp_path / "photo.png", tmp_path / "swapped.png"
    frame = samples.load("astronaut")
    cv2.imwrite(str(photo), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert client.main([str(artifact), str(photo), "--models", str(model_dir()), "--out", str(out)]) == 0
    swapped = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert swapped.shape == frame.shape and np.abs(swapped.astype(int) - frame).mean() > 0.5
    with pytest.raises(SystemExit, match="not a readable image"):
        client.main([str(artifact), str(tmp_path / "missing.png"), "--models", str(model_dir())])
    with pytest.raises(SystemExit, match="no such artifact with its manifest"):
        client.main([str(tmp_path / "missing.onnx"), str(photo), "--models", str(model_dir())])
    with pytest.raises(SystemExit, match="no such folder of face models"):
        client.main([str(artifact), str(photo), "--models", str(tmp_path / "nowhere")])


def test_readme_integration_section_agrees_with_the_manifest(artifact):
    """Every ``swap_spec`` field README's integration section names is in a real manifest, every section of
    ``swap_spec`` is named there, and so are the manifest's file name and the student's tensor names."""
    readme = (CLIENT.parents[1] / "README.md").read_text()
    section = readme.split("## Integrating the artifacts", 1)[1].split("\n## ", 1)[0]
    manifest = json.loads(manifest_path(artifact).read_text())
    named = set(re.findall(r"swap_spec((?:\.\w+)+)", section))
    assert len(named) >= 6, named
    for path in named:
        node = manifest["swap_spec"]
        for key in path.strip(".").split("."):
            assert isinstance(node, dict) and key in node, f"README names swap_spec{path}: no such field"
            node = node[key]
    assert {path.strip(".").split(".")[0] for path in named} == set(manifest["swap_spec"])
    assert "`NAME.EXT.json`" in section and manifest_path(artifact).name == artifact.name + ".json"
    for tensor in [*manifest["inputs"], *manifest["outputs"]]:
        assert f"`{tensor['name']}`" in section or f"{tensor['name']}:" in section or f".{tensor['name']}" in section
