"""`pocketswap quickstart`: the whole pipeline on the bundled sample faces (what `make demo` runs).

faces -> teacher generate -> distill train -> distill eval -> bench quality -> bench panel (a blind realism panel
of those swaps to rate in the browser) -> distill personalize (the demo identity,
sample:grace_hopper) -> export (the personalised student) -> bench (latency, pipeline,
quality, roofline) -> demo on a synthetic clip (headless) -> bench report. Every step writes into
one output folder and a `.done` marker last, so a re-run skips finished steps and an interrupted
step is redone (the stages themselves resume: dataset shards and training checkpoints survive).
Each step runs the same command a user would type, so the log doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pocketswap.core.cli_args import output_dir
from pocketswap.core.errors import PocketswapError
from pocketswap.distill.personalize import DEFAULTS as PERSONALIZE_DEFAULTS
from pocketswap.teacher.geometric import GeometricConfig

log = logging.getLogger(__name__)

PORTRAITS = ("astronaut", "grace_hopper", "camera")
IDENTITY = "sample:grace_hopper"
DEMO_FACE = "astronaut"  # the still the demo swaps into: held out of the personalisation


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes that keep the whole run under 30 minutes on a 2-core CPU; `tiny()` for tests."""

    pairs: int = 2048
    size: int = 128
    preset: str = "nano"
    steps: int = 800
    batch_size: int = 16
    precisions: str = "fp32,fp16,int8"
    formats: str = "all"
    bench_runs: int = 100
    clip_frames: int = 96
    workers: int = 2
    eval_split: str = "val"  # held-out identities; the tiny run has too few pairs for a val split
    # The universal student reads the identity crop (baked-only export), mesh-warped onto each frame's
    # landmarks with its features moved as far to the identity's face shape as the teacher's, and builds its
    # swap from that warped crop's own pixels (`student.compose`). Ablations: results/universal-student.md
    # and results/quality-on-real-photos.md.
    spatial_identity: bool = True
    warped_identity: bool = True
    compose: bool = True
    identity_shape: float = GeometricConfig.shape_transfer
    personal_steps: int = PERSONALIZE_DEFAULTS["steps"]  # fine-tuning steps of the demo identity's personalised student
    personal_pairs: int = 1024

    @classmethod
    def tiny(cls) -> QuickstartConfig:
        return cls(pairs=48, steps=6, batch_size=4, precisions="fp32,fp16", formats="onnx,tflite", bench_runs=10,
                   clip_frames=12, eval_split="all", personal_steps=4, personal_pairs=64)  # fmt: skip


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Path, QuickstartConfig], None]


def pocketswap(*argv: object) -> None:
    """Run one `pocketswap ...` command in-process, logging it; a failure stops the quickstart."""
    from pocketswap.cli import main

    args = [str(a) for a in argv]
    log.info("$ pocketswap %s", shlex.join(args))
    code = main(args)
    if code != 0:
        raise PocketswapError(f"step failed: pocketswap {shlex.join(args)} (exit {code})")


def step_faces(out: Path, cfg: QuickstartConfig) -> None:
    for name in PORTRAITS:
        pocketswap("faces", "detect", f"sample:{name}", "--out", out / f"{name}.png", "--json", out / f"{name}.json")


def step_dataset(out: Path, cfg: QuickstartConfig) -> None:
    pocketswap("teacher", "generate", "--faces", "samples", "--out", out, "--pairs", cfg.pairs, "--size", cfg.size,
               "--seed", 0, "--workers", cfg.workers)  # fmt: skip
    pocketswap("teacher", "preview", out, "--out", out / "preview.png")


def step_train(out: Path, cfg: QuickstartConfig) -> None:
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    pocketswap("distill", "train", "--data", out.parent / "dataset", "--preset", cfg.preset, "--steps", cfg.steps,
               "--batch-size", cfg.batch_size, "--checkpoint-every", max(cfg.steps // 4, 1), "--image-every",
               max(cfg.steps // 4, 1), "--num-workers", 0, "--out", out, *resume,
               f"student.identity_encoder={str(cfg.spatial_identity).lower()}",
               f"student.identity_warp={str(cfg.spatial_identity and cfg.warped_identity).lower()}",
               f"student.compose={str(cfg.spatial_identity and cfg.warped_identity and cfg.compose).lower()}",
               f"student.identity_shape={cfg.identity_shape}")  # fmt: skip


def step_eval(out: Path, cfg: QuickstartConfig) -> None:
    pocketswap("distill", "eval", out.parent / "run", "--data", out.parent / "dataset", "--split", cfg.eval_split,
               "--json", out / "eval.json")  # fmt: skip


def step_quality(out: Path, cfg: QuickstartConfig) -> None:
    from pocketswap.benchmarks.quality_gate import write_eval_set

    write_eval_set(out / "people")  # the bundled colour portraits (faces the universal student trained on)
    pocketswap("bench", "quality", out.parent / "run", "--people", out / "people", "--video", "clip", "--out", out)


def step_panel(out: Path, cfg: QuickstartConfig) -> None:
    pocketswap("bench", "panel", out.parent / "quality", "--out", out)


def step_personal(out: Path, cfg: QuickstartConfig) -> None:
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    pocketswap("distill", "personalize", out.parent / "run", "--identity", IDENTITY, "--out", out, "--steps",
               cfg.personal_steps, "--pairs", cfg.personal_pairs, "--workers", cfg.workers, *resume,
               f"holdout=[{DEMO_FACE}]", f"batch_size={cfg.batch_size}")  # fmt: skip


def step_export(out: Path, cfg: QuickstartConfig) -> None:
    pocketswap("export", out.parent / "personal", "--identity", IDENTITY, "--format", cfg.formats,
               "--precision", cfg.precisions, "--calibration", out.parent / "dataset", "--out", out)  # fmt: skip


def _students(root: Path, suffix: str) -> list[Path]:
    """Baked student artifacts with the given suffix (their manifests say kind=student)."""
    from pocketswap.core.manifest import read_manifest

    found = []
    for path in sorted(root.glob(f"*{suffix}.json")):
        manifest = read_manifest(path)
        if manifest.kind == "student" and manifest.identity_mode == "baked":
            found.append(path.with_name(path.name.removesuffix(".json")))
    return found


def step_bench(out: Path, cfg: QuickstartConfig) -> None:
    artifacts = out.parent / "artifacts"
    models = _students(artifacts, ".tflite") + _students(artifacts, ".onnx")
    pocketswap("bench", "latency", *models, "--threads", "1,2", "--runs", cfg.bench_runs,
               "--references", "mobilefaceswap", "simswap", "--json", out / "latency.json")  # fmt: skip
    fp32 = [m for m in _students(artifacts, ".tflite") if "fp32" in m.name][:1]
    pocketswap("bench", "pipeline", *fp32, "--runs", cfg.bench_runs, "--json", out / "pipeline.json")
    pocketswap("bench", "roofline", "--presets", cfg.preset, "--json", out / "roofline.json")


def step_demo(out: Path, cfg: QuickstartConfig) -> None:
    from pocketswap.demo.clip import write_clip

    clip = write_clip(out / "clip.mp4", frames=cfg.clip_frames)
    model = [m for m in _students(out.parent / "artifacts", ".tflite") if "fp32" in m.name][0]
    pocketswap("demo", "--model", model, "--source", clip, "--headless", "--out", out / "swapped.mp4",
               "--json", out / "summary.json")  # fmt: skip
    from pocketswap.core.imageio import write_image
    from pocketswap.faces import samples

    still = write_image(out / f"{DEMO_FACE}.png", samples.load(DEMO_FACE))
    swapped = out / f"{DEMO_FACE}_swapped.png"
    pocketswap("demo", "--model", model, "--source", still, "--headless", "--out", swapped)
    # Is the swapped face judged the identity? (the unswapped photo is the baseline)
    pocketswap("faces", "compare", IDENTITY, swapped, "--json", out / "compare_swapped.json")
    pocketswap("faces", "compare", IDENTITY, still, "--json", out / "compare_original.json")


def step_report(out: Path, cfg: QuickstartConfig) -> None:
    root = out.parent
    results = [
        root / "dataset" / "preview.png",
        root / "run" / "metrics.jsonl",
        root / "eval" / "eval.json",
        root / "quality" / "quality_photos.json",  # the bundled colour portraits: faces the student trained on
        root / "panel" / "key.json",  # a link to its rating page
        root / "panel" / "scores.json",  # where a user scored raters' answers into it
        *sorted((root / "run" / "samples").glob("*.png"))[-1:],
        root / "personal" / "eval.json",
        root / "personal" / "compare.png",
        root / "bench" / "latency.json",
        root / "bench" / "pipeline.json",
        root / "bench" / "roofline.json",
        root / "demo" / "summary.json",
        root / "demo" / f"{DEMO_FACE}_swapped.png",
        root / "demo" / "compare_original.json",
        root / "demo" / "compare_swapped.json",
        root / "dataset" / "manifest.json",
        *sorted((root / "artifacts").glob("*.json")),
    ]
    pocketswap("bench", "report", *[p for p in results if p.exists()], "--out", out / "report.html",
               "--title", "pocketswap quickstart")  # fmt: skip


STEPS = (
    Step("faces", "face analysis on the sample portraits", step_faces),
    Step("dataset", "teacher: paired dataset from the bundled faces", step_dataset),
    Step("run", "distill: train the student", step_train),
    Step("eval", "distill: evaluate student vs teacher on held-out identities", step_eval),
    Step("quality", "bench quality: student | teacher | input on the bundled colour photos and clip", step_quality),
    Step("panel", "bench panel: the quality swaps as a blind realism panel to rate in the browser", step_panel),
    Step("personal", "distill: personalise the student for the demo identity", step_personal),
    Step("artifacts", "export: ONNX, TFLite, CoreML with parity checks (personalised student)", step_export),
    Step("bench", "benchmarks: latency, live pipeline, phone estimates", step_bench),
    Step("demo", "demo: headless swap of a synthetic clip", step_demo),
    Step("report", "report.html", step_report),
)


def run_quickstart(out: str | Path, cfg: QuickstartConfig | None = None, force: bool = False) -> Path:
    """Run every step into `out`, skipping steps whose `.done` marker exists (unless `force`)."""
    out, cfg = Path(out), cfg or QuickstartConfig()
    total = time.perf_counter()
    for index, step in enumerate(STEPS, start=1):
        step_dir = out / step.name
        marker = step_dir / ".done"
        if marker.exists() and not force:
            log.info("[%d/%d] %s: done earlier, skipping (%s)", index, len(STEPS), step.title, step_dir)
            continue
        log.info("[%d/%d] %s ...", index, len(STEPS), step.title)
        start = time.perf_counter()
        step_dir.mkdir(parents=True, exist_ok=True)
        step.run(step_dir, cfg)
        marker.write_text(f"{time.perf_counter() - start:.1f} s\n")
        log.info("[%d/%d] %s: done in %.1f s", index, len(STEPS), step.title, time.perf_counter() - start)
    log.info("quickstart finished in %.1f s; open %s", time.perf_counter() - total, out / "report" / "report.html")
    return out


def _handler(args: argparse.Namespace) -> int:
    cfg = QuickstartConfig.tiny() if args.tiny else QuickstartConfig()
    run_quickstart(args.out, cfg, force=args.force)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="the whole pipeline on the bundled sample faces (make demo)")
    p.add_argument("--out", type=output_dir, default="runs/quickstart", help="output folder")
    p.add_argument("--force", action="store_true", help="redo finished steps")
    p.add_argument("--tiny", action="store_true", help="a miniature run (tiny dataset, few steps) for smoke tests")
    p.set_defaults(handler=_handler)
