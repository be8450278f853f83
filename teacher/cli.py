"""`pocketswap teacher ...`: generate a paired dataset, preview it, benchmark the teacher."""

from __future__ import annotations

import argparse
import logging

from pocketswap.core.cli_args import (
    MAX_CROP,
    MIN_CROP,
    add_config_flags,
    config_flags,
    int_range,
    output_dir,
    output_file,
)
from pocketswap.core.imageio import IMAGE_SUFFIXES
from pocketswap.teacher.config import GenerateConfig  # light: no model imports

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("teacher", help="teachers and paired-data generation")
    commands = parser.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND")

    gen = commands.add_parser(
        "generate",
        help="generate a paired dataset (tar shards + manifest) with a teacher",
        description="Find and align faces, sample identity/attribute pairs, run the teacher and write "
        "WebDataset-style tar shards. Reruns resume; under torchrun each rank writes its own shards.",
    )
    gen.add_argument("--no-augment", action="store_true", help="turn all augmentations off")
    gen.add_argument("--config", default=None, help="YAML file with any of these settings (flags override it)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(
        gen,
        GenerateConfig,
        types={"out": output_dir, "size": int_range(MIN_CROP, MAX_CROP), "workers": int_range(0)},
        skip=("teacher_config", "augment"),
    )
    gen.set_defaults(handler=_generate)

    preview = commands.add_parser("preview", help="grid of identity | attribute | teacher output | mask")
    preview.add_argument("dataset", help="dataset folder")
    preview.add_argument("--out", type=output_file(*IMAGE_SUFFIXES), required=True, help="output image (.png/.jpg)")
    preview.add_argument("--rows", type=int, default=8, help="number of samples (rows)")
    preview.add_argument("--skip", type=int_range(0), default=0, help="skip this many samples first")
    preview.set_defaults(handler=_preview)

    bench = commands.add_parser("bench", help="pairs/second of generation (geometric teacher by default)")
    bench.add_argument("--faces", default="samples", help="faces folder or 'samples'")
    bench.add_argument("--pairs", type=int_range(1), default=200)
    bench.add_argument("--workers", type=int_range(0), default=2)
    bench.add_argument("--size", type=int_range(MIN_CROP, MAX_CROP), default=224)
    bench.add_argument("--teacher", default="geometric")
    bench.add_argument("--identity-encoder", default=None, help="ArcFace .onnx for ONNX teachers")
    bench.add_argument("--cache", default=None, help="folder to keep the face-analysis cache between runs")
    bench.set_defaults(handler=_bench)


def _generate(args: argparse.Namespace) -> int:
    from pocketswap.core.errors import ConfigError
    from pocketswap.teacher.generate import generate

    overrides = config_flags(args, GenerateConfig)
    cfg = GenerateConfig.load(args.config, overrides)
    if args.no_augment:
        from dataclasses import replace

        cfg = replace(cfg, augment=replace(cfg.augment, enabled=False))
    if not cfg.out:
        raise ConfigError("--out (or 'out' in the config file) is required")
    result = generate(cfg, progress=not args.no_progress)
    print(
        f"rank {result.rank}/{result.world_size}: wrote {result.pairs_written} pairs in {result.shards_written} shard(s) "
        f"({result.shards_skipped} already complete) in {result.seconds:.1f} s = {result.pairs_per_second:.1f} pairs/s"
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} image(s):")
        for item in result.skipped:
            print(f"  {item['file']}: {item['reason']}")
    if result.manifest is not None:
        m = result.manifest
        print(f"dataset {cfg.out}: {m.num_samples} samples, {len(m.shards)} shard(s), {len(m.identities)} identities")
        print(f"next: pocketswap distill train --data {cfg.out} --preset nano --steps 800 --out runs/RUN")
    return 0


def _preview(args: argparse.Namespace) -> int:
    import itertools

    import numpy as np

    from pocketswap.core.dataset import DatasetReader
    from pocketswap.core.imageio import write_image

    reader = DatasetReader(args.dataset)
    rows = []
    for sample in itertools.islice(reader.iter_samples(), args.skip, args.skip + max(1, args.rows)):
        mask = np.repeat((sample.mask * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
        rows.append(np.hstack([sample.identity, sample.attribute, sample.output, mask]))
    if not rows:
        print(f"{args.dataset}: no samples")
        return 1
    write_image(args.out, np.vstack(rows))
    print(f"{len(rows)} rows (identity | attribute | teacher output | mask) -> {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pocketswap.teacher.bench import bench_generation

    result = bench_generation(args.faces, args.pairs, args.workers, args.size, args.teacher,
                              args.identity_encoder, args.cache)  # fmt: skip
    print(f"teacher {result.teacher} at {args.size}: {result.swaps_per_second:.1f} swaps/s (one process, teacher only)")
    print(
        f"generate: {result.pairs} pairs with {args.workers} worker(s) in {result.seconds:.2f} s = "
        f"{result.pairs_per_second:.1f} pairs/s (augment + teacher + encode + write; face analysis excluded); "
        f"after {result.startup_seconds:.1f} s of worker start-up: {result.steady_pairs_per_second:.1f} pairs/s"
    )
    return 0
