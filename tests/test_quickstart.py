"""A miniature quickstart end to end: every step's outputs exist and are valid, and a re-run skips them."""

import json
import re

import pytest

from pocketswap.core.dataset import DatasetReader
from pocketswap.quickstart import STEPS, QuickstartConfig, run_quickstart


@pytest.mark.slow
def test_tiny_quickstart_produces_every_artifact_and_the_report(tmp_path, caplog):
    out = run_quickstart(tmp_path / "qs", QuickstartConfig.tiny())
    for step in STEPS:
        assert (out / step.name / ".done").is_file(), step.name
    assert DatasetReader(out / "dataset").verify(deep=True)["samples"] == QuickstartConfig.tiny().pairs
    assert (out / "run" / "last" / "model.safetensors").is_file()
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert {"student", "teacher", "attribute"} <= set(evaluation["metrics"])
    personal = json.loads((out / "personal" / "eval.json").read_text())
    assert list(personal["metrics"]) == ["personalised", "universal", "teacher", "attribute"]
    assert "astronaut" in json.loads((out / "personal" / "run.json").read_text())["split"]["val_names"]
    manifests = [json.loads(p.read_text()) for p in (out / "artifacts").glob("*.json")]
    assert all("/personal/" in m["source"]["checkpoint"] for m in manifests if m["kind"] == "student")
    students = {(m["runtime"], m["precision"]) for m in manifests if m["kind"] == "student"}
    assert {("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16")} <= students
    assert all(m["parity"]["passed"] for m in manifests if m.get("parity"))
    for name in ("latency", "pipeline", "roofline"):
        assert json.loads((out / "bench" / f"{name}.json").read_text())["records"]
    summary = json.loads((out / "demo" / "summary.json").read_text())
    assert summary["frames"] == QuickstartConfig.tiny().clip_frames and summary["frames_with_face"] > 0
    page = (out / "report" / "report.html").read_text()
    verdict = json.loads((out / "demo" / "compare_swapped.json").read_text())
    assert verdict["verdict"] in ("same person", "different people") and 0 <= verdict["distance"] <= 2
    key = json.loads((out / "panel" / "key.json").read_text())  # the quality swaps as a blind panel, linked
    assert len(key["items"]) == 6 and 'href="../panel/rate/index.html"' in page
    assert (out / "panel" / "rate" / "index.html").is_file()
    for section in (
        "Quality",
        "Blind realism panel",
        "Identity checks",
        "Latency",
        "Live pipeline per stage",
        "Artifacts",
        "Dataset",
    ):
        assert f"<h2>{section}" in page, section
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 5

    caplog.clear()
    with caplog.at_level("INFO"):
        run_quickstart(out, QuickstartConfig.tiny())  # re-run: everything is reused
    assert sum("done earlier, skipping" in r.getMessage() for r in caplog.records) == len(STEPS)
