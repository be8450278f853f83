"""`pocketswap demo`: live face swap from a webcam, a video file or an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketswap.core.cli_args import add_switch_flags, int_range, output_dir, output_file, switch_values
from pocketswap.demo.settings import PipelineConfig


def model_argument(args: argparse.Namespace) -> str | None:
    """The model, given as the first argument (as every command takes it) or as ``--model``; not both."""
    from pocketswap.core.errors import PocketswapError

    if args.model and args.model_option and args.model != args.model_option:
        raise PocketswapError(f"two models given ({args.model} and --model {args.model_option}): give one")
    return args.model or args.model_option


def _demo(args: argparse.Namespace) -> int:
    from pocketswap.core.errors import PocketswapError
    from pocketswap.core.files import atomic_write_json
    from pocketswap.demo.app import DemoOptions, run_demo

    model = model_argument(args)
    if model is None:
        raise PocketswapError("no model given: pocketswap demo MODEL --source ... (an artifact or a checkpoint)")
    options = DemoOptions(
        model=Path(model),
        identity=Path(args.identity) if args.identity else None,
        source=args.source,
        output=Path(args.output) if args.output else None,
        headless=args.headless,
        label=not args.no_label,
        threads=args.threads,
        max_frames=args.max_frames,
        pipeline=PipelineConfig.from_dict(switch_values(args)),
    )
    summary = run_demo(options)
    for line in summary.lines():
        print(line)
    if args.json:
        atomic_write_json(args.json, summary.to_dict())
    return 0


DEFAULT_APP_MODEL = Path("runs/quickstart/artifacts/nano_baked_fp32.tflite")  # what `make demo` exports
DEFAULT_UNIVERSAL = Path("runs/quickstart/run")  # the universal student `make demo` trains


def _app(args: argparse.Namespace) -> int:
    from pocketswap.core.errors import PocketswapError
    from pocketswap.demo.web import AppOptions, serve

    given = model_argument(args)
    model = Path(given) if given else DEFAULT_APP_MODEL
    if given is None and not model.exists():
        raise PocketswapError(f"no model given and {model} does not exist: run `make demo` first or pass MODEL")
    identity = Path(args.identity) if args.identity else None
    universal = Path(args.universal) if args.universal else (DEFAULT_UNIVERSAL if DEFAULT_UNIVERSAL.is_dir() else None)
    options = AppOptions(model=model, identity=identity, threads=args.threads, universal=universal,
                         work_dir=Path(args.work_dir), transport=args.transport)  # fmt: skip
    serve(options, host=args.host, port=args.port, allow_hosts=tuple(args.allow_host or ()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="live face swap from a webcam, video file or image",
        description="Keys: q quit, space pause, s snapshot, m show mask, n next identity, d toggle swap.",
    )
    p.add_argument("model", nargs="?", help=".tflite, .onnx, checkpoint (or .mlpackage on macOS), as every command "
                   "takes its model")  # fmt: skip
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the same, as an option")
    p.add_argument("--identity", help="identity face image, .npy embedding, or a folder of them (n cycles)")
    p.add_argument("--source", default="0", help="camera index (0), video file, image or sample:NAME")
    p.add_argument(
        "--out", "--output", dest="output", help="write the result (video for video/camera sources, image for images)"
    )
    p.add_argument("--headless", action="store_true", help="no window; print a summary")
    add_switch_flags(p.add_argument_group("live pipeline"), PipelineConfig, {"keep_detail": ["--no-detail"]})
    p.add_argument("--no-label", action="store_true", help="hide the 'SYNTHETIC' label (e.g. for recording)")
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--max-frames", type=int_range(1), help="stop after this many frames")
    p.add_argument("--json", type=output_file(".json"), help="write the summary as JSON")
    p.set_defaults(handler=_demo)

    a = subparsers.add_parser(
        "app",
        help="browser UI: live webcam swap, image/video files, the model's manifest",
        description="Serves a page on http://HOST:PORT (localhost by default): Live (the browser's camera, "
        "swapped frames back over a WebSocket or WebRTC, per-stage p50/p95), Files (an image or video in, the swap out), "
        "Model (its manifest and identities).",
    )
    a.add_argument(
        "model", nargs="?", help=f".tflite/.onnx artifact or a run folder/checkpoint (default {DEFAULT_APP_MODEL})"
    )
    a.add_argument("--model", dest="model_option", metavar="MODEL", help="the same, as an option")
    a.add_argument("--identity", help="identity photo, sample:NAME, .npy, or a folder of them (a checkpoint switches)")
    a.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    a.add_argument("--allow-host", action="append", metavar="NAME",
                   help="another Host name to accept besides localhost and the bound address (e.g. a LAN DNS name; "
                   "repeat for more); every other name is refused against DNS rebinding")  # fmt: skip
    a.add_argument("--port", type=int_range(1, 65535), default=7860)
    a.add_argument("--threads", type=int_range(1), default=1, help="inference threads per browser tab")
    a.add_argument("--transport", default="websocket",
                   help="the Live tab's default stream: websocket (JPEG; lowest latency on localhost) or webrtc "
                   "(aiortc, VP8; falls back to the WebSocket if it cannot connect)")  # fmt: skip
    a.add_argument("--universal", help=f"universal run the Personalize tab fine-tunes (default {DEFAULT_UNIVERSAL})")
    a.add_argument("--work-dir", type=output_dir, default="runs/app", help="where Personalize writes (runs/app)")
    a.set_defaults(handler=_app)
