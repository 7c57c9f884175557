"""``featx export``: a cache group's rows as ``.npy``/Parquet shards (embedding-reader, autofaiss,
clip-retrieval read them); :func:`featx.cache.export.export_group` does the work."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from featx.cli.args import add_command, positive_int, progress


def add_export_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx export`` to the ``featx`` subcommands."""
    from featx.cache.export import BLOCK_ROWS, EXPORT_FORMATS, SHARD_ROWS

    export = add_command(
        commands, "export", cmd_export, [flags],
        help="write a cache group's embeddings as .npy or Parquet shards",
        description="Write one group of an embedding cache as shards that embedding-reader, "
        "autofaiss and clip-retrieval read: img_emb/img_emb_{i}.npy with "
        "metadata/metadata_{i}.parquet (key, image_path), or img_emb/img_emb_{i}.parquet with "
        "an embedding column. Written by blocks into a temporary folder, renamed at the end.",
    )
    export.add_argument("--cache", required=True, metavar="FILE", help="the HDF5 cache file")
    export.add_argument("--group", metavar="PREFIX",
                        help="the group's fingerprint or a unique prefix (featx info FILE lists "
                        "them); needed when the cache holds several")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="npy",
                        help="npy: .npy embeddings plus .parquet metadata (default); parquet: "
                        "one Parquet file per shard with an embedding column")
    export.add_argument("--out", required=True, metavar="DIR",
                        help="the folder to create (it must not exist, or be empty)")
    export.add_argument("--shard-rows", type=positive_int, default=SHARD_ROWS, metavar="N",
                        help=f"rows per shard (default {SHARD_ROWS:,})")
    export.add_argument("--block-rows", type=positive_int, default=BLOCK_ROWS, metavar="N",
                        help=f"rows read and written at a time: the memory used "
                        f"(default {BLOCK_ROWS:,})")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier featx export in DIR")


def cmd_export(args: argparse.Namespace) -> int:
    from featx.cache.export import export_group
    from featx.embed.engine import progress_bar

    bar: list[Callable[[int | None], None]] = []

    def step(rows: int, total: int) -> None:
        if not bar:
            bar.append(progress_bar(total, progress(args), desc="exporting"))
        bar[0](rows)

    try:
        done = export_group(args.cache, args.group, args.out, format=args.format,
                            shard_rows=args.shard_rows, block_rows=args.block_rows,
                            overwrite=args.overwrite, progress=step)
    finally:
        for close in bar:
            close(None)
    if args.verbosity >= 0:
        print(done.summary())
    return 0
