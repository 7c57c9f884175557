"""``featx predict``: a saved model's predictions for image files, as CSV."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from featx.cli.args import (
    add_command,
    add_path_column,
    add_retry_failed,
    positive_int,
    progress,
    reason,
)
from featx.cli.sources import add_source_flags, open_source, source_options

_PROG = "featx"


def add_predict_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx predict`` to the ``featx`` subcommands."""
    predict = add_command(
        commands, "predict", cmd_predict, [flags],
        help="predict classes of images with a saved model (CSV)",
        description="Predict the classes of images with a model saved by `featx heads` or "
        "featx.save_model, rebuilding its backbone from its configuration. Writes CSV: path, "
        "prediction, one probability column per class (when the head gives probabilities) "
        "and error (why an image could not be read).",
    )
    predict.add_argument("model", metavar="MODEL", help="a .featx model file")
    predict.add_argument("sources", metavar="PATH", nargs="+",
                         help="image files, folders of images (or of class folders), CSV "
                         "files with a 'path' column, tar shards or Parquet/Arrow files; paths "
                         "or URLs (s3://, gs://, https://)")
    predict.add_argument("--out", metavar="FILE", help="write the CSV here (default: stdout)")
    predict.add_argument("--cache", metavar="FILE",
                         help="an embedding cache to read and fill (default: none)")
    add_retry_failed(predict, help="with --cache: try again the files an earlier run could not "
                     "read (by default their error is reported from the cache)")
    predict.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                         help="images per network call (default 32)")
    add_path_column(predict)
    add_source_flags(predict)
    predict.add_argument("--trust", action="append", default=[], metavar="TYPE",
                         help="trust this type in the model file (repeatable); only for a file "
                         "whose origin you trust and whose load named the type")
    predict.add_argument("--unsafe-backbone", action="store_true",
                         help="let a model-file backbone run its own code (Keras Lambda layers); "
                         "only for a file you trust")


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    from dataclasses import replace

    from featx.embed.stream import ChainedStream
    from featx.exceptions import ModelVersionWarning
    from featx.model import load_model, predictions_csv_rows

    paths = ChainedStream([open_source(src, args.path_column, **source_options(args))
                           for src in args.sources])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelVersionWarning)
        model = load_model(args.model, trusted=args.trust, cache=args.cache,
                           safe_mode=not args.unsafe_backbone)
    for w in caught:
        if issubclass(w.category, ModelVersionWarning):
            print(f"{_PROG}: warning: {w.message}", file=sys.stderr)
    model.embedder.set_params(batch_size=args.batch_size, verbose=progress(args),
                              retry_failed=args.retry_failed)
    predictions = [replace(p, error=reason(p.exception)) if p.exception else p
                   for p in model.predict_items(paths)]
    handle = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        csv.writer(handle).writerows(predictions_csv_rows(model, predictions))
    finally:
        if args.out:
            handle.close()
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"{_PROG}: {failed} of {len(predictions)} images could not be read; see the "
              "error column", file=sys.stderr)
    if args.out and args.verbosity >= 0:
        print(f"{len(predictions) - failed} predictions written to {args.out}")
    return 1 if failed == len(predictions) else 0

