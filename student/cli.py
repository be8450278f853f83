"""``pocketswap student ...``: inspect student presets (thin layer over :mod:`pocketswap.student.summary`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketswap.core.cli_args import int_range, list_values, output_file
from pocketswap.student.config import PRESETS  # light: no torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("student", help="student network presets and costs")
    commands = parser.add_subparsers(dest="student_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: _usage(parser))

    summary = commands.add_parser(
        "summary",
        help="parameters, MACs, identity size and activation memory of presets",
        description="Counts are taken on a randomly initialised, baked student (see pocketswap.student.summary).",
    )
    summary.add_argument(
        "--preset", nargs="+", default=["base"], metavar="NAME", help=f"one or more of {', '.join(PRESETS)}, or all"
    )
    summary.add_argument("--config", type=Path, metavar="YAML", help="summarise a config file instead of presets")
    summary.add_argument("--embed-dim", type=int, help="override the embedding size (e.g. 512 for ArcFace)")
    summary.add_argument(
        "--json", type=lambda t: Path(output_file(".json")(t)), metavar="PATH", help="also write the summaries as JSON"
    )
    summary.add_argument("--latency", action="store_true", help="measure baked CPU forward latency")
    summary.add_argument("--runs", type=int_range(1), default=100, help="timed runs for --latency (default 100)")
    summary.add_argument("--threads", type=int_range(1), default=1, help="torch CPU threads for --latency (default 1)")
    summary.set_defaults(handler=_summary)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _summary(args: argparse.Namespace) -> int:
    from pocketswap.student.config import StudentConfig, get_preset
    from pocketswap.student.summary import format_table, summarize

    overrides = {"embed_dim": args.embed_dim} if args.embed_dim else {}
    if args.config:
        configs = [StudentConfig.from_yaml(args.config).replace(**overrides)]
    else:
        names = list(PRESETS) if "all" in list_values(args.preset) else list_values(args.preset)
        configs = [get_preset(name, **overrides) for name in names]
    summaries = [summarize(c, latency=args.latency, runs=args.runs, threads=args.threads) for c in configs]
    print(format_table(summaries))
    if args.latency:
        print(f"latency: baked model, batch 1, fp32, torch {args.threads} thread(s), median of {args.runs} runs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([s.to_dict() for s in summaries], indent=2) + "\n")
    return 0
