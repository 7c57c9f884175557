"""``featx audit``: duplicates, train/test leaks, label issues and outliers of labelled images.

A thin layer over :func:`featx.audit`: it lists the labelled images (as ``featx heads`` takes
them), reads their embeddings from the cache by content (the cache's one group, or the one
``--group`` names; nothing is embedded), prints the summary and writes ``duplicates.csv``,
``leaks.csv``, ``label_issues.csv``, ``outliers.csv`` and ``report.html`` into ``--out``,
all or nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from featx.cli.args import add_command, add_label_column, add_labelled_source, folds, say_for
from featx.exceptions import FeatxError


def add_audit_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx audit`` to the ``featx`` subcommands."""
    cmd = add_command(
        commands, "audit", cmd_audit, [flags],
        help="find duplicates, train/test leaks, label issues and outliers from the embeddings",
        description="Audit labelled images from their cached embeddings (featx embed SRC "
        "--cache FILE first; nothing is embedded here): near-duplicate and exact pairs, test "
        "images with a copy in training (--test), images whose label disagrees with "
        "out-of-fold predictions and with their neighbours (confident learning), and "
        "outliers. Prints a summary and writes duplicates.csv, leaks.csv, label_issues.csv, "
        "outliers.csv and report.html (thumbnails side by side) into --out.",
    )
    add_labelled_source(cmd)
    cmd.add_argument("--cache", required=True, metavar="FILE",
                     help="the embedding cache holding the images (featx embed SRC --cache FILE)")
    cmd.add_argument("--group", metavar="PREFIX",
                     help="the cache group (the start of its fingerprint, as featx info shows "
                     "it) when the cache holds several")
    cmd.add_argument("--test", metavar="SRC",
                     help="labelled test images (as SRC): test images with a copy in training "
                     "are leaks")
    cmd.add_argument("--out", default="featx-audit", metavar="DIR",
                     help="where the CSV files and report.html go (default featx-audit)")
    cmd.add_argument("--threshold", type=float, default=None, metavar="T",
                     help="the near-duplicate threshold on the pair score (default: "
                     "featx.audit.DEFAULT_THRESHOLD, see docs/audit.md)")
    cmd.add_argument("-k", type=int, default=10, metavar="K",
                     help="neighbours searched per image (default 10)")
    cmd.add_argument("--cv", type=folds, default=5, metavar="K",
                     help="folds of the out-of-fold probabilities (default 5)")
    cmd.add_argument("--random-state", type=int, default=0, metavar="N",
                     help="seed of the folds and the label head (default 0)")
    cmd.add_argument("--path-column", default="path", metavar="NAME",
                     help="the CSV column holding image paths (default 'path')")
    add_label_column(cmd)


def cmd_audit(args: argparse.Namespace) -> int:
    from featx.audit.findings import audit
    from featx.report.audit_page import write_audit_outputs

    say = say_for(args)
    if args.k < 1:
        raise FeatxError(f"-k must be at least 1; got {args.k}.")
    paths, y = _labelled(args.src, args)
    test_paths = y_test = None
    if args.test is not None:
        test_paths, y_test = _labelled(args.test, args)
    say(f"{len(paths):,} images in {len(set(y.tolist()))} classes from {args.src}"
        + (f", {len(test_paths):,} test images from {args.test}" if test_paths else "")
        + f"; embeddings from {args.cache}")
    say(f"searching duplicates, leaks and outliers; label issues from {args.cv}-fold out-of-fold "
        "probabilities (a few minutes for tens of thousands of images)")
    result = audit(paths, y, cache=args.cache, group=args.group, test=test_paths,
                   y_test=y_test, threshold=args.threshold, k=args.k, cv=args.cv,
                   random_state=args.random_state)
    print(result.summary_text())
    written = write_audit_outputs(
        args.out, result, title=f"featx audit: {args.src}",
        notes=[f"Images: {args.src}" + (f"; test images: {args.test}" if args.test else "")
               + f"; embeddings: {args.cache}."])
    say("wrote " + ", ".join(str(p) for p in written))
    return 0


def _labelled(src: str, args: argparse.Namespace) -> tuple[list[str], Any]:
    """Image files and their labels (a class folder or a CSV file)."""
    from featx.cli.sources import labelled_source

    paths, y = labelled_source(src, args.path_column, args.label_column)
    if not isinstance(paths, list):
        raise FeatxError(
            f"{src!r} holds tar shards or a table; featx audit takes image files for now (a "
            "folder with one sub-folder per class, or a CSV file with path and label columns)."
        )
    return [str(p) for p in paths], y
