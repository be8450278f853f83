"""`pocketswap bench ...`: latency, gate (and quality, report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketswap.core.cli_args import int_range, list_values, output_dir, output_file


def _threads(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--threads takes a comma list of integers, got '{text}'") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--threads needs positive integers, got '{text}'")
    return values


def _latency(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.latency import bench_artifact
    from pocketswap.core.files import atomic_write_json

    targets = [(a, args.runs) for a in args.artifacts] + [(f"ref:{n}", args.reference_runs) for n in args.references]
    records = []
    header = f"{'artifact':<44} {'runtime':<15} {'thr':>3} {'median':>8} {'p5':>8} {'p95':>8} {'init':>8} {'MB':>7} {'RSS MB':>7} XNNPACK"
    print(header)
    for target, runs in targets:
        for threads in args.threads:
            r = bench_artifact(target, threads, runs)
            records.append(r)
            delegated = {True: "full", False: "PARTIAL", None: "-"}[r.fully_delegated]
            print(
                f"{r.artifact[-44:]:<44} {r.runtime:<15} {r.threads:>3} {r.median_ms:>8.3f} {r.p5_ms:>8.3f} "
                f"{r.p95_ms:>8.3f} {r.init_ms:>8.1f} {r.size_mb:>7.3f} {r.peak_memory_mb:>7.1f} {delegated}"
            )
    if args.json:
        atomic_write_json(args.json, {"kind": "latency", "records": [r.to_dict() for r in records]})
        print(f"results -> {args.json}")
    return 0


def _quality_gate(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.quality_gate import (
        QUALITY_BASELINE,
        format_rows,
        run_quality_gate,
        update_quality_baseline,
    )

    baseline = Path(args.baseline) if args.baseline else QUALITY_BASELINE
    if args.update:
        result = update_quality_baseline(baseline)
        print(f"quality baseline with {len(result['figures'])} figures -> {baseline}")
        return 0
    rows, passed = run_quality_gate(baseline, args.threads)
    print(format_rows(rows))
    if not passed:
        worse = [r["figure"] for r in rows if not r["passed"]]
        print(
            f"quality gate FAILED: {len(worse)} figure(s) worse than the baseline: {', '.join(worse)}", file=sys.stderr
        )
        return 1
    print(f"quality gate passed ({len(rows)} figures within their noise)")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.gate import DEFAULT_BASELINE, baseline_targets, format_table, run_gate, update_baseline

    if args.quality:
        return _quality_gate(args)
    args.baseline = args.baseline or DEFAULT_BASELINE
    if args.update:
        if not args.targets:
            args.targets = baseline_targets(args.baseline)
        result = update_baseline(args.baseline, args.targets, args.threads, args.runs, args.rounds)
        print(f"baseline with {len(result['targets'])} target(s) -> {args.baseline}")
        return 0
    rows, _ = run_gate(args.baseline, args.max_ratio, args.targets or None, args.runs, args.rounds)
    print(format_table(rows, args.max_ratio))
    regressed = [row for row in rows if row.regressed(args.max_ratio)]
    if regressed:
        print(
            f"latency gate FAILED: {len(regressed)} target(s) slower than {args.max_ratio}x the baseline",
            file=sys.stderr,
        )
        return 1
    print(f"latency gate passed (max ratio {args.max_ratio})")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.pipeline import benchmark_pipeline
    from pocketswap.core.files import atomic_write_json
    from pocketswap.faces.identity import read_identity

    embedding = read_identity(args.identity).embedding if args.identity else None
    records = []
    for model in args.models:
        for threads in args.threads:
            r = benchmark_pipeline(model, embedding, threads, args.runs)
            records.append(r)
            print(
                f"{r.model} ({threads} thr): detect {r.detect_ms:.2f} + landmarks {r.landmarks_ms:.2f} "
                f"(track {r.track_ms:.2f}) + align {r.align_ms:.2f} + swap {r.swap_ms:.2f}"
                + (f" (of which identity warp {r.warp_ms:.2f})" if r.warp_ms else "")
                + f" + paste {r.paste_ms:.2f} "
                f"= {r.total_ms:.2f} ms ({r.fps_detecting:.0f} FPS; {r.fps_tracking:.0f} FPS when tracking)"
            )
    if args.json:
        atomic_write_json(args.json, {"kind": "pipeline", "records": [r.to_dict() for r in records]})
    return 0


def _app(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.app import benchmark_app
    from pocketswap.core.files import atomic_write_json

    identity = Path(args.identity) if args.identity else None
    transports = ("websocket", "webrtc") if args.transport == "both" else (args.transport,)
    records = []
    for transport in transports:
        records.append(benchmark_app(Path(args.model), identity, args.seconds, args.threads, transport))
        print(records[-1].line())
    if args.json:
        atomic_write_json(args.json, {"kind": "app", "records": [r.to_dict() for r in records]})
    return 0


def _roofline(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.roofline import estimate_presets
    from pocketswap.core.files import atomic_write_json

    estimates = estimate_presets(list_values(args.presets), list_values(args.precisions))
    print("ESTIMATES (roofline lower bounds from counted MACs and bytes, one big core; not measurements)")
    print(f"{'phone':<24} {'preset':<6} {'prec':<5} {'GMAC':>7} {'MB moved':>9} {'est. ms':>8}")
    for e in estimates:
        print(
            f"{e.phone:<24} {e.preset:<6} {e.precision:<5} {e.gmac:>7.4f} {e.mbytes_moved:>9.2f} {e.estimate_ms:>8.3f}"
        )
    if args.json:
        atomic_write_json(args.json, {"kind": "roofline", "records": [e.to_dict() for e in estimates]})
    return 0


def _device(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pocketswap.benchmarks.ondevice import android_benchmark, coreml_benchmark
    from pocketswap.core.files import atomic_write_json

    records = []
    for artifact in map(Path, args.artifacts):
        if artifact.suffix == ".tflite":
            binary = Path(args.android_benchmark_binary) if args.android_benchmark_binary else None
            records.append(android_benchmark(artifact, binary, args.threads))
        elif artifact.suffix == ".mlpackage":
            records.append(coreml_benchmark(artifact))
    for r in records:
        detail = f"{r.latency_ms} ms ({r.statistic}) on {r.device}" if r.status == "measured" else r.reason
        print(f"{r.target:<8} {Path(r.artifact).name:<40} {r.status}: {detail}")
    if args.json:
        atomic_write_json(args.json, {"kind": "device", "records": [r.to_dict() for r in records]})
    return 0


def _report(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.report import write_report

    path = write_report(args.results, args.out, title=args.title)
    print(f"report -> {path}")
    return 0


def _extras(values: list[str]) -> dict[str, str]:
    extras = {}
    for text in values:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise argparse.ArgumentTypeError(f"--extra takes NAME=FOLDER, got '{text}'")
        extras[name] = folder
    return extras


def _panel(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.panel import build_panel, format_scores, score_panel
    from pocketswap.core.errors import ConfigError
    from pocketswap.core.files import atomic_write_json

    if args.score is not None:
        key = args.key or (Path(args.target) / "key.json" if args.target else None)
        if key is None:
            raise ConfigError("--score needs the panel's key: --key OUT/key.json (or the panel folder as TARGET)")
        scores = score_panel(key, args.score)
        print(format_scores(scores))
        if args.json:
            atomic_write_json(args.json, scores)
            print(f"scores -> {args.json}")
        return 0
    if not args.target or not args.out:
        raise ConfigError("bench panel needs TARGET (a run, artifact or `bench quality --people` folder) and --out")
    quality = Path(args.target)
    if not (quality / "quality_photos.json").is_file():
        if not args.people:
            raise ConfigError(f"{quality} is no `bench quality --people` output: give --people DIR to make the swaps")
        from pocketswap.benchmarks.photo_run import bench_photos

        bench_photos(args.target, args.people, Path(args.out) / "quality", person=args.person, threads=args.threads)
        quality = Path(args.out) / "quality"
    key = build_panel(quality, args.out, _extras(args.extra), args.per_source, args.seed, args.people)
    print(f"{len(key['items'])} faces -> {Path(args.out) / 'rate' / 'index.html'} (give raters the rate/ folder only)")
    print(f"key -> {Path(args.out) / 'key.json'}")
    print(f"next: pocketswap bench panel --score ANSWERS.json ... --key {Path(args.out) / 'key.json'}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    if args.people:
        from pocketswap.benchmarks.photo_run import bench_photos
        from pocketswap.benchmarks.photos import format_summary
        from pocketswap.core.config import parse_overrides

        report = bench_photos(args.target, args.people, args.out, judges=args.judge, teacher=args.teacher,
                              person=args.person, threads=args.threads, video=args.video,
                              teacher_config=parse_overrides(args.teacher_config))  # fmt: skip
        print(format_summary(report))
        results = Path(args.out) / "quality_photos.json"
    else:
        from pocketswap.benchmarks.quality import bench_quality
        from pocketswap.distill.evaluate import format_table

        report = bench_quality(
            args.target, args.faces, args.out, pairs=args.pairs, seed=args.seed, teacher=args.teacher
        )
        print(format_table(report))
        results = Path(args.out) / "quality.json"
    print(f"results -> {results}")
    if args.html:
        from pocketswap.benchmarks.report import write_report

        print(f"report -> {write_report([results], args.html, title='pocketswap quality')}")
    else:
        print(f"next: pocketswap bench report {results} --out {Path(args.out) / 'quality.html'}")
    return 0


def _check_measures(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.degrade import DEFECTS, check_measures
    from pocketswap.benchmarks.photos import pad_tight
    from pocketswap.core.files import atomic_write_json
    from pocketswap.core.imageio import IMAGE_SUFFIXES, read_image
    from pocketswap.faces import samples
    from pocketswap.faces.analyzer import FaceAnalyzer

    if args.photos == "samples":
        photos = [(name, samples.load(name)) for name in ("astronaut", "grace_hopper")]
    else:
        files = sorted(p for p in Path(args.photos).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        photos = [(str(p), pad_tight(read_image(p))) for p in files]
    report = check_measures(photos, FaceAnalyzer(detector="auto"))
    print(f"{len(report['photos'])} photos; each measure on each defect: median [min, max]; 'ranked worse': the "
          "share of photos on which the defect's own measure says the copy is worse than the photo")  # fmt: skip
    for defect in ("none", *DEFECTS):
        entry = report["defects"][defect]
        cells = "  ".join(f"{k}={v['median']:.3f} [{v['min']:.3f}, {v['max']:.3f}]" for k, v in entry.items()
                          if isinstance(v, dict))  # fmt: skip
        extra = f"  frechet={entry['frechet_face']:.3f}" if "frechet_face" in entry else ""
        ranked = f"  ranked worse {entry['ranked_worse']:.0%}" if "ranked_worse" in entry else ""
        print(f"{defect:<11} {cells}{extra}{ranked}")
    if args.json:
        atomic_write_json(args.json, report)
    return 0 if all(e.get("ranked_worse", 1.0) == 1.0 for e in report["defects"].values()) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="latency and quality benchmarks, CI latency gate, HTML report")
    commands = bench.add_subparsers(dest="bench_command", metavar="ACTION", required=True)

    p = commands.add_parser("latency", help="median/p5/p95 latency, init time, size, memory, XNNPACK delegation")
    p.add_argument("artifacts", nargs="*", help=".tflite (LiteRT/XNNPACK), .onnx (ONNX Runtime) or a checkpoint")
    p.add_argument("--threads", type=_threads, default=[1], help="comma list, e.g. 1,2,4")
    p.add_argument("--runs", type=int_range(1), default=100)
    p.add_argument(
        "--references", nargs="*", default=[], choices=["simswap", "mobilefaceswap"],
        help="reference networks timed in the same run (random weights)",
    )  # fmt: skip
    p.add_argument("--reference-runs", type=int, default=10, help="runs for the (slow) reference networks")
    p.add_argument("--json", type=output_file(".json"), help="write the records as JSON")
    p.set_defaults(handler=_latency)

    p = commands.add_parser("pipeline", help="per-stage latency of the live pipeline on a 640x480 frame")
    p.add_argument("models", nargs="+", help="baked .tflite/.onnx, or a checkpoint (needs --identity)")
    p.add_argument("--identity", help="identity image or .npy embedding (for checkpoints)")
    p.add_argument("--threads", type=_threads, default=[1], help="comma list, e.g. 1,2")
    p.add_argument("--runs", type=int_range(1), default=200)
    p.add_argument("--json", type=output_file(".json"), help="write the records as JSON")
    p.set_defaults(handler=_pipeline)

    p = commands.add_parser("app", help="browser path of `pocketswap app`: Chromium with a fake camera, end to end")
    p.add_argument("model", help="baked .tflite/.onnx, or a checkpoint (needs --identity)")
    p.add_argument("--identity", help="identity photo, sample:NAME or .npy (for checkpoints)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured streaming time after warm-up")
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--transport", choices=["websocket", "webrtc", "both", "device"], default="both",
                   help="the page's live stream to measure (both: one after the other; device: the swap runs in "
                        "the browser, from the model's ONNX export)")  # fmt: skip
    p.add_argument("--json", type=output_file(".json"), help="write the records as JSON")
    p.set_defaults(handler=_app)

    p = commands.add_parser("roofline", help="phone latency ESTIMATES from counted MACs and bytes (phones.yaml)")
    p.add_argument("--presets", nargs="+", default=["nano", "base"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    p.add_argument("--json", type=output_file(".json"), help="write the estimates as JSON")
    p.set_defaults(handler=_roofline)

    p = commands.add_parser("device", help="real on-device runs (Android via adb, CoreML on a Mac) or a skip reason")
    p.add_argument("artifacts", nargs="+", help=".tflite (Android) or .mlpackage (macOS)")
    p.add_argument("--android-benchmark-binary", help="LiteRT's benchmark_model built for the phone's ABI")
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--json", type=output_file(".json"), help="write the records as JSON")
    p.set_defaults(handler=_device)

    p = commands.add_parser("quality", help="student vs teacher quality metrics on your own folder of faces")
    p.add_argument("target", help="run directory, checkpoint, or an exported artifact (scores its source checkpoint)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--faces", help="folder of face photos (recursive), or 'samples': scored as aligned crops")
    source.add_argument("--people", help="one sub-folder of photos per person: full-frame swaps judged against "
                        "each person's other photos (identity, pose, expression, gaze, artefacts)")  # fmt: skip
    p.add_argument("--judge", action="append", metavar="ARCFACE.onnx",
                   help="a second identity judge (ArcFace-style ONNX; repeat for more), besides dlib")  # fmt: skip
    p.add_argument("--person", help="with --people and a baked artifact: the folder whose face the artifact carries")
    p.add_argument("--video", help="with --people: also score a clip (a video file, or 'clip' for the bundled one) "
                   "through the live pipeline: flicker, landmark jitter, identity stability")  # fmt: skip
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--html", type=output_file(".html"), help="also write an HTML report of the results")
    p.add_argument(
        "--out", type=output_dir, required=True, help="output folder (pairs made by the teacher + quality.json)"
    )
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", default="geometric", help="teacher that makes the reference swaps")
    p.add_argument("--teacher-config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="with --people: teacher settings (e.g. relight_sigma=0.1 keep_eyes=false for the geometric one)")  # fmt: skip
    p.set_defaults(handler=_quality)

    p = commands.add_parser(
        "panel", help="a blind realism panel: face crops of photos and swaps to rate 1-5, and --score for the answers"
    )
    p.add_argument("target", nargs="?", help="a `bench quality --people` output folder, or a run/artifact (with "
                   "--people); with --score: the panel folder")  # fmt: skip
    p.add_argument("--people", help="one sub-folder of photos per person (makes the swaps; judges --extra swaps)")
    p.add_argument("--person", help="with --people and a baked artifact: the folder whose face it carries")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FOLDER",
                   help="another method's swaps, named OWNER_PHOTO_as_IDENTITY like the run's (repeat for more)")  # fmt: skip
    p.add_argument("--per-source", type=int_range(1), help="at most this many faces per source")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--out", type=output_dir, help="panel folder: rate/ (for raters) and key.json")
    p.add_argument("--score", nargs="+", metavar="ANSWERS.json", help="score raters' answer files instead")
    p.add_argument("--key", help="with --score: the panel's key.json")
    p.add_argument("--json", type=output_file(".json"), help="with --score: write the scores as JSON")
    p.set_defaults(handler=_panel)

    p = commands.add_parser(
        "check-measures", help="show that each artefact measure ranks blurred/seamed/speckled/recoloured copies worse"
    )
    p.add_argument("photos", help="a folder of photos (recursive), or 'samples' (the bundled colour portraits)")
    p.add_argument("--json", type=output_file(".json"), help="write the scores as JSON")
    p.set_defaults(handler=_check_measures)

    p = commands.add_parser("report", help="one self-contained HTML page from result files")
    p.add_argument("results", nargs="+", help="JSON results, metrics.jsonl, manifests, PNG/JPEG images")
    p.add_argument("--out", type=output_file(".html"), required=True, help="output .html")
    p.add_argument("--title", default="pocketswap report")
    p.set_defaults(handler=_report)

    p = commands.add_parser(
        "gate", help="fail when a target is slower than its frozen baseline artifact, timed side by side"
    )
    p.add_argument("targets", nargs="*", help="targets to check (default: all in the baseline)")
    p.add_argument("--baseline", help="baseline JSON (default: the packaged benchmarks/baseline.json)")
    p.add_argument("--max-ratio", type=float, default=1.2, help="allowed slowdown relative to the baseline")
    p.add_argument("--update", action="store_true", help="freeze the targets beside the baseline JSON and rewrite it")
    p.add_argument("--quality", action="store_true",
                   help="the quality gate instead: the frozen reference student's real-photo figures may not get worse "
                   "than their run-to-run noise (baseline/quality.json)")  # fmt: skip
    p.add_argument("--threads", type=int_range(1), default=1, help="threads (with --update)")
    p.add_argument("--runs", type=int_range(1), default=20, help="calls per target in each round")
    p.add_argument("--rounds", type=int_range(1), default=15, help="rounds in which the targets take turns")
    p.set_defaults(handler=_gate)
