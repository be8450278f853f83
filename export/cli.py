"""`pocketswap export ...`: student checkpoints -> ONNX / TFLite / CoreML artifacts, and `export patch`.

``export patch`` is a subcommand with its own parser (:func:`patch_parser`): :func:`pocketswap.cli.main`
sends ``export patch ...`` to it (write ``./patch`` to export a checkpoint folder literally named "patch").
"""

from __future__ import annotations

import argparse
import logging

from pocketswap.core.manifest import IDENTITY_MODES, PRECISIONS
from pocketswap.export.common import COMPRESSIONS, FORMATS

log = logging.getLogger(__name__)

USAGE = """
  pocketswap export RUN_DIR|CHECKPOINT [--identity FACE.jpg|sample:NAME|EMB.npy] [--format tflite|coreml|onnx|all]
                    [--precision fp32|fp16|int8|all] [--identity-mode baked|dynamic] [--calibration DATASET|DIR|samples]
                    [--image-input] [--compress none|int8|palettize6|palettize4] [--enroll] [--benchmark] --out DIR
  pocketswap export patch MODEL.tflite|MODEL.mlpackage --identity FACE.jpg|EMB.npy --checkpoint CKPT --out NEW
                    (see `pocketswap export patch --help`)"""

EPILOG = """examples:
  pocketswap export runs/nano --identity face.jpg --format all --precision fp32,fp16,int8 --calibration data/pairs --out exports/
  pocketswap export runs/nano --identity-mode dynamic --format tflite --out exports/ --enroll
  pocketswap export patch exports/nano_baked_fp16.tflite --identity other.jpg --checkpoint runs/nano --out other.tflite

Every artifact gets NAME.json next to it (tensor names, layout, normalisation, parity, sizes, op list).
int8 TFLite/ONNX are calibrated on real aligned crops: a dataset folder, a folder of photos, an .npy of
uint8 NxSxSx3 crops, or 'samples' (bundled faces). Benchmark a result with LiteRT's tool:
  python -m ai_edge_litert.tools.benchmark_litert_model --model exports/nano_baked_fp32.tflite --num_threads 1 --result_json r.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a student to TFLite / CoreML / ONNX (or `export patch` to switch identity)",
        description="Export a trained student to mobile formats with parity checks and a manifest per artifact, "
        "or (`export patch`) rewrite a baked model's identity weights without re-conversion.",
        usage=USAGE,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="checkpoint folder or run folder")
    parser.add_argument(
        "--identity",
        help="face photo, sample:NAME or .npy embedding of the identity (a personalised run: by default the photo it was "
        "personalised from)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    _common_flags(parser)
    group = parser.add_argument_group("export options")
    group.add_argument(
        "--format", nargs="+", default=["tflite"], help=f"{', '.join(FORMATS)}, several, or all (default tflite)"
    )
    group.add_argument(
        "--precision", nargs="+", default=["fp32"], help=f"{', '.join(PRECISIONS)}, several, or all (default fp32)"
    )
    group.add_argument("--identity-mode", default="baked", choices=IDENTITY_MODES, help="default baked")
    group.add_argument(
        "--calibration", default=None, help="int8 calibration: DATASET folder, image DIR, crops .npy or 'samples'"
    )
    group.add_argument(
        "--image-input", action="store_true", help="CoreML: 'image' is an RGB image input (CVPixelBuffer)"
    )
    group.add_argument(
        "--compress",
        default="none",
        choices=COMPRESSIONS,
        help="CoreML weight compression",
    )
    group.add_argument("--enroll", action="store_true", help="also export the identity encoder and hypernetwork")
    group.add_argument("--benchmark", action="store_true", help="run LiteRT's benchmark (1 thread) on each .tflite")
    group.add_argument("--name", default=None, help="artifact name stem (default PRESET_MODE)")
    parser.set_defaults(handler=_export)


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default=None, help="identity encoder for photos: dlib (default) or ARCFACE.onnx")
    parser.add_argument("--no-parity-check", action="store_true", help="record parity but do not fail on it")


def patch_parser() -> argparse.ArgumentParser:
    """The parser of ``pocketswap export patch``."""
    parser = argparse.ArgumentParser(
        prog="pocketswap export patch",
        description="Rewrite the identity weights of a baked .tflite / .mlpackage for another face, without "
        "re-conversion (the model's manifest says where they are; parity is checked against PyTorch).",
        epilog="example:\n  pocketswap export patch exports/nano_baked_fp16.tflite --identity other.jpg "
        "--checkpoint runs/nano --out other.tflite",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="the baked .tflite or .mlpackage to patch")
    parser.add_argument("--identity", required=True, help="face photo, sample:NAME or .npy embedding")
    parser.add_argument(
        "--checkpoint", required=True, help="the checkpoint (or run folder) the model was exported from"
    )
    parser.add_argument("--out", required=True, help="output file (.tflite / .mlpackage)")
    _common_flags(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=_patch, command="export patch")
    return parser


def _export(args: argparse.Namespace) -> int:
    from pocketswap.export.pipeline import export_model
    from pocketswap.export.tflite import benchmark_command

    artifacts = export_model(
        args.source,
        args.out,
        identity=args.identity,
        formats=args.format,
        precisions=args.precision,
        identity_mode=args.identity_mode,
        calibration=args.calibration,
        image_input=args.image_input,
        compress=args.compress,
        encoder=args.encoder,
        enroll=args.enroll,
        check_parity=not args.no_parity_check,
        benchmark=args.benchmark,
        name=args.name,
    )
    for a in artifacts:
        m = a.manifest
        p = m.parity
        figures = f"max abs {p.get('max_abs', float('nan')):.2g}, PSNR {p.get('min_psnr_db', float('nan')):.1f} dB"
        figures += f" (faces {p.get('min_psnr_db_real_faces', float('nan')):.1f} dB)"
        if "bound_used" in p:  # fp16: the share of its bounds (u = 2^-11 x scale x depth) the worst case used
            figures += f", {p['bound_used']:.0%} of the fp16 bound"
        if str(p.get("reference", "")).startswith("weights round-trip"):
            figures += " [weights round-trip, not a CoreML prediction]"
        notes = []
        if m.delegation is not None:
            notes.append("fully delegated" if m.delegation.get("fully_accelerated") else "NOT fully delegated")
        if m.patch:
            notes.append("patchable")
        bench = m.extra.get("benchmark_host")
        if bench:
            notes.append(f"median {bench.get('median_ms')} ms (1 thread, this machine)")
        print(f"{a.path}  {m.file_size_bytes / 1024:.0f} KB  {figures}  {'; '.join(notes)}")
    first = next((a for a in artifacts if a.path.suffix == ".tflite"), None)
    if first is not None:
        print("benchmark: " + " ".join(benchmark_command(first.path, 1, "r.json")))
    shown = first or next((a for a in artifacts if a.path.suffix == ".onnx"), None)
    if shown is not None:
        print(f"next: pocketswap bench latency {shown.path} --threads 1  |  pocketswap demo --model {shown.path}")
    return 0


def _patch(args: argparse.Namespace) -> int:
    from pocketswap.export.patch import patch_model

    result = patch_model(
        args.model,
        args.identity,
        args.checkpoint,
        args.out,
        encoder=args.encoder,
        check_parity=not args.no_parity_check,
    )
    figures = ""
    if "max_abs" in result.parity:
        figures = f", parity vs PyTorch: max abs {result.parity['max_abs']:.2g}"
        if "bound_used" in result.parity:
            figures += f" ({result.parity['bound_used']:.0%} of the fp16 bound)"
    n = len(result.manifest.patch["tensors"]) if result.manifest.patch else 0
    print(f"{result.path}: {n} identity tensors rewritten in {result.rewrite_seconds * 1e3:.1f} ms{figures}")
    return 0
