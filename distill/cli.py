"""``pocketswap distill train|eval``: a thin layer over :mod:`pocketswap.distill.train` and
:mod:`pocketswap.distill.evaluate` (heavy imports happen inside the handlers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketswap.core.cli_args import add_config_flags, config_flags, output_dir, output_file
from pocketswap.core.config import distributed_rank, yaml_safe_load
from pocketswap.core.jsonio import read_eval_report
from pocketswap.distill.config import TrainConfig  # light: no torch
from pocketswap.distill.personalize import DEFAULTS as PERSONALIZE_DEFAULTS  # light too


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("distill", help="train students from a paired dataset and evaluate them")
    commands = parser.add_subparsers(dest="distill_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: _usage(parser))

    train = commands.add_parser(
        "train",
        help="distil a student from a teacher's paired dataset",
        description="Distil a student. Settings come from the defaults, then --config YAML, then the flags "
        "below, then FIELD=VALUE overrides (e.g. lr=2e-3 student.size=128). Under torchrun each process "
        "is one DDP rank.",
    )
    train.add_argument("--data", type=Path, help="dataset folder (default with --resume: the run's dataset)")
    train.add_argument(
        "--out", type=lambda t: Path(output_dir(t)), required=True, metavar="RUN_DIR", help="run directory"
    )
    train.add_argument("--config", type=Path, metavar="YAML", help="TrainConfig fields as YAML")
    train.add_argument("--resume", action="store_true", help="continue the newest checkpoint in RUN_DIR")
    train.add_argument(
        "--stop-after", type=int, metavar="N", help="stop after N steps of this call (with a checkpoint)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(train, TrainConfig)
    train.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="more overrides")
    train.set_defaults(handler=_train)

    personal = commands.add_parser(
        "personalize",
        help="fine-tune a student for one face (teacher pairs of that face, then fine-tuning)",
        description="Swap the face of --identity onto every face of --faces with the teacher, fine-tune the "
        "student of RUN_DIR on those pairs, and report identity metrics on attribute faces held out of the "
        "fine-tuning. OUT is a run folder: `pocketswap export OUT --identity PHOTO` ships it. FIELD=VALUE "
        "overrides any `distill train` field (e.g. lr=5e-4 w_id=0.5).",
    )
    personal.add_argument("run", type=Path, metavar="RUN_DIR", help="universal student: run folder or checkpoint")
    personal.add_argument("--identity", required=True, metavar="PHOTO", help="photo of one person, or sample:NAME")
    personal.add_argument(
        "--out", type=lambda t: Path(output_dir(t)), required=True, metavar="DIR", help="output run folder"
    )
    personal.add_argument("--faces", default="samples", help="attribute faces: a folder of photos/frames, or samples")
    personal.add_argument("--steps", type=int, help=f"fine-tuning steps (default {PERSONALIZE_DEFAULTS['steps']})")
    personal.add_argument("--pairs", type=int, default=1024, help="teacher pairs to generate (default 1024)")
    personal.add_argument("--workers", type=int, default=2, help="pair-generation processes (default 2)")
    personal.add_argument("--seed", type=int, default=0)
    personal.add_argument("--resume", action="store_true", help="continue an interrupted personalisation in DIR")
    personal.add_argument("--no-progress", action="store_true", help="no progress bars")
    personal.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="distill train fields")
    personal.set_defaults(handler=_personalize)

    evaluate = commands.add_parser(
        "eval",
        help="score a run's student (and the teacher) on held-out pairs",
        description="Face-region PSNR/SSIM to the teacher, identity cosine and retrieval (dlib), expression "
        "and head-pose error, for the student, the teacher and the unchanged attribute (baseline).",
    )
    evaluate.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory or checkpoint directory")
    evaluate.add_argument("--data", type=Path, required=True, metavar="HELDOUT", help="dataset folder")
    evaluate.add_argument(
        "--json",
        type=lambda t: Path(output_file(".json")(t)),
        metavar="PATH",
        help="write the report here (default RUN_DIR/eval.json)",
    )
    evaluate.add_argument(
        "--split",
        choices=("auto", "val", "train", "all"),
        default="auto",
        help="auto: the run's held-out identities if HELDOUT is its training dataset, else all pairs; "
        "train: the pairs it trained on (generalisation gap)",
    )
    evaluate.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint directory")
    evaluate.add_argument("--max-samples", type=int, default=500, help="pairs to score (default 500; 0: all)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--no-landmarks", action="store_true", help="skip expression and pose (no face detection)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_eval)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _train(args: argparse.Namespace) -> int:
    from pocketswap.core.config import parse_overrides
    from pocketswap.core.errors import ConfigError
    from pocketswap.distill.state import read_run_file
    from pocketswap.distill.train import train

    base = None
    data = args.data
    if args.resume and (args.out / "config.yaml").is_file():
        base = yaml_safe_load((args.out / "config.yaml").read_text())
        if data is None and (args.out / "run.json").is_file():
            data = Path(read_run_file(args.out)["data"])
    if data is None:
        raise ConfigError("--data DATASET is required")
    flags = config_flags(args, TrainConfig)
    overrides = {**flags, **parse_overrides(args.overrides)}
    if "student" in flags and not isinstance(flags["student"], dict):
        raise ConfigError("config field 'student' must be a mapping, e.g. --student '{size: 128}'")
    config = TrainConfig.load(args.config, overrides, base=base)
    summary = train(
        config, data, args.out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress
    )
    if distributed_rank()[0] == 0:
        print(
            f"{summary.stopped}: step {summary.step}/{summary.steps}, {summary.samples_per_s:.1f} samples/s, "
            f"final loss {'n/a' if summary.final_loss is None else f'{summary.final_loss:.4f}'}, best val loss "
            f"{'n/a' if summary.best_val_loss is None else f'{summary.best_val_loss:.4f}'} "
            f"(step {summary.best_step}); run: {summary.out}"
        )
        print(f"next: pocketswap distill eval {summary.out} --data {data}  |  pocketswap export {summary.out} "
              "--identity FACE.jpg --format tflite --out ARTIFACTS")  # fmt: skip
    return 0


def _personalize(args: argparse.Namespace) -> int:
    from pocketswap.core.config import parse_overrides
    from pocketswap.distill.evaluate import format_table
    from pocketswap.distill.personalize import personalize

    result = personalize(
        args.run, args.identity, args.out, faces=args.faces, pairs=args.pairs, steps=args.steps,
        resume=args.resume, workers=args.workers, seed=args.seed, overrides=parse_overrides(args.overrides),
        progress=not args.no_progress,
    )  # fmt: skip
    report = read_eval_report(args.out / "eval.json")
    print(format_table(report))
    print(
        f"personalised for {args.identity} in {result.train_seconds / 60:.1f} min of training "
        f"({result.wall_seconds / 60:.1f} min in all); identity figures on {result.held_out_faces} held-out faces.\n"
        f"next: pocketswap export {args.out} --format tflite --out ARTIFACTS"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pocketswap.core.files import atomic_write_json
    from pocketswap.distill.evaluate import evaluate, format_table

    report = evaluate(
        args.run,
        args.data,
        checkpoint=args.checkpoint,
        split=args.split,
        max_samples=args.max_samples or None,
        batch_size=args.batch_size,
        device=args.device,
        landmarks=not args.no_landmarks,
        progress=not args.no_progress,
    )
    print(format_table(report))
    target = args.json or (args.run / "eval.json" if (args.run / "config.yaml").is_file() else None)
    if target is not None:
        atomic_write_json(target, report)
        print(f"report: {target}")
    print(f"next: pocketswap export {args.run} --identity FACE.jpg --format tflite --out ARTIFACTS")
    return 0
