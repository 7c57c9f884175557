"""``featx info``: what an embedding cache (its groups) or a saved ``.featx`` model holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from featx.cli.args import add_command
from featx.exceptions import FeatxError


def add_info_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx info`` to the ``featx`` subcommands."""
    info = add_command(
        commands, "info", cmd_info, [flags],
        help="show what an embedding cache or a saved model holds",
        description="List the groups of an embedding cache (one per backbone configuration: "
        "rows, width, failures), or describe a saved .featx model.",
    )
    info.add_argument("file", metavar="FILE", help="the HDF5 cache file, or a .featx model")


def cmd_info(args: argparse.Namespace) -> int:
    import zipfile

    from featx.cache.store import EmbeddingCache

    path = Path(args.file)
    if not path.is_file():
        raise FeatxError(f"cache file {args.file!r} does not exist.")
    if zipfile.is_zipfile(path):
        return _model_info(path, args)
    groups = EmbeddingCache(path).groups()
    print(f"{path}: {len(groups)} group{'' if len(groups) == 1 else 's'}")
    for g in groups:
        print(f"  {g.fingerprint}  rows {g.rows}  width {g.width}  failures {g.failures}")
        print(f"    {g.label}")
        if args.verbosity > 0:
            for key, value in sorted(g.fields.items()):
                print(f"    {key}: {value}")
    return 0


def _model_info(path: Path, args: argparse.Namespace) -> int:
    import json

    from featx.model.saved import read_manifest

    manifest = read_manifest(path)
    embedder = manifest["embedder"]
    versions = manifest.get("versions", {})
    print(f"{path}: featx model (format {manifest['format_version']})")
    print(f"  head: {manifest['head']['type']}"
          + ("" if manifest["head"].get("has_proba") else " (no probabilities)"))
    print(f"  classes ({len(manifest['classes'])}): "
          + ", ".join(str(c) for c in manifest["classes"]))
    print(f"  backbone: {embedder['label']}")
    print("  made with: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if args.verbosity > 0:
        print(f"  embedder parameters: {json.dumps(embedder['params'], sort_keys=True)}")
        print(f"  info: {json.dumps(manifest.get('info', {}), sort_keys=True)}")
    return 0
