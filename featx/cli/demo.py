"""``featx demo``: Fashion-MNIST end to end (:func:`featx.data.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from featx.cli.args import (
    add_command,
    folds,
    heads_list,
    input_size,
    n_jobs,
    positive_int,
    progress,
    weights,
)


def add_demo_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx demo`` to the ``featx`` subcommands."""
    from featx.data.demo import DEMO_HEADS, DEMO_INPUT_SIZE

    demo = add_command(
        commands, "demo", cmd_demo, [flags],
        help="Fashion-MNIST end to end: PNG files -> embeddings -> tuned heads, vs pixels",
        description="Write Fashion-MNIST images as PNG files, embed them with ImageNet MobileNet "
        "features through a cache, tune several heads on the embeddings and on the raw "
        "pixels, print both leaderboards, and write the plots, report.html and the best model "
        "to --out.",
    )
    demo.add_argument("--out", type=Path, metavar="DIR",
                      help="where the images, the cache, the plots, report.html and the model "
                      "go (default $FEATX_HOME/demo)")
    demo.add_argument("--n-train", type=positive_int, default=2000, metavar="N",
                      help="training images (default 2000)")
    demo.add_argument("--n-test", type=positive_int, default=1000, metavar="N",
                      help="test images (default 1000)")
    demo.add_argument("--backbone", default="mobilenet", metavar="NAME",
                      help="the backbone (default mobilenet)")
    demo.add_argument("--weights", type=weights, default="imagenet", metavar="W",
                      help="'imagenet' (default), 'none' or a weights file")
    demo.add_argument("--input-size", type=input_size, default=DEMO_INPUT_SIZE, metavar="N",
                      help=f"resize images to N x N pixels (default {DEMO_INPUT_SIZE})")
    demo.add_argument("--heads", type=heads_list, default=list(DEMO_HEADS), metavar="H,H",
                      help=f"comma-separated heads to tune (default {','.join(DEMO_HEADS)})")
    demo.add_argument("--cv", type=folds, default=5, metavar="K",
                      help="cross-validation folds (default 5)")
    demo.add_argument("--n-jobs", type=n_jobs, default=-1, metavar="N",
                      help="parallel fits (default -1: all cores)")


def cmd_demo(args: argparse.Namespace) -> int:
    from featx.data.demo import run_demo

    out = args.out
    if out is None:
        from featx._home import featx_home

        out = featx_home() / "demo"
    result = run_demo(
        out, n_train=args.n_train, n_test=args.n_test, backbone=args.backbone,
        weights=args.weights, input_size=args.input_size, heads=args.heads, cv=args.cv,
        n_jobs=args.n_jobs, verbose=progress(args), log=None if args.verbosity < 0 else print,
    )
    if args.verbosity < 0:
        print(
            f"{result['dataset']}: test accuracy {result['accuracy']:.1%} on embeddings "
            f"({result['best_head']}), {result['pixel_accuracy']:.1%} on pixels "
            f"({result['pixel_best_head']}); model {result['model']}; report {result['report']}"
        )
    return 0
