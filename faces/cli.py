"""`pocketswap faces ...`: detect, align, embed, compare, bench."""

from __future__ import annotations

import argparse
import logging
import sys

from pocketswap.core.cli_args import MAX_CROP, MIN_CROP, int_range, output_file
from pocketswap.core.imageio import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

IMAGE_HELP = "image file, or a bundled sample as sample:NAME (astronaut, grace_hopper, camera, lfw_00..lfw_99)"


def _analyzer(args: argparse.Namespace):
    from pocketswap.faces.analyzer import FaceAnalyzer

    return FaceAnalyzer(detector=args.detector, task_file=args.task)


def _add_detector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detector",
        default="auto",
        choices=["short", "full", "auto"],
        help="BlazeFace model: short range (selfies), full range (faces far away), auto (short, then full; "
        "with `detect --all`: both, plus full-range tiles for small faces)",
    )
    parser.add_argument("--task", default=None, help="MediaPipe FaceLandmarker .task file (uses the Tasks backend)")


def _which(face) -> str:
    """Which face a command used (the main face: the largest confident one)."""
    return f"the face at box {[round(float(v)) for v in face.box]} (score {face.score:.2f})"


def _detect(args: argparse.Namespace) -> int:
    from pocketswap.core.files import atomic_write_json
    from pocketswap.core.imageio import write_image
    from pocketswap.faces.draw import annotate
    from pocketswap.faces.samples import load_image_or_sample

    image = load_image_or_sample(args.image)
    analyzer = _analyzer(args)
    faces = (
        analyzer.detect(image, all_faces=args.all, tiled=args.all)
        if not args.require_face
        else [analyzer.detect_one(image, source=args.image)]
    )
    print(f"{args.image}: {len(faces)} face(s)")
    for face in faces:
        print(f"  box={[round(float(v)) for v in face.box]} score={face.score:.3f}")
    if args.out:
        write_image(args.out, annotate(image, faces))
        print(f"annotated image -> {args.out}")
    if args.json:
        atomic_write_json(args.json, {"image": args.image, "faces": [face.to_dict() for face in faces]})
        print(f"results -> {args.json}")
    if not faces:
        print(f"pocketswap: error: no face found in {args.image} (outputs written)", file=sys.stderr)
        return 2
    return 0


def _align(args: argparse.Namespace) -> int:
    from pocketswap.core.files import refuse_overwriting_input
    from pocketswap.core.imageio import write_image
    from pocketswap.faces.align import align_face
    from pocketswap.faces.samples import load_image_or_sample

    refuse_overwriting_input(args.out, args.image, "--out")
    image = load_image_or_sample(args.image)
    face = _analyzer(args).detect_one(image, source=args.image)
    aligned = align_face(image, face.keypoints, args.size, args.template)
    write_image(args.out, aligned.crop)
    print(f"aligned {args.size}x{args.size} crop ({args.template} template) of {_which(face)} -> {args.out}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import numpy as np

    from pocketswap.core.files import atomic_path, check_output
    from pocketswap.faces.identity import embed_faces, load_encoder
    from pocketswap.faces.samples import load_image_or_sample

    image = load_image_or_sample(args.image)
    face = _analyzer(args).detect_one(image, source=args.image)
    embedding = embed_faces(image, [face], load_encoder(args.encoder))[0]
    with atomic_path(check_output(args.out, (".npy",), "--out")) as tmp:
        np.save(tmp, embedding)
    print(f"{embedding.shape[0]}-d embedding of {_which(face)} -> {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pocketswap.core.metrics import cosine_distance, same_person
    from pocketswap.faces.identity import embed_faces, load_encoder, same_person_threshold
    from pocketswap.faces.samples import load_image_or_sample

    analyzer, encoder = _analyzer(args), load_encoder(args.encoder)
    embeddings = []
    for spec in (args.image_a, args.image_b):
        image = load_image_or_sample(spec)
        embeddings.append(embed_faces(image, [analyzer.detect_one(image, source=spec)], encoder)[0])
    distance = cosine_distance(*embeddings)
    threshold = same_person_threshold(args.encoder)
    verdict = "same person" if same_person(distance, threshold) else "different people"
    print(f"cosine distance {distance:.4f} (threshold {threshold:.3f}): {verdict}")
    if args.json:
        from pocketswap.core.files import atomic_write_json

        atomic_write_json(args.json, {"kind": "face_compare", "a": args.image_a, "b": args.image_b,
                                      "distance": round(distance, 4), "threshold": threshold, "verdict": verdict})  # fmt: skip
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pocketswap.core.files import atomic_write_json
    from pocketswap.faces.bench import benchmark_face_pipeline

    result = benchmark_face_pipeline(runs=args.runs, threads=args.threads, crop_size=args.size)
    for key, value in result.to_dict().items():
        print(f"{key:>20}: {value}")
    if args.json:
        atomic_write_json(args.json, result.to_dict())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    faces = subparsers.add_parser("faces", help="face detection, landmarks, alignment and identity embeddings")
    commands = faces.add_subparsers(dest="faces_command", metavar="ACTION", required=True)

    p = commands.add_parser("detect", help="detect faces and 468 landmarks; write an annotated image and JSON")
    p.add_argument("image", help=IMAGE_HELP)
    p.add_argument("--out", type=output_file(*IMAGE_SUFFIXES), help="annotated image (box, landmarks, 5 keypoints)")
    p.add_argument("--json", type=output_file(".json"), help="detections as JSON (box, score, keypoints, landmarks)")
    p.add_argument("--all", action="store_true", help="all faces (default: the largest)")
    p.add_argument(
        "--require-face",
        action="store_true",
        help="stop before writing outputs when no face is found (exit status 2 either way)",
    )
    _add_detector_options(p)
    p.set_defaults(handler=_detect)

    p = commands.add_parser("align", help="align the largest face to a template and write the crop")
    p.add_argument("image", help=IMAGE_HELP)
    p.add_argument(
        "--size", type=int_range(MIN_CROP, MAX_CROP), default=224, help="crop size in px (112, 128, 224, 256, ...)"
    )
    p.add_argument("--template", default="arcface", choices=["arcface", "dlib"], help="5-point template")
    p.add_argument("--out", type=output_file(*IMAGE_SUFFIXES), required=True, help="output crop image")
    _add_detector_options(p)
    p.set_defaults(handler=_align)

    p = commands.add_parser("embed", help="identity embedding of the largest face (L2-normalised .npy)")
    p.add_argument("image", help=IMAGE_HELP)
    p.add_argument("--out", type=output_file(".npy"), required=True, help="output .npy")
    p.add_argument("--encoder", default="dlib", help="'dlib' (built-in, 128-d) or an ArcFace .onnx (512-d)")
    _add_detector_options(p)
    p.set_defaults(handler=_embed)

    p = commands.add_parser("compare", help="cosine distance between two faces and a same/different verdict")
    p.add_argument("image_a", help=IMAGE_HELP)
    p.add_argument("image_b", help=IMAGE_HELP)
    p.add_argument("--encoder", default="dlib", help="'dlib' (built-in, 128-d) or an ArcFace .onnx (512-d)")
    p.add_argument("--json", type=output_file(".json"), help="also write the distance and verdict here")
    _add_detector_options(p)
    p.set_defaults(handler=_compare)

    p = commands.add_parser("bench", help="latency of detect + landmarks + align on a 640x480 frame")
    p.add_argument("--runs", type=int_range(1), default=300)
    p.add_argument("--threads", type=int_range(1), default=1)
    p.add_argument("--size", type=int_range(MIN_CROP, MAX_CROP), default=224, help="crop size")
    p.add_argument("--json", type=output_file(".json"), help="write the result as JSON")
    p.set_defaults(handler=_bench)
