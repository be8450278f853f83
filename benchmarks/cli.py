"""`pocketswap bench ...`: latency, gate (and quality, report)."""

from __future__ import annotations

import argparse
import sys


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
    from pocketswap.files import atomic_write_json

    targets = list(args.artifacts) + [f"ref:{name}" for name in args.references]
    records = []
    header = f"{'artifact':<44} {'runtime':<15} {'thr':>3} {'median':>8} {'p5':>8} {'p95':>8} {'init':>8} {'MB':>7} {'RSS MB':>7} XNNPACK"
    print(header)
    for target in targets:
        for threads in args.threads:
            r = bench_artifact(target, threads, args.runs)
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


def _gate(args: argparse.Namespace) -> int:
    from pocketswap.benchmarks.gate import format_table, run_gate, update_baseline

    if args.update:
        if not args.targets:
            from pocketswap.benchmarks.gate import load_baseline

            args.targets = list(load_baseline(args.baseline)["targets"])
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


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="latency and quality benchmarks, CI latency gate, HTML report")
    commands = bench.add_subparsers(dest="bench_command", metavar="ACTION", required=True)

    p = commands.add_parser("latency", help="median/p5/p95 latency, init time, size, memory, XNNPACK delegation")
    p.add_argument("artifacts", nargs="*", help=".tflite (LiteRT/XNNPACK), .onnx (ONNX Runtime) or a checkpoint")
    p.add_argument("--threads", type=_threads, default=[1], help="comma list, e.g. 1,2,4")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument(
        "--references", nargs="*", default=[], choices=["simswap", "mobilefaceswap"],
        help="reference networks timed in the same run (random weights)",
    )  # fmt: skip
    p.add_argument("--json", help="write the records as JSON")
    p.set_defaults(handler=_latency)

    p = commands.add_parser("gate", help="fail when latency regressed against a baseline (machine-normalised)")
    p.add_argument("targets", nargs="*", help="targets to check (default: all in the baseline)")
    p.add_argument("--baseline", default="benchmarks/baseline.json")
    p.add_argument("--max-ratio", type=float, default=1.2, help="allowed slowdown relative to the baseline")
    p.add_argument("--update", action="store_true", help="measure the targets and rewrite the baseline")
    p.add_argument("--threads", type=int, default=1, help="threads (with --update)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3, help="repeat each measurement and keep the best median")
    p.set_defaults(handler=_gate)
